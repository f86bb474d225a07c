#!/usr/bin/env bash
# Figures for the Ansible connection plugin (virtomate.guest.virtomate) on
# one Python test VM under TCG: a 20-task playbook (`command: /bin/true`)
# per task, through one `virtomate guest-run` per command (pipelined and
# not) and through the host's persistent `virtomate session` (when the
# binary has it; the plugin's default), with the ratio, and the
# guest's own Python start-up, which bounds what any connection can do:
# each module task starts Python in the guest at least once.
#
# Environment: PYTHON_VM_ARTIFACTS, VIRTOMATE as for scripts/test-ansible.sh.
# Under TCG on a shared machine the figures move with the host's load: the
# modes run one after the other, so compare them within one run only.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

scripts/install-deps.sh >&2
scripts/build-test-vm.sh >&2
if [ -z "${PYTHON_VM_ARTIFACTS:-}" ]; then
  if [ "$(id -u)" -eq 0 ]; then
    PYTHON_VM_ARTIFACTS=/var/cache/virtomate-test/python-vm
  else
    PYTHON_VM_ARTIFACTS="$repo/target/python-vm"
  fi
fi
scripts/build-python-vm.sh "$PYTHON_VM_ARTIFACTS" >&2
venv="$(scripts/ansible-venv.sh)"
if [ -z "${VIRTOMATE:-}" ]; then
  cargo build --locked --quiet --release --bin virtomate
  VIRTOMATE="$repo/target/release/virtomate"
fi

work="$(mktemp -d /tmp/virtomate-bench-ansible.XXXXXX)"
trap 'scripts/stop-test-vm.sh "$work/vm" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
name="virtomate-bench-ansible-$$"
VM_NAME="$name" VM_ARTIFACTS="$PYTHON_VM_ARTIFACTS" scripts/run-test-vm.sh "$work/vm"

echo "== Ansible through virtomate.guest.virtomate, Python test VM (TCG), $(nproc) host cores, load $(cut -d' ' -f1 /proc/loadavg)"

# The guest's own floor: a program, and Python, started by the agent and
# timed inside the guest.
"$VIRTOMATE" guest-run "$name" -- /bin/sh -c '
  ms() { echo $(($(date +%s%N) / 1000000)); }
  for what in /bin/true "python3 -c pass" "python3 -S -c pass"; do
    for i in 1 2 3 4 5 6 7; do s=$(ms); $what; echo "$what $(($(ms) - s))"; done
  done' | "$venv/bin/python" -c '
import json, statistics, sys
res = json.load(sys.stdin)
times = {}
for line in res["stdout"].splitlines():
    what, ms = line.rsplit(" ", 1)
    times.setdefault(what, []).append(int(ms))
for what, ms in times.items():
    print("guest: %-36s median %4d ms (7 runs, timed in the guest, with a date process)" % (what, statistics.median(ms)))
# /bin/true carries the cost of starting any program (and of `date`).
print("guest: Python start-up beyond /bin/true:    %4d ms" % (statistics.median(times["python3 -c pass"]) - statistics.median(times["/bin/true"])))
'
t0=$EPOCHREALTIME
for _ in 1 2 3 4 5 6 7 8 9 10; do "$VIRTOMATE" guest-run "$name" -- /bin/true >/dev/null; done
echo "host:  virtomate guest-run /bin/true, mean of 10: $(awk "BEGIN { printf \"%.0f\", ($EPOCHREALTIME - $t0) * 100 }") ms"

export ANSIBLE_COLLECTIONS_PATH="$repo/contrib/ansible"
export ANSIBLE_CALLBACK_PLUGINS="$repo/tests/ansible/callback_plugins"
export ANSIBLE_STDOUT_CALLBACK=results_json
export ANSIBLE_LOCAL_TEMP="$work/ansible-local"
printf '%s ansible_connection=virtomate.guest.virtomate ansible_virtomate_path=%s ansible_python_interpreter=/usr/bin/python3\n' \
  "$name" "$VIRTOMATE" >"$work/inventory.ini"

bench() { # LABEL ENV...: prints a line and sets $median (seconds per task)
  local label="$1" t0 wall
  shift
  t0=$EPOCHREALTIME
  env "$@" "$venv/bin/ansible-playbook" -i "$work/inventory.ini" tests/ansible/bench.yml >"$work/out.json" 2>"$work/err"
  wall="$(awk "BEGIN { print $EPOCHREALTIME - $t0 }")"
  "$venv/bin/python" tests/ansible/bench_summary.py "$label" "$work/out.json" "$wall" | tee "$work/summary"
  median="$(sed -n 's/.*median \([0-9.]*\) s.*/\1/p' "$work/summary")"
}

# The session helpers' sockets, removed at the end (the helpers then go).
export ANSIBLE_VIRTOMATE_CONTROL_PATH_DIR="$work/cp"
bench "guest-run per command, pipelined:" ANSIBLE_PIPELINING=True ANSIBLE_VIRTOMATE_USE_SESSION=never
guest_run=$median
bench "guest-run per command, not pipelined:" ANSIBLE_PIPELINING=False ANSIBLE_VIRTOMATE_USE_SESSION=never
if "$VIRTOMATE" --help | grep -q '^  session '; then
  # The first run starts the host's session helper, the second finds it.
  bench "session (helper started), pipelined:" ANSIBLE_PIPELINING=True ANSIBLE_VIRTOMATE_USE_SESSION=always
  bench "session (helper kept), pipelined:" ANSIBLE_PIPELINING=True ANSIBLE_VIRTOMATE_USE_SESSION=always
  session=$median
  bench "session (helper kept), not pipelined:" ANSIBLE_PIPELINING=False ANSIBLE_VIRTOMATE_USE_SESSION=always
  awk "BEGIN { printf \"per task, pipelined: session %.2f s, guest-run %.2f s, session/guest-run %.2f\n\", $session, $guest_run, $session / $guest_run }"
else
  echo "session: not measured, this virtomate has no \`session\` command"
fi
