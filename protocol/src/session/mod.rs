//! Many requests over one agent connection: programs started one after the
//! other, running side by side in the guest, their status polls
//! interleaved on the connection, each answered as it ends.
//!
//! The connection stays open while requests keep coming (and while a
//! program is young), and is let go once the session has been idle for
//! [`SessionOptions::idle`], or at once when another client waits for the
//! channel; the next exchange connects again. A connection the agent drops
//! fails the programs in flight (the agent that comes back may not know
//! them) and the next request connects afresh.
//!
//! ```no_run
//! use tokio::sync::mpsc;
//! use virtomate_protocol::session::{Outcome, Request, RunRequest, Session, SessionOptions};
//! use virtomate_protocol::{ClientOptions, SocketConnector};
//!
//! # async fn demo() {
//! let connector = SocketConnector::new("/run/vm/qga.sock", ClientOptions::default());
//! let mut session = Session::new(connector, SessionOptions::default());
//! let (requests, mut incoming) = mpsc::channel(16);
//! requests.send(Request::run(1.into(), RunRequest::new("sleep", ["2"]))).await.unwrap();
//! requests.send(Request::run(2.into(), RunRequest::new("uname", ["-r"]))).await.unwrap();
//! drop(requests); // no more: serve returns once both have ended
//! session
//!     .serve(&mut incoming, |reply| match reply.outcome {
//!         Ok(Outcome::Exited { status, .. }) => println!("{}: exit code {:?}", reply.id, status.exitcode),
//!         Ok(other) => println!("{}: {other:?}", reply.id),
//!         Err(failure) => println!("{}: {}", reply.id, failure.error),
//!     })
//!     .await;
//! session.close().await;
//! # }
//! ```

mod jobs;
mod request;

use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc::Receiver;
use tokio::time::{sleep, sleep_until, Instant};

use jobs::{Incoming, NoJobs};
pub use jobs::{Jobs, Work};
pub use request::{Action, BadRequest, Request, RunRequest};

use crate::channel::LOOK_FOR_WAITERS;
use crate::follow::{Follow, FollowError, FollowOptions, Stream, DIRECT_READ_COUNT};
use crate::qga::{
    environment, CaptureOutput, GuestExec, GuestExecStatus, GuestExecStatusReply, GuestInfo, GuestPing,
};
use crate::{stop_group, Channel, Connector, Error, HoldPolicy, PollSchedule, StopScope};

/// How a session paces itself.
///
/// ```
/// use std::time::Duration;
/// use virtomate_protocol::session::SessionOptions;
///
/// let options = SessionOptions { idle: Duration::from_secs(5), ..SessionOptions::default() };
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    /// The connection is let go after this long without a request.
    pub idle: Duration,
    /// When to poll each running program.
    pub schedule: PollSchedule,
    /// A program younger than this keeps the connection too.
    pub hold: HoldPolicy,
    /// The most bytes one read of a followed program's output asks for:
    /// [`DIRECT_READ_COUNT`], or
    /// [`LIBVIRT_READ_COUNT`](crate::follow::LIBVIRT_READ_COUNT) through
    /// libvirtd.
    pub follow_read_count: u64,
}

impl Default for SessionOptions {
    /// Let go after a second without requests: long enough for a script
    /// that sends its next command once the last has been answered, short
    /// enough that other clients do not wait long.
    fn default() -> Self {
        SessionOptions {
            idle: Duration::from_secs(1),
            schedule: PollSchedule::default(),
            hold: HoldPolicy::default(),
            follow_read_count: DIRECT_READ_COUNT,
        }
    }
}

/// The answer to one request.
///
/// ```
/// use virtomate_protocol::session::{Outcome, Reply};
///
/// fn show(reply: &Reply) -> String {
///     match &reply.outcome {
///         Ok(Outcome::Pong) => format!("{}: the agent answers", reply.id),
///         Ok(Outcome::Exited { pid, .. }) => format!("{}: pid {pid} ended", reply.id),
///         Ok(_) => format!("{}: done", reply.id),
///         Err(failure) => format!("{}: {}", reply.id, failure.error),
///     }
/// }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct Reply {
    /// The request's id.
    pub id: Value,
    /// What came of it.
    pub outcome: Result<Outcome, Failure>,
}

