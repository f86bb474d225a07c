#!/usr/bin/env bash
# The Ansible connection plugin (contrib/ansible, virtomate.guest.virtomate)
# with the real thing: ansible-core (pinned, in a venv), two Python test VMs
# and the busybox VM, booted under TCG.
#
# 1. the plugin's unit tests (session client against a fake session, the
#    command lines, which files go gzipped, which guests get the shell
#    modules, and the shell modules themselves under busybox sh);
# 2. tests/ansible/main.yml with forks 3, one `virtomate guest-run` per
#    command through virtomate's control master (`--persist`, the
#    default): ping, command with stdin, shell with a pipeline, copy of a
#    5 MiB file (random: not gzipped) and of a 1 MiB text file (gzipped),
#    fetch, template, stat, file, become (sudo, su), a failing task with
#    ignore_errors; on the busybox VM (no Python, no /etc/passwd): raw,
#    script, and copy (a file, twice, content:, into missing directories, a
#    directory), file (directory, touch, link, hard, as ansible.builtin.file
#    and by the short name) and fetch (a file, a missing one) through the
#    collection's shell modules, which only the busybox VM gets. One Python VM by name on this host, the other by socket path
#    through an "ssh" to a hypervisor
#    host (a stand-in that runs the command here, so the remote command
#    line is quoted and split as over real SSH). Every virtomate run is
#    logged: each with `--persist`, no `session`, and a master runs for
#    each VM afterwards (`virtomate control check`);
# 3. the same playbook again with persist_seconds=0: a `guest-run` per
#    command, no master (left out with ANSIBLE_MODES=master);
# 4. tests/ansible/faults.yml, through the master: an agent stopped in a
#    guest, a VM killed while a task runs, a domain that does not exist:
#    each UNREACHABLE with virtomate's message; then the first and the last
#    again without a master.
# Ansible's JSON output is checked task by task (tests/ansible/check.py).
#
# Environment:
#   PYTHON_VM_ARTIFACTS  the Python VM's build directory (default, as root:
#                        /var/cache/virtomate-test/python-vm, shared by
#                        checkouts; else target/python-vm)
#   VIRTOMATE            the binary (default: target/debug/virtomate, built)
#   ANSIBLE_MODES        how main.yml runs: "master guest-run" (default),
#                        or one of them
#   KEEP_TEST_DIR=1      keep the work directory (inventory, outputs, logs)
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
started=$SECONDS

log() { echo "test-ansible: $*" >&2; }

scripts/install-deps.sh
scripts/build-test-vm.sh
if [ -z "${PYTHON_VM_ARTIFACTS:-}" ]; then
  if [ "$(id -u)" -eq 0 ]; then
    PYTHON_VM_ARTIFACTS=/var/cache/virtomate-test/python-vm
  else
    PYTHON_VM_ARTIFACTS="$repo/target/python-vm"
  fi
fi
scripts/build-python-vm.sh "$PYTHON_VM_ARTIFACTS"
venv="$(scripts/ansible-venv.sh)"
if [ -z "${VIRTOMATE:-}" ]; then
  cargo build --locked --quiet --bin virtomate
  VIRTOMATE="$repo/target/debug/virtomate"
fi
modes="${ANSIBLE_MODES:-master guest-run}"
log "prepared in $((SECONDS - started)) s"

collection="$repo/contrib/ansible/ansible_collections/virtomate/guest"
unit_started=$SECONDS
for t in plugin_utils/test_virtomate.py plugin_utils/test_shell_modules.py shell_modules/test_modules.py \
  connection/test_options.py \
  connection/test_virtomate.py; do
  "$venv/bin/python" "$collection/tests/unit/plugins/$t"
done
log "unit tests in $((SECONDS - unit_started)) s"

