#!/usr/bin/env bash
# Soak test: a random mix of virtomate operations from several processes at
# once against a test VM of its own, while faults are injected at random,
# each operation checked as it ends and the guest and host checked at the
# end. See "Soak test" in README.md.
#
# Usage: scripts/soak.sh [MINUTES]      (default 30; a fraction is fine: 0.5)
#
# Environment:
#   SOAK_SEED       seed of every random choice (default: random, printed);
#                   the same seed replays the same choices (timing differs)
#   SOAK_WORKERS    processes issuing operations (default 3)
#   SOAK_DIR        work directory (default target/soak); a run uses
#                   SOAK_DIR/PID and removes it when no violation was found
#   SOAK_RSS_KB     peak RSS allowed per virtomate process (default 65536)
#   SOAK_LIBVIRT    1 (default): also a libvirt domain, started with
#                   scripts/libvirt-test-env.sh, and libvirtd restarts as a
#                   fault; the run holds the libvirt tests' host-wide lock
#                   (/run/lock/virtomate-libvirt-tests.lock) throughout.
#                   0: the test VM alone
#   VIRTOMATE       the binary (default target/debug/virtomate, built if
#                   missing)
#
# Operations: guest-run plain / --raw / --stdin / --follow / --max-time,
# sessions with pipelined runs, pings, a followed run, a --max-time run and a
# copy_to/copy_from pair, `copy --verify` (some with --compress) in and out,
# guest-ping; each against the agent socket or the VM's name, or the libvirt
# domain's name (through libvirtd's RPC); a third of them through a control
# master (VIRTOMATE_PERSIST=20), the rest without. Faults: the agent killed
# and restarted in the guest, the VM paused and resumed over QMP, the
# guest's /tmp filled (and kept full) then emptied, a foreign client holding
# the agent channel, the control master killed (SIGKILL), libvirtd stopped
# and started again (SIGTERM: its domains run on), and virtomate processes
# sent SIGINT or SIGKILL mid-work.
#
# Output: one line per violation (`soak: VIOLATION ...`, with the operation,
# the fault active and what was wrong), then the summary
# `soak: N operations, F faults, V violations`. Exit status 0 only when V is 0.
set -uo pipefail
export LC_ALL=C

script_dir="$(cd "$(dirname "$0")" && pwd)"
repo_root="$(cd "$script_dir/.." && pwd)"

die() { echo "soak: error: $*" >&2; exit 2; }

