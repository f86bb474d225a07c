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
//!     .serve(&mut incoming, |reply| {
//!         match reply.outcome {
//!             Ok(Outcome::Exited { status, .. }) => println!("{}: exited {:?}", reply.id, status.exitcode),
//!             Ok(other) => println!("{}: {other:?}", reply.id),
//!             Err(failure) => println!("{}: {}", reply.id, failure.error),
//!         }
//!         Ok(())
//!     })
//!     .await;
//! session.close().await;
//! # }
//! ```

mod jobs;
pub mod relay;
mod reply;
mod request;

use std::io;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc::Receiver;
use tokio::time::{sleep, sleep_until, Instant};

use jobs::{Incoming, NoJobs};
pub use jobs::{Jobs, Work};
pub use reply::{Abandoned, Failure, InFlight, Left, Outcome, Reply, Stage};
pub use request::{Action, BadRequest, Request, RunRequest};

use crate::channel::{LOOK_FOR_WAITERS, MOST_REPLIES_LOST, RECONNECT_PAUSE};
use crate::feed::{Feed, DIRECT_CHUNK};
use crate::follow::{Follow, FollowError, FollowOptions, Stream, DIRECT_READ_COUNT};
use crate::leftovers;
use crate::qga::{CaptureOutput, GuestExecStatus, GuestExecStatusReply, GuestInfo, GuestPing};
use crate::{
    stop_group, Channel, Connector, Error, HoldPolicy, PollSchedule, RequestProgress, StopScope, Stopped,
};

/// How a session paces itself.
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
    /// The most bytes of an interactive program's input written at once
    /// as a chunk file in the guest: [`DIRECT_CHUNK`], or
    /// [`LIBVIRT_CHUNK`](crate::feed::LIBVIRT_CHUNK) through libvirtd; 0
    /// for none (every byte straight into the pipe, 4 KiB a request).
    pub input_chunk: usize,
    /// Reply [`Outcome::Started`] as each program starts: for a caller
    /// that relays the run to another process, which then knows its pid
    /// should the relay end before the program.
    pub announce_start: bool,
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
            input_chunk: DIRECT_CHUNK,
            announce_start: false,
        }
    }
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
    /// How many polls in a row lost their connection before the reply
    /// (see [`Connector::outlives_disconnect`]): the end the last one may
    /// have told is lost, and the agent forgets a program once it has told
    /// it.
    replies_lost: u32,
}

impl Running {
    /// A program stopped when its caller gives up: one whose time limit
    /// would not be kept, or whose output would have nowhere to go.
    fn stopped_on_give_up(&self) -> bool {
        self.stop_at.is_some() || self.follow.is_some()
    }

    fn failure(&self, error: Error) -> Failure {
        Failure {
            output_dir: self.follow.as_ref().map(|f| f.follow.dir().to_owned()),
            ..Failure::at(Stage::Running { pid: self.pid }, error)
        }
    }
}

/// A followed program's output files, since when nothing new came, and
/// whether the caller still takes its output; for an interactive one, its
/// input.
#[derive(Debug)]
struct Following {
    follow: Follow,
    quiet_since: Instant,
    refused: bool,
    feed: Option<Feed>,
}

/// A followed run being prepared or started: its private directory's
/// name, and once made, the directory with its files open in the agent.
#[derive(Debug)]
struct Preparing {
    name: String,
    follow: Option<Follow>,
}

/// The most input written to one program in one turn: the other
/// programs' polls, and reading its own output, wait no longer than that
/// (or than one chunk file, which goes whole).
const FEED_BUDGET: usize = 64 << 10;

/// The signal a program gets writing to a pipe nobody reads (Linux's
/// number, the guest's).
const SIGPIPE: i32 = 13;

/// The longest pause between two looks at a program whose input a helper
/// in the guest moves: the next chunk's helper starts within about that
/// once the last has ended.
const MOVING_PAUSE: Duration = Duration::from_millis(20);

