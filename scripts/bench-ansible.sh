#!/usr/bin/env bash
# Figures for the Ansible connection plugin (virtomate.guest.virtomate).
#
# 1. One Python test VM under TCG: a 20-task playbook (`command: /bin/true`)
#    per task, with a fresh `virtomate guest-run` per command that connects
#    to the agent itself (persist_seconds=0) and through virtomate's control
#    master (the default), pipelined and not, with the ratio; and the
#    guest's own Python start-up, which bounds what any connection can do:
#    each module task starts Python in the guest at least once.
# 2. The busybox test VM as a libvirt domain (scripts/libvirt-test-env.sh,
#    with a second agent channel that libvirt leaves alone), side by side
#    with community.libvirt.libvirt_qemu, which goes through libvirtd on the
#    first channel: per `raw: /bin/true` task above Ansible's own cost
#    (the same playbook with `-c local`), against a `virtomate session`'s
#    per-command time for the argv the plugin runs; and a `script` task
#    with a 2 MiB text script, whose time is mostly the file's transfer.
#    Three rounds, the plugins one after the other in each.
#
# Environment: PYTHON_VM_ARTIFACTS, VIRTOMATE as for scripts/test-ansible.sh
# (else VIRTOMATE_BIN, the static binary scripts/bench.sh builds, else a
# release build);
# BENCH_PYTHON=0 leaves part 1 out, BENCH_LIBVIRT=0 part 2;
# BENCH_BASELINE=DIR (a directory holding another version of the collection,
# as ansible_collections/virtomate/guest, e.g. from `git archive REV
# contrib/ansible`) adds to each round of part 2 that version's figures, with
# the stand-in and with virtomate, beside this one's. Part 2 installs Debian's python3-libvirt
# and takes community.libvirt from the `ansible` package on PyPI (into
# target/, once); it starts the test libvirtd if none runs, and stops it.
# Under TCG on a shared machine the figures move with the host's load:
# compare them within one run only.
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
[ "${BENCH_PYTHON:-1}" = 0 ] || scripts/build-python-vm.sh "$PYTHON_VM_ARTIFACTS" >&2
venv="$(scripts/ansible-venv.sh)"
VIRTOMATE="${VIRTOMATE:-${VIRTOMATE_BIN:-}}"
if [ -z "$VIRTOMATE" ]; then
  cargo build --locked --quiet --release --bin virtomate
  VIRTOMATE="$repo/target/release/virtomate"
fi

work="$(mktemp -d /tmp/virtomate-bench-ansible.XXXXXX)"
name="virtomate-bench-ansible-$$"
bb="virtomate-bench-ansible-bb-$$"
cleanup() {
  "$VIRTOMATE" control exit "$name" >/dev/null 2>&1 || true
  scripts/stop-test-vm.sh "$work/vm" >/dev/null 2>&1 || true
  if [ -n "${bb_sock:-}" ]; then
    "$VIRTOMATE" control exit "$bb_sock" >/dev/null 2>&1 || true
    scripts/libvirt-test-env.sh undefine "$bb" >/dev/null 2>&1 || true
  fi
  if [ -n "${started_libvirtd:-}" ]; then scripts/libvirt-test-env.sh stop >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
export ANSIBLE_COLLECTIONS_PATH="$repo/contrib/ansible"
export ANSIBLE_CALLBACK_PLUGINS="$repo/tests/ansible/callback_plugins"
export ANSIBLE_STDOUT_CALLBACK=results_json
export ANSIBLE_LOCAL_TEMP="$work/ansible-local"
export PYTHONWARNINGS=ignore

python_vm() {
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

  bench "no master, pipelined:" ANSIBLE_PIPELINING=True ANSIBLE_VIRTOMATE_PERSIST_SECONDS=0
  no_master=$median
  # The first run starts the master, the second finds it.
  bench "master (started), pipelined:" ANSIBLE_PIPELINING=True
  bench "master (kept), pipelined:" ANSIBLE_PIPELINING=True
  master=$median
  bench "master (kept), not pipelined:" ANSIBLE_PIPELINING=False
  awk "BEGIN { printf \"per task, pipelined: master %.2f s, no master %.2f s, master/no master %.2f\n\", \
    $master, $no_master, $master / $no_master }"
}
[ "${BENCH_PYTHON:-1}" = 0 ] || python_vm

[ "${BENCH_LIBVIRT:-1}" = 1 ] || exit 0

# --- Part 2: beside community.libvirt.libvirt_qemu -------------------------

# libvirt's Python binding (Debian's, for the venv's Python: the same
# /usr/bin/python3), alone on a path of its own.
dpkg -s python3-libvirt >/dev/null 2>&1 || apt-get install -y -q python3-libvirt >&2
mkdir -p "$work/pylibvirt"
ln -s /usr/lib/python3/dist-packages/libvirt*.py /usr/lib/python3/dist-packages/libvirtmod*.so "$work/pylibvirt/"
# community.libvirt, from the `ansible` package (which bundles it).
collections="$repo/target/community-libvirt"
if [ ! -f "$collections/ansible_collections/community/libvirt/plugins/connection/libvirt_qemu.py" ]; then
  rm -rf "$collections" "$collections.whl"
  "$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps -d "$collections.whl" 'ansible>=12,<13' >&2
  "$venv/bin/python" - "$collections.whl"/ansible-*.whl "$collections" <<'EOF'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith('ansible_collections/community/libvirt/')])
