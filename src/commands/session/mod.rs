//! `virtomate session DOMAIN`: requests as JSON lines on stdin, replies as
//! JSON lines on stdout, served over one agent connection by the protocol
//! crate's [`Session`]. This file only reads lines and prints them.

use std::io::{BufRead, Write};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;
use virtomate_protocol::follow::{FollowError, Stream, DIRECT_READ_COUNT, LIBVIRT_READ_COUNT};
use virtomate_protocol::session::{Failure, Outcome, Reply, Request, Session, SessionOptions, Stage};
use virtomate_protocol::MAX_REQUEST_LEN;

use super::agent_errors::AgentErrors;
use super::guest_run::RunResult;
use super::signals::Signals;
use super::{Answer, Context, DomainAgent};
use crate::error::{CliError, ErrorJson, ErrorKind, Interruption};
use crate::output;

/// The longest request line: one agent request (a program's input in
/// Base64 included) and room for the JSON around it. A longer line is
/// answered with an error and skipped, never held whole.
const MAX_LINE_LEN: usize = MAX_REQUEST_LEN + (1 << 20);

/// Requests read but not yet taken up: reading stops there, so that a
/// client far ahead of the agent does not fill memory.
const QUEUED_REQUESTS: usize = 16;

pub async fn run(domain: &str, idle: Duration, context: &Context) -> Result<Answer, CliError> {
    // Found once; connecting waits for the first request.
    let (connector, errors) =
        DomainAgent::open(domain, &context.scope, context.options.clone())?.into_parts();
    let mut session = Session::new(
        connector,
        SessionOptions {
            idle,
            follow_read_count: match errors.through_libvirtd {
                true => LIBVIRT_READ_COUNT,
                false => DIRECT_READ_COUNT,
            },
            ..SessionOptions::default()
        },
    );
    let (sender, mut requests) = mpsc::channel(QUEUED_REQUESTS);
    // A thread of its own, which the process's exit ends wherever it
    // blocks; tokio's stdin would keep the runtime from shutting down.
    std::thread::spawn(move || read_requests(std::io::stdin().lock(), sender));

    let mut signals = Signals::install()?;
    let served = signals
        .unless_interrupted(
            Interruption::Connecting,
            session.serve(&mut requests, |reply| print_reply(reply, &errors)),
        )
        .await;
    if served.is_ok() {
        session.close().await;
        return Ok(Answer::Nothing);
    }
    for left in session.in_flight() {
        let stage = match left.stage {
            Stage::Starting => Interruption::Starting,
            Stage::Running { pid } => Interruption::Running { pid },
            _ => Interruption::Connecting,
        };
        print(&Line::error(left.id, &CliError::interrupted(stage)));
    }
    Ok(Answer::Failed)
}

/// Reads request lines until EOF, answering those that are no request at
/// once; the others go to the session.
fn read_requests(mut input: impl BufRead, requests: mpsc::Sender<Request>) {
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = std::io::Read::take(&mut input, MAX_LINE_LEN as u64 + 1).read_until(b'\n', &mut line);
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.len() > MAX_LINE_LEN && line.last() != Some(&b'\n') {
            let message = format!("a request line may be at most {MAX_LINE_LEN} bytes long");
            print(&Line::bad_request(Value::Null, message));
            if !skip_line(&mut input) {
                return;
            }
            continue;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match Request::parse(&line) {
            Ok(request) => {
                if requests.blocking_send(request).is_err() {
                    return;
                }
            }
            Err(bad) => print(&Line::bad_request(bad.id, bad.message)),
        }
    }
}

/// Skips the rest of a line; false at EOF.
fn skip_line(input: &mut impl BufRead) -> bool {
    loop {
        let Ok(buffer) = input.fill_buf() else {
            return false;
        };
        if buffer.is_empty() {
            return false;
        }
        match memchr(buffer) {
            Some(end) => {
                input.consume(end + 1);
                return true;
            }
            None => {
                let len = buffer.len();
                input.consume(len);
            }
        }
    }
}