/// What a request that succeeded did.
///
/// ```
/// # use virtomate_protocol::session::Outcome;
/// fn exit_code(outcome: &Outcome) -> Option<i32> {
///     match outcome {
///         Outcome::Exited { status, .. } => status.exitcode,
///         _ => None,
///     }
/// }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// The program ended.
    Exited {
        /// Its guest pid.
        pid: i64,
        /// The last status, with `exited: true` and its output.
        status: GuestExecStatusReply,
        /// The request's `encode`, for showing the output.
        encode: bool,
        /// Whether its `max_time` passed and it had to be stopped.
        timed_out: bool,
    },
    /// The agent answered a ping.
    Pong,
    /// Output of a program run with `follow`, as it was written; many may
    /// come before its end ([`Outcome::Exited`], whose status then has no
    /// output).
    Chunk {
        /// The stream it is from.
        stream: Stream,
        /// The bytes, in order after the last chunk of the same stream.
        bytes: Vec<u8>,
    },
}

/// A request that failed, and how far it had come.
///
/// ```
/// # use virtomate_protocol::session::{Failure, Stage};
/// fn leftover(failure: &Failure) -> Option<i64> {
///     match failure.stage {
///         Stage::Running { pid } => Some(pid), // may still run in the guest
///         _ => None,
///     }
/// }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct Failure {
    /// How far the request had come.
    pub stage: Stage,
    /// What went wrong.
    pub error: Error,
    /// Set when following a program's output failed on the guest's side
    /// rather than the agent's (no `/bin/sh` or writable temporary
    /// directory, the directory removed or full): the error to show, which
    /// `error` restates as [`Error::Io`].
    pub output: Option<FollowError>,
}

/// How far a request had come when it failed or was interrupted.
///
/// ```
/// use virtomate_protocol::session::Stage;
/// assert_ne!(Stage::Connecting, Stage::Running { pid: 1 });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Connecting to the agent: nothing was sent.
    Connecting,
    /// The request was (perhaps partly) sent: a program may have started
    /// under a pid the agent did not tell.
    Starting,
    /// A ping was on its way.
    Pinging,
    /// The program runs as `pid` in the guest.
    Running {
        /// Its guest pid.
        pid: i64,
    },
}

/// A request being worked on, for a caller that stops the session early.
///
/// ```
/// # use virtomate_protocol::session::{InFlight, Stage};
/// fn report(in_flight: &InFlight) -> String {
///     format!("{} left at {:?}", in_flight.id, in_flight.stage)
/// }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct InFlight {
    /// The request's id.
    pub id: Value,
    /// How far it had come.
    pub stage: Stage,
}

/// A program started and not yet seen to end.
#[derive(Debug)]
struct Running {
    id: Value,
    pid: i64,
    encode: bool,
    started: Instant,
    next_poll: Instant,
    /// When to stop it (`max_time`) and how long to give it after SIGTERM.
    stop_at: Option<Instant>,
    grace: Duration,
    /// Its output, when followed.
    follow: Option<Following>,
}

/// A followed program's output files and since when nothing new came.
#[derive(Debug)]
struct Following {
    follow: Follow,
    quiet_since: Instant,
}

/// Why a request failed: the agent's error, whether the agent was
/// connected, and the output's own error when following failed.
type Failed = (Error, bool, Option<FollowError>);

/// A follow error as a [`Failed`].
fn failed(error: FollowError) -> Failed {
    match error {
        FollowError::Agent(error) => (error, true, None),
        other => (
            Error::Io(std::io::Error::other(other.to_string())),
            true,
            Some(other),
        ),
    }
}

/// Requests served over one channel; see the [module](self) docs.
pub struct Session<C: Connector> {
    channel: Channel<C>,
    options: SessionOptions,
    running: Vec<Running>,
    /// The request whose exchange is under way (start or ping), if any.
    current: Option<InFlight>,
    last_request: Instant,
}

