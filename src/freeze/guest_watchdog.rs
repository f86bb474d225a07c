//! The watchdog in the guest: a shell loop started through the agent
//! before the freeze (while frozen the agent starts nothing), which at its
//! deadline thaws the file systems itself and, if the agent is still in
//! its frozen state, restarts the agent without its frozen-state file.
//! It is the one guard that works when the host cannot reach the agent.

use virtomate_protocol::qga::GuestExec;

use crate::agent::DomainAgent;
use crate::error::{CliError, ErrorKind};

/// What the guest watchdog is armed with: `$1` the freeze's token, `$2`
/// the seconds until it acts. `$PPID` is the agent, whose child every
/// `guest-exec` program is.
///
/// Its deadline is counted twice, and the first to pass wins: by the
/// guest's uptime, and by the RTC, which follows the host's clock and so
/// keeps counting while the VM is paused (the guest's clocks stop). It
/// only reads until then: writing to a frozen file system would block.
/// At the deadline it gives up quietly if its token is no longer in the
/// token file (disarmed after a thaw, or another freeze armed since);
/// else it thaws every file system on a block device (FITHAW through
/// `fsfreeze --unfreeze`, util-linux's or busybox's) and, if the agent's
/// `qga.state.isfrozen` is still there, removes it and kills the agent
/// (SIGKILL: a frozen agent ignores SIGTERM), first moving itself to the
/// root cgroup (v2, or v1's systemd hierarchy) so that systemd, which
/// kills the whole unit, spares the watchdog. It then waits, two seconds
/// at most, until the agent has exited (a zombie has no `exe`): until
/// then its port is taken, and a new agent started meanwhile ends at
/// once ("Device or resource busy"). An agent that runs as a systemd
/// service is left a second for systemd to restart it (Debian's unit has
/// `Restart=always`); any other, or one systemd has not restarted, the
/// watchdog starts again as it was started, read from `/proc/PID/cmdline`
/// while armed.
const ARM_SCRIPT: &str = r#"token=$1 seconds=$2 agent=$PPID
for base in /run /dev/shm /tmp; do [ -d "$base" ] && [ -w "$base" ] && break; done
dir=$base/virtomate-freeze-$agent
missing=
for tool in fsfreeze sleep kill readlink tr cat; do
  command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
if [ -n "$missing" ]; then echo "missing:$missing"; exit 3; fi
mkdir -p "$dir" && exe=$(readlink "/proc/$agent/exe") \
  && tr '\0' '\n' <"/proc/$agent/cmdline" >"$dir/argv" || exit 4
statedir= prev= conf=/etc/qemu/qemu-ga.conf
while IFS= read -r arg; do
  case $prev in -t|--statedir) statedir=$arg ;; -c|--config) conf=$arg ;; esac
  case $arg in
    --statedir=*) statedir=${arg#*=} ;; -t?*) statedir=${arg#-t} ;; --config=*) conf=${arg#*=} ;;
  esac
  prev=$arg
done <"$dir/argv"
if [ -z "$statedir" ] && [ -r "$conf" ]; then
  statedir=$(sed -n 's/^[[:space:]]*statedir[[:space:]]*=[[:space:]]*//p' "$conf" 2>/dev/null | tail -n 1)
fi
statedir=${statedir:-/var/run}
read -r up _ </proc/uptime
rtc=
read -r rtc 2>/dev/null </sys/class/rtc/rtc0/since_epoch || rtc=
up_end=$((${up%%.*} + seconds)) rtc_end=$((${rtc:-0} + seconds + 1))
supervised=
if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
  while read -r line; do case $line in *.service*) supervised=1 ;; esac; done <"/proc/$agent/cgroup"
