//! `virtomate session DOMAIN`: requests as JSON lines on stdin, replies as
//! JSON lines on stdout, served over one agent connection by the protocol
//! crate's [`Session`], which lends its channel to the copies.
//!
//! - `input`: the lines read, routed to the session or to a copy.
//! - `copies`: `copy_to` and `copy_from`, run on the session's channel.
//! - `data_lines`: a guest file sent back as lines.
//! - `lines`: the reply lines and how they are written.
//! - here: the replies printed, and signals.

mod copies;
mod data_lines;
mod input;
mod lines;

use std::rc::Rc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::SendError;
use virtomate_protocol::follow::Stream;
use virtomate_protocol::session::{Failure, Outcome, Reply, Session, SessionOptions};

use self::copies::{Copies, CopyState};
use self::lines::{answered, print, Answered, ChunkLine, Line};
use super::{Answer, Context};
use crate::agent::DomainAgent;
use crate::agent::{cut_short, Settled, Signals, CLEAN_UP_CUT_SHORT};
use crate::agent::{AgentErrors, RunFront, Silence};
use crate::error::{CliError, ErrorKind};
use crate::run_output::RunResult;

/// Requests read but not yet taken up: reading stops there, so that a
/// client far ahead of the agent does not fill memory.
const QUEUED_REQUESTS: usize = 16;

/// Where failed requests' replies wait to be explained.
type Silent = mpsc::UnboundedSender<(Value, Unexplained)>;

/// A failure whose explanation asks QEMU or libvirtd first.
enum Unexplained {
    /// An agent's timeout: the VM may not run.
    Timeout(CliError),
    /// A run the agent's channel failed under: its VM may have stopped.
    Run(Failure),
}

impl Unexplained {
    /// The error as it is, without asking.
    fn unexplained(self, errors: &AgentErrors) -> CliError {
        match self {
            Unexplained::Timeout(error) => error,
            Unexplained::Run(failure) => errors.run_failure(failure, RunFront::Session),
        }
    }
}

pub async fn run(domain: &str, idle: Duration, context: &Context) -> Result<Answer, CliError> {
    // Caught first: a signal before the handler would end the session with
    // no reply said.
    let mut signals = Signals::install()?;
    // Found once; connecting waits for the first request.
    let agent = DomainAgent::open(domain, &context.scope, context.options.clone())?;
    let silence = agent.silence();
    let run_options = agent.run_options();
    let (connector, errors) = agent.into_parts();
    let mut session = Session::new(connector, SessionOptions { idle, ..run_options });
    let (sender, mut work) = mpsc::channel(QUEUED_REQUESTS);
    // A thread of its own, which the process's exit ends wherever it
    // blocks; tokio's stdin would keep the runtime from shutting down.
    std::thread::spawn(move || input::read(std::io::stdin().lock(), sender));

    let state = Rc::new(CopyState::default());
    let mut copies = Copies {
        errors: &errors,
        silence: &silence,
        state: state.clone(),
    };
    // An agent that timed out, or hung up under a run, may be in a VM that
    // does not run: asking QEMU or libvirtd takes a while, and the other
    // requests go on meanwhile.
    let (silent, mut to_explain) = mpsc::unbounded_channel();
    let settling = session.channel().settling();
    let mut hint = None;
    let served = {
        let errors = &errors;
        let serve = session.serve_jobs(
            &mut work,
            move |reply| {
                print_reply(reply, &errors.now(), &silent);
                Ok(())
            },
            &mut copies,
        );
        let explain = async {
            while let Some((id, unexplained)) = to_explain.recv().await {
                let error = match unexplained {
                    Unexplained::Timeout(error) => silence.explain(error).await,
                    Unexplained::Run(failure) => {
                        silence
                            .run_failure(failure, &errors.now(), RunFront::Session)
                            .await
                    }
                };
                answered(&id);
                print(&Line::error(id, &error));
            }
        };
        let serve = async { tokio::join!(serve, explain) };
        tokio::pin!(serve);
        tokio::select! {
            _ = &mut serve => true,
            () = signals.arrival() => {
                // A copy under way cleans up and replies first; a run's
                // step in flight (a file being opened, a helper started)
                // ends first, for the give-up to undo. A second signal
                // cuts either short.
                match state.in_flight() {
                    Some(id) => {
                        tokio::select! {
                            () = state.stop() => false,
                            _ = &mut serve => false,
                            () = signals.arrival() => {
                                let step = settling.step_in_flight();
                                print(&Line::error(id, &copies::clean_up_cut_short(step)));
                                false
                            }
                        }
                    }
                    None => {
                        if let Settled::CutShort(step) = signals.settle(&settling, &mut serve).await {
                            hint = Some(cut_short(step));
                        }
                        false
                    }
                }
            }
        }
    };
    if served {
        session.close().await;
        lines::flush();
        return Ok(Answer::Nothing);
    }
    // Failed already, not yet explained: as they are.
    while let Ok((id, unexplained)) = to_explain.try_recv() {
        answered(&id);
        print(&Line::error(id, &unexplained.unexplained(&errors.now())));
    }
    // As guest-run gives up: followed and time-limited programs are
    // stopped (their output's rest printed, their directories removed),
    // the others looked at once and left to run.
    // A further signal stops waiting for the agent (a hung one, say).
    let given_up = tokio::select! {
        abandoned = session.give_up(|reply| {
            if let Ok(Outcome::Chunk { stream, bytes }) = reply.outcome {
                print_chunk(reply.id, stream, &bytes);
            }
            Ok(())
        }) => Some(abandoned),
        () = signals.arrival() => None,
    };
    let abandoned = given_up.unwrap_or_else(|| {
        hint = Some(CLEAN_UP_CUT_SHORT.to_owned());
        session.given_up_as_is()
    });
    for left in abandoned {
        let error = errors.now().abandoned(left.left);
        let error = match &hint {
            Some(hint) => error.with_hint(hint.clone()),
            None => error,
        };
        print(&Line::error(left.id, &error));
    }
    lines::flush();
    Ok(Answer::Failed)
}

/// Prints `reply`, or for an agent's timeout, sends it to `silent` to be
/// explained first.
fn print_reply(reply: Reply, errors: &AgentErrors, silent: &Silent) {
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
        Ok(Outcome::Chunk { stream, bytes }) => return print_chunk(reply.id, stream, &bytes),
        Ok(_) => return,
        Err(failure) => match to_explain(failure, errors) {
            Ok(unexplained) => {
                if let Err(SendError((id, unexplained))) = silent.send((reply.id, unexplained)) {
                    answered(&id);
                    print(&Line::error(id, &unexplained.unexplained(errors)));
                }
                return;
            }
            Err(error) => Line::error(reply.id, &error),
        },
    };
    answered(&line.id);
    print(&line);
}

/// A failure to explain after the other replies, or the error to print
/// at once.
fn to_explain(failure: Failure, errors: &AgentErrors) -> Result<Unexplained, CliError> {
    if Silence::may_explain(&failure, errors) {
        return Ok(Unexplained::Run(failure));
    }
    match errors.run_failure(failure, RunFront::Session) {
        error if error.kind() == ErrorKind::AgentTimeout => Ok(Unexplained::Timeout(error)),
        error => Err(error),
    }
}

/// Prints a chunk of the output of the followed program `id`.
fn print_chunk(id: Value, stream: Stream, bytes: &[u8]) {
    let bytes = Some(STANDARD.encode(bytes));
    let (stdout, stderr) = match stream {
        Stream::Stdout => (bytes, None),
        _ => (None, bytes),
    };
    print(&ChunkLine { id, stderr, stdout });
}
