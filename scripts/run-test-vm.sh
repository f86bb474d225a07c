#!/usr/bin/env bash
# Boots the test VM built by build-test-vm.sh and waits until its init says
# it is ready.
#
# Usage: scripts/run-test-vm.sh DIR
#   DIR receives the runtime files: qga.sock (guest agent, port
#   org.qemu.guest_agent.0), qmp.sock, console.log, qemu.pid and, with
#   EXTRA_AGENT_PORT=1, qga1.sock (port org.qemu.guest_agent.1).
#
# Environment:
#   VM_ARTIFACTS       directory with vmlinuz and initramfs.gz
#                      (default: target/test-vm in the repository root);
#                      when it also holds rootfs.img (the Python VM of
#                      scripts/build-python-vm.sh), that disk is attached on
#                      virtio-blk with snapshot=on: the VM's writes go to a
#                      throw-away copy, so several VMs boot from one image
#   VM_NAME            QEMU -name (default: virtomate-test)
#   EXTRA_AGENT_PORT   1 adds a second guest agent port
#   KERNEL_EXTRA_ARGS  appended to the kernel command line
#                      (e.g. virtomate.noagent)
#   VM_REBOOT          1 lets the guest reboot (QEMU resets it) instead of
#                      QEMU exiting when the guest reboots (-no-reboot)
#   VM_BOOT_TIMEOUT    seconds to wait for the VM (default: 90)
#   VM_WAIT_READY      0 returns as soon as QEMU runs, before the guest is up
#   VM_MEMORY          guest RAM in MiB (default: 256, 512 with rootfs.img;
#                      the agent needs about 4x the size of a big --stdin
#                      payload)
#
# Stop the VM with scripts/stop-test-vm.sh DIR.
set -euo pipefail

script_dir="$(cd "$(dirname "$0")" && pwd)"
repo_root="$(cd "$script_dir/.." && pwd)"

die() { echo "run-test-vm: error: $*" >&2; exit 1; }

# True while the process runs; an exited one may linger as a zombie until
# its parent (init, after -daemonize) reaps it.
alive() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [ "${stat%% *}" != Z ]
}

[ $# -eq 1 ] || die "usage: $0 DIR"
dir="$1"
artifacts="${VM_ARTIFACTS:-$repo_root/target/test-vm}"
timeout="${VM_BOOT_TIMEOUT:-90}"
ready_line="virtomate-test-vm: ready"

for f in vmlinuz initramfs.gz; do
  [ -f "$artifacts/$f" ] || die "$artifacts/$f missing, run scripts/build-test-vm.sh first"
done
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not installed, run scripts/install-deps.sh"

mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

pidfile="$dir/qemu.pid"
if [ -f "$pidfile" ] && alive "$(tr -dc '0-9' <"$pidfile")"; then
  die "a VM is already running from $dir (pid $(cat "$pidfile")), stop it first"
fi
rm -f "$pidfile" "$dir/qga.sock" "$dir/qga1.sock" "$dir/qmp.sock" "$dir/console.log"

append="console=ttyS0 panic=-1 quiet"
if [ -n "${KERNEL_EXTRA_ARGS:-}" ]; then
  append="$append $KERNEL_EXTRA_ARGS"
fi

memory=256
if [ -f "$artifacts/rootfs.img" ]; then
  memory=512
fi

args=(
  -name "${VM_NAME:-virtomate-test}"
  -accel tcg
  -m "${VM_MEMORY:-$memory}"
  -smp 1
  -nodefaults
  -display none
  -kernel "$artifacts/vmlinuz"
  -initrd "$artifacts/initramfs.gz"
  -append "$append"
  -serial "file:$dir/console.log"
  -qmp "unix:$dir/qmp.sock,server=on,wait=off"
  -device virtio-serial
  -chardev "socket,path=$dir/qga.sock,server=on,wait=off,id=qga0"
  -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0
)
if [ "${VM_REBOOT:-}" != 1 ]; then
  args+=(-no-reboot)
fi
if [ -f "$artifacts/rootfs.img" ]; then
  args+=(-drive "file=$artifacts/rootfs.img,if=virtio,format=raw,snapshot=on")
fi
if [ "${EXTRA_AGENT_PORT:-}" = 1 ]; then
  args+=(
    -chardev "socket,path=$dir/qga1.sock,server=on,wait=off,id=qga1"
    -device virtserialport,chardev=qga1,name=org.qemu.guest_agent.1
  )
fi
args+=(-pidfile "$pidfile" -daemonize)

# -daemonize returns once the sockets are listening and the pid file written.
if ! qemu-system-x86_64 "${args[@]}" </dev/null >"$dir/qemu.stderr" 2>&1; then
  cat "$dir/qemu.stderr" >&2
  die "qemu-system-x86_64 failed to start"
fi
pid="$(cat "$pidfile")"
if [ "${VM_WAIT_READY:-1}" = 0 ]; then
  exit 0
fi

fail() {
  echo "run-test-vm: error: $*" >&2
  if [ -s "$dir/console.log" ]; then
    echo "--- last lines of $dir/console.log ---" >&2
    tail -n 30 "$dir/console.log" >&2
  fi
  if [ -s "$dir/qemu.stderr" ]; then
    echo "--- $dir/qemu.stderr ---" >&2
    tail -n 30 "$dir/qemu.stderr" >&2
  fi
  "$script_dir/stop-test-vm.sh" "$dir" >/dev/null 2>&1 || true
  exit 1
}

now_ms() {
  local t="${EPOCHREALTIME/[.,]/}"
  echo $((t / 1000))
}
deadline=$(($(now_ms) + timeout * 1000))
while ! grep -qF "$ready_line" "$dir/console.log" 2>/dev/null; do
  alive "$pid" || fail "qemu (pid $pid) exited before the VM was ready"
  [ "$(now_ms)" -lt "$deadline" ] || fail "VM not ready within ${timeout}s"
  sleep 0.2
done