fn memchr(buffer: &[u8]) -> Option<usize> {
    buffer.iter().position(|&b| b == b'\n')
}

fn print_reply(reply: Reply, errors: &AgentErrors) {
    let line = match reply.outcome {
        Ok(Outcome::Exited {
            status,
            encode,
            timed_out,
            ..
        }) => match RunResult::new(status, encode) {
            Ok(result) => Line {
                timed_out,
                ..Line::result(reply.id, Answered::Run(result))
            },
            Err(error) => Line::error(reply.id, &error),
        },
        Ok(Outcome::Pong) => Line::result(reply.id, Answered::Pong {}),
        Ok(Outcome::Chunk { stream, bytes }) => {
            let bytes = Some(STANDARD.encode(bytes));
            let (stdout, stderr) = match stream {
                Stream::Stdout => (bytes, None),
                _ => (None, bytes),
            };
            let mut out = std::io::stdout().lock();
            let chunk = ChunkLine {
                id: reply.id,
                stderr,
                stdout,
            };
            let _ = output::write_json(&mut out, &chunk, false).and_then(|()| out.flush());
            return;
        }
        Ok(_) => return,
        Err(Failure {
            stage,
            output: Some(output),
            ..
        }) => Line::error(reply.id, &output_error(output, stage)),
        Err(Failure { stage, error, .. }) => {
            let error = match stage {
                Stage::Starting => errors.error_while_starting(error),
                Stage::Running { pid } => errors.error_while_running(error, pid),
                _ => errors.error(error),
            };
            Line::error(reply.id, &error)
        }
    };
    print(&line);
}

/// Following a program's output failed on the guest's side.
fn output_error(error: FollowError, stage: Stage) -> CliError {
    match (error, stage) {
        (error @ FollowError::Unsupported { .. }, _) => {
            CliError::new(ErrorKind::AgentCommand, format!("{error}; nothing was started"))
        }
        (error, Stage::Running { pid }) => CliError::new(ErrorKind::GuestOutput, error.to_string())
            .with_hint(format!("the program ran in the guest as pid {pid}")),
        (error, _) => CliError::new(ErrorKind::GuestOutput, format!("{error}; nothing was started"))
            .with_hint("\"follow\" needs /bin/sh and a writable $TMPDIR or /tmp in the guest"),
    }
}

/// A chunk of a followed program's output: `{"id", "stdout"}` or
/// `{"id", "stderr"}`, the bytes in Base64.
#[derive(Serialize)]
struct ChunkLine {
    id: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    stderr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stdout: Option<String>,
}

/// One reply line: `{"id", "result"}` or `{"error", "id"}`, keys sorted as
/// every output of virtomate.
#[derive(Serialize)]
struct Line {
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorJson>,
    id: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Answered>,
    /// Present, and true, when the request's `max_time` passed and the
    /// program was stopped (guest-run's exit status 124).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    timed_out: bool,
}

/// What a request gave: a program's result exactly as `guest-run` prints
/// it, or `{}` for a ping.
#[derive(Serialize)]
#[serde(untagged)]
enum Answered {
    Run(RunResult),
    Pong {},
}

impl Line {
    fn result(id: Value, result: Answered) -> Line {
        Line {
            error: None,
            id,
            result: Some(result),
            timed_out: false,
        }
    }

    fn error(id: Value, error: &CliError) -> Line {
        tracing::info!("{}: {error}", error.json_type());
        Line {
            error: Some(ErrorJson::from(error)),
            id,
            result: None,
            timed_out: false,
        }
    }

    fn bad_request(id: Value, message: String) -> Line {
        Line::error(id, &CliError::usage(message))
    }
}

/// Writes one line to stdout. A reader that went away is not an error:
/// the programs in flight still end, and their replies go nowhere.
fn print(line: &Line) {
    let mut out = std::io::stdout().lock();
    let _ = output::write_json(&mut out, line, false).and_then(|()| out.flush());
}
