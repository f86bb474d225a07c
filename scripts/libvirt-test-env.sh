#!/usr/bin/env bash
# A libvirtd (QEMU driver, TCG only) for tests that talk to libvirt-managed
# domains without linking libvirt: they read libvirt's status XML and speak
# its RPC protocol on /run/libvirt/libvirt-sock.
#
# Usage:
#   scripts/libvirt-test-env.sh start [DIR]
#       Installs libvirt-daemon-system and libvirt-clients if missing, starts
#       virtlogd and libvirtd and waits until `virsh -c qemu:///system list`
#       works. Idempotent: a daemon started earlier from DIR is reused.
#   scripts/libvirt-test-env.sh define NAME [--second-channel] [--defined-only]
#                                           [--transient] [--noagent]
#                                           [--kernel-args ARGS] [--timeout S]
#       Defines (persistent unless --transient) and starts domain NAME booting
#       the test VM, then waits for `virtomate-test-vm: ready` on its serial
#       console and for libvirt to see its guest agent connected.
#         --second-channel  adds port org.qemu.guest_agent.1 bound to
#                           DIR/NAME-qga1.sock (not used by libvirt)
#         --defined-only    defines the domain without starting it
#         --transient       creates a transient domain (virsh create)
#         --noagent         boots with virtomate.noagent (no qemu-ga)
#         --kernel-args A   appended to the kernel command line
#         --timeout S       seconds to wait for the guest (default 90)
#   scripts/libvirt-test-env.sh undefine NAME
#       Destroys and undefines NAME. Idempotent.
#   scripts/libvirt-test-env.sh stop
#       Destroys the domains, undefines those `define` created, stops the
#       libvirtd and virtlogd this script started. Idempotent.
#   scripts/libvirt-test-env.sh stop-daemons
#       Stops the libvirtd and virtlogd this script started (SIGTERM), leaving
#       their domains running: `start` starts them again, and libvirtd finds
#       its domains and connects to their agents again. Idempotent.
#   scripts/libvirt-test-env.sh status
#       Prints DIR, the mode and the daemon pids.
#
# DIR (runtime files, logs, private configuration) is taken from, in order:
# the argument of `start`, $LIBVIRT_TEST_DIR, the DIR the last `start`
# recorded in /run/virtomate-libvirt-test-env.dir, target/libvirt-test-env.
# Files in DIR: libvirtd.pid, virtlogd.pid, libvirtd.log, virtlogd.log,
# etc/libvirt/ (private copy of /etc/libvirt), images/ (kernel, initramfs),
# NAME.xml (domain definition), NAME-console.log, NAME-qga1.sock.
#
# Configuration: the daemons run in a private mount namespace (unshare -m) in
# which DIR/etc/libvirt/qemu.conf is bind-mounted over /etc/libvirt/qemu.conf.
# So the qemu.conf the container needs (user/group root, security_driver
# "none", no cgroups, no namespaces) never touches the system's file, while
# persistent domain definitions go to /etc/libvirt/qemu as on any host (and
# `undefine`/`stop` remove them). /dev in that namespace lacks kvm: libvirt neither probes QEMU
# with KVM nor finds its cached probe outdated at every domain start (it
# re-probes, for up to half a minute, whenever /dev/kvm is accessible but
# the cached probe found KVM unusable). Sockets (/run/libvirt), status files
# (/run/libvirt/qemu) and agent sockets (/var/lib/libvirt) stay on the shared
# file systems, visible to everybody.
# Without a mount namespace (unshare fails, or LIBVIRT_TEST_NAMESPACE=0),
# libvirtd.conf and virtlogd.conf still come from DIR (-f), but qemu.conf has
# no such option: the settings go into /etc/libvirt/qemu.conf as a marked
# block (idempotent, left in place by `stop`), and /dev/kvm stays visible.
#
# Environment:
#   LIBVIRT_TEST_DIR        see DIR above
#   LIBVIRT_TEST_NAMESPACE  0 disables the private mount namespace
#   VM_ARTIFACTS            directory with vmlinuz and initramfs.gz
#                           (default: target/test-vm in the repository root)
#   LIBVIRT_START_TIMEOUT   seconds to wait for libvirtd (default 30)
set -euo pipefail

