#!/usr/bin/env bash
# The Ansible connection plugin (contrib/ansible, virtomate.guest.virtomate)
# with the real thing: ansible-core (pinned, in a venv), two Python test VMs
# and the busybox VM, booted under TCG.
#
# 1. the plugin's unit tests (session client and session helper against a
#    fake session);
# 2. tests/ansible/main.yml with forks 3, commands through one persistent
#    `virtomate session` per host (the default, use_session=auto): ping,
#    command with stdin, shell with a pipeline, copy of a 5 MiB file, fetch,
#    template, stat, file, become (sudo, su), a failing task with
#    ignore_errors, raw on busybox; one Python VM by name on this host, the
#    other by socket path through an "ssh" to a hypervisor host (a stand-in
#    that runs the command here, so the remote command line is quoted and
#    split as over real SSH). Every virtomate run is logged: one `session`
#    per host for the whole play, no `guest-run`;
# 3. the same playbook again with use_session=never: a `guest-run` per
#    command (left out with ANSIBLE_MODES=session);
# 4. tests/ansible/faults.yml, with sessions: an agent stopped in a guest, a
#    VM killed while a task runs, a domain that does not exist: each
#    UNREACHABLE with virtomate's message; then the first and the last
#    again with guest-run.
# Ansible's JSON output is checked task by task (tests/ansible/check.py).
#
# Environment:
#   PYTHON_VM_ARTIFACTS  the Python VM's build directory (default, as root:
#                        /var/cache/virtomate-test/python-vm, shared by
#                        checkouts; else target/python-vm)
#   VIRTOMATE            the binary (default: target/debug/virtomate, built)
#   ANSIBLE_MODES        how main.yml runs: "session guest-run" (default),
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
modes="${ANSIBLE_MODES:-session guest-run}"
log "prepared in $((SECONDS - started)) s"

collection="$repo/contrib/ansible/ansible_collections/virtomate/guest"
unit_started=$SECONDS
"$venv/bin/python" "$collection/tests/unit/plugins/plugin_utils/test_virtomate.py"
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
mkdir -p "$work/fetched"

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
# The session helpers' sockets; removed with the work directory, which
# makes the helpers go.
export ANSIBLE_VIRTOMATE_CONTROL_PATH_DIR="$work/cp"

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

main_pass() { # MODE
  local mode="$1" sessions guest_runs
  rm -rf "$work/fetched" "$work/fake-ssh.log"
  mkdir -p "$work/fetched"
  : >"$work/virtomate.log"
  ANSIBLE_VIRTOMATE_USE_SESSION="$([ "$mode" = session ] && echo auto || echo never)" \
    run_playbook "main-$mode" main.yml "$work/inventory.ini" \
    -e "big_file=$work/big.bin" -e "fetch_dir=$work/fetched" -e "test_pass=$mode"
  "$venv/bin/python" tests/ansible/check.py main "$work/main-$mode.json" \
    "big_sha1=$big_sha1" "fetch_dir=$work/fetched"
  grep -q hypervisor2 "$work/fake-ssh.log" || { log "py2 did not go through ssh"; exit 1; }
  sessions="$(runs session)"
  guest_runs="$(runs guest-run)"
  log "$mode: virtomate ran: $sessions session, $guest_runs guest-run, $(runs copy) copy, $(runs --help) --help"
  if [ "$mode" = session ]; then
    # One session per host for the whole play, none started twice; files
    # go through it too.
    [ "$sessions" -eq 3 ] && [ "$guest_runs" -eq 0 ] && [ "$(runs copy)" -eq 0 ] ||
      { log "want 3 sessions, no guest-run and no copy"; exit 1; }
  else
    [ "$sessions" -eq 0 ] && [ "$guest_runs" -gt 0 ] || { log "want guest-run only"; exit 1; }
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
ANSIBLE_VIRTOMATE_USE_SESSION=always run_playbook faults faults.yml "$work/faults.ini"
"$venv/bin/python" tests/ansible/check.py faults "$work/faults.json"
# The faults that leave the VMs as they were, through guest-run.
ANSIBLE_VIRTOMATE_USE_SESSION=never run_playbook faults-guest-run faults.yml "$work/faults.ini" \
  --limit agent_stopped,no_such_domain
"$venv/bin/python" tests/ansible/check.py faults "$work/faults-guest-run.json" hosts=agent_stopped,no_such_domain

log "passed in $((SECONDS - started)) s"