/// Why a program is stopped before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    /// Its `max_time` passed.
    TimeLimit,
    /// Its caller refused its output.
    OutputRefused,
}

/// Requests served over one channel; see the [module](self) docs.
pub struct Session<C: Connector> {
    channel: Channel<C>,
    options: SessionOptions,
    running: Vec<Running>,
    /// The request whose exchange is under way (start or ping), if any.
    current: Option<InFlight>,
    /// The followed run being prepared or started: cut short there,
    /// [`give_up`](Self::give_up) closes its files and sweeps its
    /// directory.
    preparing: Option<Preparing>,
    /// What [`give_up`](Self::give_up) has seen to so far, for
    /// [`given_up_as_is`](Self::given_up_as_is) should it be cut short.
    given_up: Vec<Abandoned>,
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
    pub fn new(connector: C, options: SessionOptions) -> Session<C> {
        Session::over(Channel::new(connector), options)
    }

    /// A session over `channel`, connected or not.
    pub fn over(channel: Channel<C>, options: SessionOptions) -> Session<C> {
        Session {
            channel,
            options,
            running: Vec::new(),
            current: None,
            preparing: None,
            given_up: Vec::new(),
            last_request: Instant::now(),
        }
    }

    /// The channel back, once nothing runs.
    pub fn into_channel(self) -> Channel<C> {
        self.channel
    }

