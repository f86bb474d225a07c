//! `virtomate shell`: an interactive terminal in the guest, over the run
//! engine's interactive run (the program's stdin a named pipe fed as the
//! keys come, its output followed). Where the guest can make a terminal
//! ([`guest::Maker`]) and standard input is one, the host's terminal goes
//! raw and the guest's does the rest; otherwise a line-mode shell.

mod escape;
mod guest;

use std::cell::Cell;
use std::io::{self, IsTerminal, Read};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use virtomate_protocol::session::{Abandoned, Left, Outcome, Reply, Request, RunRequest, Session};

use super::{Answer, Context};
use crate::agent::{cut_short, stopped_on_a_signal, DomainAgent, DomainConnector, Settled, Signals};
use crate::error::{CliError, Interruption};
use crate::run_output::RunOutput;
use crate::run_sink::RunSink;
use crate::std_streams::read_waiting;
use crate::terminal::{self, RawMode};
use escape::Escape;
use guest::{Maker, Window};

/// What `shell` exits with when it, not the guest's program, ended the
/// shell (`~.`): ssh's status for its own failures.
pub const LEFT_STATUS: u8 = 255;

/// The ids of the requests: the shell, the probe, and window changes
/// (each its own id after this one).
const SHELL_ID: u64 = 0;
const PROBE_ID: u64 = 1;
const FIRST_RESIZE_ID: u64 = 2;

pub async fn run(domain: &str, command: Vec<String>, context: &Context) -> Result<Answer, CliError> {
    let mut signals = Signals::install()?;
    let mut agent = signals
        .unless_interrupted(Interruption::Connecting, DomainAgent::connect(domain, context))
        .await??;
    let on_terminal = io::stdin().is_terminal();
    let maker = match on_terminal {
        true => {
            signals
                .unless_interrupted(Interruption::Connecting, probe(&mut agent))
                .await??
        }
        false => None,
    };
    let token = random_token();
    let (request, mut raw_mode) = match maker {
        Some(maker) => {
            let (rows, cols) = terminal::window_size().unwrap_or((24, 80));
            let term = std::env::var("TERM").unwrap_or_else(|_| "dumb".to_owned());
            let window = Window { rows, cols, term };
            // Raw before the run starts: what is typed meanwhile is not echoed twice.
            let raw = RawMode::enter().map_err(|e| CliError::io("cannot put the terminal in raw mode", e))?;
            (guest::on_terminal(maker, &window, &token, &command), Some(raw))
        }
        None => {
            eprintln!("virtomate: {}", no_terminal_notice(on_terminal));
            (guest::line_mode(&command), None)
        }
    };
    let mut sink = Sink::default();
    let resizes = Resizes {
        token: raw_mode.as_ref().map(|_| token),
        next_id: FIRST_RESIZE_ID,
    };
    let ended = serve(
        agent.session(),
        interactive(request),
        resizes,
        &mut sink,
        &mut signals,
    )
    .await;
    let outcome = match ended {
        Ended::Shell => sink
            .run
            .outcome
            .take()
            .expect("the engine replies to every request"),
        ended => {
            let abandoned = agent.session().give_up(|reply| sink.take(reply)).await;
            agent.close().await;
            // The cursor may be anywhere on the guest's last line.
            let newline = if raw_mode.is_some() { "\n" } else { "" };
            drop(raw_mode);
            if let Ended::Left = ended {
                eprintln!("{newline}virtomate: left the shell with ~.; its program in the guest was stopped");
                return Ok(Answer::Exit(LEFT_STATUS));
            }
            let error = interrupted(shell_left(abandoned));
            return Err(match ended {
                Ended::Signal(Some(step)) => error.with_hint(cut_short(step)),
                _ => error,
            });
        }
    };
    let status = match outcome {
        Ok(Outcome::Exited { status, .. }) => status,
        Ok(other) => unreachable!("a run ends in its exit, not {other:?}"),
        Err(failure) => {
            let error = agent.run_failure(failure).await;
            agent.close().await;
            if raw_mode.take().is_some() {
                // The error starts a line of its own, wherever the cursor was.
                eprintln!();
            }
            return Err(error);
        }
    };
    agent.close().await;
    drop(raw_mode);
    if let Some(error) = sink.run.failed.filter(|e| e.kind() != io::ErrorKind::BrokenPipe) {
        return Err(CliError::io("cannot write the program's output", error));
    }
    Ok(Answer::Run(RunOutput::Raw {
        status,
        timed_out: false,
    }))
}

