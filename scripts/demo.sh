#!/usr/bin/env bash
# From a fresh Debian machine to a program run in a VM: installs the system
# packages, builds virtomate and the test VM, boots the VM, runs the
# specification's examples against it with guest-run, and stops the VM.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "demo: cargo not found; install Rust 1.80 or newer (https://rustup.rs) and run again" >&2
  exit 1
fi
scripts/install-deps.sh
cargo build --release --locked
scripts/build-test-vm.sh

vm_dir="$(mktemp -d)"
trap 'scripts/stop-test-vm.sh "$vm_dir"; rm -rf "$vm_dir"' EXIT
VM_NAME=demo-vm scripts/run-test-vm.sh "$vm_dir"

virtomate=target/release/virtomate
show() {
  printf '\n$'
  printf ' %q' "$@"
  printf '\n'
  "$@" || printf '(exit status %d)\n' "$?"
}
show "$virtomate" -p guest-run "$vm_dir/qga.sock" -- echo -n "Hello World"
show "$virtomate" -p guest-run --encode demo-vm -- echo -n "Hello World"
show "$virtomate" -p guest-run demo-vm -- cat /does/not/exist
show "$virtomate" -p guest-run demo-vm -- /does/not/exist
show "$virtomate" -p guest-run demo-vm -- /usr/bin/env bash -c 'printf "Hello World" | wc -m'
printf '\n$ printf "Hello World" | %s -p guest-run --stdin demo-vm -- wc -m\n' "$virtomate"
printf "Hello World" | "$virtomate" -p guest-run --stdin demo-vm -- wc -m