fi
echo "$token" >"$dir/token" || exit 4
same_agent() { [ "$(tr '\0' '\n' <"$1/cmdline" 2>/dev/null)" = "$(cat "$dir/argv")" ]; }
(
  while :; do
    read -r now 2>/dev/null <"$dir/token" && [ "$now" = "$token" ] || exit 0
    read -r now _ </proc/uptime
    [ "${now%%.*}" -ge "$up_end" ] && break
    if [ -n "$rtc" ] && read -r now 2>/dev/null </sys/class/rtc/rtc0/since_epoch \
      && [ "$now" -ge "$rtc_end" ]; then break; fi
    sleep 1
  done
  while read -r _ _ devno _ mountpoint _; do
    case $devno in 0:*) ;; *) fsfreeze --unfreeze "$mountpoint" ;; esac
  done </proc/self/mountinfo
  if [ -e "$statedir/qga.state.isfrozen" ]; then
    echo 0 >/sys/fs/cgroup/cgroup.procs || echo 0 >/sys/fs/cgroup/systemd/cgroup.procs
    rm -f "$statedir/qga.state.isfrozen"
    [ "$(readlink "/proc/$agent/exe")" = "$exe" ] && kill -9 "$agent"
    waited=0
    while [ "$(readlink "/proc/$agent/exe" 2>/dev/null)" = "$exe" ] && [ "$waited" -lt 2 ]; do
      sleep 1; waited=$((waited + 1))
    done
    if [ -n "$supervised" ]; then
      sleep 1
      for proc in /proc/[0-9]*; do
        [ "$proc" != "/proc/$agent" ] && same_agent "$proc" && { rm -rf "$dir"; exit 0; }
      done
    fi
    set --
    while IFS= read -r arg; do set -- "$@" "$arg"; done <"$dir/argv"
    shift
    if command -v setsid >/dev/null 2>&1; then setsid "$exe" "$@" & else "$exe" "$@" & fi
  fi
  rm -rf "$dir"
) </dev/null >/dev/null 2>&1 &
echo armed"#;

/// Removes the token file (and directory) of this agent's watchdog, which then gives up
/// within a second: only if it holds `$1`, or whatever it holds when `$1`
/// is empty (`guest-thaw`, which knows no token).
const DISARM_SCRIPT: &str = r#"for base in /run /dev/shm /tmp; do
  dir=$base/virtomate-freeze-$PPID
  read -r token 2>/dev/null <"$dir/token" || continue
  if [ -z "$1" ] || [ "$token" = "$1" ]; then rm -rf "$dir"; fi
done"#;

/// The most of the guest's output an error shows, in characters.
const SHOWN_OUTPUT: usize = 200;

/// What `$0` of the watchdog's shell is, to tell it in a process list.
const NAME: &str = "virtomate-freeze-watchdog";

/// Starts the watchdog for the freeze `token`, to act after `seconds`;
/// returns once it is armed.
pub async fn arm(agent: &mut DomainAgent, token: &str, seconds: u64) -> Result<(), CliError> {
    let seconds = seconds.to_string();
    let stdout = run_script(agent, ARM_SCRIPT, &[token, &seconds]).await?;
    // The guest's words, shown in an error: a line's worth at most.
    let stdout: String = stdout.trim().chars().take(SHOWN_OUTPUT).collect();
    match stdout.as_str() {
        "armed" => Ok(()),
        missing if missing.starts_with("missing:") => Err(CliError::new(
            ErrorKind::Freeze,
            format!(
                "the guest lacks what the watchdog that thaws it at --max-time needs ({}); \
                 nothing was frozen",
                missing.trim_start_matches("missing:").trim()
            ),
        )
        .with_hint("install util-linux (fsfreeze) or busybox in the guest")),
        other => Err(CliError::new(
            ErrorKind::Freeze,
            format!(
                "the watchdog that thaws the guest at --max-time could not be armed ({other:?}); \
                 nothing was frozen"
            ),
        )),
    }
}

/// Stands the watchdog of freeze `token` down (any of this agent's, for
/// `None`) after a thaw: the guest is no longer frozen, and a watchdog
/// left armed could thaw a later freeze that is none of its business.
pub async fn disarm(agent: &mut DomainAgent, token: Option<&str>) -> Result<(), CliError> {
    run_script(agent, DISARM_SCRIPT, &[token.unwrap_or("")])
        .await
        .map(drop)
}

/// Runs `script` with `sh -c` and returns its standard output.
async fn run_script(agent: &mut DomainAgent, script: &str, args: &[&str]) -> Result<String, CliError> {
    let mut argv = vec!["-c", script, NAME];
    argv.extend(args);
    let started = agent.execute(&GuestExec::new("sh", argv)).await?;
    let finished = agent.wait_for_exit(started.pid).await?;
    Ok(String::from_utf8_lossy(finished.status.out_data.as_deref().unwrap_or_default()).into_owned())
}
