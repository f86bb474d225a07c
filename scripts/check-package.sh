#!/usr/bin/env bash
# Checks the package scripts/package.sh built (target/package/virtomate)
# where it is meant to run: from an empty root, a chroot holding only the
# binary, /proc and the test VM's agent socket, where `guest-ping`,
# `guest-run` and `domain-list` must work — nothing to load there, no
# /etc, no /dev.
#
# Needs root (chroot, mount) and the test VM built by build-test-vm.sh
# (VM_ARTIFACTS as for run-test-vm.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

die() { echo "check-package: error: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root: the check runs the binary in a chroot"
out="$repo/target/package"
[ -x "$out/virtomate" ] || die "$out/virtomate missing: run scripts/package.sh first"

echo "check-package: running it from an empty root against the test VM"
work="$(mktemp -d /tmp/virtomate-package.XXXXXX)"
vm="$work/vm"
root="$work/root"
cleanup() {
  "$repo/scripts/stop-test-vm.sh" "$vm" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
VM_NAME="virtomate-package-$$" "$repo/scripts/run-test-vm.sh" "$vm"

mkdir -p "$root/proc"
cp "$out/virtomate" "$root/virtomate"
: >"$root/qga.sock"
# In a mount namespace of its own: the mounts go away with it, whatever
# happens. The socket is bind-mounted onto an empty file of the same name.
unshare --mount --propagation private bash -euo pipefail -c '
  root="$1" socket="$2" vm_name="$3"
  mount -t proc proc "$root/proc"
  mount --bind "$socket" "$root/qga.sock"
  echo "check-package: the empty root holds: $(cd "$root" && find . -mindepth 1 -maxdepth 1 | sort | tr "\n" " ")"
  echo "+ chroot ROOT /virtomate guest-ping --wait 60 /qga.sock"
  chroot "$root" /virtomate guest-ping --wait 60 /qga.sock
  echo "exit status 0"
  echo "+ chroot ROOT /virtomate guest-run /qga.sock -- /bin/echo -n static"
  output="$(chroot "$root" /virtomate guest-run /qga.sock -- /bin/echo -n static)"
  echo "$output"
  [ "$output" = "{\"exit_code\":0,\"signal\":null,\"stderr\":null,\"stderr_truncated\":false,\"stdout\":\"static\",\"stdout_truncated\":false}" ]
  echo "+ chroot ROOT /virtomate domain-list"
  list="$(chroot "$root" /virtomate domain-list)"
  echo "$list"
  case "$list" in
    *"\"name\":\"$vm_name\""*) ;;
    *) echo "check-package: error: domain-list does not show $vm_name" >&2; exit 1 ;;
  esac
' bash "$root" "$vm/qga.sock" "virtomate-package-$$"

echo "check-package: passed"