minutes="${1:-30}"
[[ "$minutes" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "MINUTES must be a number, not '$minutes'"
run_ms="$(awk -v m="$minutes" 'BEGIN { printf "%d", m * 60000 }')"
[ "$run_ms" -gt 0 ] || die "MINUTES must be greater than 0"
seed="${SOAK_SEED:-$(( (RANDOM << 15 | RANDOM) % 1000000 ))}"
[[ "$seed" =~ ^[0-9]+$ ]] || die "SOAK_SEED must be a number"
workers="${SOAK_WORKERS:-3}"
rss_limit_kb="${SOAK_RSS_KB:-65536}"
use_libvirt="${SOAK_LIBVIRT:-1}"
V="${VIRTOMATE:-$repo_root/target/debug/virtomate}"
v_comm="$(basename "$V" | cut -c1-15)" # its name in /proc/PID/comm
for tool in jq perl flock /usr/bin/time qemu-system-x86_64; do
  command -v "$tool" >/dev/null || die "$tool not installed, run scripts/install-deps.sh"
done
if [ ! -x "$V" ]; then
  (cd "$repo_root" && cargo build --quiet --bin virtomate) || die "cargo build failed"
fi

base="${SOAK_DIR:-$repo_root/target/soak}"
dir="$base/$$"
rm -rf "$dir"
mkdir -p "$dir"/{vm,ops,host}
dir="$(cd "$dir" && pwd)"
vmdir="$dir/vm"
name="virtomate-soak-$$"
lvname="virtomate-soak-lv-$$" # the libvirt domain
lvenv="$script_dir/libvirt-test-env.sh"
# The daemons it starts must not inherit the lock's descriptor (8), or they
# would hold the lock long after this run.
lvenv_() { "$lvenv" "$@" 8>&-; }
lv_started_here=0 lv_restartable=0
sock="$vmdir/qga.sock"
qmp="$vmdir/qmp.sock"
oplog="$dir/ops.log"        # one line per operation
faultlog="$dir/faults.log"  # START_MS END_MS KIND DETAIL, one line per fault
violog="$dir/violations.log"
fullog="$dir/full.log"      # FROM_MS TO_MS: the guest's /tmp seen full
claims="$dir/not-started.claims"  # ops whose error said nothing was started
leftok="$dir/leftovers.allowed"   # KIND per op that may leave something
for f in "$oplog" "$faultlog" "$violog" "$fullog" "$claims" "$leftok"; do : >"$f"; done
export SOAK_TAG="soak-$$" # in every virtomate's environment, to find strays

now_ms() {
  local t="${EPOCHREALTIME/[.,]/}"
  echo $((t / 1000))
}
start_ms="$(now_ms)"
deadline_ms=$((start_ms + run_ms))

# --- Cleanup ---------------------------------------------------------------

bg_pids=()
kill_tree() { # PID SIGNAL: the process and its descendants, children first
  local child
  for child in $(pgrep -P "$1" 2>/dev/null); do
    kill_tree "$child" "$2"
  done
  kill "-$2" "$1" 2>/dev/null || true
}
cleanup() {
  local pid
  for pid in "${bg_pids[@]}"; do
    kill_tree "$pid" KILL
  done
  "$script_dir/stop-test-vm.sh" "$vmdir" >/dev/null 2>&1 || true
  if [ "$use_libvirt" = 1 ]; then
    lvenv_ undefine "$lvname" >>"$dir/libvirt.log" 2>&1 || true
    [ "$lv_started_here" = 0 ] || lvenv_ stop >>"$dir/libvirt.log" 2>&1 || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# --- Helpers ---------------------------------------------------------------

vm() { # quiet virtomate call of the harness itself, bounded
  timeout -s KILL 60 "$V" --timeout 5 --reply-timeout 20 "$@"
}
guest_sh() { # SCRIPT [GUEST]: run by the harness in the guest, its stdout printed
  vm guest-run --raw "${2:-$sock}" -- sh -c "$1"
}
violation() { # OP ID FAULT WHAT
  local line="soak: VIOLATION op=$1 id=$2 seed=$seed fault=$3: $4"
  echo "$line" >>"$violog"
  echo "$line"
}

documented_types="NotFoundError IllegalStateError AgentUnavailable AgentTimeout AgentDisconnected AgentCommandError ProtocolError EncodingError InputTooLarge Interrupted PathError VerificationError libvirtError UsageError IoError GuestOutputError AmbiguousDomainError"
is_documented() { [[ " $documented_types " == *" $1 "* ]]; }

# Faults that overlapped [FROM, TO] (ms), widened by 3 s for their after-effects.
# The current fault is read before the log: fault_end appends to the log
# before it removes fault.cur, so a fault that ends meanwhile is in one.
faults_during() {
  local from=$1 to=$2 cur
  {
    if cur="$(cat "$dir/fault.cur" 2>/dev/null)"; then
      awk -v t="$to" '$1 <= t { print $2 }' <<<"$cur"
    fi
    awk -v f="$from" -v t="$to" '$1 <= t && $2 + 3000 >= f { print $3 }' "$faultlog"
  } | sort -u | paste -sd, -
}

# --- The VM ----------------------------------------------------------------

echo "soak: seed $seed, $minutes min, $workers workers, libvirt $use_libvirt, dir $dir"
VM_NAME="$name" "$script_dir/run-test-vm.sh" "$vmdir" >"$dir/boot.log" 2>&1 &
boot_pid=$!
guests=("$sock")
if [ "$use_libvirt" = 1 ]; then
  # Tests of other checkouts share the one system libvirtd: take their lock.
  exec 8>/run/lock/virtomate-libvirt-tests.lock || die "cannot open the libvirt tests' lock"
  flock -n 8 || { echo "soak: waiting for the libvirt tests' lock"; flock 8; }
  lv_pid() { lvenv_ status 2>/dev/null | sed -n 's/^libvirtd: \([0-9][0-9]*\)$/\1/p'; }
  [ -n "$(lv_pid)" ] || lv_started_here=1
  lvenv_ start >>"$dir/libvirt.log" 2>&1 || { cat "$dir/libvirt.log" >&2; die "libvirtd did not start"; }
  # Only a libvirtd that scripts/libvirt-test-env.sh started is restarted as
  # a fault (not a system's own).
  [ -n "$(lv_pid)" ] && lv_restartable=1
  lvenv_ define "$lvname" --transient --timeout 180 >>"$dir/libvirt.log" 2>&1 \
    || { cat "$dir/libvirt.log" >&2; die "the libvirt domain did not boot"; }
  guests+=("$lvname")
fi
wait "$boot_pid" || { cat "$dir/boot.log" >&2; die "the test VM did not boot"; }
# A small tmpfs of its own for /tmp, so that filling it leaves RAM to the
# agent; /soakmark (on the root file system) holds a mark per started program.
for g in "${guests[@]}"; do
  guest_sh 'mount -t tmpfs -o size=32m soaktmp /tmp && mkdir -p /tmp/soak /tmp/soak-trash /soakmark' "$g" \
    || die "cannot prepare the guest $g"
done
deadline_ms=$(($(now_ms) + run_ms)) # the time to boot does not count
dev_ino="$(stat -c '%d %i' "$sock")"
lockfile="/run/virtomate/agent-$(printf '%x' "${dev_ino% *}")-${dev_ino#* }.lock"

# --- One operation -----------------------------------------------------------

# Runs "$@" (a virtomate command line) with stdin from $op_in, stdout to
# $op_out, stderr to $op_err; sets rc, ms, rss, signalled. With probability
# SIG_P % it sends SIGINT or SIGKILL to virtomate after a random delay.
run_op() {
  local hard=$1 && shift
  local t0 pid vpid="" tpid delay
  signalled=""
  t0="$(now_ms)"
  /usr/bin/time -f '%M' -o "$op_rss" \
    timeout -s KILL "$hard" env --default-signal=INT,TERM,HUP "${op_env[@]}" "$@" \
    <"$op_in" >"$op_out" 2>"$op_err" &
  pid=$!
  if [ "$((RANDOM % 100))" -lt "$SIG_P" ]; then
    delay="$((RANDOM % 25))"
    sleep "$((delay / 10)).$((delay % 10))"
    tpid="$(pgrep -P "$pid" | head -n 1)"
    [ -n "$tpid" ] && vpid="$(pgrep -P "$tpid" | head -n 1)"
    # Only virtomate itself: timeout's child before its exec still runs
    # timeout's handler, which exits 128+N on the signal (no virtomate
    # ever ran, and its status would look like one of virtomate's).
    [ -n "$vpid" ] && [ "$(cat "/proc/$vpid/comm" 2>/dev/null)" != "$v_comm" ] && vpid=""
    if [ -n "$vpid" ]; then
      if [ "$((RANDOM % 10))" -lt 6 ]; then signalled=INT; else signalled=KILL; fi
      kill "-$signalled" "$vpid" 2>/dev/null || signalled=""
      if [ -n "$signalled" ]; then
        local t
        t="$(now_ms)"
        echo "$t $t sig$signalled local" >>"$dir/faults.local"
      fi
    fi
  fi
  wait "$pid"
  rc=$?
  ms=$(($(now_ms) - t0))
  op_from=$t0
  rss="$(tail -n 1 "$op_rss" 2>/dev/null)"
  # time(1) says so when the signal's default action ended virtomate: it
  # came before virtomate caught it.
  uncaught=""
  grep -q '^Command terminated by signal' "$op_rss" 2>/dev/null && uncaught=1
  [[ "$rss" =~ ^[0-9]+$ ]] || rss=0
}

# Checks a failure's form: in JSON mode exit 1 and one documented error
# object on stdout; in raw mode exit 255 and `virtomate: TYPE: message` last
# on stderr. Sets err_type and err_msg, returns 1 (after a violation) if not.
check_typed() { # MODE(json|raw)
  err_type="" err_msg=""
  if [ "$1" = json ]; then
    if [ "$rc" -ne 1 ] || ! err_type="$(jq -er '.type' "$op_out" 2>/dev/null)"; then
      bad "untyped failure: exit $rc, stdout '$(head -c 200 "$op_out")', stderr '$(tail -c 200 "$op_err")'"
      return 1
    fi
    err_msg="$(jq -r '.message' "$op_out")"
  else
    local last
    last="$(tail -n 1 "$op_err")"
    if [ "$rc" -ne 255 ] || [[ ! "$last" =~ ^virtomate:\ ([A-Za-z]+):\ (.*)$ ]]; then
      bad "untyped failure: exit $rc, stderr '$(tail -c 200 "$op_err")'"
      return 1
    fi
    err_type="${BASH_REMATCH[1]}" err_msg="${BASH_REMATCH[2]}"
  fi
  check_error "$err_type" "$err_msg"
}

# An error reply (TYPE MESSAGE): documented, expected under the faults
# active or the signal sent, its "nothing was started" claim checkable.
check_error() { # TYPE MESSAGE [MARK]
  local type=$1 msg=$2 mark=${3:-$op_id}
  echo "$op_id $type: $msg" >>"$dir/errors.log"
  if ! is_documented "$type"; then
    bad "undocumented error type '$type': $msg"
    return 1
  fi
  if [ "$op_faults" = none ] && [ -z "$signalled" ]; then
    bad "$type without any fault: $msg"
    return 1
  fi
  if [ -z "$op_faults_global" ] && [ "$signalled" = INT ] && [ "$type" != Interrupted ]; then
    bad "SIGINT gave $type, not Interrupted: $msg"
  fi
  if [[ "$msg" == *"nothing was started"* || "$msg" == *"not started"* ]]; then
    echo "$op_kind $mark" >>"$claims"
  fi
  case "$msg" in *virtomate-follow-*) echo "follow-named $op_id" >>"$leftok" ;; esac
  return 0
}

bad() { op_bad=1; violation "$op_kind" "$op_id" "$op_faults" "$*"; }

# Output a followed program lost to a full /tmp: a violation when /tmp was
# full (checked in the guest, kept full) for the whole operation, since a
# full /tmp is refused before the program starts; when /tmp filled or was
# emptied meanwhile, the loss cannot be seen (guide, --follow: Limits).
follow_loss() { # WHAT
  if [ "$op_vm" = vm ] && awk -v f="$op_from" -v t="$op_to" '$1 <= f && $2 >= t { found = 1 }
      END { exit !found }' "$fullog"; then
    bad "$1: exit $rc while /tmp was full from start to end (refusing to start is promised)"
  elif [ "$op_vm" = vm ] && [[ "$op_faults" == *tmp_full* ]]; then
    echo "$op_id $1 (/tmp was full meanwhile: output lost, as documented)" >>"$dir/errors.log"
  else
    bad "$1"
  fi
}

# Common checks once an operation ended: time bound, RSS, a SIGKILL.
# Returns 1 when its result is not to be checked further.
finish_op() { # BOUND_MS
  local bound=$1 to
  to="$(now_ms)"
  op_to=$to
  op_faults_global="$(faults_during "$op_from" "$to")"
  op_faults="$op_faults_global"
  [ -n "$signalled" ] && op_faults="${op_faults:+$op_faults,}sig$signalled"
  [ -n "$op_faults" ] || op_faults=none
  echo "$(date +%T) $op_kind id=$op_id target=$op_target rc=$rc ms=$ms rss_kb=$rss faults=$op_faults" \
    "master=$op_master" >>"$oplog"
  if [ "$ms" -gt "$bound" ]; then
    bad "took ${ms} ms, bound ${bound} ms (exit $rc)"
  fi
  if [ "$rss" -gt "$rss_limit_kb" ]; then
    bad "peak RSS ${rss} KiB over ${rss_limit_kb} KiB"
  fi
  if [ "$signalled" = KILL ] && [ "$rc" -eq 137 ]; then
    echo "$op_kind $op_id" >>"$leftok"
    return 1
  fi
  # Every command catches SIGINT before it reaches the guest, so one that
  # ended virtomate uncaught (sent as it started) left nothing to check,
  # and nothing in the guest: the leftover checks still apply.
  if [ "$signalled" = INT ] && [ -n "$uncaught" ]; then
    echo "$op_id SIGINT before virtomate caught it: ended by it, exit $rc" >>"$dir/errors.log"
    return 1
  fi
  return 0
}

# Sets t, the target of the operation: the test VM's socket or name, or
# the libvirt domain's name; op_vm (vm or lv) and hsock, the guest as the
# harness reaches it for its own work.
# Removes a file of the operation from its guest; while /tmp is kept full
# moves it aside instead, for fill_stop to remove (what a removal frees is
# taken again by the fill loop, but not at once).
guest_remove() { # PATH
  local how=(rm -f "$1")
  [ "$op_vm" = vm ] && [ "$(cut -d' ' -f2 "$dir/fault.cur" 2>/dev/null)" = tmp_full ] \
    && how=(mv -f "$1" /tmp/soak-trash/)
  vm guest-run "$hsock" -- "${how[@]}" >/dev/null 2>&1 || true
}

pick_target() {
  local r=$((RANDOM % 6))
  if [ "${#guests[@]}" -gt 1 ] && [ "$r" -ge 4 ]; then op_target=libvirt t="$lvname"
  elif [ $((r % 2)) = 0 ]; then op_target=socket t="$sock"
  else op_target=name t="$name"
  fi
  op_vm=vm hsock="$sock"
  [ "$op_target" = libvirt ] && op_vm=lv hsock="$lvname"
}

# Timeouts of every operation: connect 5 s, each reply 10 s. A bound is the
# program's own time plus 45 s (a pause, a restart, a wait for the channel).
common=(--timeout 5 --reply-timeout 10)
slack=45000

op_run_plain() {
  local n d t expected
  n=$(($((RANDOM % 3000)) + 1)) d="$((RANDOM % 10))"
  pick_target
  expected="$(jq -cn --arg o "$(seq 1 "$n")"$'\n' --arg e "err-$op_id"$'\n' \
    '{exit_code:0,signal:null,stderr:$e,stderr_truncated:false,stdout:$o,stdout_truncated:false}')"
  : >"$op_in"
  run_op 120 "$V" "${common[@]}" guest-run "$t" -- sh -c \
    "touch /soakmark/$op_id; sleep 0.$d; seq 1 $n; echo err-$op_id >&2" soakop
  finish_op $((slack + d * 100)) || return
  if [ "$rc" -eq 0 ] && [ "$(cat "$op_out")" = "$expected" ]; then return; fi
  [ "$rc" -eq 0 ] && { bad "wrong result: $(head -c 300 "$op_out")"; return; }
  check_typed json
}

op_run_raw() {
  local k t
  k="$((RANDOM % 4))"
  pick_target
  : >"$op_in"
  run_op 120 "$V" "${common[@]}" guest-run --raw "$t" -- sh -c \
    "touch /soakmark/$op_id; printf %s out-$op_id; printf %s err-$op_id >&2; exit $k" soakop
  finish_op $slack || return
  if [ "$rc" -eq "$k" ] && [ "$(cat "$op_out")" = "out-$op_id" ] && [ "$(cat "$op_err")" = "err-$op_id" ]; then return; fi
  [ "$rc" -eq "$k" ] && { bad "wrong bytes: stdout '$(head -c 100 "$op_out")' stderr '$(head -c 100 "$op_err")'"; return; }
  check_typed raw
}

op_run_stdin() {
  local n t sum
  n=$(($((RANDOM % 512)) * 1024 + $((RANDOM % 1024))))
  pick_target
  # Through libvirtd one request carries a little under 144 KiB of input.
  [ "$op_vm" = lv ] && n=$((n % (140 * 1024)))
  head -c "$n" /dev/urandom >"$op_in"
  if [ "$((RANDOM % 2))" = 0 ]; then
    run_op 120 "$V" "${common[@]}" guest-run --raw --stdin "$t" -- sh -c "touch /soakmark/$op_id; cat" soakop
    finish_op $slack || return
    [ "$rc" -eq 0 ] && { cmp -s "$op_in" "$op_out" || bad "stdin came back different ($n bytes sent, $(stat -c %s "$op_out") back)"; return; }
    check_typed raw
  else
    sum="$(sha256sum <"$op_in")"
    sum="${sum%% *}"
    run_op 120 "$V" "${common[@]}" guest-run --stdin "$t" -- sh -c "touch /soakmark/$op_id; sha256sum" soakop
    finish_op $slack || return
    if [ "$rc" -eq 0 ]; then
      [ "$(jq -r .stdout "$op_out")" = "$sum  -" ] || bad "guest's sha256 of stdin differs: $(head -c 200 "$op_out")"
      return
    fi
    check_typed json
  fi
}

op_run_follow() {
  local n d t
  n=$(($((RANDOM % 20000)) + 1)) d="$((RANDOM % 20))"
  pick_target
  : >"$op_in"
  seq 1 "$n" >"$dir/ops/$op_id.expect"
  run_op 120 "$V" "${common[@]}" guest-run --follow "$t" -- sh -c \
    "touch /soakmark/$op_id; seq 1 $n; sleep $((d / 10)).$((d % 10)); echo err-$op_id >&2" soakop
  finish_op $((slack + d * 100)) || return
  if [ "$rc" -eq 0 ]; then
    cmp -s "$dir/ops/$op_id.expect" "$op_out" || follow_loss "followed stdout differs from seq 1 $n"
    [ "$(cat "$op_err")" = "err-$op_id" ] || follow_loss "followed stderr differs: '$(head -c 100 "$op_err")'"
    return
  fi
  if [ "$rc" -ne 255 ] && [ "$rc" -lt 128 ] && [[ "$op_faults" == *tmp_full* ]]; then
    return # the program's own status: its writes to a full /tmp failed
  fi
  check_typed raw
}

# A live pipe both ways: random bytes through `cat` under -i, compared.
op_run_interactive() {
  local n t
  n=$(($((RANDOM % 256)) * 1024 + $((RANDOM % 1024))))
  pick_target
  head -c "$n" /dev/urandom >"$op_in"
  run_op 120 "$V" "${common[@]}" guest-run -i "$t" -- sh -c "touch /soakmark/$op_id; cat" soakop
  finish_op $slack || return
  if [ "$rc" -eq 0 ]; then
    cmp -s "$op_in" "$op_out" || follow_loss "-i: cat gave back $(stat -c %s "$op_out") of $n bytes, or others"
    return
  fi
  if [ "$rc" -ne 255 ] && [ "$rc" -lt 128 ] && [[ "$op_faults" == *tmp_full* ]]; then
    return # cat's own status: its writes to a full /tmp failed
  fi
  check_typed raw
}

op_run_maxtime() {
  local t
  pick_target
  : >"$op_in"
  if [ "$((RANDOM % 2))" = 0 ]; then
    run_op 120 "$V" "${common[@]}" guest-run --max-time 1 --grace 2 "$t" -- sh -c \
      "touch /soakmark/$op_id; echo started; sleep 12 | cat" soakop
    finish_op $((slack + 3000)) || return
    if [ "$rc" -eq 124 ]; then
      [ "$(jq -c '[.stdout, .exit_code]' "$op_out" 2>/dev/null)" = '["started\n",null]' ] \
        || bad "--max-time result wrong: $(head -c 200 "$op_out")"
      return
    fi
    check_typed json
  else
    run_op 120 "$V" "${common[@]}" guest-run --follow --max-time 1 --grace 2 "$t" -- sh -c \
      "touch /soakmark/$op_id; echo started; sleep 12 | cat" soakop
    finish_op $((slack + 3000)) || return
    if [ "$rc" -eq 124 ]; then
      [ "$(cat "$op_out")" = started ] || follow_loss "--follow --max-time stdout wrong: '$(head -c 100 "$op_out")'"
      return
    fi
    check_typed raw
  fi
}

op_ping() {
  local t
  pick_target
  : >"$op_in"
  run_op 60 "$V" "${common[@]}" guest-ping "$t"
  finish_op 20000 || return
  [ "$rc" -eq 0 ] && return
  if [ "$rc" -eq 125 ]; then
    [ -s "$op_out" ] && bad "guest-ping 125 printed '$(head -c 100 "$op_out")'"
    [ "$op_faults" = none ] && bad "guest-ping got no answer without any fault"
    return
  fi
  check_typed json
}

op_copy() {
  local n t src back sum compress=() res
  n=$(($((RANDOM % 1024)) * 1024 + $((RANDOM % 4096))))
  pick_target
  src="$dir/ops/$op_id.src" back="$dir/host/$op_id.back"
  [ "$((RANDOM % 3))" = 0 ] && compress=(--compress)
  if [ "${#compress[@]}" -gt 0 ]; then
    # Compressible: text.
    seq 1 1000000 | head -c "$n" >"$src"
  else
    head -c "$n" /dev/urandom >"$src"
  fi
  sum="$(sha256sum <"$src")" sum="${sum%% *}"
  : >"$op_in"
  op_kind=copy_in
  run_op 180 "$V" "${common[@]}" copy --verify "${compress[@]}" --no-progress "$src" "$t:/tmp/soak/$op_id"
  if finish_op $((slack + 60000)); then
    if [ "$rc" -eq 0 ]; then
      res="$(jq -c '[.bytes, .sha256]' "$op_out" 2>/dev/null)"
      [ "$res" = "[$n,\"$sum\"]" ] || bad "copy in reported $res, expected [$n,\"$sum\"]"
    else
      check_typed json
      rm -f "$src"
      return
    fi
  else
    rm -f "$src"
    return
  fi
  op_kind=copy_out
  run_op 180 "$V" "${common[@]}" copy --verify "${compress[@]}" --no-progress "$t:/tmp/soak/$op_id" "$back"
  if finish_op $((slack + 60000)); then
    if [ "$rc" -eq 0 ]; then
      cmp -s "$src" "$back" || bad "copied out file differs ($n bytes)"
      res="$(jq -c '[.bytes, .sha256]' "$op_out" 2>/dev/null)"
      [ "$res" = "[$n,\"$sum\"]" ] || bad "copy out reported $res, expected [$n,\"$sum\"]"
    else
      [ -e "$back" ] && bad "failed copy out left $back"
      check_typed json
    fi
  fi
  rm -f "$src" "$back"
  guest_remove "/tmp/soak/$op_id"
}

op_session() {
  local t n d data sum k i lines=() expect_ids=() id final type msg
  pick_target
  n=$(($((RANDOM % 128)) * 1024 + $((RANDOM % 1024))))
  head -c "$n" /dev/urandom >"$dir/ops/$op_id.data"
  data="$(base64 -w0 <"$dir/ops/$op_id.data")"
  sum="$(sha256sum <"$dir/ops/$op_id.data")" sum="${sum%% *}"
  k=$(($((RANDOM % 4)) + 1))
  for i in $(seq 1 "$k"); do
    d=$((RANDOM % 10))
    lines+=("$(jq -cn --arg i "r$i" --arg s "touch /soakmark/$op_id-r$i; sleep 0.$d; echo tok-$op_id-r$i" \
      '{id:$i, run:["sh","-c",$s,"soakop"]}')")
    expect_ids+=("r$i")
  done
  lines+=('{"id":"p","ping":{}}')
  expect_ids+=(p)
  if [ "$((RANDOM % 2))" = 0 ]; then
    lines+=("$(jq -cn --arg s "touch /soakmark/$op_id-f; seq 1 3000; sleep 0.5; seq 3001 6000" \
      '{id:"f", run:["sh","-c",$s,"soakop"], follow:true}')")
    expect_ids+=(f)
  fi
  if [ "$((RANDOM % 3))" = 0 ]; then
    lines+=("$(jq -cn --arg s "touch /soakmark/$op_id-m; echo started; sleep 12 | cat" \
      '{id:"m", run:["sh","-c",$s,"soakop"], max_time:1, grace:2}')")
    expect_ids+=(m)
  fi
  lines+=("$(printf '{"id":"c","copy_to":"/tmp/soak/%s","data":"%s","verify":true}' "$op_id" "$data")")
  lines+=("$(jq -cn --arg p "/tmp/soak/$op_id" '{id:"g", copy_from:$p, verify:true}')")
  expect_ids+=(c g)
  printf '%s\n' "${lines[@]}" >"$op_in"
  run_op 180 "$V" "${common[@]}" session "$t"
  finish_op $((slack + 30000)) || return
  local whole=""
  if [ -s "$op_out" ] && ! jq -e . "$op_out" >/dev/null 2>&1; then
    bad "session output is not JSON lines: $(head -c 200 "$op_out")"
  elif whole="$(jq -ec 'select(has("id") | not)' "$op_out" 2>/dev/null)"; then
    # The session as a whole failed (e.g. the channel held at its start).
    [ "$rc" -eq 1 ] || bad "session printed an error without id but exited $rc: $whole"
    check_error "$(jq -r .type <<<"$whole")" "session: $(jq -r .message <<<"$whole")"
  elif [ -n "$signalled" ] && [ "$rc" -eq 1 ]; then
    : # interrupted: the replies given are checked below, not their number
  elif [ "$rc" -ne 0 ]; then
    bad "session exited $rc: $(tail -c 200 "$op_out") $(tail -c 200 "$op_err")"
  fi
  for id in "${expect_ids[@]}"; do
    final="$(jq -c --arg i "$id" 'select(.id == $i and (has("result") or has("error")))' "$op_out" 2>/dev/null)"
    if [ -z "$final" ]; then
      [ -n "$signalled" ] || [ -n "$whole" ] || bad "session request $id got no reply"
      continue
    fi
    if [ "$(wc -l <<<"$final")" -ne 1 ]; then
      bad "session request $id got several replies"
      continue
    fi
    if type="$(jq -er '.error.type' <<<"$final" 2>/dev/null)"; then
      msg="$(jq -r '.error.message' <<<"$final")"
      check_error "$type" "$id: $msg" "$op_id-$id"
      continue
    fi
    case "$id" in
      r*) [ "$(jq -c '[.result.stdout, .result.exit_code]' <<<"$final")" = "[\"tok-$op_id-$id\\n\",0]" ] \
            || bad "session run $id: $final" ;;
      p) [ "$(jq -c .result <<<"$final")" = '{}' ] || bad "session ping: $final" ;;
      f) [ "$(jq -c .result.exit_code <<<"$final")" = 0 ] || bad "session follow: $final"
         jq -r 'select(.id == "f" and has("stdout")) | .stdout' "$op_out" | base64 -d \
           | cmp -s - <(seq 1 6000) || follow_loss "session follow: streamed stdout differs from seq 1 6000" ;;
      m) [ "$(jq -c '[.timed_out, .result.stdout]' <<<"$final")" = '[true,"started\n"]' ] \
            || bad "session max_time: $final" ;;
      c) [ "$(jq -c '[.result.bytes, .result.sha256]' <<<"$final")" = "[$n,\"$sum\"]" ] \
            || bad "session copy_to: $final, expected [$n,\"$sum\"]" ;;
      g) [ "$(jq -c '[.result.bytes, .result.sha256]' <<<"$final")" = "[$n,\"$sum\"]" ] \
            || bad "session copy_from: $final, expected [$n,\"$sum\"]"
         jq -r 'select(.id == "g" and has("data")) | .data' "$op_out" | base64 -d \
           | cmp -s - "$dir/ops/$op_id.data" || bad "session copy_from: data differs" ;;
    esac
  done
  guest_remove "/tmp/soak/$op_id"
}