script_dir="$(cd "$(dirname "$0")" && pwd)"
repo_root="$(cd "$script_dir/.." && pwd)"

export LC_ALL=C
uri=qemu:///system
pointer=/run/virtomate-libvirt-test-env.dir
ready_line="virtomate-test-vm: ready"

log() { echo "libvirt-test-env: $*" >&2; }
die() { log "error: $*"; exit 1; }

now_ms() {
  local t="${EPOCHREALTIME/[.,]/}"
  echo $((t / 1000))
}

virsh_() { virsh -q -c "$uri" "$@"; }

# True while the process runs (zombies count as gone).
alive() {
  local stat
  [ -n "$1" ] || return 1
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [ "${stat%% *}" != Z ]
}

pid_from() { [ -f "$1" ] && tr -dc '0-9' <"$1" || true; }

# alive and running the expected program
alive_as() {
  local pid="$1" exe="$2"
  alive "$pid" || return 1
  [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$exe" ]
}

resolve_dir() {
  local d="${1:-}"
  if [ -z "$d" ]; then d="${LIBVIRT_TEST_DIR:-}"; fi
  if [ -z "$d" ] && [ -f "$pointer" ]; then d="$(cat "$pointer")"; fi
  if [ -z "$d" ]; then d="$repo_root/target/libvirt-test-env"; fi
  mkdir -p "$d"
  dir="$(cd "$d" && pwd)"
}

# --- install ----------------------------------------------------------------

install_packages() {
  local packages=(libvirt-daemon-system libvirt-clients qemu-system-x86)
  local missing=() p
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q </dev/null >&2
  # Maintainer scripts try to start services; there is no init system to
  # talk to here, which they tolerate, but keep them from prompting.
  apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}" </dev/null >&2
}

# --- configuration ------------------------------------------------------------

qemu_conf_settings() {
  cat <<'EOF'
# The tests run as root in a container without systemd, cgroup delegation,
# AppArmor/SELinux or the right to create namespaces for every domain.
user = "root"
group = "root"
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
# Do not record owners in extended attributes of the images.
remember_owner = 0
EOF
}

write_private_config() {
  local etc="$dir/etc/libvirt"
  if [ ! -d "$etc" ]; then
    mkdir -p "$dir/etc"
    cp -a /etc/libvirt "$etc.tmp"
    mv "$etc.tmp" "$etc"
  fi
  qemu_conf_settings >"$etc/qemu.conf"
  # Only logging differs from the shipped defaults: the sockets stay in
  # /run/libvirt and auth_unix_rw stays "polkit", which libvirtd waives for
  # clients running as uid 0 (see docs/libvirt-notes.md).
  cat >"$etc/libvirtd.conf" <<EOF
log_outputs = "3:file:$dir/libvirtd.log"
EOF
  cat >"$etc/virtlogd.conf" <<EOF
log_outputs = "3:file:$dir/virtlogd.log"
EOF
}

marker_begin="# BEGIN virtomate libvirt-test-env"
marker_end="# END virtomate libvirt-test-env"

# Fallback without a mount namespace: a marked block at the end of the
# system's qemu.conf; earlier assignments of the same keys are commented out.
edit_system_qemu_conf() {
  local conf=/etc/libvirt/qemu.conf tmp
  tmp="$(mktemp)"
  sed "/^$marker_begin\$/,/^$marker_end\$/d" "$conf" \
    | sed -E 's/^(user|group|security_driver|cgroup_controllers|namespaces|remember_owner)([[:space:]]*=)/#\1\2/' >"$tmp"
  {
    echo "$marker_begin"
    qemu_conf_settings
    echo "$marker_end"
  } >>"$tmp"
  if ! cmp -s "$tmp" "$conf"; then
    cat "$tmp" >"$conf"
    log "edited $conf (block between '$marker_begin' and '$marker_end')"
  fi
  rm -f "$tmp"
}