work="$(mktemp -d /tmp/virtomate-ansible.XXXXXX)"
vms=()
cleanup() {
  for d in "${vms[@]}"; do scripts/stop-test-vm.sh "$d" >/dev/null 2>&1 || true; done
  if [ -n "${watcher:-}" ]; then kill "$watcher" 2>/dev/null || true; fi
  if [ "${KEEP_TEST_DIR:-}" = 1 ]; then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# --- VMs ------------------------------------------------------------------

tag="$$"
boot() { # DIR NAME ARTIFACTS
  VM_NAME="$2" VM_ARTIFACTS="$3" scripts/run-test-vm.sh "$1"
}
boot_started=$SECONDS
boot "$work/py1" "virtomate-ansible-py1-$tag" "$PYTHON_VM_ARTIFACTS" &
p1=$!
boot "$work/py2" "virtomate-ansible-py2-$tag" "$PYTHON_VM_ARTIFACTS" &
p2=$!
boot "$work/bb" "virtomate-ansible-bb-$tag" "$repo/target/test-vm" &
p3=$!
vms+=("$work/py1" "$work/py2" "$work/bb")
wait "$p1"
wait "$p2"
wait "$p3"
log "3 VMs booted in $((SECONDS - boot_started)) s"

# --- Inventory ------------------------------------------------------------

# A stand-in for ssh: drops the options up to "--", logs the host, and runs
# the remote command line with a shell, as sshd does.
cat >"$work/fake-ssh" <<EOF
#!/bin/sh
while [ "\$1" != -- ]; do shift; done
shift
echo "\$1" >>"$work/fake-ssh.log"
exec /bin/sh -c "\$2"
EOF
chmod 755 "$work/fake-ssh"

# The binary, through a wrapper that logs each run's command line.
cat >"$work/virtomate" <<EOF
#!/bin/sh
echo "\$*" >>"$work/virtomate.log"
exec "$VIRTOMATE" "\$@"
EOF
chmod 755 "$work/virtomate"

cat >"$work/inventory.ini" <<EOF
[python]
py1 ansible_virtomate_domain=virtomate-ansible-py1-$tag
py2 ansible_virtomate_domain=$work/py2/qga.sock ansible_virtomate_ssh_host=hypervisor2 ansible_virtomate_ssh_executable=$work/fake-ssh ansible_virtomate_ssh_args='-o BatchMode=yes'

[python:vars]
ansible_python_interpreter=/usr/bin/python3

[busybox]
bb ansible_virtomate_domain=virtomate-ansible-bb-$tag

[all:vars]
ansible_connection=virtomate.guest.virtomate
ansible_virtomate_path=$work/virtomate
EOF

head -c $((5 * 1024 * 1024)) /dev/urandom >"$work/big.bin"
big_sha1="$(sha1sum "$work/big.bin" | cut -d' ' -f1)"
for i in $(seq 30000); do echo "line $i of a text file that packs well"; done >"$work/text.txt"
text_sha1="$(sha1sum "$work/text.txt" | cut -d' ' -f1)"
head -c $((300 * 1024)) /dev/urandom >"$work/bb.bin"
bb_sha1="$(sha1sum "$work/bb.bin" | cut -d' ' -f1)"
mkdir -p "$work/fetched" "$work/tree/sub"
echo one >"$work/tree/one.txt"
echo two >"$work/tree/sub/two.txt"

export ANSIBLE_COLLECTIONS_PATH="$repo/contrib/ansible"
export ANSIBLE_CALLBACK_PLUGINS="$repo/tests/ansible/callback_plugins"
export ANSIBLE_STDOUT_CALLBACK=results_json
export ANSIBLE_HOST_KEY_CHECKING=False
export ANSIBLE_RETRY_FILES_ENABLED=False
export ANSIBLE_LOCAL_TEMP="$work/ansible-local"
export ANSIBLE_NOCOLOR=1
export ANSIBLE_FORKS=3
# One run per module instead of four or five (temporary directory, file,
# chmod, run, clean-up); one task turns it off to cover that way too.
export ANSIBLE_PIPELINING=True

run_playbook() { # NAME PLAYBOOK INVENTORY [ARGS...]: output in $work/NAME.json
  local name="$1" playbook="$2" inventory="$3" rc=0 t0=$SECONDS
  shift 3
  "$venv/bin/ansible-playbook" -i "$inventory" "$repo/tests/ansible/$playbook" "$@" \
    >"$work/$name.json" 2>"$work/$name.stderr" || rc=$?
  log "$playbook: ansible-playbook exit status $rc in $((SECONDS - t0)) s"
  if [ -s "$work/$name.stderr" ]; then sed 's/^/  stderr: /' "$work/$name.stderr" | head -n 20 >&2; fi
}

# --- The playbook ---------------------------------------------------------

# How many times virtomate ran COMMAND since the log was emptied.
runs() { grep -c -- "^\(--[a-z-]* [^ ]* \)*$1\( \|\$\)" "$work/virtomate.log" || true; }

# Whether a control master runs for DOMAIN.
master_runs() { "$VIRTOMATE" control check "$1" >/dev/null 2>&1; }

main_pass() { # MODE
  local mode="$1" sessions guest_runs persisted compressed d
  rm -rf "$work/fetched" "$work/fake-ssh.log"
  mkdir -p "$work/fetched"
  : >"$work/virtomate.log"
  for d in py1 py2 bb; do "$VIRTOMATE" control exit "virtomate-ansible-$d-$tag" >/dev/null 2>&1 || true; done
  ANSIBLE_VIRTOMATE_PERSIST_SECONDS="$([ "$mode" = master ] && echo 60 || echo 0)" \
    run_playbook "main-$mode" main.yml "$work/inventory.ini" \
    -e "big_file=$work/big.bin" -e "text_file=$work/text.txt" -e "bb_file=$work/bb.bin" \
    -e "fetch_dir=$work/fetched" -e "tree_dir=$work/tree" -e "test_pass=$mode"
  "$venv/bin/python" tests/ansible/check.py main "$work/main-$mode.json" \
    "big_sha1=$big_sha1" "text_sha1=$text_sha1" "bb_sha1=$bb_sha1" "fetch_dir=$work/fetched" "test_pass=$mode"
  grep -q hypervisor2 "$work/fake-ssh.log" || { log "py2 did not go through ssh"; exit 1; }
  # Shell modules (Ansible runs them as AnsiballZ_stat.sh, ...) on the
  # busybox VM only: virtomate runs that name one, by the VM they went to
  # (a run's lines start with the plugin's --timeout).
  read -r shell_modules shell_modules_elsewhere < <(awk -v bb="virtomate-ansible-bb-$tag" '
    function flush() { if (run ~ /AnsiballZ_[a-z]*\.sh/) { if (index(run, bb)) n++; else elsewhere++ } }
    /^--timeout / { flush(); run = "" }
    { run = run "\n" $0 }
    END { flush(); print n + 0, elsewhere + 0 }' "$work/virtomate.log")
  [ "$shell_modules" -gt 0 ] && [ "$shell_modules_elsewhere" -eq 0 ] ||
    { log "shell modules: $shell_modules runs on bb, $shell_modules_elsewhere elsewhere"; exit 1; }
  sessions="$(runs session)"
  guest_runs="$(runs guest-run)"
  persisted="$(grep -c -- '--persist 60 ' "$work/virtomate.log" || true)"
  # The text file goes gzipped to each Python VM, the random one as it is
  # (Ansible names them .source.txt and .source.bin in the guest).
  compressed="$(grep -c -- ' copy --compress .*\.source\.txt$' "$work/virtomate.log" || true)"
  grep -q -- ' copy --compress .*\.source\.bin$' "$work/virtomate.log" && { log "random data gzipped"; exit 1; }
  log "$mode: virtomate ran: $sessions session, $guest_runs guest-run, $(runs copy) copy" \
    "($compressed of the text file --compress), $(runs --help) --help, $persisted with --persist," \
    "$shell_modules with a shell module"
  [ "$sessions" -eq 0 ] && [ "$guest_runs" -gt 0 ] && [ "$compressed" -eq 2 ] ||
    { log "want guest-run, no session, and the text file compressed twice"; exit 1; }
  if [ "$mode" = master ]; then
    # Each run's line starts with the plugin's --timeout (a command line
    # may go on over more lines).
    [ "$persisted" -eq "$(grep -c '^--timeout ' "$work/virtomate.log")" ] ||
      { log "want --persist on every run"; exit 1; }
    for d in py1 bb; do
      master_runs "virtomate-ansible-$d-$tag" || { log "no control master for $d"; exit 1; }
    done
    master_runs "$work/py2/qga.sock" || { log "no control master for py2"; exit 1; }
  else
    [ "$persisted" -eq 0 ] || { log "want no --persist"; exit 1; }
  fi
}

for mode in $modes; do
  main_pass "$mode"
done

# --- Faults ---------------------------------------------------------------

# Stop py1's agent: from the guest, in the background, so that the run
# that asks for it ends first.
"$VIRTOMATE" guest-run "virtomate-ansible-py1-$tag" -- /bin/sh -c \
  '(sleep 1; for p in /proc/[0-9]*; do [ "$(cat "$p/comm" 2>/dev/null)" = qemu-ga ] && kill "${p#/proc/}"; done) </dev/null >/dev/null 2>&1 &' >/dev/null
rc=0
for _ in $(seq 30); do
  sleep 1
  rc=0
  "$VIRTOMATE" --timeout 1 guest-ping "virtomate-ansible-py1-$tag" || rc=$?
  [ "$rc" -eq 125 ] && break
done
[ "$rc" -eq 125 ] || { log "the agent of py1 still answers"; exit 1; }

cat >"$work/faults.ini" <<EOF
agent_stopped ansible_virtomate_domain=virtomate-ansible-py1-$tag
stopped_mid_play ansible_virtomate_domain=virtomate-ansible-py2-$tag
no_such_domain ansible_virtomate_domain=virtomate-ansible-no-such-domain-$tag

[all:vars]
ansible_connection=virtomate.guest.virtomate
ansible_virtomate_path=$work/virtomate
# The agent that does not answer is waited for this long (default 10 s).
ansible_virtomate_timeout=4
ansible_python_interpreter=/usr/bin/python3
EOF

# Kill py2's QEMU (as a crash would) once its long task runs in the guest,
# as seen in the guest (a session's commands are on no host command line;
# the bracket keeps the looking from finding itself; --raw: grep's exit
# status).
(
  for _ in $(seq 300); do
    if "$VIRTOMATE" guest-run --raw "virtomate-ansible-py2-$tag" -- /bin/sh -c \
      'grep -qs "virtomate-midplay-marke[r]" /proc/[0-9]*/cmdline' >/dev/null 2>&1; then
      sleep 2
      kill -KILL "$(cat "$work/py2/qemu.pid")"
      exit 0
    fi
    sleep 0.5
  done
) &
watcher=$!
run_playbook faults faults.yml "$work/faults.ini"
"$venv/bin/python" tests/ansible/check.py faults "$work/faults.json"
# The faults that leave the VMs as they were, without a master.
ANSIBLE_VIRTOMATE_PERSIST_SECONDS=0 run_playbook faults-guest-run faults.yml "$work/faults.ini" \
  --limit agent_stopped,no_such_domain
"$venv/bin/python" tests/ansible/check.py faults "$work/faults-guest-run.json" hosts=agent_stopped,no_such_domain

log "passed in $((SECONDS - started)) s"
