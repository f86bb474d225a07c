//! What a session tells its caller: a [`Reply`] for each request, and what
//! an interruption left in the guest ([`Abandoned`]).

use serde_json::Value;

use crate::follow::{FollowError, Stream};
use crate::qga::GuestExecStatusReply;
use crate::{Error, Stopped};

/// The answer to one request.
#[derive(Debug)]
#[non_exhaustive]
pub struct Reply {
    /// The request's id.
    pub id: Value,
    /// What came of it.
    pub outcome: Result<Outcome, Failure>,
}

/// What a request that succeeded did.
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
    /// The program started as `pid`; it comes only where
    /// [`SessionOptions::announce_start`](super::SessionOptions::announce_start)
    /// asks for it, before the program's other replies.
    Started {
        /// Its guest pid.
        pid: i64,
        /// Where its output goes in the guest, for a run with `follow`:
        /// named should the relay end while it streams.
        output_dir: Option<String>,
    },
    /// Output of a program run with `follow`, as it was written; many may
    /// come before its end ([`Outcome::Exited`], whose status then has no
    /// output). A caller that cannot take it returns an error for it: the
    /// program is then stopped as on an interruption, and its end replied
    /// without more output.
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
///         Stage::Running { pid } if failure.ended.is_none() => Some(pid), // may still run
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
    /// The directory a followed program's output goes to, when it may stay
    /// in the guest.
    pub output_dir: Option<String>,
    /// The program's end, when it had ended before the failure: its
    /// output was passed on, but its files could not be removed.
    pub ended: Option<GuestExecStatusReply>,
}

impl Reply {
    /// The reply that `id` failed with `failure`.
    pub fn failed(id: Value, failure: Failure) -> Reply {
        Reply {
            id,
            outcome: Err(failure),
        }
    }
}

impl Failure {
    /// `error` struck at `stage`: for a caller that relays a session run
    /// elsewhere (see [`relay`](super::relay)) and loses it on its way.
    pub fn new(stage: Stage, error: Error) -> Failure {
        Failure::at(stage, error)
    }

    pub(super) fn at(stage: Stage, error: Error) -> Failure {
        Failure {
            stage,
            error,
            output: None,
            output_dir: None,
            ended: None,
        }
    }

    /// Following the output failed at `stage`; an agent's error stays one.
    pub(super) fn following(stage: Stage, error: FollowError) -> Failure {
        match error {
            FollowError::Agent(error) => Failure::at(stage, error),
            other => {
                let error = Error::Io(std::io::Error::other(other.to_string()));
                Failure {
                    output: Some(other),
                    ..Failure::at(stage, error)
                }
            }
        }
    }
}

/// How far a request had come when it failed or was interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Connecting to the agent: nothing was sent.
    Connecting,
    /// Getting ready to start the program (the agent's version checked,
    /// the directory for its output made): nothing was started.
    Preparing,
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
    /// The program `pid` was being stopped (its time limit passed, or its
    /// output was refused): it may still run.
    Stopping {
        /// Its guest pid.
        pid: i64,
    },
}

/// A request being worked on, for a caller that stops the session early.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct InFlight {
    /// The request's id.
    pub id: Value,
    /// How far it had come.
    pub stage: Stage,
}

/// A request the caller gave up on, and what it left in the guest.
#[derive(Debug)]
#[non_exhaustive]
pub struct Abandoned {
    /// The request's id.
    pub id: Value,
    /// What it left.
    pub left: Left,
}

impl Abandoned {
    /// The request `id` left `left`.
    pub fn new(id: Value, left: Left) -> Abandoned {
        Abandoned { id, left }
    }
}

/// What [`Session::give_up`](super::Session::give_up) found or did.
#[derive(Debug)]
#[non_exhaustive]
pub enum Left {
    /// Connecting or pinging: nothing was started.
    Nothing,
    /// Getting ready to start the program (the agent's commands checked;
    /// for followed output or input, its private directory being made,
    /// then swept away): nothing was started.
    Preparing,
    /// The request to start the program was not sent whole: the agent acts
    /// only on a whole request, so nothing was started.
    StartNotSent,
    /// The request to start it was sent, its reply not read: it may run
    /// under a pid the agent did not tell.
    MayHaveStarted,
    /// The request to start a followed program was sent, its reply not
    /// read: what it may have started in the guest was stopped, and its
    /// private directory removed.
    StartUndone,
    /// It runs still, as a status asked just now said.
    StillRunning {
        /// Its guest pid.
        pid: i64,
    },
    /// It had ended, as a status asked just now said.
    Ended {
        /// Its guest pid.
        pid: i64,
    },
    /// The agent no longer knows it: it reported the end to the poll that
    /// was cut short, and the result is lost.
    EndedJustNow {
        /// Its guest pid.
        pid: i64,
    },
    /// Its status could not be asked: it may still run.
    Unknown {
        /// Its guest pid.
        pid: i64,
    },
    /// It had a time limit or its output was followed, so it was stopped
    /// with what it started (its output passed on, its files removed).
    Stopped {
        /// Its guest pid.
        pid: i64,
        /// How it ended.
        stopped: Stopped,
    },
    /// Stopping it failed: it may still run.
    NotStopped {
        /// Its guest pid.
        pid: i64,
        /// Why.
        error: Error,
        /// Where its output goes, when followed.
        output_dir: Option<String>,
    },
}