# --- daemons --------------------------------------------------------------------

libvirtd_pid() { pid_from "$dir/libvirtd.pid"; }
virtlogd_pid() { pid_from "$dir/virtlogd.pid"; }

ours_running() { alive_as "$(libvirtd_pid)" /usr/sbin/libvirtd; }

connect_works() { virsh_ list >/dev/null 2>&1; }

wait_for_connect() {
  local timeout="$1" deadline
  deadline=$(($(now_ms) + timeout * 1000))
  until connect_works; do
    if [ "$(now_ms)" -ge "$deadline" ]; then return 1; fi
    sleep 0.1
  done
}

can_unshare() { unshare --mount --propagation private true 2>/dev/null; }

launch_daemons() {
  local mode="$1"
  rm -f "$dir/libvirtd.pid" "$dir/virtlogd.pid"
  # The daemons are told their pid files; virtlogd is needed for the
  # domains' QEMU log files (stdio_handler = "logd" by default).
  local body='
set -e
if [ "$MODE" = namespace ]; then
  # Only qemu.conf is private: persistent definitions land in the real
  # /etc/libvirt/qemu, where clients that read the files of libvirt (virtomate
  # looks there for defined-but-stopped domains) expect them.
  mount --bind "$DIR/etc/libvirt/qemu.conf" /etc/libvirt/qemu.conf
  if [ -e /dev/kvm ]; then
    # A /dev without kvm: a tmpfs with copies of the device nodes and
    # symbolic links and bind mounts of the directories (pts, shm, ...).
    host_dev="$DIR/ns/host-dev"
    mkdir -p "$host_dev"
    mount --rbind /dev "$host_dev"
    mount -t tmpfs -o mode=0755,nosuid tmpfs /dev
    for entry in "$host_dev"/* "$host_dev"/.[!.]*; do
      [ -e "$entry" ] || [ -L "$entry" ] || continue
      name="${entry##*/}"
      [ "$name" != kvm ] || continue
      if [ -d "$entry" ] && [ ! -L "$entry" ]; then
        mkdir "/dev/$name"
        mount --rbind "$entry" "/dev/$name"
      else
        cp -a "$entry" "/dev/$name"
      fi
    done
    umount -l "$host_dev"
  fi
fi
virtlogd -d -p "$DIR/virtlogd.pid" -f "$DIR/etc/libvirt/virtlogd.conf"
exec libvirtd -d -p "$DIR/libvirtd.pid" -f "$DIR/etc/libvirt/libvirtd.conf"
'
  if [ "$mode" = namespace ]; then
    MODE=namespace DIR="$dir" unshare --mount --propagation private -- bash -c "$body" \
      </dev/null >>"$dir/daemons.out" 2>&1
  else
    MODE=system DIR="$dir" bash -c "$body" </dev/null >>"$dir/daemons.out" 2>&1
  fi
}

