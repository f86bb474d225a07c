//! Running a program to completion: `guest-exec`, then polling
//! `guest-exec-status`, since the agent never announces that a program ended.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep, sleep_until, Instant};

use crate::channel::LOOK_FOR_WAITERS;
use crate::qga::{GuestExec, GuestExecStatus, GuestExecStatusReply};
use crate::{Agent, Channel, Connector, Error, HoldPolicy, QgaClient};

/// When to ask again whether a program has ended.
///
/// The first poll goes out at once; after that the pause grows with the
/// time already waited (a fixed fraction of it, within bounds), so a short
/// program is seen to end within a few per cent of its run time while a
/// long one costs only a few polls a second.
///
/// ```
/// use std::time::Duration;
/// use virtomate_protocol::PollSchedule;
///
/// let schedule = PollSchedule::default();
/// assert_eq!(schedule.pause_after(Duration::ZERO), Duration::from_millis(1));
/// assert_eq!(schedule.pause_after(Duration::from_secs(60)), Duration::from_millis(100));
/// assert_eq!(PollSchedule::BACK_TO_BACK.pause_after(Duration::from_secs(1)), Duration::ZERO);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollSchedule {
    /// The shortest pause between two polls.
    pub min_pause: Duration,
    /// The longest pause between two polls.
    pub max_pause: Duration,
    /// The pause is the time waited so far divided by this.
    pub divisor: u32,
}

impl PollSchedule {
    /// No pause at all: the protocol's floor, for measurements.
    ///
    /// ```no_run
    /// use std::time::Instant;
    /// use virtomate_protocol::{ClientOptions, PollSchedule, QgaClient};
    /// use virtomate_protocol::qga::GuestExec;
    ///
    /// # async fn demo() -> Result<(), virtomate_protocol::Error> {
    /// # let mut agent = QgaClient::connect("/run/vm/qga.sock", ClientOptions::default()).await?;
    /// let started = agent.execute(&GuestExec::new("sleep", ["1"])).await?;
    /// let clock = Instant::now();
    /// let finished = agent.wait_for_exit(started.pid, PollSchedule::BACK_TO_BACK).await?;
    /// println!("{:?} per guest-exec-status", clock.elapsed() / finished.polls);
    /// # Ok(()) }
    /// ```
    pub const BACK_TO_BACK: PollSchedule = PollSchedule {
        min_pause: Duration::ZERO,
        max_pause: Duration::ZERO,
        divisor: 1,
    };

    /// The pause before the next poll, `waited` after the program started.
    ///
    /// ```
    /// use std::time::Duration;
    /// use virtomate_protocol::PollSchedule;
    ///
    /// // Fewer polls for a program known to run for minutes.
    /// let patient = PollSchedule { max_pause: Duration::from_secs(1), ..PollSchedule::default() };
    /// assert_eq!(patient.pause_after(Duration::from_secs(5)), Duration::from_millis(500));
    /// assert_eq!(patient.pause_after(Duration::from_secs(600)), Duration::from_secs(1));
    /// ```
    pub fn pause_after(&self, waited: Duration) -> Duration {
        (waited / self.divisor.max(1)).clamp(self.min_pause, self.max_pause)
    }
}

impl Default for PollSchedule {
    fn default() -> Self {
        PollSchedule {
            min_pause: Duration::from_millis(1),
            max_pause: Duration::from_millis(100),
            divisor: 10,
        }
    }
}

/// A finished program's status and how many polls it took to see it end.
///
/// ```
/// use virtomate_protocol::{wait_for_exit, PollSchedule};
/// # use virtomate_protocol::{qga::Command, Agent, Error};
/// # use serde_json::Value;
/// # use std::time::Duration;
/// # /// An agent whose program ends at the third poll.
/// # struct Scripted(u32);
/// # impl Agent for Scripted {
/// #     async fn execute<C: Command>(&mut self, _: &C) -> Result<C::Output, Error> {
/// #         self.0 += 1;
/// #         let reply = match self.0 {
/// #             3 => r#"{"exited": true, "exitcode": 0, "out-data": "SGVsbG8=", "out-truncated": false}"#,
/// #             _ => r#"{"exited": false}"#,
/// #         };
/// #         Ok(serde_json::from_str(reply).unwrap())
/// #     }
/// #     async fn execute_json(&mut self, _: &str, _: Option<&Value>) -> Result<Value, Error> {
/// #         unreachable!()
/// #     }
/// #     async fn execute_without_reply(
/// #         &mut self,
/// #         _: &str,
/// #         _: Option<&Value>,
/// #         _: Duration,
/// #     ) -> Result<(), Error> {
/// #         unreachable!()
/// #     }
/// # }
///
/// # tokio_test::block_on(async {
/// # let mut agent = Scripted(0);
/// let finished = wait_for_exit(&mut agent, 1234, PollSchedule::default()).await?;
/// assert_eq!(finished.polls, 3);
/// assert_eq!(finished.status.exitcode, Some(0));
/// assert_eq!(finished.status.out_data.as_deref(), Some(&b"Hello"[..]));
/// # Ok::<(), Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Finished {
    /// The last `guest-exec-status` reply, with `exited: true`.
    pub status: GuestExecStatusReply,
    /// Number of `guest-exec-status` requests sent.
    pub polls: u32,
}