impl<C: Connector> std::fmt::Debug for Session<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("connected", &self.channel.is_connected())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl<C: Connector> Session<C> {
    /// A session over connections from `connector`; nothing connects
    /// before the first request.
    ///
    /// ```no_run
    /// use virtomate_protocol::session::{Session, SessionOptions};
    /// use virtomate_protocol::{ClientOptions, SocketConnector};
    ///
    /// let connector = SocketConnector::new("/run/vm/qga.sock", ClientOptions::default());
    /// let session = Session::new(connector, SessionOptions::default());
    /// ```
    pub fn new(connector: C, options: SessionOptions) -> Session<C> {
        Session {
            channel: Channel::new(connector),
            options,
            running: Vec::new(),
            current: None,
            last_request: Instant::now(),
        }
    }

    /// Serves `requests` until the sender is gone and every program has
    /// ended, handing each reply to `reply` as it comes. Dropped early (on
    /// a signal, say), [`in_flight`](Self::in_flight) tells what was left.
    ///
    /// ```no_run
    /// # use virtomate_protocol::session::{Request, Session};
    /// # async fn demo(mut session: Session<virtomate_protocol::SocketConnector>) {
    /// let (requests, mut incoming) = tokio::sync::mpsc::channel(16);
    /// requests.send(Request::ping(1.into())).await.unwrap();
    /// drop(requests);
    /// session.serve(&mut incoming, |reply| println!("{reply:?}")).await;
    /// # }
    /// ```
    pub async fn serve(&mut self, requests: &mut Receiver<Request>, reply: impl FnMut(Reply)) {
        self.serve_from(requests, reply, &mut NoJobs).await;
    }

    /// Serves requests and the caller's jobs, as they come in `work`,
    /// until the sender is gone and every program has ended. A job has
    /// the channel to itself: the programs running meanwhile are polled
    /// once it returns.
    ///
    /// ```no_run
    /// use virtomate_protocol::qga::GuestInfo;
    /// use virtomate_protocol::session::{Jobs, Session, Work};
    /// use virtomate_protocol::{Channel, Connector, SocketConnector};
    ///
    /// struct Versions;
    /// impl<C: Connector> Jobs<C> for Versions {
    ///     type Job = ();
    ///     async fn run(&mut self, (): (), channel: &mut Channel<C>) {
    ///         if let Ok(info) = channel.execute(&GuestInfo {}).await {
    ///             println!("qemu-ga {}", info.version);
    ///         }
    ///     }
    /// }
    ///
    /// # async fn demo(mut session: Session<SocketConnector>) {
    /// let (work, mut incoming) = tokio::sync::mpsc::channel(16);
    /// work.send(Work::Job(())).await.unwrap();
    /// drop(work);
    /// session.serve_jobs(&mut incoming, |reply| println!("{reply:?}"), &mut Versions).await;
    /// # }
    /// ```
    pub async fn serve_jobs<J: Jobs<C>>(
        &mut self,
        work: &mut Receiver<Work<J::Job>>,
        reply: impl FnMut(Reply),
        jobs: &mut J,
    ) {
        self.serve_from(work, reply, jobs).await;
    }

    async fn serve_from<J: Jobs<C>>(
        &mut self,
        work: &mut impl Incoming<J::Job>,
        mut reply: impl FnMut(Reply),
        jobs: &mut J,
    ) {
        let mut open = true;
        loop {
            if !open && self.running.is_empty() {
                return;
            }
            self.let_go_unless_busy().await;
            let next_poll = self.running.iter().map(|run| run.next_poll).min();
            let connected = self.channel.is_connected();
            tokio::select! {
                next = work.next(), if open => {
                    if next.is_some() {
                        self.last_request = Instant::now();
                    }
                    match next {
                        Some(Work::Request(request)) => self.handle(request, &mut reply).await,
                        Some(Work::Job(job)) => {
                            self.channel.set_patience(Duration::ZERO);
                            jobs.run(job, &mut self.channel).await;
                            self.last_request = Instant::now();
                        }
                        None => open = false,
                    }
                },
                () = sleep_until(next_poll.unwrap_or_else(Instant::now)), if next_poll.is_some() => {
                    self.poll_next(&mut reply).await;
                }
                () = sleep(LOOK_FOR_WAITERS), if connected => {}
            }
        }
    }

