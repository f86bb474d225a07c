#!/usr/bin/env bash
# Builds the small test VM the integration tests boot: a Debian cloud kernel
# and an initramfs with busybox, the virtio console modules and qemu-ga.
#
# Usage: scripts/build-test-vm.sh [OUTDIR]
#   OUTDIR defaults to target/test-vm in the repository root.
#   Produces OUTDIR/vmlinuz and OUTDIR/initramfs.gz (and OUTDIR/kernel-version).
#
# Environment:
#   VM_KERNEL_PACKAGE  Debian kernel image package to use instead of the one
#                      linux-image-cloud-amd64 depends on.
#
# Idempotent: when a stamp matching this script and the installed busybox and
# qemu-guest-agent versions exists, it does nothing.
set -euo pipefail

script_dir="$(cd "$(dirname "$0")" && pwd)"
repo_root="$(cd "$script_dir/.." && pwd)"
outdir="${1:-$repo_root/target/test-vm}"

log() { echo "build-test-vm: $*" >&2; }
die() { log "error: $*"; exit 1; }

"$script_dir/install-deps.sh" </dev/null

mkdir -p "$outdir"
outdir="$(cd "$outdir" && pwd)"

# Serialise concurrent builds into the same OUTDIR (e.g. parallel tests).
exec 9>"$outdir/.lock"
flock 9

pkg_version() { dpkg-query -W -f='${Version}' "$1"; }

stamp_file="$outdir/.stamp"
stamp="script=$(sha256sum "$script_dir/build-test-vm.sh" | cut -d' ' -f1)
busybox-static=$(pkg_version busybox-static)
qemu-guest-agent=$(pkg_version qemu-guest-agent)
kernel-override=${VM_KERNEL_PACKAGE:-}"

if [ -f "$stamp_file" ] && [ -f "$outdir/vmlinuz" ] && [ -f "$outdir/initramfs.gz" ] \
  && [ "$(cat "$stamp_file")" = "$stamp" ]; then
  exit 0
fi
rm -f "$stamp_file"

export DEBIAN_FRONTEND=noninteractive

# --- Kernel package -------------------------------------------------------

resolve_kernel_package() {
  apt-cache depends linux-image-cloud-amd64 2>/dev/null \
    | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' | head -n1
}

kernel_pkg="${VM_KERNEL_PACKAGE:-}"
if [ -z "$kernel_pkg" ]; then
  kernel_pkg="$(resolve_kernel_package)"
  if [ -z "$kernel_pkg" ]; then
    log "package lists lack linux-image-cloud-amd64, running apt-get update"
    apt-get update -q >&2
    kernel_pkg="$(resolve_kernel_package)"
  fi
  [ -n "$kernel_pkg" ] || die "cannot resolve the package linux-image-cloud-amd64 depends on"
fi

candidate_version() {
  apt-cache show --no-all-versions "$1" 2>/dev/null | sed -n 's/^Version: //p' | head -n1
}
kernel_version="$(candidate_version "$kernel_pkg")"
if [ -z "$kernel_version" ]; then
  apt-get update -q >&2
  kernel_version="$(candidate_version "$kernel_pkg")"
fi
[ -n "$kernel_version" ] || die "no installable version of $kernel_pkg"

cache_dir="$outdir/cache"
mkdir -p "$cache_dir"
deb="$cache_dir/${kernel_pkg}_${kernel_version}_amd64.deb"

apt_opts=()
if [ "$(id -u)" -eq 0 ]; then
  # apt's _apt sandbox user may not be allowed to write into the cache dir.
  apt_opts+=(-o APT::Sandbox::User=root)
fi

