#!/usr/bin/env bash
# Benchmark: whole `virtomate guest-run` processes against the protocol
# floor, on the test VM and on the host agent, plus big-payload throughput.
# Prints figures; BENCH_RUNS sets the runs per figure (default 30); benches/copy.rs
# reads its sizes from BENCH_COPY_*_MIB. Then scripts/bench-ansible.sh: the
# Ansible connection plugin, per task, beside community.libvirt.libvirt_qemu.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
scripts/build-test-vm.sh
# The whole-process figures are those of the binary virtomate ships:
# static, which starts about half a millisecond sooner than cargo's
# dynamic build (the benches say which binary they ran).
VIRTOMATE_BIN="$(scripts/build-static.sh)"
export VIRTOMATE_BIN
cargo bench --locked --bench guest_run
cargo bench --locked --bench run_options
cargo bench --locked --bench parallel
cargo bench --locked --bench copy
cargo bench --locked --bench follow
cargo bench --locked --bench master
cargo bench --locked --bench interactive
# The Ansible connection plugin on the Python test VM.
scripts/bench-ansible.sh