    /// Serves `requests` until the sender is gone and every program has
    /// ended, handing each reply to `reply` as it comes. Dropped early (on
    /// a signal, say), [`give_up`](Self::give_up) stops or looks at what
    /// was left, and [`in_flight`](Self::in_flight) tells what it was.
    ///
    /// `reply` returns an error for output it cannot take (a reader that
    /// went away): that program is stopped and its end replied.
    pub async fn serve(
        &mut self,
        requests: &mut Receiver<Request>,
        reply: impl FnMut(Reply) -> io::Result<()>,
    ) {
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
    /// session.serve_jobs(&mut incoming, |reply| Ok(println!("{reply:?}")), &mut Versions).await;
    /// # }
    /// ```
    pub async fn serve_jobs<J: Jobs<C>>(
        &mut self,
        work: &mut Receiver<Work<J::Job>>,
        reply: impl FnMut(Reply) -> io::Result<()>,
        jobs: &mut J,
    ) {
        self.serve_from(work, reply, jobs).await;
    }

    async fn serve_from<J: Jobs<C>>(
        &mut self,
        work: &mut impl Incoming<J::Job>,
        mut reply: impl FnMut(Reply) -> io::Result<()>,
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
            // Input piles up for a program that does not read it: no more
            // work is taken until it does (or ends), so the caller stops.
            let takes_work = open && !self.input_backed_up();
            tokio::select! {
                next = work.next(), if takes_work => {
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
    pub fn channel(&mut self) -> &mut Channel<C> {
        &mut self.channel
    }

    /// The connector the channel connects through: the route to the agent
    /// it has come to take, say.
    pub fn connector(&self) -> &C {
        self.channel.connector()
    }

    /// The requests being worked on: the one whose start or ping was under
    /// way, and the programs running.
    pub fn in_flight(&self) -> Vec<InFlight> {
        let current = self.current.iter().cloned();
        let running = self.running.iter().map(|run| InFlight {
            id: run.id.clone(),
            stage: Stage::Running { pid: run.pid },
        });
        current.chain(running).collect()
    }

    /// After [`serve`](Self::serve) was cut short (a signal, say): says
    /// what each request in flight left in the guest. A program with a
    /// time limit or followed output is stopped with what it started,
    /// the rest of its output passed to `reply` and its files removed;
    /// any other is asked about once and left to run.
    ///
    /// ```no_run
    /// # use virtomate_protocol::session::{Left, Session};
    /// # async fn demo(mut session: Session<virtomate_protocol::SocketConnector>) {
    /// let (requests, mut incoming) = tokio::sync::mpsc::channel(1);
    /// # drop(requests);
    /// let serve = session.serve(&mut incoming, |reply| Ok(println!("{reply:?}")));
    /// if tokio::time::timeout(std::time::Duration::from_secs(10), serve).await.is_err() {
    ///     for abandoned in session.give_up(|_| Ok(())).await {
    ///         if let Left::StillRunning { pid } = abandoned.left {
    ///             eprintln!("{} still runs as pid {pid}", abandoned.id);
    ///         }
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn give_up(&mut self, mut reply: impl FnMut(Reply) -> io::Result<()>) -> Vec<Abandoned> {
        self.channel.set_patience(Duration::ZERO);
        if let Some(current) = &self.current {
            let left = self.left_by_stage(current);
            let left = match self.preparing.take() {
                Some(preparing) => self.sweep(preparing, left).await,
                None => left,
            };
            if let Some(current) = self.current.take() {
                self.given_up.push(Abandoned { id: current.id, left });
            }
        }
        // Each stays among the running until it is seen to: given up on
        // again, the rest is looked at once more.
        while let Some(run) = self.running.first() {
            let (id, pid) = (run.id.clone(), run.pid);
            let left = match run.stopped_on_give_up() {
                true => match self.stop_program(0).await {
                    Ok(stopped) => {
                        // Best effort: what the caller reports is that it gave up.
                        let _ = self.pass_on_the_rest(0, &mut reply).await;
                        Left::Stopped { pid, stopped }
                    }
                    Err(error) => Left::NotStopped {
                        pid,
                        error,
                        output_dir: self.running[0].follow.as_ref().map(|f| f.follow.dir().to_owned()),
                    },
                },
                false => self.look_at(pid).await,
            };
            self.running.remove(0);
            self.given_up.push(Abandoned { id, left });
        }
        std::mem::take(&mut self.given_up)
    }

    /// What the requests in flight left, for a caller that stopped
    /// waiting for [`give_up`](Self::give_up) (a further signal): what it
    /// had seen to, as it found it, and the rest as far as known without
    /// asking the agent. A followed program not yet stopped runs on; its
    /// directory is tagged with this process, so the next followed run
    /// once this process has ended stops it and removes the directory.
    ///
    /// ```no_run
    /// # use virtomate_protocol::session::Session;
    /// # async fn demo(mut session: Session<virtomate_protocol::SocketConnector>) {
    /// let patience = std::time::Duration::from_secs(5);
    /// let abandoned = match tokio::time::timeout(patience, session.give_up(|_| Ok(()))).await {
    ///     Ok(abandoned) => abandoned,
    ///     Err(_) => session.given_up_as_is(),
    /// };
    /// # drop(abandoned);
    /// # }
    /// ```
    pub fn given_up_as_is(&mut self) -> Vec<Abandoned> {
        let mut abandoned = std::mem::take(&mut self.given_up);
        self.preparing = None;
        if let Some(current) = self.current.take() {
            let left = self.left_by_stage(&current);
            abandoned.push(Abandoned { id: current.id, left });
        }
        let running = std::mem::take(&mut self.running);
        abandoned.extend(running.into_iter().map(|run| Abandoned {
            id: run.id,
            left: Left::Unknown { pid: run.pid },
        }));
        abandoned
    }

    /// What the request whose exchange was under way may have left, by
    /// how far it got.
    fn left_by_stage(&self, current: &InFlight) -> Left {
        match (current.stage, self.channel.request_progress()) {
            (Stage::Starting, RequestProgress::Idle | RequestProgress::PartlySent) => Left::StartNotSent,
            (Stage::Starting, _) => Left::MayHaveStarted,
            (Stage::Preparing, _) => Left::Preparing,
            _ => Left::Nothing,
        }
    }

    /// Sweeps the private directory `name` of a followed run cut short
    /// while it was prepared or started (see [`Follow::sweep`]): what
    /// its start may have started is stopped, then; the files open in
    /// the agent are closed first.
    async fn sweep(&mut self, preparing: Preparing, left: Left) -> Left {
        const SWEEPING: Duration = Duration::from_secs(15);
        let name = &preparing.name;
        let channel = &mut self.channel;
        let swept = tokio::time::timeout(SWEEPING, async {
            if let Some(mut follow) = preparing.follow {
                if let Err(error) = follow.close_files(channel).await {
                    tracing::warn!(%error, "the files of a run cut short may stay open in the agent");
                }
            }
            Follow::sweep(channel, name).await
        })
        .await;
        match (swept, left) {
            (Ok(Ok(true)), Left::MayHaveStarted) => Left::StartUndone,
            (swept, left) => {
                if !matches!(swept, Ok(Ok(true))) {
                    tracing::warn!(?swept, name, "the private directory of a run cut short may stay");
                }
                left
            }
        }
    }

    /// Whether an interactive program has so much input waiting that no
    /// more should be taken.
    fn input_backed_up(&self) -> bool {
        self.running.iter().any(|run| {
            let feed = run.follow.as_ref().and_then(|f| f.feed.as_ref());
            feed.is_some_and(Feed::backed_up)
        })
    }

    /// Passes input on to the interactive program `id`, whose next poll
    /// comes at once if the input can be written now (a typed line); input
    /// for any other is dropped. Input behind a chunk on its way waits for
    /// the next look, so that more is taken meanwhile, rather than a look
    /// after every piece.
    fn take_input(&mut self, id: &Value, bytes: &[u8], end: bool) {
        let Some(run) = self.running.iter_mut().find(|run| run.id == *id) else {
            return;
        };
        let Some(feed) = run.follow.as_mut().and_then(|f| f.feed.as_mut()) else {
            return;
        };
        feed.push(bytes);
        if end {
            feed.end();
        }
        if feed.can_write_now() {
            run.next_poll = Instant::now();
        }
    }

    /// Lets go of the channel.
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

    async fn handle(&mut self, request: Request, reply: &mut impl FnMut(Reply) -> io::Result<()>) {
        // A request's exchange asks a holder to let go at once.
        self.channel.set_patience(Duration::ZERO);
        let id = request.id;
        let outcome = match request.action {
            Action::Ping => self.ping(&id).await,
            Action::Run(run) => {
                let started = self.start(&id, run).await;
                self.preparing = None;
                started
            }
            Action::Input { bytes, end } => {
                self.take_input(&id, &bytes, end);
                return;
            }
        };
        self.current = None;
        match outcome {
            Ok(Some(outcome)) => deliver(reply, id, Ok(outcome)),
            Ok(None) if self.options.announce_start => {
                if let Some(run) = self.running.last().filter(|run| run.id == id) {
                    let pid = run.pid;
                    let output_dir = run.follow.as_ref().map(|f| f.follow.dir().to_owned());
                    deliver(reply, id, Ok(Outcome::Started { pid, output_dir }));
                }
            }
            Ok(None) => {}
            Err(failure) => {
                let disconnected = matches!(failure.error, Error::Disconnected)
                    && !self.channel.connector().outlives_disconnect();
                deliver(reply, id, Err(failure));
                if disconnected {
                    self.fail_running(reply);
                }
            }
        }
    }

    /// Moves the request `id` on to `stage`.
    fn enter(&mut self, id: &Value, stage: Stage) {
        self.current = Some(InFlight {
            id: id.clone(),
            stage,
        });
    }

    /// Connects for the request `id`, which then stands at `stage`.
    async fn connect_for(&mut self, id: &Value, stage: Stage) -> Result<(), Failure> {
        self.enter(id, Stage::Connecting);
        if let Err(error) = self.channel.agent().await {
            return Err(Failure::at(Stage::Connecting, error));
        }
        self.enter(id, stage);
        Ok(())
    }

    async fn ping(&mut self, id: &Value) -> Result<Option<Outcome>, Failure> {
        self.connect_for(id, Stage::Pinging).await?;
        let pong = self.channel.execute(&GuestPing {}).await;
        pong.map(|_| Some(Outcome::Pong))
            .map_err(|e| Failure::at(Stage::Pinging, e))
    }

    /// Starts a program; its reply comes once it has ended.
    async fn start(&mut self, id: &Value, run: RunRequest) -> Result<Option<Outcome>, Failure> {
        self.connect_for(id, Stage::Preparing).await?;
        let (encode, max_time, grace) = (run.encode, run.max_time, run.grace);
        let (followed, interactive) = (run.follow || run.interactive, run.interactive);
        let mut exec = run.into_guest_exec();
        self.check_agent_for(exec.capture_output).await?;
        if followed {
            let options = FollowOptions {
                read_count: self.options.follow_read_count,
                ..FollowOptions::default()
            };
            let name = Follow::new_name().map_err(|e| Failure::following(Stage::Preparing, e))?;
            let preparing = self.preparing.insert(Preparing {
                name: name.clone(),
                follow: None,
            });
            let prepared = leftovers::prepare_tagged(&mut self.channel, options, interactive, &name);
            let follow = prepared
                .await
                .map_err(|e| Failure::following(Stage::Preparing, e))?;
            // Kept where a give-up finds it from here on.
            let follow = &*preparing.follow.insert(follow);
            leftovers::sweep_beside(&mut self.channel, follow).await;
        }
        if let Some(follow) = self.preparing.as_ref().and_then(|p| p.follow.as_ref()) {
            exec = follow.redirect(exec);
        }
        // Started as it is: a stop finds what it started then
        // (`StopScope::Tree`), followed or not.
        self.enter(id, Stage::Starting);
        let pid = match self.channel.guest_exec(&exec).await {
            Ok(started) => started.pid,
            Err(error) => {
                let follow = self.preparing.as_mut().and_then(|p| p.follow.as_mut());
                if let (Some(follow), Error::Agent { .. }) = (follow, &error) {
                    // Nothing started: best effort, the error that matters is the start's.
                    let _ = follow.clean_up(&mut self.channel).await;
                }
                return Err(Failure::at(Stage::Starting, error));
            }
        };
        // Among the running from here on, where a give-up finds it.
        let follow = self.preparing.take().and_then(|p| p.follow);
        tracing::info!(
            pid,
            dir = follow.as_ref().map(Follow::dir),
            "started in the guest"
        );
        let now = Instant::now();
        self.running.push(Running {
            id: id.clone(),
            pid,
            encode,
            started: now,
            next_poll: now,
            stop_at: max_time.map(|limit| now + limit),
            grace,
            follow: follow.map(|follow| Following {
                feed: follow
                    .stdin_pipe()
                    .map(|pipe| Feed::with_chunks(pipe, self.options.input_chunk)),
                follow,
                quiet_since: now,
                refused: false,
            }),
            replies_lost: 0,
        });
        Ok(None)
    }

    /// Refuses, before anything runs, a capture mode the agent is too old
    /// for.
    async fn check_agent_for(&mut self, capture: CaptureOutput) -> Result<(), Failure> {
        let Some(needs) = capture.needs_agent() else {
            return Ok(());
        };
        let info = self.channel.execute(&GuestInfo {}).await;
        let info = info.map_err(|e| Failure::at(Stage::Preparing, e))?;
        if info.is_at_least(needs.0, needs.1) {
            return Ok(());
        }
        let too_old = Error::AgentTooOld {
            feature: "merge_output (capture-output \"merged\")".to_owned(),
            needs,
            version: info.version,
        };
        Err(Failure::at(Stage::Preparing, too_old))
    }

    /// Polls the program whose poll is due first.
    async fn poll_next(&mut self, reply: &mut impl FnMut(Reply) -> io::Result<()>) {
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
            return self.stop(index, StopReason::TimeLimit, reply).await;
        }
        let (mut more_input, mut moving) = (false, false);
        let run = &mut self.running[index];
        if let Some(feed) = run.follow.as_mut().and_then(|f| f.feed.as_mut()) {
            match feed.feed(&mut self.channel, FEED_BUDGET).await {
                Ok(fed) => {
                    (more_input, moving) = (fed.more, fed.moving);
                    if fed.written > 0 {
                        if let Some(following) = &mut run.follow {
                            following.quiet_since = Instant::now();
                        }
                    }
                }
                Err(error) => return self.fail_input(index, error, reply).await,
            }
        }
        if let Some(following) = &mut run.follow {
            // One read of each stream: the other programs' polls wait no
            // longer than that.
            let id = &run.id;
            let mut sink = |stream, bytes: &[u8]| reply(chunk(id, stream, bytes));
            let read = following.follow.read_new(&mut self.channel, &mut sink).await;
            let now = Instant::now();
            match read {
                Ok((_, true)) => {
                    // More waits: read again before anything else is due.
                    following.quiet_since = now;
                    run.next_poll = now;
                    return;
                }
                Ok((read, false)) => {
                    if read > 0 {
                        following.quiet_since = now;
                    }
                }
                Err(FollowError::Sink(_)) => {
                    following.refused = true;
                    return self.stop(index, StopReason::OutputRefused, reply).await;
                }
                Err(error) => {
                    let run = self.running.remove(index);
                    return self.fail_following(run, error, None, reply);
                }
            }
        }
        match self.channel.execute(&GuestExecStatus { pid }).await {
            Ok(status) if status.exited => self.finish(index, status, false, reply).await,
            Ok(_) => {
                let run = &mut self.running[index];
                run.replies_lost = 0;
                let now = Instant::now();
                let next = match &run.follow {
                    Some(following) => {
                        let pause = FollowOptions::default().schedule;
                        now + pause.pause_after(now.duration_since(following.quiet_since))
                    }
                    None => now + self.options.schedule.pause_after(now.duration_since(run.started)),
                };
                // Input waits that the pipe can take: write on at once;
                // a chunk on its way: look again soon.
                let next = match (more_input, moving) {
                    (true, _) => now,
                    (false, true) => next.min(now + MOVING_PAUSE),
                    (false, false) => next,
                };
                run.next_poll = run.stop_at.map_or(next, |at| next.min(at));
            }
            // The go-between went away, not the agent: the program runs
            // on, and the next poll connects anew; one that keeps dropping
            // polls (a crash loop) is given up on as a lost connection.
            Err(Error::Disconnected)
                if self.channel.connector().outlives_disconnect()
                    && self.running[index].replies_lost < MOST_REPLIES_LOST =>
            {
                let run = &mut self.running[index];
                tracing::info!(
                    pid,
                    "the connection dropped under a poll: polling again on a new one"
                );
                run.replies_lost += 1;
                run.next_poll = Instant::now() + RECONNECT_PAUSE;
            }
            Err(Error::Disconnected) if self.channel.connector().outlives_disconnect() => {
                let run = self.running.remove(index);
                deliver(reply, run.id.clone(), Err(run.failure(Error::Disconnected)));
            }
            Err(Error::Disconnected) => self.fail_running(reply),
            // It ended as the connection dropped, and the agent has
            // forgotten it: its end went with the reply.
            Err(Error::Agent { .. }) if self.running[index].replies_lost > 0 => {
                let run = self.running.remove(index);
                deliver(reply, run.id.clone(), Err(run.failure(Error::Disconnected)));
            }
            Err(error) => {
                let run = self.running.remove(index);
                let failure = run.failure(error);
                deliver(reply, run.id, Err(failure));
            }
        }
    }

    /// Replies with the end of the program at `index`: for a followed one,
    /// after the rest of its output and the removal of its files. It stays
    /// among the running until then, for [`give_up`](Self::give_up).
    async fn finish(
        &mut self,
        index: usize,
        mut status: GuestExecStatusReply,
        timed_out: bool,
        reply: &mut impl FnMut(Reply) -> io::Result<()>,
    ) {
        let passed_on = self.pass_on_the_rest(index, reply).await;
        let run = self.running.remove(index);
        tracing::info!(pid = run.pid, "the program ended");
        if let Some(following) = &run.follow {
            // The clean-up tells a rotator that failed or vanished before
            // the end of its stream (by its marker, and by its absence).
            // Should it not have, a program killed by SIGPIPE with a stream
            // short of its end is still no end of its own: the rotator
            // reading its pipe ended first, most likely on a full disk.
            let follow = &following.follow;
            let passed_on = match passed_on {
                Ok(()) if status.signal == Some(SIGPIPE) && !following.refused && follow.stopped_short() => {
                    Err(FollowError::Full {
                        dir: follow.dir().to_owned(),
                    })
                }
                other => other,
            };
            if let Err(error) = passed_on {
                return self.fail_following(run, error, Some(status), reply);
            }
            // Streamed already; what the agent captured is only what the
            // shell said before the redirection.
            status.out_data = None;
            status.err_data = None;
            status.out_truncated = false;
            status.err_truncated = false;
        }
        let exited = Outcome::Exited {
            pid: run.pid,
            status,
            encode: run.encode,
            timed_out,
        };
        deliver(reply, run.id, Ok(exited));
    }

    /// The rest of the output of the followed program at `index`, unless
    /// its caller refused it, then the removal of its files. The first
    /// error that is not the caller's refusal ends it.
    async fn pass_on_the_rest(
        &mut self,
        index: usize,
        reply: &mut impl FnMut(Reply) -> io::Result<()>,
    ) -> Result<(), FollowError> {
        let run = &mut self.running[index];
        let Some(following) = &mut run.follow else {
            return Ok(());
        };
        if let Some(feed) = &mut following.feed {
            // What was not written is dropped: the program has ended. A
            // pipe or helper that could not be closed or stopped does not
            // keep the directory: its removal stops what still uses it.
            if let Err(error) = feed.close(&mut self.channel).await {
                let cleaned = following.follow.clean_up(&mut self.channel).await;
                if let Err(cleaning) = cleaned {
                    tracing::info!(%cleaning, "the input's directory was not removed either");
                }
                return Err(error.into());
            }
        }
        if !following.refused {
            let id = &run.id;
            let mut sink = |stream, bytes: &[u8]| reply(chunk(id, stream, bytes));
            match following.follow.drain(&mut self.channel, &mut sink).await {
                Ok(()) => {}
                Err(FollowError::Sink(_)) => following.refused = true,
                Err(error) => return Err(error),
            }
        }
        following.follow.clean_up(&mut self.channel).await
    }

    /// Feeding the input of the program at `index` failed: it is stopped
    /// (it would wait for input that never comes), the rest of its output
    /// passed on and its files removed, and the failure replied.
    async fn fail_input(
        &mut self,
        index: usize,
        error: FollowError,
        reply: &mut impl FnMut(Reply) -> io::Result<()>,
    ) {
        if matches!(error, FollowError::Agent(Error::Disconnected)) {
            let run = self.running.remove(index);
            return self.fail_following(run, error, None, reply);
        }
        tracing::info!(pid = self.running[index].pid, %error, "feeding the input failed");
        self.channel.set_patience(Duration::ZERO);
        let ended = match self.stop_program(index).await {
            Ok(stopped) => Some(stopped.finished.status),
            Err(_) => None,
        };
        // Best effort: the error to report is the input's.
        let cleaned = ended.is_some() && self.pass_on_the_rest(index, reply).await.is_ok();
        let mut run = self.running.remove(index);
        if cleaned {
            // Nothing stays in the guest to point at.
            run.follow = None;
        }
        self.fail_following(run, error, ended, reply);
    }

    /// Following `run`'s output failed: its files may stay in the guest.
    fn fail_following(
        &mut self,
        run: Running,
        error: FollowError,
        ended: Option<GuestExecStatusReply>,
        reply: &mut impl FnMut(Reply) -> io::Result<()>,
    ) {
        if matches!(error, FollowError::Agent(Error::Disconnected)) {
            // What the dropped read held is lost: this run fails, and the
            // others with it unless the agent outlives the connection.
            if self.channel.connector().outlives_disconnect() {
                return deliver(reply, run.id.clone(), Err(run.failure(Error::Disconnected)));
            }
            self.running.push(run);
            return self.fail_running(reply);
        }
        let output_dir = run.follow.as_ref().map(|f| f.follow.dir().to_owned());
        tracing::info!(pid = run.pid, dir = ?output_dir, "following the output failed");
        let failure = Failure {
            output_dir,
            ended,
            ..Failure::following(Stage::Running { pid: run.pid }, error)
        };
        deliver(reply, run.id, Err(failure));
    }

    /// Stops the program at `index` and replies with its end. The other
    /// programs' polls wait meanwhile (at most its grace period).
    async fn stop(&mut self, index: usize, why: StopReason, reply: &mut impl FnMut(Reply) -> io::Result<()>) {
        self.channel.set_patience(Duration::ZERO);
        match self.stop_program(index).await {
            Ok(stopped) => {
                // One that ended by itself as the limit passed ran its course.
                let timed_out = why == StopReason::TimeLimit && stopped.asked;
                self.finish(index, stopped.finished.status, timed_out, reply)
                    .await
            }
            Err(error) => {
                let run = self.running.remove(index);
                let failure = Failure {
                    stage: Stage::Stopping { pid: run.pid },
                    ..run.failure(error)
                };
                deliver(reply, run.id, Err(failure));
            }
        }
    }

    /// Stops the program at `index` and what it started.
    async fn stop_program(&mut self, index: usize) -> Result<Stopped, Error> {
        let (pid, grace) = (self.running[index].pid, self.running[index].grace);
        tracing::info!(pid, "stopping the program");
        let agent = self.channel.agent().await?;
        stop_group(agent, pid, grace, StopScope::Tree).await
    }

    /// What became of `pid`, asked once (briefly): the status being read
    /// when the caller gave up may have been its end, which the agent
    /// reports once and then forgets.
    async fn look_at(&mut self, pid: i64) -> Left {
        const ASKING: Duration = Duration::from_secs(2);
        let look = GuestExecStatus { pid };
        match tokio::time::timeout(ASKING, self.channel.execute(&look)).await {
            Ok(Ok(status)) if !status.exited => Left::StillRunning { pid },
            Ok(Ok(_)) => Left::Ended { pid },
            Ok(Err(Error::Agent { .. })) => Left::EndedJustNow { pid },
            _ => Left::Unknown { pid },
        }
    }

    /// The connection dropped: the agent that answers next may not know
    /// the programs in flight, whose results are lost.
    fn fail_running(&mut self, reply: &mut impl FnMut(Reply) -> io::Result<()>) {
        for run in std::mem::take(&mut self.running) {
            let failure = run.failure(Error::Disconnected);
            deliver(reply, run.id, Err(failure));
        }
    }
}

/// Hands a request's outcome to the caller. Only output can be refused,
/// so only a chunk's refusal counts.
fn deliver(reply: &mut impl FnMut(Reply) -> io::Result<()>, id: Value, outcome: Result<Outcome, Failure>) {
    let _ = reply(Reply { id, outcome });
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