download_kernel() {
  local tmp
  tmp="$(mktemp -d "$cache_dir/download.XXXXXX")"
  if (cd "$tmp" && apt-get "${apt_opts[@]}" download -q "$kernel_pkg=$kernel_version" >&2); then
    mv "$tmp"/*.deb "$deb"
    rm -rf "$tmp"
    return 0
  fi
  rm -rf "$tmp"
  return 1
}

if [ ! -f "$deb" ]; then
  log "downloading $kernel_pkg $kernel_version"
  if ! download_kernel; then
    log "download failed, refreshing package lists and retrying"
    apt-get update -q >&2
    kernel_version="$(candidate_version "$kernel_pkg")"
    deb="$cache_dir/${kernel_pkg}_${kernel_version}_amd64.deb"
    download_kernel || die "cannot download $kernel_pkg"
  fi
fi
# Drop older cached kernel packages.
find "$cache_dir" -maxdepth 1 -name '*.deb' ! -path "$deb" -delete

# --- Work tree ------------------------------------------------------------

work="$(mktemp -d "$outdir/build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

kx="$work/kernel"
dpkg -x "$deb" "$kx"

vmlinuz="$(find "$kx/boot" -maxdepth 1 -name 'vmlinuz-*' | head -n1)"
config="$(find "$kx/boot" -maxdepth 1 -name 'config-*' | head -n1)"
[ -n "$vmlinuz" ] || die "no vmlinuz in $kernel_pkg"
moddir=
for d in "$kx"/lib/modules/* "$kx"/usr/lib/modules/*; do
  if [ -d "$d/kernel" ]; then moddir="$d"; break; fi
done
[ -n "$moddir" ] || die "no module directory in $kernel_pkg"
kver="$(basename "$moddir")"

root="$work/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib/modules,lib64,dev,proc,sys,run,tmp,etc,root,var}
ln -s ../run "$root/var/run"

# --- Modules --------------------------------------------------------------

# Module name and the config symbol that builds it in.
modules=(
  "virtio_ring CONFIG_VIRTIO"
  "virtio CONFIG_VIRTIO"
  "virtio_pci_modern_dev CONFIG_VIRTIO_PCI_LIB"
  "virtio_pci_legacy_dev CONFIG_VIRTIO_PCI_LIB_LEGACY"
  "virtio_pci CONFIG_VIRTIO_PCI"
  "virtio_console CONFIG_VIRTIO_CONSOLE"
  "brd CONFIG_BLK_DEV_RAM"
)

modlist="$root/lib/modules/load-order"
: >"$modlist"
for entry in "${modules[@]}"; do
  read -r mod sym <<<"$entry"
  src="$(find "$moddir/kernel" -name "$mod.ko" -o -name "$mod.ko.xz" -o -name "$mod.ko.zst" -o -name "$mod.ko.gz" | head -n1)"
  if [ -z "$src" ]; then
    if grep -q "/$mod\.ko\$" "$moddir/modules.builtin" 2>/dev/null \
      || { [ -n "$config" ] && grep -qx "$sym=y" "$config"; }; then
      log "$mod is built into the kernel"
      continue
    fi
    die "module $mod neither found nor built in"
  fi
  dst="$root/lib/modules/$mod.ko"
  case "$src" in
    *.ko.xz) xz -dc "$src" >"$dst" ;;
    *.ko.zst) zstd -q -dc "$src" >"$dst" ;;
    *.ko.gz) gzip -dc "$src" >"$dst" ;;
    *) cp "$src" "$dst" ;;
  esac
  echo "$mod" >>"$modlist"
done

# --- busybox --------------------------------------------------------------

busybox=/bin/busybox
[ -x "$busybox" ] || busybox="$(command -v busybox)"
cp "$busybox" "$root/bin/busybox"
"$busybox" --list-full | while read -r applet; do
  [ -n "$applet" ] || continue
  if [ -e "$root/$applet" ] || [ -L "$root/$applet" ]; then continue; fi
  mkdir -p "$root/$(dirname "$applet")"
  ln -s /bin/busybox "$root/$applet"
done
for needed in sh echo cat wc env true kill sleep head base64 dd yes insmod mount printf poweroff reboot halt \
  mke2fs fsfreeze setsid; do
  [ -n "$(find "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin" -maxdepth 1 -name "$needed")" ] \
    || die "busybox lacks the applet $needed"
done

# Tests run `/usr/bin/env bash -c ...`; busybox sh is good enough for them.
rm -f "$root/bin/bash"
cat >"$root/bin/bash" <<'EOF'
#!/bin/sh
exec /bin/sh "$@"
EOF
chmod 755 "$root/bin/bash"

# qemu-ga's guest-shutdown runs `/sbin/shutdown -h -P|-H|-r +0 MESSAGE` and
# waits for it. Like the real one, this returns at once and the guest goes
# down a moment later, once qemu-ga has had the chance to answer (it does
# not, on success).
rm -f "$root/sbin/shutdown"
cat >"$root/sbin/shutdown" <<'EOF'
#!/bin/sh
action=poweroff
for arg in "$@"; do
  case "$arg" in
    -r) action=reboot ;;
    -H) action=halt ;;
  esac
done
echo "virtomate-test-vm: shutdown: $action" >/dev/console
(sleep 0.5; sync; "$action" -f) </dev/null >/dev/null 2>&1 &
exit 0
EOF
chmod 755 "$root/sbin/shutdown"

# --- qemu-ga and its libraries ---------------------------------------------

qga=/usr/sbin/qemu-ga
[ -x "$qga" ] || die "$qga missing"
cp "$qga" "$root/usr/sbin/qemu-ga"

copy_lib() {
  local path="$1"
  mkdir -p "$root/$(dirname "$path")"
  [ -e "$root/$path" ] || cp -L "$path" "$root/$path"
}
while read -r line; do
  case "$line" in
    *"=> not found"*) die "qemu-ga: $line" ;;
    *"=> /"*) copy_lib "$(echo "$line" | sed 's/.*=> \(\/[^ ]*\).*/\1/')" ;;
    /*) copy_lib "${line%% *}" ;;
  esac
done < <(ldd "$qga")

# --- init -----------------------------------------------------------------

cat >"$root/init" <<'EOF'
#!/bin/sh
# PID 1 of the virtomate test VM.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root

mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /run /tmp

while read -r mod; do
  case "$mod" in
    # One 8 MiB RAM disk: a block device for a file system to freeze.
    brd) params="rd_nr=1 rd_size=8192" ;;
    *) params= ;;
  esac
  # shellcheck disable=SC2086
  insmod "/lib/modules/$mod.ko" $params || echo "virtomate-test-vm: insmod $mod failed"
done </lib/modules/load-order

# Something for guest-fsfreeze-freeze to freeze: the agent skips the
# initramfs (no block device), so an ext2 file system on the RAM disk.
mkdir -p /mnt/freeze
if [ -b /dev/ram0 ] && mke2fs -q /dev/ram0 && mount -t ext2 /dev/ram0 /mnt/freeze; then
  :
else
  echo "virtomate-test-vm: no file system to freeze at /mnt/freeze"
fi

# Wait for the virtio serial ports to show up.
i=0
while [ $i -lt 100 ]; do
  set -- /sys/class/virtio-ports/vport*
  [ -e "$1" ] && break
  sleep 0.1
  i=$((i + 1))
done
# Ports of one device appear together, give late ones a moment anyway.
sleep 0.2

mkdir -p /dev/virtio-ports
for port in /sys/class/virtio-ports/vport*; do
  [ -e "$port/name" ] || continue
  name=$(cat "$port/name")
  [ -n "$name" ] || continue
  ln -sf "/dev/${port##*/}" "/dev/virtio-ports/$name"
