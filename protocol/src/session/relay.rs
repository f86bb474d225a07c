//! A session's requests and replies as JSON lines that another process
//! reads back whole: for a process (virtomate's control master) that runs
//! requests on behalf of its clients, so that each client gets the very
//! [`Reply`], [`Failure`] and [`Abandoned`] it would have got from a
//! session of its own, every error with its variant and fields.
//!
//! ```
//! use virtomate_protocol::session::relay::{self, Relayed};
//! use virtomate_protocol::session::{Failure, Reply, RunRequest, Stage};
//!
//! let line = relay::run_line(&7.into(), &RunRequest::new("true", [""; 0]));
//! let (id, run) = relay::parse_run(&line).unwrap();
//! assert_eq!((id, run.program.as_str()), (7.into(), "true"));
//! let lost = Failure::new(Stage::Starting, virtomate_protocol::Error::Disconnected);
//! let failed = Reply::failed(7.into(), lost);
//! let Relayed::Reply(back) = relay::parse_line(&relay::reply_line(&failed)).unwrap() else { panic!() };
//! assert!(matches!(back.outcome, Err(Failure { stage: Stage::Starting, .. })));
//! ```

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Abandoned, Failure, Left, Outcome, Reply, RunRequest, Stage};
use crate::follow::{FollowError, Stream};
use crate::qga::{base64_data, GuestExecStatusReply};
use crate::{Error, Finished, Phase, RequestInFlight, Stopped};

/// What a relayed line says.
// One for each line read, and gone once looked at: its size is no matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
#[non_exhaustive]
pub enum Relayed {
    /// A reply of the session.
    Reply(Reply),
    /// What the requests given up on left.
    Abandoned(Vec<Abandoned>),
}

/// The line that asks for `run` under `id`.
pub fn run_line(id: &Value, run: &RunRequest) -> Vec<u8> {
    let line = RunLine {
        id: id.clone(),
        program: run.program.clone(),
        args: run.args.clone(),
        stdin: run.stdin.clone(),
        encode: run.encode,
        env: run.env.clone(),
        env_clear: run.env_clear,
        max_time: run.max_time,
        grace: run.grace,
        merge_output: run.merge_output,
        follow: run.follow,
        interactive: run.interactive,
    };
    to_line(&line)
}

/// The id and run a [`run_line`] asks for.
pub fn parse_run(line: &[u8]) -> Result<(Value, RunRequest), serde_json::Error> {
    let line: RunLine = serde_json::from_slice(line)?;
    let mut run = RunRequest::new(line.program, line.args);
    run.stdin = line.stdin;
    run.encode = line.encode;
    run.env = line.env;
    run.env_clear = line.env_clear;
    run.max_time = line.max_time;
    run.grace = line.grace;
    run.merge_output = line.merge_output;
    run.follow = line.follow;
    run.interactive = line.interactive;
    Ok((line.id, run))
}

/// The line that carries `reply`.
pub fn reply_line(reply: &Reply) -> Vec<u8> {
    let id = reply.id.clone();
    let line = match &reply.outcome {
        Ok(Outcome::Started { pid, output_dir }) => Line::Started {
            id,
            pid: *pid,
            output_dir: output_dir.clone(),
        },
        Ok(Outcome::Pong) => Line::Pong { id },
        Ok(Outcome::Chunk { stream, bytes }) => Line::Chunk {
            id,
            stderr: *stream == Stream::Stderr,
            bytes: Some(bytes.clone()),
        },
        Ok(Outcome::Exited {
            pid,
            status,
            encode,
            timed_out,
        }) => Line::Exited {
            id,
            pid: *pid,
            status: status.clone(),
            encode: *encode,
            timed_out: *timed_out,
        },
        Err(failure) => Line::Failed {
            id,
            stage: failure.stage.into(),
            error: WireError::from(&failure.error),
            output: failure.output.as_ref().map(WireFollow::from),
            output_dir: failure.output_dir.clone(),
            ended: failure.ended.clone(),
        },
    };
    to_line(&line)
}