/// The first way the guest has to make a terminal, if any; a guest that
/// cannot run the probe has none either.
async fn probe(agent: &mut DomainAgent) -> Result<Option<Maker>, CliError> {
    let (requests, mut incoming) = mpsc::channel(1);
    requests
        .try_send(Request::run(PROBE_ID.into(), guest::probe()))
        .expect("an empty channel takes one request");
    drop(requests);
    let mut outcome = None;
    agent
        .session()
        .serve(&mut incoming, |reply| {
            outcome = Some(reply.outcome);
            Ok(())
        })
        .await;
    match outcome.expect("the engine replies to every request") {
        Ok(Outcome::Exited { status, .. }) => {
            Ok(guest::maker(status.out_data.as_deref().unwrap_or_default()))
        }
        Ok(other) => unreachable!("a run ends in its exit, not {other:?}"),
        Err(failure) => Err(agent.run_failure(failure).await),
    }
}

/// Said once on stderr when the shell has no terminal, and why.
fn no_terminal_notice(on_terminal: bool) -> &'static str {
    match on_terminal {
        true => {
            "no terminal in the guest (it has neither util-linux script nor python3 with its pty module): \
             a line-mode shell, no prompt editing; Ctrl-C ends virtomate, Ctrl-D ends the input"
        }
        false => "standard input is not a terminal: a line-mode shell, no terminal in the guest",
    }
}

fn interactive(mut request: RunRequest) -> RunRequest {
    request.follow = true;
    request.interactive = true;
    request
}