worker() { # NUMBER
  local w=$1 i=0 pick
  RANDOM=$((seed * 10 + w))
  SIG_P=10
  while [ "$(now_ms)" -lt "$deadline_ms" ]; do
    i=$((i + 1))
    op_id="w$w-$i"
    op_bad=0
    op_in="$dir/ops/$op_id.in" op_out="$dir/ops/$op_id.out"
    op_err="$dir/ops/$op_id.err" op_rss="$dir/ops/$op_id.rss"
    # A third of the operations go through a control master (started by
    # the first of them, shared by the rest, killed now and then).
    op_master=0 op_env=()
    if [ "$((RANDOM % 3))" = 0 ]; then op_master=1 op_env=(VIRTOMATE_PERSIST=20); fi
    pick="$((RANDOM % 100))"
    if [ "$pick" -lt 15 ]; then op_kind=run_plain; op_run_plain
    elif [ "$pick" -lt 25 ]; then op_kind=run_raw; op_run_raw
    elif [ "$pick" -lt 32 ]; then op_kind=run_stdin; op_run_stdin
    elif [ "$pick" -lt 37 ]; then op_kind=run_interactive; op_run_interactive
    elif [ "$pick" -lt 52 ]; then op_kind=run_follow; op_run_follow
    elif [ "$pick" -lt 60 ]; then op_kind=run_maxtime; op_run_maxtime
    elif [ "$pick" -lt 68 ]; then op_kind=ping; op_ping
    elif [ "$pick" -lt 84 ]; then op_kind=copy; op_copy
    else op_kind=session; op_session
    fi
    [ "$op_bad" = 1 ] || rm -f "$dir/ops/$op_id".*
  done
}