    /// The channel, for work after [`serve_jobs`](Self::serve_jobs) was
    /// cut short: cleaning up after a job, say.
    ///
    /// ```no_run
    /// # use virtomate_protocol::{qga::GuestPing, session::Session, SocketConnector};
    /// # async fn demo(mut session: Session<SocketConnector>) {
    /// let answers = session.channel().execute(&GuestPing {}).await.is_ok();
    /// # }
    /// ```
    pub fn channel(&mut self) -> &mut Channel<C> {
        &mut self.channel
    }

    /// The requests being worked on: the one whose start or ping was under
    /// way, and the programs running.
    ///
    /// ```no_run
    /// # fn demo(session: &virtomate_protocol::session::Session<virtomate_protocol::SocketConnector>) {
    /// for left in session.in_flight() {
    ///     eprintln!("{} was interrupted at {:?}", left.id, left.stage);
    /// }
    /// # }
    /// ```
    pub fn in_flight(&self) -> Vec<InFlight> {
        let current = self.current.iter().cloned();
        let running = self.running.iter().map(|run| InFlight {
            id: run.id.clone(),
            stage: Stage::Running { pid: run.pid },
        });
        current.chain(running).collect()
    }

    /// Lets go of the channel.
    ///
    /// ```no_run
    /// # use virtomate_protocol::{session::Session, SocketConnector};
    /// # async fn demo(mut session: Session<SocketConnector>) {
    /// session.close().await;
    /// # }
    /// ```
    pub async fn close(&mut self) {
        self.channel.release().await;
    }

    /// Keeps the connection while requests came recently or a program is
    /// young, unless another client waits that should not; while older
    /// programs run, as [`Channel::share`] says; idle, lets it go.
    async fn let_go_unless_busy(&mut self) {
        let now = Instant::now();
        let recent = now.duration_since(self.last_request) < self.options.idle;
        let young = self
            .running
            .iter()
            .any(|run| now.duration_since(run.started) < self.options.hold.young);
        if recent || young || self.running.is_empty() {
            self.channel.let_go_unless(recent || young).await;
        } else {
            self.channel.share(false, self.options.hold).await;
        }
    }

    async fn handle(&mut self, request: Request, reply: &mut impl FnMut(Reply)) {
        // A request's exchange asks a holder to let go at once.
        self.channel.set_patience(Duration::ZERO);
        let id = request.id;
        let (stage, outcome) = match request.action {
            Action::Ping => (Stage::Pinging, self.ping(&id).await),
            Action::Run(run) => (Stage::Starting, self.start(&id, run).await),
        };
        self.current = None;
        match outcome {
            Ok(Some(outcome)) => reply(Reply {
                id,
                outcome: Ok(outcome),
            }),
            Ok(None) => {}
            Err((error, connected, output)) => {
                let stage = if connected { stage } else { Stage::Connecting };
                let disconnected = matches!(error, Error::Disconnected);
                reply(Reply {
                    id,
                    outcome: Err(Failure { stage, error, output }),
                });
                if disconnected {
                    self.fail_running(reply);
                }
            }
        }
    }

    /// Connects if need be; the error says whether connecting failed.
    async fn connect(&mut self) -> Result<(), Failed> {
        self.channel
            .agent()
            .await
            .map(|_| ())
            .map_err(|e| (e, false, None))
    }

    /// Connects for the request `id`, which then stands at `stage`.
    async fn connect_for(&mut self, id: &Value, stage: Stage) -> Result<(), Failed> {
        let id = id.clone();
        self.current = Some(InFlight {
            id: id.clone(),
            stage: Stage::Connecting,
        });
        self.connect().await?;
        self.current = Some(InFlight { id, stage });
        Ok(())
    }

    async fn ping(&mut self, id: &Value) -> Result<Option<Outcome>, Failed> {
        self.connect_for(id, Stage::Pinging).await?;
        let pong = self.channel.execute(&GuestPing {}).await;
        pong.map(|_| Some(Outcome::Pong)).map_err(|e| (e, true, None))
    }