EOF
  rm -rf "$collections.whl"
fi

# The test libvirtd: one that runs is used; one started here is stopped
# at the end.
if ! pgrep -x libvirtd >/dev/null; then
  started_libvirtd=1
  scripts/libvirt-test-env.sh start "$repo/target/libvirt-test-env" >&2
else
  scripts/libvirt-test-env.sh start >&2
fi
scripts/libvirt-test-env.sh define "$bb" --second-channel >&2
bb_sock="$(scripts/libvirt-test-env.sh status | sed -n 's/^dir: //p')/$bb-qga1.sock"
"$VIRTOMATE" guest-ping "$bb_sock" >/dev/null

echo
echo "== Beside community.libvirt.libvirt_qemu: busybox test VM as a libvirt domain (TCG), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "   virtomate: the VM's second agent channel, through the control master; libvirt_qemu: libvirtd, first channel"
export ANSIBLE_COLLECTIONS_PATH="$repo/contrib/ansible:$collections"
export PYTHONPATH="$work/pylibvirt"
printf 'localhost ansible_connection=local ansible_python_interpreter=%s\n' "$venv/bin/python" >"$work/local.ini"
printf 'bb ansible_connection=virtomate.guest.virtomate ansible_virtomate_domain=%s ansible_virtomate_path=%s\n' \
  "$bb_sock" "$VIRTOMATE" >"$work/virtomate.ini"
# The plugin's own cost per task: the same plugin with a stand-in for
# virtomate that answers at once. Ansible loads a collection's connection
# plugin afresh in each task's worker (found in the collection, its source
# and its helpers' compiled; its options the plugin hands over from JSON,
# where an older version had its DOCUMENTATION parsed as YAML), which
# `-c local`, built in and loaded before the fork, does not pay.
printf '#!/bin/sh\necho '"'"'{"exit_code": 0, "stdout": "", "stderr": ""}'"'"'\n' >"$work/instant-virtomate"
chmod +x "$work/instant-virtomate"
printf 'bb ansible_connection=virtomate.guest.virtomate ansible_virtomate_domain=%s ansible_virtomate_path=%s\n' \
  "$bb_sock" "$work/instant-virtomate" >"$work/plugin-only.ini"
printf 'bb ansible_connection=community.libvirt.libvirt_qemu ansible_host=%s ansible_libvirt_uri=qemu:///system\n' \
  "$bb" >"$work/libvirt.ini"

# A 2 MiB text script: it prints one line and exits; the rest is comments.
{
  echo '#!/bin/sh'
  echo 'echo big-script-ok; exit 0'
  awk 'BEGIN { for (i = 1; i <= 40000; i++) printf "# line %d of padding, text as a log or a config file has\n", i }'
} >"$work/big-script.sh"
truncate -s $((2 * 1024 * 1024 - 1)) "$work/big-script.sh"
echo >>"$work/big-script.sh"

play() { # INVENTORY PLAYBOOK [COLLECTIONS_PATH]: prints the median task time in ms
  ANSIBLE_COLLECTIONS_PATH="${3:-$ANSIBLE_COLLECTIONS_PATH}" \
    "$venv/bin/ansible-playbook" -i "$1" "tests/ansible/$2" -e "bench_script=$work/big-script.sh" \
    >"$work/play.json" 2>"$work/play.err" || { cat "$work/play.err" "$work/play.json" >&2; exit 1; }
  "$venv/bin/python" - "$work/play.json" <<'EOF'
import json, statistics, sys
text = open(sys.argv[1]).read()
out = json.loads(text[text.index('{'):])
res = [r for p in out['plays'] for t in p['tasks'] for r in t['hosts'].values()]
bad = [r.get('msg') for r in res if r.get('failed') or r.get('unreachable')]
if bad:
    sys.exit('failed: %s' % bad[0])
print('%.1f' % (statistics.median(r['_duration'] for r in res) * 1000))
EOF
}