impl<S: AsyncRead + AsyncWrite + Unpin> QgaClient<S> {
    /// Polls `guest-exec-status` for `pid` until the program has exited;
    /// see [`wait_for_exit`].
    ///
    /// ```no_run
    /// use virtomate_protocol::{ClientOptions, PollSchedule, QgaClient};
    /// use virtomate_protocol::qga::GuestExec;
    ///
    /// # async fn demo() -> Result<(), virtomate_protocol::Error> {
    /// let mut agent = QgaClient::connect("/run/vm/qga.sock", ClientOptions::default()).await?;
    /// let started = agent.execute(&GuestExec::new("uname", ["-r"])).await?;
    /// let finished = agent.wait_for_exit(started.pid, PollSchedule::default()).await?;
    /// println!("{:?}", finished.status.out_data);
    /// # Ok(()) }
    /// ```
    pub async fn wait_for_exit(&mut self, pid: i64, schedule: PollSchedule) -> Result<Finished, Error> {
        wait_for_exit(self, pid, schedule).await
    }
}

/// Polls `guest-exec-status` for `pid` through any [`Agent`] until the
/// program has exited.
///
/// Waits as long as the program runs; each single reply is still bound by
/// the agent's reply timeout.
///
/// ```no_run
/// use virtomate_protocol::{wait_for_exit, Agent, PollSchedule};
/// use virtomate_protocol::qga::GuestExec;
///
/// # async fn demo(agent: &mut impl Agent) -> Result<(), virtomate_protocol::Error> {
/// let started = agent.execute(&GuestExec::new("true", [""; 0])).await?;
/// let finished = wait_for_exit(agent, started.pid, PollSchedule::default()).await?;
/// assert_eq!(finished.status.exitcode, Some(0));
/// # Ok(()) }
/// ```
pub async fn wait_for_exit<A: Agent>(
    agent: &mut A,
    pid: i64,
    schedule: PollSchedule,
) -> Result<Finished, Error> {
    let finished = poll_to_exit(agent, pid, schedule, None).await?;
    Ok(finished.expect("without a deadline, polls end only at the exit"))
}

/// What waiting for one program's end asks of whatever carries the polls:
/// a status, and a pause before the next, in which a shared channel may
/// let other clients in ([`wait_for_exit_on`]).
pub(crate) trait Poller {
    /// The program's status, asked once.
    fn status(&mut self, pid: i64) -> impl Future<Output = Result<GuestExecStatusReply, Error>>;

    /// Waits until `resume`, `waited` into the wait for the program.
    fn pause(&mut self, resume: Instant, waited: Duration) -> impl Future<Output = ()>;
}

impl<A: Agent> Poller for A {
    async fn status(&mut self, pid: i64) -> Result<GuestExecStatusReply, Error> {
        self.execute(&GuestExecStatus { pid }).await
    }

    async fn pause(&mut self, resume: Instant, _waited: Duration) {
        // A timer, even one due already, would wait for the next tick.
        if resume > Instant::now() {
            sleep_until(resume).await;
        }
    }
}

/// The one loop that waits for one program: polls `pid` as `schedule`
/// says until it has exited, or until `deadline` has passed (`None`).
pub(crate) async fn poll_to_exit<P: Poller>(
    poller: &mut P,
    pid: i64,
    schedule: PollSchedule,
    deadline: Option<Instant>,
) -> Result<Option<Finished>, Error> {
    let started = Instant::now();
    let mut polls = 0;
    loop {
        polls += 1;
        let status = poller.status(pid).await?;
        if status.exited {
            return Ok(Some(Finished { status, polls }));
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return Ok(None);
        }
        let waited = started.elapsed();
        poller
            .pause(Instant::now() + schedule.pause_after(waited), waited)
            .await;
    }
}

