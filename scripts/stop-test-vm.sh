#!/usr/bin/env bash
# Stops the test VM started by run-test-vm.sh DIR and removes its sockets.
# Idempotent: succeeds when the VM is not running.
#
# Usage: scripts/stop-test-vm.sh DIR
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
dir="$1"
pidfile="$dir/qemu.pid"

# Only signal the pid when it still is a QEMU process: pids get reused.
# A zombie whose threads have all exited (nobody reaped it yet) is as good as
# gone; a zombie leader with threads left is still exiting.
is_qemu() {
  local comm stat tasks
  comm="$(cat "/proc/$1/comm" 2>/dev/null)" || return 1
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  if [ "${stat%% *}" = Z ]; then
    tasks=("/proc/$1/task"/*)
    [ "${#tasks[@]}" -gt 1 ] || return 1
  fi
  case "$comm" in
    qemu-system-*|qemu-*) return 0 ;;
    *) return 1 ;;
  esac
}

if [ -f "$pidfile" ]; then
  pid="$(tr -dc '0-9' <"$pidfile")"
  if [ -n "$pid" ] && is_qemu "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      is_qemu "$pid" || break
      sleep 0.1
    done
    if is_qemu "$pid"; then
      kill -KILL "$pid" 2>/dev/null || true
      for _ in $(seq 20); do
        is_qemu "$pid" || break
        sleep 0.1
      done
    fi
  fi
  rm -f "$pidfile"
fi

rm -f "$dir/qga.sock" "$dir/qga1.sock" "$dir/qmp.sock"
