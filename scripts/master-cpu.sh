#!/usr/bin/env bash
# Diagnostic, not a test: the CPU a control master spends per run, for
# comparing two builds of it side by side on a loaded machine, where the
# wall times of `cargo bench --bench master` drift more than the change.
#
#   scripts/master-cpu.sh [RUNS] BINARY...
#
# For each BINARY in turn (give them alternately, e.g. A B A B, to see
# the spread): a host `qemu-ga -m unix-listen` of its own, a master
# started by a first `guest-run`, then RUNS (default 200) fresh
# `guest-run SOCKET -- /bin/true` processes through it. Prints per run:
# the wall time, the master's CPU time (µs, all its threads' run time in
# /proc/PID/task/*/schedstat) and its context switches (/proc/PID/status).
# Needs qemu-ga (Debian: qemu-guest-agent) and python3.
set -euo pipefail

runs=200
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then
  runs="$1"
  shift
fi
[ "$#" -ge 1 ] || { echo "usage: $0 [RUNS] BINARY..." >&2; exit 2; }
command -v qemu-ga >/dev/null || { echo "$0: needs qemu-ga (apt-get install qemu-guest-agent)" >&2; exit 1; }

# The master's CPU time in ns and its context switches so far.
counters() {
  cat /proc/"$1"/task/*/schedstat | awk '{ ns += $1 } END { printf "%d ", ns }'
  awk '/ctxt_switches/ { n += $2 } END { print n }' /proc/"$1"/status
}

measure() {
  local bin="$1" dir agent master before after start end
  dir="$(mktemp -d)"
  mkdir "$dir/state"
  qemu-ga -m unix-listen -p "$dir/qga.sock" -t "$dir/state" >/dev/null 2>&1 &
  agent=$!
  # The values of now are the ones to clean up, on return or on an exit
  # that `set -e` makes on the way.
  # shellcheck disable=SC2064
  trap "kill $agent 2>/dev/null; rm -rf '$dir'" RETURN EXIT
  while [ ! -S "$dir/qga.sock" ]; do sleep 0.01; done
  export VIRTOMATE_PERSIST=60 XDG_RUNTIME_DIR="$dir"
  "$bin" guest-run "$dir/qga.sock" -- /bin/true >/dev/null
  master="$("$bin" control check "$dir/qga.sock" | python3 -c 'import json, sys; print(json.load(sys.stdin)["pid"])')"
  before="$(counters "$master")"
  start=$(date +%s%N)
  for _ in $(seq "$runs"); do "$bin" guest-run "$dir/qga.sock" -- /bin/true >/dev/null; done
  end=$(date +%s%N)
  after="$(counters "$master")"
  "$bin" control exit "$dir/qga.sock" >/dev/null
  echo "$before $after" | awk -v runs="$runs" -v bin="$bin" -v wall=$(((end - start) / runs / 1000)) '{
    printf "%s: wall %d µs/run, master CPU %.0f µs/run, %.1f context switches/run\n",
      bin, wall, ($3 - $1) / 1000 / runs, ($4 - $2) / runs
  }'
}

for bin in "$@"; do
  measure "$bin"
done