# A session's per-command time for the plugin's argv of `raw: /bin/true`.
session_ms() {
  "$venv/bin/python" - "$VIRTOMATE" "$bb_sock" <<'EOF'
import json, statistics, subprocess, sys, time
argv = ['/bin/sh', '-c', 'HOME="${HOME:-/root}"; export HOME\n' + "/bin/sh -c '/bin/true'"]
p = subprocess.Popen([sys.argv[1], 'session', sys.argv[2]], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
times = []
for i in range(21):
    t0 = time.monotonic()
    p.stdin.write((json.dumps({'id': i, 'run': argv}) + '\n').encode())
    p.stdin.flush()
    reply = json.loads(p.stdout.readline())
    if 'result' not in reply:
        sys.exit('session: %s' % reply)
    if i:  # the first pays the connection
        times.append(time.monotonic() - t0)
p.stdin.close()
p.wait()
print('%.1f' % (statistics.median(times) * 1000))
EOF
}

"$VIRTOMATE" --persist 60 guest-ping "$bb_sock" >/dev/null # the master, started
for round in 1 2 3; do
  echo "round $round, load $(cut -d' ' -f1-3 /proc/loadavg)"
  local_ms="$(play "$work/local.ini" bench_raw.yml)"
  plugin_ms="$(play "$work/plugin-only.ini" bench_raw.yml)"
  ours="$(play "$work/virtomate.ini" bench_raw.yml)"
  theirs="$(play "$work/libvirt.ini" bench_raw.yml)"
  if [ -n "${BENCH_BASELINE:-}" ]; then
    base_plugin_ms="$(play "$work/plugin-only.ini" bench_raw.yml "$BENCH_BASELINE:$collections")"
    base_ms="$(play "$work/virtomate.ini" bench_raw.yml "$BENCH_BASELINE:$collections")"
  fi
  "$VIRTOMATE" control exit "$bb_sock" >/dev/null
  session="$(session_ms)"
  "$VIRTOMATE" --persist 60 guest-ping "$bb_sock" >/dev/null
  awk -v r="$round" -v l="$local_ms" -v o="$ours" -v t="$theirs" -v s="$session" -v p="$plugin_ms" 'BEGIN {
    printf "round %d, raw /bin/true per task (median of 20): -c local %.0f ms; above it: virtomate %.0f ms, " \
      "libvirt_qemu %.0f ms, virtomate/libvirt_qemu %.2f; a session per command %.0f ms, " \
      "virtomate above it %+.0f ms\n", r, l, o - l, t - l, (o - l) / (t - l), s, o - l - s
    printf "round %d, the plugin with an instant stand-in for virtomate %.0f ms (%+.0f ms above -c local); " \
      "virtomate above that %.0f ms, above the session %+.0f ms\n", r, p, p - l, o - p, o - p - s }'
  if [ -n "${BENCH_BASELINE:-}" ]; then
    awk -v r="$round" -v l="$local_ms" -v o="$ours" -v p="$plugin_ms" -v bo="$base_ms" -v bp="$base_plugin_ms" \
      -v s="$session" 'BEGIN {
      printf "round %d, baseline (BENCH_BASELINE) above -c local: with the stand-in %+.0f ms (this one %+.0f ms), " \
        "with virtomate %+.0f ms (this one %+.0f ms), above the session %+.0f ms (this one %+.0f ms)\n", \
        r, bp - l, p - l, bo - l, o - l, bo - l - s, o - l - s }'
  fi
done
for round in 1 2 3; do
  ours="$(play "$work/virtomate.ini" bench_script.yml)"
  theirs="$(play "$work/libvirt.ini" bench_script.yml)"
  awk -v r="$round" -v o="$ours" -v t="$theirs" 'BEGIN {
    printf "round %d, script task, 2 MiB text: virtomate %.0f ms, libvirt_qemu %.0f ms, " \
      "libvirt_qemu/virtomate %.2f\n", r, o, t, t / o }'
done