/// How the serving ended.
enum Ended {
    /// The shell ended, or failed: its outcome is in the sink.
    Shell,
    /// `~.` was typed.
    Left,
    /// SIGINT, SIGTERM or SIGHUP; with the step whose reply a second
    /// signal stopped the wait for, if any.
    Signal(Option<&'static str>),
}

/// Window changes to pass on, when the shell has a terminal.
struct Resizes {
    token: Option<String>,
    next_id: u64,
}

/// How often a window change looks again whether the last one is done
/// (one at a time: a window dragged wider sends many SIGWINCH, and only
/// the last size matters).
const RESIZE_RETRY: Duration = Duration::from_millis(100);

/// Runs the shell to its end: the keyboard fed to it from a thread, each
/// window change sent as a run of its own beside it.
async fn serve(
    session: &mut Session<DomainConnector>,
    request: RunRequest,
    mut resizes: Resizes,
    sink: &mut Sink,
    signals: &mut Signals,
) -> Ended {
    let (requests, mut incoming) = mpsc::channel(4);
    requests
        .try_send(Request::run(SHELL_ID.into(), request))
        .expect("an empty channel takes one request");
    let (left, mut leaving) = mpsc::unbounded_channel();
    let (keys, ended) = (requests.clone(), sink.run.program_ended.clone());
    std::thread::spawn(move || feed_keys(io::stdin().lock(), &keys, &ended, &left));
    let mut window_changes = match resizes.token {
        Some(_) => signal(SignalKind::window_change()).ok(),
        None => None,
    };
    let program_ended = sink.run.ended.clone();
    let resizing = sink.resizing.clone();
    let settling = session.channel().settling();
    let served = session.serve(&mut incoming, |reply| sink.take(reply));
    tokio::pin!(served);
    let mut pending: Option<(u16, u16)> = None;
    loop {
        tokio::select! {
            () = &mut served => break,
            () = program_ended.notified() => break,
            () = signals.arrival() => {
                // What the agent keeps for a step in flight is awaited,
                // for the give-up to undo (a second signal cuts it short).
                return match signals.settle(&settling, &mut served).await {
                    Settled::Ended(()) | Settled::Idle => Ended::Signal(None),
                    Settled::CutShort(step) => Ended::Signal(Some(step)),
                };
            }
            Some(()) = leaving.recv() => return Ended::Left,
            Some(()) = next_change(&mut window_changes) => pending = terminal::window_size(),
            () = tokio::time::sleep(RESIZE_RETRY), if pending.is_some() => {}
        }
        if let (Some((rows, cols)), Some(token)) = (pending, &resizes.token) {
            if resizing.get() {
                continue;
            }
            let request = Request::run(resizes.next_id.into(), guest::resize(token, rows, cols));
            if requests.try_send(request).is_ok() {
                resizing.set(true);
                resizes.next_id += 1;
                pending = None;
            }
        }
    }
    Ended::Shell
}

async fn next_change(changes: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match changes {
        Some(changes) => changes.recv().await,
        None => std::future::pending().await,
    }
}

/// The most bytes of the keyboard read at once.
const INPUT_PIECE: usize = 64 << 10;

/// Passes the keyboard on to the shell as it comes, through the escape
/// filter, then its end; `~.` tells `left` instead.
fn feed_keys(
    mut input: impl Read + std::os::fd::AsFd,
    requests: &mpsc::Sender<Request>,
    program_ended: &AtomicBool,
    left: &mpsc::UnboundedSender<()>,
) {
    let mut buf = vec![0; INPUT_PIECE];
    let mut escape = Escape::default();
    while !program_ended.load(Ordering::Acquire) {
        let (bytes, end) = match read_waiting(&mut input, &mut buf) {
            Ok(0) => (escape.finish(), true),
            Ok(n) => {
                let filtered = escape.filter(&buf[..n]);
                if filtered.leave {
                    let _ = left.send(());
                    return;
                }
                (filtered.bytes, false)
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read standard input: it ends here");
                (escape.finish(), true)
            }
        };
        if bytes.is_empty() && !end {
            continue;
        }
        if requests
            .blocking_send(Request::input(SHELL_ID.into(), bytes, end))
            .is_err()
            || end
        {
            return;
        }
    }
}

/// Where the engine's replies go: the shell's output at once, its end
/// kept; the replies to window changes are dropped (a change the guest
/// could not make leaves the old size).
#[derive(Default)]
struct Sink {
    run: RunSink,
    /// A window change is on its way (its one reply not come yet).
    resizing: Rc<Cell<bool>>,
}

impl Sink {
    fn take(&mut self, reply: Reply) -> io::Result<()> {
        if reply.id != SHELL_ID {
            tracing::debug!(?reply, "window change");
            self.resizing.set(false);
            return Ok(());
        }
        self.run.take(reply)
    }
}

/// What was left of the shell when a signal ended virtomate.
fn shell_left(abandoned: Vec<Abandoned>) -> Left {
    abandoned
        .into_iter()
        .find(|a| a.id == SHELL_ID)
        .map_or(Left::Nothing, |a| a.left)
}

/// The error for a shell given up on a signal.
fn interrupted(left: Left) -> CliError {
    let stage = match left {
        Left::Stopped { pid, stopped } => stopped_on_a_signal(pid, &stopped),
        Left::StillRunning { pid } | Left::NotStopped { pid, .. } | Left::Unknown { pid } => {
            Interruption::Running { pid }
        }
        Left::Ended { pid } | Left::EndedJustNow { pid } => Interruption::Ended { pid },
        Left::MayHaveStarted => Interruption::Starting,
        Left::StartUndone => Interruption::StartUndone,
        Left::StartNotSent => Interruption::SendingStart,
        Left::Preparing => Interruption::Preparing,
        _ => Interruption::Connecting,
    };
    CliError::interrupted(stage)
}

/// Marks this shell's terminal in the guest among other shells' (not a
/// secret: it only tells them apart).
fn random_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!("{}-{nanos}", std::process::id())
}
