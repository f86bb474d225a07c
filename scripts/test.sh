#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: system packages, the
# test VM, then formatting, lints and every test (unit, doc, real host
# agent, real VM, fake agent).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
scripts/build-test-vm.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