/// The line that carries what the requests given up on left.
pub fn abandoned_line(abandoned: &[Abandoned]) -> Vec<u8> {
    let left = abandoned
        .iter()
        .map(|a| (a.id.clone(), WireLeft::from(&a.left)))
        .collect();
    to_line(&Line::Abandoned { left })
}

/// Reads a line of [`reply_line`] or [`abandoned_line`] back.
pub fn parse_line(line: &[u8]) -> Result<Relayed, serde_json::Error> {
    let reply = |id, outcome| Relayed::Reply(Reply { id, outcome });
    Ok(match serde_json::from_slice(line)? {
        Line::Started { id, pid, output_dir } => reply(id, Ok(Outcome::Started { pid, output_dir })),
        Line::Pong { id } => reply(id, Ok(Outcome::Pong)),
        Line::Chunk { id, stderr, bytes } => {
            let stream = if stderr { Stream::Stderr } else { Stream::Stdout };
            let bytes = bytes.unwrap_or_default();
            reply(id, Ok(Outcome::Chunk { stream, bytes }))
        }
        Line::Exited {
            id,
            pid,
            status,
            encode,
            timed_out,
        } => reply(
            id,
            Ok(Outcome::Exited {
                pid,
                status,
                encode,
                timed_out,
            }),
        ),
        Line::Failed {
            id,
            stage,
            error,
            output,
            output_dir,
            ended,
        } => reply(
            id,
            Err(Failure {
                output: output.map(FollowError::from),
                output_dir,
                ended,
                ..Failure::at(stage.into(), error.into())
            }),
        ),
        Line::Abandoned { left } => Relayed::Abandoned(
            left.into_iter()
                .map(|(id, left)| Abandoned {
                    id,
                    left: left.into(),
                })
                .collect(),
        ),
    })
}

fn to_line(value: &impl Serialize) -> Vec<u8> {
    let mut line = serde_json::to_vec(value).expect("plain data serializes");
    line.push(b'\n');
    line
}

#[derive(Serialize, Deserialize)]
struct RunLine {
    id: Value,
    program: String,
    args: Vec<String>,
    #[serde(default, with = "base64_data")]
    stdin: Option<Vec<u8>>,
    encode: bool,
    env: Vec<String>,
    env_clear: bool,
    max_time: Option<Duration>,
    grace: Duration,
    merge_output: bool,
    follow: bool,
    interactive: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Started {
        id: Value,
        pid: i64,
        /// None from an older master, and for a run without `follow`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output_dir: Option<String>,
    },
    Pong {
        id: Value,
    },
    Chunk {
        id: Value,
        stderr: bool,
        #[serde(default, with = "base64_data")]
        bytes: Option<Vec<u8>>,
    },
    Exited {
        id: Value,
        pid: i64,
        status: GuestExecStatusReply,
        encode: bool,
        timed_out: bool,
    },
    Failed {
        id: Value,
        stage: WireStage,
        error: WireError,
        output: Option<WireFollow>,
        output_dir: Option<String>,
        ended: Option<GuestExecStatusReply>,
    },
    Abandoned {
        left: Vec<(Value, WireLeft)>,
    },
}

#[derive(Serialize, Deserialize)]
enum WireStage {
    Connecting,
    Preparing,
    Starting,
    Pinging,
    Running(i64),
    Stopping(i64),
}

impl From<Stage> for WireStage {
    fn from(stage: Stage) -> Self {
        match stage {
            Stage::Connecting => WireStage::Connecting,
            Stage::Preparing => WireStage::Preparing,
            Stage::Starting => WireStage::Starting,
            Stage::Pinging => WireStage::Pinging,
            Stage::Running { pid } => WireStage::Running(pid),
            Stage::Stopping { pid } => WireStage::Stopping(pid),
        }
    }
}

impl From<WireStage> for Stage {
    fn from(stage: WireStage) -> Self {
        match stage {
            WireStage::Connecting => Stage::Connecting,
            WireStage::Preparing => Stage::Preparing,
            WireStage::Starting => Stage::Starting,
            WireStage::Pinging => Stage::Pinging,
            WireStage::Running(pid) => Stage::Running { pid },
            WireStage::Stopping(pid) => Stage::Stopping { pid },
        }
    }
}