    /// Starts a program; its reply comes once it has ended.
    async fn start(&mut self, id: &Value, run: RunRequest) -> Result<Option<Outcome>, Failed> {
        self.connect_for(id, Stage::Starting).await?;
        let mut exec = GuestExec::new(run.program, run.args);
        exec.input_data = run.stdin;
        exec.env = environment(&run.env, run.env_clear);
        if run.merge_output {
            exec.capture_output = CaptureOutput::Merged;
            self.check_agent_for(exec.capture_output).await?;
        }
        let follow = match run.follow {
            true => {
                let options = FollowOptions {
                    read_count: self.options.follow_read_count,
                    ..FollowOptions::default()
                };
                Some(
                    Follow::prepare(&mut self.channel, options)
                        .await
                        .map_err(failed)?,
                )
            }
            false => None,
        };
        if let Some(follow) = &follow {
            exec = follow.redirect(exec);
        }
        // Started as it is: a stop finds what it started then
        // (`StopScope::Tree`), followed or not.
        let started = match self.channel.guest_exec(&exec).await {
            Ok(started) => Ok(started.pid),
            Err(e) => Err((e, true, None)),
        };
        let pid = match started {
            Ok(started) => started,
            Err(error) => {
                if let (Some(mut follow), Error::Agent { .. }) = (follow, &error.0) {
                    // Nothing started: best effort, the error that matters is the start's.
                    let _ = follow.clean_up(&mut self.channel).await;
                }
                return Err(error);
            }
        };
        let now = Instant::now();
        self.running.push(Running {
            id: id.clone(),
            pid,
            encode: run.encode,
            started: now,
            next_poll: now,
            stop_at: run.max_time.map(|limit| now + limit),
            grace: run.grace,
            follow: follow.map(|follow| Following {
                follow,
                quiet_since: now,
            }),
        });
        Ok(None)
    }

    /// Refuses, before anything runs, a capture mode the agent is too old
    /// for.
    async fn check_agent_for(&mut self, capture: CaptureOutput) -> Result<(), Failed> {
        let Some(needs) = capture.needs_agent() else {
            return Ok(());
        };
        let info = self
            .channel
            .execute(&GuestInfo {})
            .await
            .map_err(|e| (e, false, None))?;
        if info.is_at_least(needs.0, needs.1) {
            return Ok(());
        }
        let too_old = Error::AgentTooOld {
            feature: "merge_output (capture-output \"merged\")".to_owned(),
            needs,
            version: info.version,
        };
        Err((too_old, false, None))
    }

    /// Polls the program whose poll is due first.
    async fn poll_next(&mut self, reply: &mut impl FnMut(Reply)) {
        let Some(index) = (0..self.running.len()).min_by_key(|&i| self.running[i].next_poll) else {
            return;
        };
        let pid = self.running[index].pid;
        // A poll of a program no longer young may come a little late.
        let young = self.running[index].started.elapsed() < self.options.hold.young;
        let patience = if young {
            Duration::ZERO
        } else {
            self.options.hold.patience
        };
        self.channel.set_patience(patience);
        if self.running[index].stop_at.is_some_and(|at| Instant::now() >= at) {
            self.channel.set_patience(Duration::ZERO);
            return self.stop(index, reply).await;
        }
        if let Some(mut following) = self.running[index].follow.take() {
            // One read of each stream: the other programs' polls wait no
            // longer than that.
            let id = self.running[index].id.clone();
            let read = following
                .follow
                .read_new(&mut self.channel, &mut |stream, bytes| {
                    reply(chunk(&id, stream, bytes));
                    Ok(())
                })
                .await;
            let run = &mut self.running[index];
            match read {
                Ok((_, true)) => {
                    // More waits: read again before anything else is due.
                    following.quiet_since = Instant::now();
                    run.follow = Some(following);
                    run.next_poll = Instant::now();
                    return;
                }
                Ok((read, false)) => {
                    if read > 0 {
                        following.quiet_since = Instant::now();
                    }
                    run.follow = Some(following);
                }
                Err(error) => {
                    let run = self.running.remove(index);
                    return self.fail_following(run, following, error, reply);
                }
            }
        }
        match self.channel.execute(&GuestExecStatus { pid }).await {
            Ok(status) if status.exited => {
                let run = self.running.remove(index);
                self.finish(run, status, false, reply).await;
            }
            Ok(_) => {
                let run = &mut self.running[index];
                let now = Instant::now();
                let next = match &run.follow {
                    Some(following) => {
                        let pause = FollowOptions::default().schedule;
                        now + pause.pause_after(now.duration_since(following.quiet_since))
                    }
                    None => now + self.options.schedule.pause_after(now.duration_since(run.started)),
                };
                run.next_poll = run.stop_at.map_or(next, |at| next.min(at));
            }
            Err(Error::Disconnected) => self.fail_running(reply),
            Err(error) => {
                let run = self.running.remove(index);
                reply(Reply {
                    id: run.id,
                    outcome: Err(Failure {
                        stage: Stage::Running { pid },
                        error,
                        output: None,
                    }),
                });
            }
        }
    }