/// Polls `guest-exec-status` for `pid` over `channel` until the program
/// has exited, holding the channel between polls as `hold` says and
/// letting go of it otherwise.
///
/// ```no_run
/// use virtomate_protocol::{
///     wait_for_exit_on, Channel, ClientOptions, HoldPolicy, PollSchedule, SocketConnector,
/// };
/// use virtomate_protocol::qga::GuestExec;
///
/// # async fn demo() -> Result<(), virtomate_protocol::Error> {
/// let mut channel = Channel::new(SocketConnector::new("/run/vm/qga.sock", ClientOptions::default()));
/// let pid = channel.guest_exec(&GuestExec::new("sleep", ["60"])).await?.pid;
/// // Other processes' runs go on meanwhile, between our polls.
/// let finished = wait_for_exit_on(&mut channel, pid, PollSchedule::default(), HoldPolicy::default()).await?;
/// channel.release().await;
/// # Ok(()) }
/// ```
pub async fn wait_for_exit_on<C: Connector>(
    channel: &mut Channel<C>,
    pid: i64,
    schedule: PollSchedule,
    hold: HoldPolicy,
) -> Result<Finished, Error> {
    let mut sharing = Sharing { channel, hold };
    let finished = poll_to_exit(&mut sharing, pid, schedule, None).await;
    // What the channel does next (a start, say) may not wait.
    sharing.channel.set_patience(Duration::ZERO);
    Ok(finished?.expect("without a deadline, polls end only at the exit"))
}

/// The status of `pid`, asked once over `channel`, and asked again on a
/// new connection where the go-between went away under it, not the agent
/// (see [`Connector::outlives_disconnect`]). An end told in the lost reply
/// is one the agent has forgotten since: the loss stands
/// ([`Error::Disconnected`]).
///
/// ```no_run
/// use virtomate_protocol::{status_on, Channel, ClientOptions, SocketConnector};
/// use virtomate_protocol::qga::GuestExec;
///
/// # async fn demo() -> Result<(), virtomate_protocol::Error> {
/// let mut channel = Channel::new(SocketConnector::new("/run/vm/qga.sock", ClientOptions::default()));
/// let pid = channel.guest_exec(&GuestExec::new("tar", ["cf", "/tmp/etc.tar", "/etc"])).await?.pid;
/// while !status_on(&mut channel, pid).await?.exited {
///     // Read what it wrote so far, say, then pause.
///     tokio::time::sleep(std::time::Duration::from_millis(100)).await;
/// }
/// # Ok(()) }
/// ```
pub async fn status_on<C: Connector>(
    channel: &mut Channel<C>,
    pid: i64,
) -> Result<GuestExecStatusReply, Error> {
    let status = channel.execute(&GuestExecStatus { pid }).await;
    if !matches!(status, Err(Error::Disconnected)) || !channel.connector().outlives_disconnect() {
        return status;
    }
    match channel.execute(&GuestExecStatus { pid }).await {
        Err(Error::Agent { .. }) => Err(Error::Disconnected),
        again => again,
    }
}

/// Polls over a channel held through the pauses and let go as soon as
/// another client wants it: it then connects while the agent is awake.
struct Sharing<'a, C: Connector> {
    channel: &'a mut Channel<C>,
    hold: HoldPolicy,
}

impl<C: Connector> Poller for Sharing<'_, C> {
    async fn status(&mut self, pid: i64) -> Result<GuestExecStatusReply, Error> {
        status_on(self.channel, pid).await
    }

    async fn pause(&mut self, resume: Instant, waited: Duration) {
        let young = waited < self.hold.young;
        let patience = if young { Duration::ZERO } else { self.hold.patience };
        self.channel.set_patience(patience);
        loop {
            self.channel.share(young, self.hold).await;
            let now = Instant::now();
            if now >= resume {
                return;
            }
            match self.channel.is_connected() {
                true => sleep(LOOK_FOR_WAITERS.min(resume - now)).await,
                false => sleep_until(resume).await,
            }
        }
    }
}

/// How long [`stop_group`] asks for the end of a program it killed: a
/// killed process ends at once, so one that is not seen to end is held up
/// by what holds its output ([`Error::EndNotReported`]).
const KILLED_WAIT: Duration = Duration::from_secs(5);