/// An operating system's error by its number where it has one (its words
/// are then the same), else by its words.
#[derive(Serialize, Deserialize)]
struct WireIo {
    errno: Option<i32>,
    message: String,
}

impl From<&io::Error> for WireIo {
    fn from(error: &io::Error) -> Self {
        WireIo {
            errno: error.raw_os_error(),
            message: error.to_string(),
        }
    }
}

impl From<WireIo> for io::Error {
    fn from(error: WireIo) -> Self {
        match error.errno {
            Some(errno) => io::Error::from_raw_os_error(errno),
            None => io::Error::other(error.message),
        }
    }
}

#[derive(Serialize, Deserialize)]
enum WirePhase {
    Connecting,
    Handshake,
    Sending(String),
    Reply(String),
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum WireError {
    Connect {
        path: PathBuf,
        source: WireIo,
    },
    Io(WireIo),
    Timeout {
        phase: WirePhase,
        after: Duration,
    },
    NotAnAgent {
        found: String,
    },
    Busy {
        path: PathBuf,
        waited: Duration,
        holder: Option<String>,
    },
    BusyWithEarlierRequest {
        path: PathBuf,
        after: Duration,
        request: RequestInFlight,
    },
    AgentTooOld {
        feature: String,
        needs: (u32, u32),
        version: String,
    },
    Disconnected,
    ReplyTooLong {
        limit: usize,
    },
    RequestTooLarge {
        len: usize,
        limit: usize,
    },
    Malformed {
        command: String,
        reason: String,
    },
    Agent {
        command: String,
        class: String,
        desc: String,
    },
    EndNotReported {
        pid: i64,
        waited: Duration,
    },
    Libvirt {
        code: i32,
        domain: i32,
        message: String,
    },
}

impl From<&Error> for WireError {
    fn from(error: &Error) -> Self {
        match error {
            Error::Connect { path, source } => WireError::Connect {
                path: path.clone(),
                source: source.into(),
            },
            Error::Io(source) => WireError::Io(source.into()),
            Error::Timeout { phase, after } => WireError::Timeout {
                phase: match phase {
                    Phase::Connecting => WirePhase::Connecting,
                    Phase::Handshake => WirePhase::Handshake,
                    Phase::Sending(command) => WirePhase::Sending(command.clone()),
                    Phase::Reply(command) => WirePhase::Reply(command.clone()),
                },
                after: *after,
            },
            Error::NotAnAgent { found } => WireError::NotAnAgent { found: found.clone() },
            Error::Busy { path, waited, holder } => WireError::Busy {
                path: path.clone(),
                waited: *waited,
                holder: holder.clone(),
            },
            Error::BusyWithEarlierRequest { path, after, request } => WireError::BusyWithEarlierRequest {
                path: path.clone(),
                after: *after,
                request: request.clone(),
            },
            Error::AgentTooOld {
                feature,
                needs,
                version,
            } => WireError::AgentTooOld {
                feature: feature.clone(),
                needs: *needs,
                version: version.clone(),
            },
            Error::Disconnected => WireError::Disconnected,
            Error::ReplyTooLong { limit } => WireError::ReplyTooLong { limit: *limit },
            Error::RequestTooLarge { len, limit } => WireError::RequestTooLarge {
                len: *len,
                limit: *limit,
            },
            Error::Malformed { command, reason } => WireError::Malformed {
                command: command.clone(),
                reason: reason.clone(),
            },
            Error::Agent { command, class, desc } => WireError::Agent {
                command: command.clone(),
                class: class.clone(),
                desc: desc.clone(),
            },
            Error::EndNotReported { pid, waited } => WireError::EndNotReported {
                pid: *pid,
                waited: *waited,
            },
            Error::Libvirt {
                code,
                domain,
                message,
            } => WireError::Libvirt {
                code: *code,
                domain: *domain,
                message: message.clone(),
            },
        }
    }
}

impl From<WireError> for Error {
    fn from(error: WireError) -> Self {
        match error {
            WireError::Connect { path, source } => Error::Connect {
                path,
                source: source.into(),
            },
            WireError::Io(source) => Error::Io(source.into()),
            WireError::Timeout { phase, after } => Error::Timeout {
                phase: match phase {
                    WirePhase::Connecting => Phase::Connecting,
                    WirePhase::Handshake => Phase::Handshake,
                    WirePhase::Sending(command) => Phase::Sending(command),
                    WirePhase::Reply(command) => Phase::Reply(command),
                },
                after,
            },
            WireError::NotAnAgent { found } => Error::NotAnAgent { found },
            WireError::Busy { path, waited, holder } => Error::Busy { path, waited, holder },
            WireError::BusyWithEarlierRequest { path, after, request } => {
                Error::BusyWithEarlierRequest { path, after, request }
            }
            WireError::AgentTooOld {
                feature,
                needs,
                version,
            } => Error::AgentTooOld {
                feature,
                needs,
                version,
            },
            WireError::Disconnected => Error::Disconnected,
            WireError::ReplyTooLong { limit } => Error::ReplyTooLong { limit },
            WireError::RequestTooLarge { len, limit } => Error::RequestTooLarge { len, limit },
            WireError::Malformed { command, reason } => Error::Malformed { command, reason },
            WireError::Agent { command, class, desc } => Error::Agent { command, class, desc },
            WireError::EndNotReported { pid, waited } => Error::EndNotReported { pid, waited },
            WireError::Libvirt {
                code,
                domain,
                message,
            } => Error::Libvirt {
                code,
                domain,
                message,
            },
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum WireFollow {
    Agent(WireError),
    Unsupported { missing: Vec<String> },
    Setup { reason: String },
    Removed { dir: String },
    Full { dir: String },
    Lost { dir: String, stderr: bool, failed: bool },
    Index { reason: String },
    CleanUp { dir: String, reason: String },
    Input { reason: String },
    Sink(WireIo),
}

impl From<&FollowError> for WireFollow {
    fn from(error: &FollowError) -> Self {
        match error {
            FollowError::Agent(error) => WireFollow::Agent(error.into()),
            FollowError::Unsupported { missing } => WireFollow::Unsupported {
                missing: missing.clone(),
            },
            FollowError::Setup { reason } => WireFollow::Setup {
                reason: reason.clone(),
            },
            FollowError::Removed { dir } => WireFollow::Removed { dir: dir.clone() },
            FollowError::Full { dir } => WireFollow::Full { dir: dir.clone() },
            FollowError::Lost { dir, stream, failed } => WireFollow::Lost {
                dir: dir.clone(),
                stderr: *stream == Stream::Stderr,
                failed: *failed,
            },
            FollowError::Index { reason } => WireFollow::Index {
                reason: reason.clone(),
            },
            FollowError::CleanUp { dir, reason } => WireFollow::CleanUp {
                dir: dir.clone(),
                reason: reason.clone(),
            },
            FollowError::Input { reason } => WireFollow::Input {
                reason: reason.clone(),
            },
            FollowError::Sink(error) => WireFollow::Sink(error.into()),
        }
    }
}

impl From<WireFollow> for FollowError {
    fn from(error: WireFollow) -> Self {
        match error {
            WireFollow::Agent(error) => FollowError::Agent(error.into()),
            WireFollow::Unsupported { missing } => FollowError::Unsupported { missing },
            WireFollow::Setup { reason } => FollowError::Setup { reason },
            WireFollow::Removed { dir } => FollowError::Removed { dir },
            WireFollow::Full { dir } => FollowError::Full { dir },
            WireFollow::Lost { dir, stderr, failed } => FollowError::Lost {
                dir,
                stream: if stderr { Stream::Stderr } else { Stream::Stdout },
                failed,
            },
            WireFollow::Index { reason } => FollowError::Index { reason },
            WireFollow::CleanUp { dir, reason } => FollowError::CleanUp { dir, reason },
            WireFollow::Input { reason } => FollowError::Input { reason },
            WireFollow::Sink(error) => FollowError::Sink(error.into()),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum WireLeft {
    Nothing,
    Preparing,
    StartNotSent,
    MayHaveStarted,
    StartUndone,
    StillRunning(i64),
    Ended(i64),
    EndedJustNow(i64),
    Unknown(i64),
    Stopped {
        pid: i64,
        status: GuestExecStatusReply,
        polls: u32,
        asked: bool,
        killed: bool,
    },
    NotStopped {
        pid: i64,
        error: WireError,
        output_dir: Option<String>,
    },
}

impl From<&Left> for WireLeft {
    fn from(left: &Left) -> Self {
        match left {
            Left::Nothing => WireLeft::Nothing,
            Left::Preparing => WireLeft::Preparing,
            Left::StartNotSent => WireLeft::StartNotSent,
            Left::MayHaveStarted => WireLeft::MayHaveStarted,
            Left::StartUndone => WireLeft::StartUndone,
            Left::StillRunning { pid } => WireLeft::StillRunning(*pid),
            Left::Ended { pid } => WireLeft::Ended(*pid),
            Left::EndedJustNow { pid } => WireLeft::EndedJustNow(*pid),
            Left::Unknown { pid } => WireLeft::Unknown(*pid),
            Left::Stopped { pid, stopped } => WireLeft::Stopped {
                pid: *pid,
                status: stopped.finished.status.clone(),
                polls: stopped.finished.polls,
                asked: stopped.asked,
                killed: stopped.killed,
            },
            Left::NotStopped {
                pid,
                error,
                output_dir,
            } => WireLeft::NotStopped {
                pid: *pid,
                error: error.into(),
                output_dir: output_dir.clone(),
            },
        }
    }
}

impl From<WireLeft> for Left {
    fn from(left: WireLeft) -> Self {
        match left {
            WireLeft::Nothing => Left::Nothing,
            WireLeft::Preparing => Left::Preparing,
            WireLeft::StartNotSent => Left::StartNotSent,
            WireLeft::MayHaveStarted => Left::MayHaveStarted,
            WireLeft::StartUndone => Left::StartUndone,
            WireLeft::StillRunning(pid) => Left::StillRunning { pid },
            WireLeft::Ended(pid) => Left::Ended { pid },
            WireLeft::EndedJustNow(pid) => Left::EndedJustNow { pid },
            WireLeft::Unknown(pid) => Left::Unknown { pid },
            WireLeft::Stopped {
                pid,
                status,
                polls,
                asked,
                killed,
            } => Left::Stopped {
                pid,
                stopped: Stopped {
                    finished: Finished { status, polls },
                    asked,
                    killed,
                },
            },
            WireLeft::NotStopped {
                pid,
                error,
                output_dir,
            } => Left::NotStopped {
                pid,
                error: error.into(),
                output_dir,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(reply: Reply) -> Reply {
        match parse_line(&reply_line(&reply)).unwrap() {
            Relayed::Reply(reply) => reply,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_run_keeps_every_option() {
        let mut run = RunRequest::new("sh", ["-c", "cat; env"]).with_stdin(vec![0, 255, 10]);
        run.env = vec!["A=b=c".into(), "A=d".into()];
        run.env_clear = true;
        run.max_time = Some(Duration::from_nanos(1_500_000_001));
        run.grace = Duration::from_millis(250);
        run.encode = true;
        let (id, back) = parse_run(&run_line(&"x".into(), &run)).unwrap();
        assert_eq!((id, back), ("x".into(), run));
    }

    #[test]
    fn an_exit_and_a_failure_come_back_as_they_went() {
        let status = GuestExecStatusReply {
            exited: true,
            signal: Some(9),
            out_data: Some(b"out".to_vec()),
            err_truncated: true,
            ..GuestExecStatusReply::default()
        };
        let exited = Reply {
            id: 3.into(),
            outcome: Ok(Outcome::Exited {
                pid: 44,
                status: status.clone(),
                encode: false,
                timed_out: true,
            }),
        };
        match round_trip(exited).outcome {
            Ok(Outcome::Exited {
                pid,
                status: back,
                timed_out,
                ..
            }) => {
                assert_eq!((pid, back, timed_out), (44, status, true));
            }
            other => panic!("{other:?}"),
        }
        let refused = Error::Connect {
            path: "/run/qga.sock".into(),
            source: io::Error::from_raw_os_error(nix::libc::ECONNREFUSED),
        };
        for error in [
            refused,
            Error::Timeout {
                phase: Phase::Reply("guest-exec-status".into()),
                after: Duration::from_millis(1500),
            },
            Error::Agent {
                command: "guest-exec".into(),
                class: "GenericError".into(),
                desc: "Guest agent command failed".into(),
            },
        ] {
            let said = error.to_string();
            let failed = Reply::failed(1.into(), Failure::new(Stage::Running { pid: 9 }, error));
            match round_trip(failed).outcome {
                Err(failure) => {
                    assert_eq!(failure.stage, Stage::Running { pid: 9 });
                    assert_eq!(failure.error.to_string(), said);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn followed_output_and_its_failures_come_back() {
        let chunk = Reply {
            id: 1.into(),
            outcome: Ok(Outcome::Chunk {
                stream: Stream::Stderr,
                bytes: vec![0, 255],
            }),
        };
        match round_trip(chunk).outcome {
            Ok(Outcome::Chunk { stream, bytes }) => {
                assert_eq!((stream, bytes), (Stream::Stderr, vec![0, 255]))
            }
            other => panic!("{other:?}"),
        }
        let lost = FollowError::Lost {
            dir: "/tmp/v".into(),
            stream: Stream::Stderr,
            failed: true,
        };
        let said = lost.to_string();
        let failed = Reply::failed(1.into(), Failure::following(Stage::Running { pid: 3 }, lost));
        match round_trip(failed).outcome {
            Err(failure) => assert_eq!(failure.output.map(|o| o.to_string()), Some(said)),
            other => panic!("{other:?}"),
        }
        let removed = FollowError::Removed { dir: "/tmp/v".into() };
        let said = removed.to_string();
        let failed = Reply::failed(
            1.into(),
            Failure {
                output_dir: Some("/tmp/v".into()),
                ..Failure::following(Stage::Running { pid: 3 }, removed)
            },
        );
        match round_trip(failed).outcome {
            Err(failure) => {
                assert_eq!(failure.output.map(|o| o.to_string()), Some(said));
                assert_eq!(failure.output_dir.as_deref(), Some("/tmp/v"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_start_comes_back_with_its_output_directory_and_without_one_from_an_older_master() {
        let started = Reply {
            id: 2.into(),
            outcome: Ok(Outcome::Started {
                pid: 12,
                output_dir: Some("/tmp/v".into()),
            }),
        };
        let Relayed::Reply(back) = parse_line(&reply_line(&started)).unwrap() else {
            panic!("not a reply");
        };
        assert!(matches!(
            back.outcome,
            Ok(Outcome::Started { pid: 12, output_dir: Some(ref dir) }) if dir == "/tmp/v"
        ));
        let older = br#"{"started": {"id": 2, "pid": 12}}"#;
        let Relayed::Reply(back) = parse_line(older).unwrap() else {
            panic!("not a reply");
        };
        assert!(matches!(
            back.outcome,
            Ok(Outcome::Started {
                pid: 12,
                output_dir: None
            })
        ));
    }

    #[test]
    fn what_a_give_up_left_comes_back() {
        let left = [
            Abandoned {
                id: 1.into(),
                left: Left::StillRunning { pid: 5 },
            },
            Abandoned {
                id: 2.into(),
                left: Left::MayHaveStarted,
            },
        ];
        let Relayed::Abandoned(back) = parse_line(&abandoned_line(&left)).unwrap() else {
            panic!("abandoned")
        };
        assert!(matches!(back[0].left, Left::StillRunning { pid: 5 }));
        assert!(matches!(back[1].left, Left::MayHaveStarted));
        assert_eq!(back[1].id, 2);
    }
}
