#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: system packages, the
# test VMs (busybox, and Python with rsync), then formatting, lints and every test (unit, doc, real host
# agent, real VM, libvirtd, fake agent). Tests that need more than Rust are
# #[ignore]d, so that a plain `cargo test` leaves them out; here
# --include-ignored runs them too, and those of tests/ fail, not skip, when
# what they need is missing. Then scripts/package.sh builds the static
# binary for minimal hosts (a minute or two more: a cold release build
# with LTO), scripts/check-package.sh runs it in a chroot against the test
# VM, scripts/check-pod.sh in a mount namespace holding only it, /proc and
# the libvirt daemon's socket (a KubeVirt pod's view) against a libvirt
# domain, scripts/soak.sh runs 3 minutes of operations under faults
# (failing on any violation), and last the
# Ansible connection plugin runs against two Python test VMs and the
# busybox VM (scripts/test-ansible.sh): these two with the packaged binary.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
scripts/build-test-vm.sh
# The Python VM, for tests/rsync.rs (and scripts/test-ansible.sh): where
# that script builds it, unless PYTHON_VM_ARTIFACTS says otherwise.
if [ -z "${PYTHON_VM_ARTIFACTS:-}" ]; then
  if [ "$(id -u)" -eq 0 ]; then
    PYTHON_VM_ARTIFACTS=/var/cache/virtomate-test/python-vm
  else
    PYTHON_VM_ARTIFACTS="$PWD/target/python-vm"
  fi
fi
export PYTHON_VM_ARTIFACTS
scripts/build-python-vm.sh "$PYTHON_VM_ARTIFACTS"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The library's documentation builds without a broken link.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked -p virtomate-protocol
cargo test --workspace --locked -- --include-ignored
scripts/package.sh
scripts/check-package.sh
scripts/check-pod.sh
# The soak and Ansible run the binary users get (static, on musl where
# the target is installed), not cargo's debug build: the tests above ran
# that one.
VIRTOMATE="$PWD/target/package/virtomate" scripts/soak.sh 3
VIRTOMATE="$PWD/target/package/virtomate" scripts/test-ansible.sh