# --- Faults ----------------------------------------------------------------

fault_begin() { echo "$(now_ms) $1" >"$dir/fault.cur"; fault_kind=$1; }
fault_end() { # DETAIL
  local from
  from="$(cut -d' ' -f1 "$dir/fault.cur")"
  echo "$from $(now_ms) $fault_kind $1" >>"$faultlog"
  rm -f "$dir/fault.cur"
}
wait_agent() { vm guest-ping --wait 60 "${1:-$sock}" >/dev/null 2>&1; }

fault_agent_restart() {
  local d sig
  d=$(($((RANDOM % 4)) + 1))
  sig=TERM
  [ "$((RANDOM % 2))" = 0 ] && sig=KILL
  fault_begin agent_restart
  # As a service manager restarts it: qemu-ga 7.2's SIGTERM handler can
  # deadlock (it calls GLib from the handler), and a new agent started
  # while the old one holds the port fails at once ("Device or resource
  # busy"), so the old one is waited for, and killed after 3 s.
  vm guest-run "$sock" -- sh -c "setsid sh -c 'p=\$(pidof qemu-ga); kill -$sig \$p; i=0; \
    while grep -qs \"^State:.[^Z]\" /proc/\$p/status; do i=\$((i + 1)); \
    [ \$i = 30 ] && kill -KILL \$p; sleep 0.1; done; sleep $d; \
    exec qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 -t /run/qga-0' \
    </dev/null >/dev/null 2>&1 &" >/dev/null 2>&1
  sleep "$d"
  wait_agent || echo "soak: the agent did not come back after a restart" >&2
  fault_end "SIG$sig, ${d}s down"
}

