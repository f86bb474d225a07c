#!/usr/bin/env bash
# Runs the static binary where a KubeVirt virt-launcher pod would run it:
# in a mount namespace whose root holds only the binary, /proc, an empty
# /tmp, the libvirt daemon's socket as /run/libvirt/virtqemud-sock and the
# daemon's status files (/run/libvirt/qemu, read-only), and checks there,
# by the domain's name: `domain-list`, `guest-run` (plain and --follow),
# `copy` in and out with --verify, and a `session` with a run, a ping and a
# copy_from. Nothing
# else is in that root: no /etc, no /dev, no agent channel socket, no
# libvirtd's own socket, so a success went through virtqemud's socket.
#
# The daemon: virtqemud, libvirt's modular QEMU daemon, where it runs
# (/run/libvirt/virtqemud-sock exists). Else libvirtd, started by
# scripts/libvirt-test-env.sh, whose socket speaks the same RPC protocol,
# bound at virtqemud's path: Debian 12's libvirt (9.0.0) ships no
# virtqemud, so that is what this machine checks.
#
# Usage: scripts/check-pod.sh            (the binary: target/package/virtomate,
#                                          or VIRTOMATE)
# Needs root (unshare, mount, chroot) and the test VM's image. Holds the
# libvirt tests' host-wide lock while it runs, as tests/libvirt.rs does.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
lvenv="$repo/scripts/libvirt-test-env.sh"
# The daemons it starts must not inherit the lock's descriptor (8), or they
# would hold the lock long after this run.
lvenv_() { "$lvenv" "$@" 8>&-; }

die() { echo "check-pod: error: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root: the check mounts and chroots"
binary="${VIRTOMATE:-$repo/target/package/virtomate}"
[ -x "$binary" ] || die "$binary missing: run scripts/package.sh first"
command -v jq >/dev/null || die "jq not installed, run scripts/install-deps.sh"

work="$(mktemp -d /tmp/virtomate-pod.XXXXXX)"
root="$work/root"
name="virtomate-pod-$$"
started_here=0 defined=0
cleanup() {
  [ "$defined" = 0 ] || lvenv_ undefine "$name" >/dev/null 2>&1 || true
  [ "$started_here" = 0 ] || lvenv_ stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

exec 8>/run/lock/virtomate-libvirt-tests.lock
flock -n 8 || { echo "check-pod: waiting for the libvirt tests' lock"; flock 8; }
if [ -S /run/libvirt/virtqemud-sock ]; then
  daemon=virtqemud socket=/run/libvirt/virtqemud-sock
else
  [ -n "$(lvenv_ status 2>/dev/null | sed -n 's/^libvirtd: \([0-9][0-9]*\)$/\1/p')" ] || started_here=1
  lvenv_ start
  daemon=libvirtd socket=/run/libvirt/libvirt-sock
fi
defined=1
lvenv_ define "$name" --transient --timeout 180
echo "check-pod: $daemon's socket as /run/libvirt/virtqemud-sock, domain $name"

mkdir -p "$root/proc" "$root/tmp" "$root/run/libvirt/qemu"
cp "$binary" "$root/virtomate"
: >"$root/run/libvirt/virtqemud-sock"
head -c 300000 /dev/urandom >"$root/tmp/in"
sessions_in='{"id":"r","run":["/bin/echo","-n","pod"]}
{"id":"p","ping":{}}
{"id":"g","copy_from":"/tmp/pod-in","verify":true}'

# In a mount namespace of its own: the mounts go away with it, whatever
# happens. Each file is bind-mounted onto an empty one of the same name.
# shellcheck disable=SC2016 # the inner bash expands these
unshare --mount --propagation private bash -euo pipefail -c '
  root="$1" socket="$2" name="$3" session_in="$4"
  mount -t proc proc "$root/proc"
  mount --bind "$socket" "$root/run/libvirt/virtqemud-sock"
  mount --bind /run/libvirt/qemu "$root/run/libvirt/qemu"
  mount -o remount,bind,ro "$root/run/libvirt/qemu"
  echo "check-pod: the root holds: $(cd "$root" && find . -mindepth 1 -maxdepth 3 -not -path "./proc/*" \
    -not -path "./run/libvirt/qemu/*" | sort | tr "\n" " ")"
  in_pod() { echo "+ chroot ROOT /virtomate $*" >&2; chroot "$root" /virtomate "$@"; }

  list="$(in_pod domain-list)"
  echo "$list" | jq -e --arg n "$name" "any(.[]; .name == \$n)" >/dev/null \
    || { echo "check-pod: error: domain-list does not show $name: $list" >&2; exit 1; }

  out="$(in_pod guest-run "$name" -- /bin/echo -n pod)"
  echo "$out"
  [ "$(echo "$out" | jq -c "[.exit_code, .stdout]")" = "[0,\"pod\"]" ]
  [ "$(in_pod guest-run --follow "$name" -- /bin/echo -n followed)" = followed ]

  in_pod copy --verify --no-progress /tmp/in "$name:/tmp/pod-in"
  in_pod copy --verify --no-progress "$name:/tmp/pod-in" /tmp/out
  cmp "$root/tmp/in" "$root/tmp/out"

  replies="$(printf "%s\n" "$session_in" | in_pod session "$name")"
  echo "$replies" | jq -c "del(.data)"
  [ "$(echo "$replies" | jq -r "select(.id == \"r\" and has(\"result\")) | .result.stdout")" = pod ]
  [ "$(echo "$replies" | jq -c "select(.id == \"p\") | .result")" = "{}" ]
  echo "$replies" | jq -r "select(.id == \"g\" and has(\"data\")) | .data" | base64 -d | cmp - "$root/tmp/in"
  [ "$(echo "$replies" | jq "select(.id == \"g\" and has(\"result\")) | .result.bytes")" = 300000 ]
' bash "$root" "$socket" "$name" "$sessions_in"

echo "check-pod: passed"