    /// Replies with the end of `run`: for a followed program, after the
    /// rest of its output and the removal of its files.
    async fn finish(
        &mut self,
        mut run: Running,
        mut status: GuestExecStatusReply,
        timed_out: bool,
        reply: &mut impl FnMut(Reply),
    ) {
        if let Some(mut following) = run.follow.take() {
            let id = run.id.clone();
            let mut sink = |stream, bytes: &[u8]| {
                reply(chunk(&id, stream, bytes));
                Ok(())
            };
            let drained = following.follow.drain(&mut self.channel, &mut sink).await;
            let ended = match drained {
                Ok(()) => following.follow.clean_up(&mut self.channel).await,
                Err(error) => Err(error),
            };
            if let Err(error) = ended {
                return self.fail_following(run, following, error, reply);
            }
            // Streamed already; what the agent captured is only what the
            // shell said before the redirection.
            status.out_data = None;
            status.err_data = None;
            status.out_truncated = false;
            status.err_truncated = false;
        }
        reply(Reply {
            id: run.id,
            outcome: Ok(Outcome::Exited {
                pid: run.pid,
                status,
                encode: run.encode,
                timed_out,
            }),
        });
    }

    /// Following `run`'s output failed: its files may stay in the guest.
    fn fail_following(
        &mut self,
        run: Running,
        following: Following,
        error: FollowError,
        reply: &mut impl FnMut(Reply),
    ) {
        let (error, _, output) = failed(error);
        if matches!(error, Error::Disconnected) {
            self.running.push(run);
            return self.fail_running(reply);
        }
        tracing::info!(
            pid = run.pid,
            dir = following.follow.dir(),
            "following the output failed"
        );
        reply(Reply {
            id: run.id,
            outcome: Err(Failure {
                stage: Stage::Running { pid: run.pid },
                error,
                output,
            }),
        });
    }

    /// Stops the program at `index`, whose `max_time` passed, and replies
    /// with its end. The other programs' polls wait meanwhile (at most its
    /// grace period).
    async fn stop(&mut self, index: usize, reply: &mut impl FnMut(Reply)) {
        let run = self.running.remove(index);
        let stopped = match self.channel.agent().await {
            Ok(agent) => stop_group(agent, run.pid, run.grace, StopScope::Tree).await,
            Err(e) => Err(e),
        };
        match stopped {
            Ok(stopped) => {
                self.finish(run, stopped.finished.status, stopped.asked, reply)
                    .await
            }
            Err(error) => reply(Reply {
                id: run.id,
                outcome: Err(Failure {
                    stage: Stage::Running { pid: run.pid },
                    error,
                    output: None,
                }),
            }),
        }
    }

    /// The connection dropped: the agent that answers next may not know
    /// the programs in flight, whose results are lost.
    fn fail_running(&mut self, reply: &mut impl FnMut(Reply)) {
        for run in self.running.drain(..) {
            reply(Reply {
                id: run.id,
                outcome: Err(Failure {
                    stage: Stage::Running { pid: run.pid },
                    error: Error::Disconnected,
                    output: None,
                }),
            });
        }
    }
}

/// A reply with a chunk of `id`'s output.
fn chunk(id: &Value, stream: Stream, bytes: &[u8]) -> Reply {
    Reply {
        id: id.clone(),
        outcome: Ok(Outcome::Chunk {
            stream,
            bytes: bytes.to_vec(),
        }),
    }
}