fault_pause() {
  local d via
  d=$(($((RANDOM % 8)) + 1))
  via="$qmp"
  [ "$((RANDOM % 2))" = 0 ] && via="$name"
  fault_begin vm_pause
  vm qmp "$via" '{"execute":"stop"}' >/dev/null 2>&1
  sleep "$d"
  local tries=0
  until vm qmp "$qmp" '{"execute":"cont"}' >/dev/null 2>&1 || [ $tries -ge 20 ]; do
    tries=$((tries + 1))
    sleep 0.5
  done
  fault_end "${d}s via ${via##*/}"
}

# Fills the guest's /tmp and keeps it full: a loop in the guest takes again
# at once what others free (a copy removed, a followed run's files), so that
# "full from FROM to TO" in $fullog is what every program in between saw.
# shellcheck disable=SC2016 # the guest's shell expands these
fill_loop='rm -f /soak-fill-stop; setsid sh -c "i=0; until [ -e /soak-fill-stop ]; do
    i=\$((i + 1)); dd if=/dev/zero of=/tmp/soak-fill.\$i bs=4k 2>/dev/null; sleep 0.02; done
  rm -f /tmp/soak-fill.* /soak-fill-stop" </dev/null >/dev/null 2>&1 &
  n=0; until [ "$(df -Pk /tmp | awk "NR == 2 { print \$4 }")" = 0 ] || [ $n -ge 200 ]; do
    n=$((n + 1)); sleep 0.05; done; [ $n -lt 200 ]'