/// How [`stop_group`] ended a program.
#[derive(Debug, Clone)]
pub struct Stopped {
    /// The program's last status, with `exited: true`.
    pub finished: Finished,
    /// Whether it had to be asked: false when it had ended by itself by
    /// the time its status was read, just before SIGTERM would have gone.
    pub asked: bool,
    /// Whether it outlived the grace period and got SIGKILL.
    pub killed: bool,
}

/// What [`stop_group`] signals besides the program itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StopScope {
    /// The program alone.
    Program,
    /// The process group the program leads ([`GuestExec::as_group_leader`]).
    ///
    /// [`GuestExec::as_group_leader`]: crate::qga::GuestExec::as_group_leader
    Group,
    /// The program and its descendants, found in the guest's `/proc` when
    /// the program is stopped ([`TREE_SCRIPT`]): no need to start it in any
    /// special way, but a process that left the tree before (a daemon that
    /// double-forked, whose parent exited) is not reached.
    #[default]
    Tree,
}

/// The POSIX `sh` script (dash, busybox ash, bash) that signals a process
/// tree, run as `/bin/sh -c TREE_SCRIPT sh PID SIGNAL [PID...]`.
///
/// It freezes `PID` with SIGSTOP, then repeatedly reads every
/// `/proc/*/stat` (the parent pid is the second field after the last `) `,
/// since the command name may hold spaces and parentheses) and freezes
/// each process whose parent it has already found, until a pass finds no
/// new one: frozen, none can exit and have its children reparented away
/// while the tree is collected, nor start new ones. It then sends `SIGNAL`
/// to all of them and to the extra `PID`s (those a first call found, which
/// may have been reparented since), then SIGCONT, and prints the pids it
/// signalled, one per line. Only shell builtins run per process (`read`,
/// `kill`, `[`), so a walk costs one `guest-exec`, whatever the number of
/// processes.
///
/// A process outside the tree that holds one of the agent's pipes which
/// carry the program's output (a daemon it started, whose parent exited)
/// is found in the first pass (its open files compared with `[ -ef ]`)
/// and stopped with the tree, with its own descendants: while it holds
/// them, the agent never reports the program's end.
pub const TREE_SCRIPT: &str = r#"r=$1 sig=$2; shift 2; extra=$*
all=" $r " more=1 pipes= agent=
kill -s STOP "$r" 2>/dev/null
{ read -r s <"/proc/$r/stat"; } 2>/dev/null && { s=${s##*) }; set -- $s; agent=$2; }
for n in 1 2; do
  f=/proc/$r/fd/$n
  [ -n "$agent" ] && [ -p "$f" ] || continue
  for g in /proc/"$agent"/fd/*; do [ "$g" -ef "$f" ] && { pipes="$pipes $f"; break; }; done
done
while [ -n "$more" ]; do
  more=
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    case $all in *" $p "*) continue ;; esac
    { read -r s <"$d/stat"; } 2>/dev/null || continue
    s=${s##*) }
    set -- $s
    held=
    case $all in *" $2 "*) held=1 ;; esac
    if [ -z "$held" ] && [ -n "$pipes" ] && [ "$p" != "$agent" ] && [ "$p" != $$ ]; then
      for g in "$d"/fd/*; do for f in $pipes; do [ "$g" -ef "$f" ] && held=1; done; done 2>/dev/null
    fi
    [ -n "$held" ] && { kill -s STOP "$p" 2>/dev/null; all="$all$p "; more=1; }
  done
  pipes=
done
for p in $all $extra; do kill -s "$sig" "$p"; done 2>/dev/null
for p in $all; do kill -s CONT "$p"; done 2>/dev/null
for p in $all $extra; do echo "$p"; done
"#;

/// Stops the program `pid` with SIGTERM and, if it still runs after
/// `grace`, SIGKILL; then waits for it to be reaped and returns its status.
///
/// The agent has no command for this, so the signals are sent by a
/// `guest-exec` in the guest, as `scope` says:
///
/// - [`StopScope::Tree`]: one `guest-exec` of `/bin/sh` with
///   [`TREE_SCRIPT`] finds the program's descendants, freezes them, and
///   sends SIGTERM to all; the pids it found are kept, and if the program
///   still runs after `grace`, a second walk sends SIGKILL to the tree as
///   it is then and to those pids. Between the two, a pid that ended may
///   have been reused by an unrelated process (in the few seconds of
///   grace; unlikely, as Linux hands out pids in increasing order). A guest
///   without `/bin/sh` gets the signals sent to the program alone.
/// - [`StopScope::Group`]: `kill` of the process group `pid` leads
///   ([`GuestExec::as_group_leader`]).
/// - [`StopScope::Program`]: `kill` of the program alone.
///
/// When the program ends within the grace, nothing more is sent: a child
/// that ignores SIGTERM and outlives it is left running.
///
/// [`GuestExec::as_group_leader`]: crate::qga::GuestExec::as_group_leader
///
/// ```no_run
/// use std::time::Duration;
/// use virtomate_protocol::qga::GuestExec;
/// use virtomate_protocol::{stop_group, Agent, StopScope};
///
/// # async fn demo(agent: &mut impl Agent) -> Result<(), virtomate_protocol::Error> {
/// let exec = GuestExec::new("sh", ["-c", "sleep 600 | cat"]);
/// let pid = agent.guest_exec(&exec).await?.pid;
/// let stopped = stop_group(agent, pid, Duration::from_secs(5), StopScope::Tree).await?;
/// assert_eq!(stopped.finished.status.signal, Some(15));
/// # Ok(()) }
/// ```
pub async fn stop_group<A: Agent>(
    agent: &mut A,
    pid: i64,
    grace: Duration,
    scope: StopScope,
) -> Result<Stopped, Error> {
    // Whether it still runs, asked just before the signal: `kill`'s own
    // exit status cannot tell (busybox's complains of the `--` that
    // procps's needs, and signals all the same).
    let status = agent.execute(&GuestExecStatus { pid }).await?;
    if status.exited {
        let finished = Finished { status, polls: 1 };
        return Ok(Stopped {
            finished,
            asked: false,
            killed: false,
        });
    }
    let found = send_signal(agent, "TERM", pid, scope, &[]).await?;
    let schedule = PollSchedule::default();
    let deadline = Instant::now() + grace;
    if let Some(mut finished) = poll_to_exit(agent, pid, schedule, Some(deadline)).await? {
        finished.polls += 1;
        return Ok(Stopped {
            finished,
            asked: true,
            killed: false,
        });
    }
    send_signal(agent, "KILL", pid, scope, &found).await?;
    let waited = grace.max(KILLED_WAIT);
    let Some(finished) = poll_to_exit(agent, pid, schedule, Some(Instant::now() + waited)).await? else {
        return Err(Error::EndNotReported { pid, waited });
    };
    Ok(Stopped {
        finished,
        asked: true,
        killed: true,
    })
}

/// Sends `signal` as `scope` says and returns the pids signalled where
/// known (the tree's; `extra` are signalled too). The exit status of the
/// guest's `kill` is not looked at: busybox's refuses the `--` (which
/// procps's needs before a negative pid) yet signals the pid.
async fn send_signal<A: Agent>(
    agent: &mut A,
    signal: &str,
    pid: i64,
    scope: StopScope,
    extra: &[i64],
) -> Result<Vec<i64>, Error> {
    let target = match scope {
        StopScope::Tree => {
            let mut args = vec!["-c".to_owned(), TREE_SCRIPT.to_owned(), "sh".to_owned()];
            args.extend([pid.to_string(), signal.to_owned()]);
            args.extend(extra.iter().map(i64::to_string));
            match agent.guest_exec(&GuestExec::new("/bin/sh", args)).await {
                Ok(started) => {
                    let finished = wait_for_exit(agent, started.pid, PollSchedule::default()).await?;
                    let out = finished.status.out_data.unwrap_or_default();
                    let pids = String::from_utf8_lossy(&out)
                        .lines()
                        .filter_map(|line| line.trim().parse().ok())
                        .collect();
                    return Ok(pids);
                }
                // No /bin/sh (a Windows guest would need `taskkill /T /F`).
                Err(Error::Agent { .. }) => pid.to_string(),
                Err(e) => return Err(e),
            }
        }
        StopScope::Group => format!("-{pid}"),
        StopScope::Program => pid.to_string(),
    };
    let kill = GuestExec::new("kill", ["-s", signal, "--", &target]);
    let killer = agent.guest_exec(&kill).await?.pid;
    wait_for_exit(agent, killer, PollSchedule::default()).await?;
    Ok(Vec::new())
}
