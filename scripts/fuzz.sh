#!/usr/bin/env bash
# Fuzzes the protocol crate's handling of untrusted input (agent output,
# libvirtd's replies) with cargo-fuzz (libFuzzer, nightly toolchain,
# AddressSanitizer, debug assertions and overflow checks on).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Runs each TARGET (default: all of `cargo fuzz list`) for SECONDS
# (default 60), then prints how many inputs it executed and whether it found
# a crash. Installs cargo-fuzz first when it is missing.
#
# Layout of fuzz/:
#   seeds/<target>/      hand-written inputs, committed
#   corpus/<target>/     working corpus, gitignored: the seeds are copied in
#                        before each run and libFuzzer adds what it finds
#   logs/<target>.log    libFuzzer's output of the last run, gitignored
#   artifacts/<target>/  crashing (crash-*), hanging (timeout-*) and
#                        memory-hungry (oom-*) inputs, gitignored; replay one
#                        with `cargo +nightly fuzz run <target> <file>`
#
# Exits 1 when any target found a problem.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-60}
shift || true
if ! [[ $seconds =~ ^[0-9]+$ ]] || ((seconds == 0)); then
    echo "usage: $0 [SECONDS] [TARGET...]" >&2
    exit 2
fi

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

if (($# > 0)); then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

mkdir -p logs
failed=()
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    if [[ -d seeds/$target ]]; then
        cp -n seeds/"$target"/* "corpus/$target/" 2>/dev/null || true
    fi
    before=$(find "artifacts/$target" -type f | sort)
    log="logs/$target.log"
    echo "== $target: ${seconds}s"
    status=0
    # Inputs up to 16 KiB, so lines beyond the 4 KiB bounds can occur.
    cargo +nightly fuzz run "$target" -- \
        -max_total_time="$seconds" -max_len=16384 -timeout=10 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    new=$(comm -13 <(echo "$before") <(find "artifacts/$target" -type f | sort))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
    echo "   executions: ${execs:-?}  exec/s: ${rate:-?}  corpus: $(find "corpus/$target" -type f | wc -l) inputs"
    if ((status != 0)) || [[ -n $new ]]; then
        failed+=("$target")
        echo "   FOUND A PROBLEM (exit status $status); log: fuzz/$log"
        grep -m5 -E "panicked at|ERROR: (libFuzzer|AddressSanitizer)|SUMMARY" "$log" | sed 's/^/   /' || true
        if [[ -n $new ]]; then
            sed 's/^/   artifact: fuzz\//' <<<"$new"
        fi
    else
        echo "   no crash"
    fi
done

if ((${#failed[@]} > 0)); then
    echo "problems found in: ${failed[*]}"
    exit 1
fi
echo "no problems found"