# shellcheck disable=SC2016 # the guest's shell expands these
fill_stop='touch /soak-fill-stop; rm -rf /tmp/soak-trash/*; n=0; while [ -e /soak-fill-stop ] && [ $n -lt 200 ]; do
  n=$((n + 1)); sleep 0.05; done; [ $n -lt 200 ]'

fault_fill_tmp() {
  local d tries=0 from
  d=$(($((RANDOM % 6)) + 2))
  fault_begin tmp_full
  if guest_sh "$fill_loop" >/dev/null 2>&1; then
    from="$(now_ms)"
    sleep "$d"
    echo "$from $(now_ms)" >>"$fullog"
  else
    sleep "$d"
  fi
  until guest_sh "$fill_stop" >/dev/null 2>&1 || [ $tries -ge 20 ]; do
    tries=$((tries + 1))
    sleep 1
  done
  fault_end "${d}s full"
}

fault_foreign() {
  local d partial
  d=$(($((RANDOM % 5)) + 1))
  partial="$((RANDOM % 2))"
  fault_begin foreign_client
  # A raw client holds the agent channel, sending a ping or half a request.
  # shellcheck disable=SC2016 # perl code, not the shell's
  timeout -s KILL $((d + 10)) perl -MIO::Socket::UNIX -e '
    my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or exit 1;
    $s->autoflush(1);
    print $s ($ARGV[2] ? q({"execute":"guest-pi) : qq({"execute":"guest-ping"}\n));
    sleep $ARGV[1];' "$sock" "$d" "$partial" >/dev/null 2>&1
  fault_end "${d}s, partial=$partial"
}

# The control master of the test VM's channel, if one runs, killed with
# SIGKILL: its clients in flight get typed errors, the next starts a new
# one. What its runs had made in the guest may stay (a directory per run
# in flight, swept by later runs): allowed, one per worker.
fault_master_kill() {
  local pid
  fault_begin master_kill
  pid="$(vm control check "$sock" 2>/dev/null | jq -r '.pid // empty' 2>/dev/null)"
  if [[ "$pid" =~ ^[0-9]+$ ]] && kill -KILL "$pid" 2>/dev/null; then
    for _ in $(seq "$workers"); do echo "follow master-kill" >>"$leftok"; done
    fault_end "pid $pid"
  else
    fault_end "none running"
  fi
}

# libvirtd and its virtlogd stopped (SIGTERM) and started again (`start`
# starts both); the domain runs on, libvirtd finds it again.
fault_libvirtd_restart() {
  local pid logd n=0
  fault_begin libvirtd_restart
  pid="$(lv_pid)"
  logd="$(lvenv_ status 2>/dev/null | sed -n 's/^virtlogd: \([0-9][0-9]*\)$/\1/p')"
  [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null
  while [ -n "$pid" ] && [ -e "/proc/$pid" ] && [ $n -lt 300 ]; do
    n=$((n + 1))
    sleep 0.1
  done
  [ -n "$logd" ] && kill -TERM "$logd" 2>/dev/null
  while [ -n "$logd" ] && [ -e "/proc/$logd" ] && [ $n -lt 300 ]; do
    n=$((n + 1))
    sleep 0.1
  done
  lvenv_ start >>"$dir/libvirt.log" 2>&1 || echo "soak: libvirtd did not start again" >&2
  wait_agent "$lvname" || echo "soak: the libvirt domain's agent did not answer after a restart" >&2
  fault_end "SIGTERM to $pid, $((n / 10)).$((n % 10))s to stop"
}

injector() {
  RANDOM=$((seed * 10 + 9))
  local pick kinds=5
  [ "$lv_restartable" = 1 ] && kinds=6
  while :; do
    sleep "$(($((RANDOM % 6)) + 2))"
    [ "$(now_ms)" -lt "$((deadline_ms - 2000))" ] || break
    pick="$((RANDOM % kinds))"
    case "$pick" in
      0) fault_agent_restart ;;
      1) fault_pause ;;
      2) fault_fill_tmp ;;
      3) fault_foreign ;;
      4) fault_master_kill ;;
      5) fault_libvirtd_restart ;;
    esac
  done
}