done

noagent=
for arg in $(cat /proc/cmdline); do
  [ "$arg" = virtomate.noagent ] && noagent=1
done

if [ -z "$noagent" ]; then
  n=0
  for dev in /dev/virtio-ports/org.qemu.guest_agent.*; do
    [ -e "$dev" ] || continue
    mkdir -p "/run/qga-$n"
    qemu-ga -m virtio-serial -p "$dev" -t "/run/qga-$n" -f "/run/qga-$n/qemu-ga.pid" &
    n=$((n + 1))
  done
fi

echo "virtomate-test-vm: ready"

# Stay alive as PID 1 and reap whatever gets orphaned.
while true; do
  wait
  sleep 1
done
EOF
chmod 755 "$root/init"

# --- Pack -----------------------------------------------------------------

# Fixed timestamps, order and inode numbers keep the archive reproducible.
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z \
  | cpio --null -o -H newc --owner=0:0 --reproducible --quiet) | gzip -n -6 >"$work/initramfs.gz"
cp "$vmlinuz" "$work/vmlinuz"

mv -f "$work/vmlinuz" "$outdir/vmlinuz"
mv -f "$work/initramfs.gz" "$outdir/initramfs.gz"
echo "$kernel_pkg $kernel_version $kver" >"$outdir/kernel-version"
printf '%s\n' "$stamp" >"$stamp_file"
log "built $outdir (kernel $kernel_pkg $kernel_version)"