cmd_start() {
  [ $# -le 1 ] || die "usage: $0 start [DIR]"
  [ "$(id -u)" -eq 0 ] || die "must run as root"
  resolve_dir "${1:-}"
  local t0 t1 timeout="${LIBVIRT_START_TIMEOUT:-30}"

  install_packages
  echo "$dir" >"$pointer"

  if ours_running; then
    if wait_for_connect "$timeout"; then
      log "libvirtd already running (pid $(libvirtd_pid), $dir)"
      return 0
    fi
    die "libvirtd (pid $(libvirtd_pid)) runs but $uri does not answer"
  fi
  if connect_works; then
    # Somebody else's daemon (e.g. the system's): use it, never stop it.
    log "using a libvirtd not started by this script"
    echo foreign >"$dir/mode"
    return 0
  fi

  local mode=namespace
  write_private_config
  if [ "${LIBVIRT_TEST_NAMESPACE:-1}" = 0 ] || ! can_unshare; then
    mode=system
    log "no private mount namespace, so the settings go into the system's /etc/libvirt/qemu.conf"
    edit_system_qemu_conf
  fi
  echo "$mode" >"$dir/mode"

  t0="$(now_ms)"
  if ! launch_daemons "$mode"; then
    tail -n 20 "$dir/daemons.out" >&2 || true
    tail -n 20 "$dir/libvirtd.log" >&2 2>/dev/null || true
    die "libvirtd failed to start"
  fi
  if ! wait_for_connect "$timeout"; then
    tail -n 20 "$dir/libvirtd.log" >&2 2>/dev/null || true
    die "$uri did not answer within ${timeout}s"
  fi
  t1="$(now_ms)"
  # The first domain would otherwise wait for libvirt's probe of the QEMU
  # binary (tens of seconds under TCG on a busy machine, cached afterwards
  # in /var/cache/libvirt/qemu/capabilities).
  if ! virsh_ domcapabilities --virttype qemu --emulatorbin /usr/bin/qemu-system-x86_64 \
    --arch x86_64 --machine pc >/dev/null; then
    tail -n 20 "$dir/libvirtd.log" >&2 2>/dev/null || true
    die "libvirtd cannot use /usr/bin/qemu-system-x86_64"
  fi
  log "libvirtd $(libvirtd --version | awk '{print $NF}') running (pid $(libvirtd_pid), mode $mode): answering after $((t1 - t0)) ms, QEMU probed after $(($(now_ms) - t0)) ms"
}

# --- domains --------------------------------------------------------------------

require_daemon() {
  resolve_dir ""
  connect_works || die "$uri does not answer, run: $0 start"
}

xml_escape() {
  local s="$1"
  s="${s//&/&amp;}"; s="${s//</&lt;}"; s="${s//>/&gt;}"; s="${s//\'/&apos;}"; s="${s//\"/&quot;}"
  printf '%s' "$s"
}

stage_images() {
  local artifacts="${VM_ARTIFACTS:-$repo_root/target/test-vm}" f
  if [ ! -f "$artifacts/vmlinuz" ] || [ ! -f "$artifacts/initramfs.gz" ]; then
    [ -z "${VM_ARTIFACTS:-}" ] || die "$artifacts lacks vmlinuz or initramfs.gz"
    "$script_dir/build-test-vm.sh" "$artifacts" </dev/null
  fi
  # Copies: libvirt's DAC driver relabels (chowns) kernel and initrd when a
  # domain starts and stops; keep it away from the build output.
  mkdir -p "$dir/images"
  for f in vmlinuz initramfs.gz; do
    if ! cmp -s "$artifacts/$f" "$dir/images/$f"; then
      cp "$artifacts/$f" "$dir/images/$f.tmp"
      mv -f "$dir/images/$f.tmp" "$dir/images/$f"
    fi
  done
}

domain_xml() {
  local name="$1" second="$2" cmdline="$3"
  local n
  n="$(xml_escape "$name")"
  cat <<EOF
<domain type='qemu'>
  <name>$n</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$(xml_escape "$dir/images/vmlinuz")</kernel>
    <initrd>$(xml_escape "$dir/images/initramfs.gz")</initrd>
    <cmdline>$(xml_escape "$cmdline")</cmdline>
  </os>
  <features>
    <acpi/>
  </features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path='$(xml_escape "$dir/$name-console.log")' append='off'/>
      <target port='0'/>
    </serial>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
EOF
  if [ "$second" = 1 ]; then
    cat <<EOF
    <channel type='unix'>
      <source mode='bind' path='$(xml_escape "$dir/$name-qga1.sock")'/>
      <target type='virtio' name='org.qemu.guest_agent.1'/>
    </channel>
EOF
  fi
  cat <<EOF
    <memballoon model='none'/>
  </devices>
</domain>
EOF
}

domain_exists() { virsh_ dominfo "$1" >/dev/null 2>&1; }
domain_state() { virsh_ domstate "$1" 2>/dev/null | head -n1; }

# libvirt records the agent channel's state in the status XML once the guest
# opens the port (state='connected').
agent_connected() {
  local status="/run/libvirt/qemu/$1.xml"
  grep -q "name='org\.qemu\.guest_agent\.0' state='connected'" "$status" 2>/dev/null
}

cmd_define() {
  [ $# -ge 1 ] || die "usage: $0 define NAME [--second-channel] [--defined-only] [--transient] [--noagent] [--kernel-args ARGS] [--timeout S]"
  local name="$1"; shift
  local second=0 defined_only=0 transient=0 noagent=0 kargs="" timeout=90
  while [ $# -gt 0 ]; do
    case "$1" in
      --second-channel) second=1 ;;
      --defined-only) defined_only=1 ;;
      --transient) transient=1 ;;
      --noagent) noagent=1 ;;
      --kernel-args) [ $# -ge 2 ] || die "--kernel-args needs a value"; kargs="$2"; shift ;;
      --timeout) [ $# -ge 2 ] || die "--timeout needs a value"; timeout="$2"; shift ;;
      *) die "unknown option $1" ;;
    esac
    shift
  done
  [ "$transient$defined_only" != 11 ] || die "--transient and --defined-only exclude each other"
  case "$name" in
    ''|*/*|.*) die "bad domain name '$name'" ;;
  esac
  require_daemon
  domain_exists "$name" && die "domain $name exists, run: $0 undefine $name"

  stage_images
  local cmdline="console=ttyS0 panic=-1 quiet"
  [ "$noagent" = 0 ] || cmdline="$cmdline virtomate.noagent"
  [ -z "$kargs" ] || cmdline="$cmdline $kargs"
  local xml="$dir/$name.xml" console="$dir/$name-console.log"
  domain_xml "$name" "$second" "$cmdline" >"$xml"
  rm -f "$console" "$dir/$name-qga1.sock"

  local t0 t1 t2
  t0="$(now_ms)"
  if [ "$transient" = 1 ]; then
    virsh_ create "$xml" >/dev/null
  else
    virsh_ define "$xml" >/dev/null
    grep -qxF "$name" "$dir/domains" 2>/dev/null || echo "$name" >>"$dir/domains"
    if [ "$defined_only" = 1 ]; then
      log "defined $name (not started)"
      return 0
    fi
    virsh_ start "$name" >/dev/null
  fi
  t1="$(now_ms)"

  local deadline=$((t0 + timeout * 1000))
  until grep -qF "$ready_line" "$console" 2>/dev/null; do
    if [ "$(domain_state "$name")" != running ]; then
      tail -n 30 "$console" >&2 2>/dev/null || true
      die "domain $name is $(domain_state "$name" || echo gone) before it was ready"
    fi
    if [ "$(now_ms)" -ge "$deadline" ]; then
      tail -n 30 "$console" >&2 2>/dev/null || true
      die "domain $name not ready within ${timeout}s"
    fi
    sleep 0.2
  done
  t2="$(now_ms)"
  local agent_note=", no agent"
  if [ "$noagent" = 0 ]; then
    until agent_connected "$name"; do
      if [ "$(now_ms)" -ge "$deadline" ]; then
        die "libvirt did not see the guest agent of $name connect within ${timeout}s"
      fi
      sleep 0.1
    done
    agent_note=", agent connected after $(($(now_ms) - t0)) ms"
  fi
  log "domain $name running: started in $((t1 - t0)) ms, ready after $((t2 - t0)) ms$agent_note"
}

undefine_domain() {
  local name="$1"
  if domain_exists "$name"; then
    if [ "$(domain_state "$name")" != "shut off" ]; then
      virsh_ destroy "$name" >/dev/null 2>&1 || true
    fi
    # A transient domain vanishes with destroy.
    if domain_exists "$name"; then
      virsh_ undefine "$name" >/dev/null
    fi
  fi
  if [ -f "$dir/domains" ]; then
    grep -vxF "$name" "$dir/domains" >"$dir/domains.tmp" || true
    mv -f "$dir/domains.tmp" "$dir/domains"
  fi
  rm -f "$dir/$name-qga1.sock"
}

cmd_undefine() {
  [ $# -eq 1 ] || die "usage: $0 undefine NAME"
  resolve_dir ""
  if ! connect_works; then
    log "libvirtd not running, nothing to undefine"
    return 0
  fi
  undefine_domain "$1"
}

stop_pid() {
  local pid="$1" exe="$2" what="$3" i
  alive_as "$pid" "$exe" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do
    alive "$pid" || { log "stopped $what (pid $pid)"; return 0; }
    sleep 0.1
  done
  log "$what (pid $pid) ignored SIGTERM, killing it"
  kill -KILL "$pid" 2>/dev/null || true
}

cmd_stop() {
  [ $# -eq 0 ] || die "usage: $0 stop"
  resolve_dir ""
  local mode name
  mode="$(cat "$dir/mode" 2>/dev/null || echo none)"
  if connect_works; then
    if [ "$mode" = foreign ]; then
      # Not our daemon: only remove what `define` created.
      while read -r name; do
        [ -z "$name" ] || undefine_domain "$name"
      done < <(cat "$dir/domains" 2>/dev/null || true)
    else
      while read -r name; do
        [ -z "$name" ] || virsh_ destroy "$name" >/dev/null 2>&1 || true
      done < <(virsh_ list --name 2>/dev/null || true)
      while read -r name; do
        [ -z "$name" ] || undefine_domain "$name"
      done < <(cat "$dir/domains" 2>/dev/null || true)
    fi
  fi
  stop_pid "$(libvirtd_pid)" /usr/sbin/libvirtd libvirtd
  stop_pid "$(virtlogd_pid)" /usr/sbin/virtlogd virtlogd
  rm -f "$dir/libvirtd.pid" "$dir/virtlogd.pid"
}

cmd_stop_daemons() {
  [ $# -eq 0 ] || die "usage: $0 stop-daemons"
  resolve_dir ""
  stop_pid "$(libvirtd_pid)" /usr/sbin/libvirtd libvirtd
  stop_pid "$(virtlogd_pid)" /usr/sbin/virtlogd virtlogd
  rm -f "$dir/libvirtd.pid" "$dir/virtlogd.pid"
}

cmd_status() {
  resolve_dir ""
  echo "dir: $dir"
  echo "mode: $(cat "$dir/mode" 2>/dev/null || echo none)"
  echo "libvirtd: $(ours_running && libvirtd_pid || echo 'not running (ours)')"
  echo "virtlogd: $(alive_as "$(virtlogd_pid)" /usr/sbin/virtlogd && virtlogd_pid || echo 'not running (ours)')"
  if connect_works; then virsh_ list --all; fi
}

[ $# -ge 1 ] || die "usage: $0 start [DIR] | define NAME [options] | undefine NAME | stop | stop-daemons | status"
cmd="$1"; shift
case "$cmd" in
  start) cmd_start "$@" ;;
  define) cmd_define "$@" ;;
  undefine) cmd_undefine "$@" ;;
  stop) cmd_stop "$@" ;;
  stop-daemons) cmd_stop_daemons "$@" ;;
  status) cmd_status "$@" ;;
  *) die "unknown command $cmd" ;;
esac