# --- Run -------------------------------------------------------------------

for w in $(seq 1 "$workers"); do
  worker "$w" &
  bg_pids+=($!)
done
injector &
bg_pids+=($!)
for pid in "${bg_pids[@]}"; do
  wait "$pid"
done
bg_pids=()

# --- Final checks ------------------------------------------------------------

op_kind=final op_id=end op_faults=none
[ -f "$dir/fault.cur" ] && violation final end none "a fault was still active at the end: $(cat "$dir/fault.cur")"
vm qmp "$qmp" '{"execute":"cont"}' >/dev/null 2>&1
guest_sh "$fill_stop" >/dev/null 2>&1
follow_dirs=0 marks=""
for g in "${guests[@]}"; do
  if ! wait_agent "$g"; then
    violation final end none "the agent of $g does not answer at the end"
  fi

  # Programs: each ends within 12 s on its own; wait for them, then none may be left.
  left=""
  for _ in $(seq 30); do
    left="$(guest_sh 'ps -o pid,stat,args | grep "[s]oakop" ; true' "$g" 2>/dev/null)"
    [ -z "$left" ] && break
    sleep 1
  done
  if [ -n "$left" ]; then
    while read -r line; do
      violation final end none "a program of the soak still runs in $g 30 s after the end: $line"
    done <<<"$left"
  fi

  # A clean copy into /tmp/soak removes what killed copies left there.
  head -c 1000 /dev/urandom >"$dir/host/final"
  if ! out="$(vm copy --verify --no-progress "$dir/host/final" "$g:/tmp/soak/final" 2>&1)"; then
    violation final end none "the copy into $g after the run failed: $out"
  fi
  rm -f "$dir/host/final"
  left="$(guest_sh 'ls -a /tmp/soak | grep "^\.virtomate-"; true' "$g" 2>/dev/null)"
  [ -n "$left" ] && violation final end none "copy leftovers in $g's /tmp/soak: $(echo "$left" | paste -sd' ')"

  n="$(guest_sh 'ls -d /tmp/virtomate-follow-* 2>/dev/null; true' "$g" 2>/dev/null | grep -c . || true)"
  follow_dirs=$((follow_dirs + n))
  marks="$marks$(guest_sh 'ls /soakmark' "$g" 2>/dev/null)"$'\n'
done

# Follow directories: only those of killed runs (or named in a message).
left="$follow_dirs"
allowed="$(grep -cE '^(follow|follow-named|copy_in|copy_out|run_follow|run_maxtime|session) ' "$leftok" || true)"
if [ "$left" -gt "$allowed" ]; then
  violation final end none "$left virtomate-follow-* directories left in the guests, at most $allowed explained by killed runs"
fi

# Host temporary files of copies out: only killed ones may leave them.
left="$(find "$dir/host" -name '.*.virtomate-*' | wc -l)"
allowed="$(grep -cE '^copy_out ' "$leftok" || true)"
[ "$left" -gt "$allowed" ] && violation final end none "$left host temporary files left, at most $allowed explained by killed copies"

# "Nothing was started" must be true: no mark of the program in the guests.
while read -r kind id; do
  [ -n "${id:-}" ] || continue
  if grep -qE "^$id(-|$)" <<<"$marks"; then
    violation "$kind" "$id" unknown "said nothing was started, but the program ran"
  fi
done <"$claims"

# The masters end on request (each guest's, by its socket or name); then
# none of ours may be left either.
for g in "$sock" "${guests[@]:1}"; do
  vm control exit "$g" >/dev/null 2>&1 || true
done
for _ in $(seq 50); do
  pgrep -f "virtomate.* control serve .*$sock" >/dev/null || break
  sleep 0.1
done

# Locks: nobody holds the channel's lock now, and no virtomate of ours is left.
if [ -e "$lockfile" ] && ! flock -n -E 99 "$lockfile" true; then
  violation final end none "the lock $lockfile is still held after the run"
fi
t0="$(now_ms)"
if ! vm guest-ping "$sock" >/dev/null 2>&1 || [ $(($(now_ms) - t0)) -gt 3000 ]; then
  violation final end none "a ping after the run failed or took $(($(now_ms) - t0)) ms"
fi
for p in $(pgrep -x virtomate); do
  if { tr '\0' '\n' <"/proc/$p/environ"; } 2>/dev/null | grep -qx "SOAK_TAG=$SOAK_TAG"; then
    violation final end none "virtomate process $p of the soak still runs: $(tr '\0' ' ' <"/proc/$p/cmdline")"
  fi
done

# --- Summary -----------------------------------------------------------------

n_ops="$(grep -c . "$oplog" || true)"
n_local="$(grep -c . "$dir/faults.local" 2>/dev/null || true)"
n_faults=$(($(grep -c . "$faultlog" || true) + ${n_local:-0}))
n_viol="$(grep -c . "$violog" || true)"
by_kind="$( { awk '{ print $3 }' "$faultlog"; awk '{ print $3 }' "$dir/faults.local" 2>/dev/null; } \
  | sort | uniq -c | awk '{ printf "%s%s=%s", sep, $2, $1; sep=" " }')"
ops_kind="$(awk '{ print $2 }' "$oplog" | sort | uniq -c | awk '{ printf "%s%s=%s", sep, $2, $1; sep=" " }')"
echo "soak: seed $seed, $(( ($(now_ms) - start_ms) / 1000 )) s; operations: $ops_kind; faults: ${by_kind:-none}"
if [ "$n_viol" -eq 0 ]; then
  rm -rf "$dir/ops" "$dir/host"
else
  echo "soak: logs in $dir (replay with SOAK_SEED=$seed scripts/soak.sh $minutes)"
fi
echo "soak: $n_ops operations, $n_faults faults, $n_viol violations"
[ "$n_viol" -eq 0 ]
