//! `virtomate guest-run`: run a program in the guest and report its result.
//! The arguments become one request to the protocol crate's run engine
//! ([`Session`]); its replies become stdout, stderr and an exit status.

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;
use virtomate_protocol::session::{Abandoned, Failure, Outcome, Request, RunRequest, Session, Stage};
use virtomate_protocol::MAX_REQUEST_LEN;

use super::{Answer, Context};
use crate::agent::{cut_short, DomainAgent, DomainConnector, Settled, Signals, CLEAN_UP_CUT_SHORT};
use crate::cli::GuestRunArgs;
use crate::error::{CliError, Interruption};
use crate::master::MasterRun;
use crate::run_output::{RunOutput, RunResult};
use crate::run_sink::RunSink;
use crate::std_streams::read_waiting;

/// The most of standard input read: what one request can carry at best.
/// The exact bound, which depends on the rest of the request, is checked
/// once the input is read.
const MAX_INPUT_LEN: usize = MAX_REQUEST_LEN / 4 * 3;

pub async fn run(args: GuestRunArgs, context: &Context) -> Result<Answer, CliError> {
    // Read stdin before connecting, so the channel is not held while the
    // user types.
    let input = if args.stdin { Some(read_stdin()?) } else { None };
    let (raw, encode) = (args.raw, args.encode);
    let domain = args.domain.clone();
    let request = run_request(args, input);
    let request_len = request.request_len();
    if request_len > MAX_REQUEST_LEN {
        return Err(CliError::input_too_large(request_len, MAX_REQUEST_LEN, false));
    }
    let follow = request.follow;
    // A control master runs it whole, one exchange with it; an
    // interactive run's input goes the agent's way through it.
    let whole = (!request.interactive).then(|| (RUN_ID.into(), &request));

    let mut signals = Signals::install()?;
    let connecting = DomainAgent::connect_for_run(&domain, context, whole);
    let (mut agent, mut master_run) = signals
        .unless_interrupted(Interruption::Connecting, connecting)
        .await??;
    let mut sink = RunSink::default();
    if let Some(run) = &mut master_run {
        match signals
            .unless_interrupted(Interruption::Connecting, run.ready())
            .await
        {
            Ok(Ok(true)) => {}
            // An older master: the run goes through it command by command.
            Ok(Ok(false)) => {
                master_run = None;
                let connecting = agent.connect_now(&context.scope);
                signals
                    .unless_interrupted(Interruption::Connecting, connecting)
                    .await??;
            }
            Ok(Err(e)) if run.lost_the_master() => {
                return Err(agent.master_lost(Failure::new(Stage::Connecting, e), run.socket()))
            }
            Ok(Err(e)) => return Err(agent.connection_error(e, &context.scope).await),
            // The run was asked for: giving it up (below) says what it left.
            Err(_) => {}
        }
    }
    let ended = match &mut master_run {
        Some(run) if run.is_ready() => serve_whole(run, &mut sink, &mut signals).await.ok_or(None),
        Some(_) => Err(None),
        None => serve(agent.session(), request, &mut sink, &mut signals).await,
    };
    let outcome = match ended {
        Ok(outcome) => outcome,
        Err(cut) => {
            let mut hint = cut.map(cut_short);
            let abandoned = match &mut master_run {
                Some(run) => {
                    // The master may wait for a step in flight (see
                    // run_conn); a second signal stops waiting for it.
                    let given_up = tokio::select! {
                        abandoned = run.give_up(|reply| sink.take(reply)) => Some(abandoned),
                        () = signals.arrival() => None,
                    };
                    given_up.unwrap_or_else(|| {
                        hint = Some(cut_short(MASTER_GIVING_UP));
                        run.what_is_known()
                    })
                }
                None => {
                    // Stopping a followed program waits for the agent; a
                    // further signal stops waiting (a hung agent, say).
                    let given_up = tokio::select! {
                        abandoned = agent.session().give_up(|reply| sink.take(reply)) => Some(abandoned),
                        () = signals.arrival() => None,
                    };
                    given_up.unwrap_or_else(|| {
                        hint = Some(CLEAN_UP_CUT_SHORT.to_owned());
                        agent.session().given_up_as_is()
                    })
                }
            };
            let error = interrupted(&agent, abandoned);
            agent.close().await;
            return Err(match hint {
                Some(hint) => error.with_hint(hint),
                None => error,
            });
        }
    };
    let (status, timed_out) = match outcome {
        Ok(Outcome::Exited {
            status, timed_out, ..
        }) => (status, timed_out),
        Ok(other) => unreachable!("a run ends in its exit, not {other:?}"),
        Err(failure) => {
            let error = match &master_run {
                Some(run) if run.lost_the_master() => agent.master_lost(failure, run.socket()),
                _ => agent.run_failure(failure).await,
            };
            agent.close().await;
            return Err(error);
        }
    };
    agent.close().await;
    if follow {
        match sink.failed {
            // `virtomate … | head -1`: quietly, with the stopped program's status.
            Some(error) if error.kind() == io::ErrorKind::BrokenPipe => {}
            Some(error) => return Err(CliError::io("cannot write the program's output", error)),
            None => {}
        }
    }
    let output = match raw || follow {
        true => RunOutput::Raw { status, timed_out },
        false => RunOutput::Json {
            result: RunResult::new(status, encode)?,
            timed_out,
        },
    };
    Ok(Answer::Run(output))
}

/// The request that `guest-run`'s arguments make.
fn run_request(args: GuestRunArgs, input: Option<Vec<u8>>) -> RunRequest {
    let (env, env_clear) = (args.env.clone(), args.env_clear);
    let (merge_output, follow, max_time, grace) = (args.merge_output, args.follow, args.max_time, args.grace);
    let interactive = args.interactive;
    let (program, arguments) = args.into_command();
    let mut request = RunRequest::new(program, arguments);
    request.stdin = input;
    request.env = env;
    request.env_clear = env_clear;
    request.merge_output = merge_output;
    request.follow = follow || interactive;
    request.interactive = interactive;
    request.max_time = max_time;
    request.grace = grace;
    request
}

/// Runs `request` to its end; an error if a signal came first, with the
/// step whose reply a second signal stopped the wait for, if any. An
/// interactive one gets standard input as it comes, and ends with the
/// program whether or not standard input has.
async fn serve(
    session: &mut Session<DomainConnector>,
    request: RunRequest,
    sink: &mut RunSink,
    signals: &mut Signals,
) -> Result<Result<Outcome, Failure>, Option<&'static str>> {
    let (requests, mut incoming) = mpsc::channel(1);
    let interactive = request.interactive;
    requests
        .try_send(Request::run(RUN_ID.into(), request))
        .expect("an empty channel takes one request");
    if interactive {
        // A thread of its own, which the process's exit ends wherever it
        // blocks; tokio's stdin would keep the runtime from shutting down.
        let (requests, ended) = (requests.clone(), sink.program_ended.clone());
        std::thread::spawn(move || feed_stdin(io::stdin().lock(), &requests, &ended));
    }
    drop(requests);
    let ended = sink.ended.clone();
    let settling = session.channel().settling();
    {
        let served = session.serve(&mut incoming, |reply| sink.take(reply));
        tokio::pin!(served);
        tokio::select! {
            () = &mut served => {}
            () = ended.notified() => {}
            () = signals.arrival() => {
                // What the agent keeps for a step in flight (a file's
                // handle, a helper's pid) is awaited, for the give-up to
                // undo.
                match signals.settle(&settling, &mut served).await {
                    Settled::Ended(()) => {}
                    Settled::Idle => return Err(None),
                    Settled::CutShort(step) => return Err(Some(step)),
                }
            }
        }
    }
    Ok(sink.outcome.take().expect("the engine replies to every request"))
}

/// Runs `request` through a control master to its end, `None` if a
/// signal came first.
async fn serve_whole(
    run: &mut MasterRun,
    sink: &mut RunSink,
    signals: &mut Signals,
) -> Option<Result<Outcome, Failure>> {
    tokio::select! {
        () = run.serve(|reply| sink.take(reply)) => {}
        () = signals.arrival() => return None,
    }
    Some(sink.outcome.take().expect("the master replies to every request"))
}

/// The step a second signal cuts short through a control master, which
/// alone knows which of the run's steps was in flight.
const MASTER_GIVING_UP: &str = "the control master was giving the run up";

/// The id of the one request `guest-run` makes.
const RUN_ID: u64 = 0;

/// The most bytes of standard input read at once for `--interactive`:
/// what is there is passed on at once, up to this much.
const INPUT_PIECE: usize = 64 << 10;

/// Passes standard input to the interactive run as it comes, then its end;
/// a full queue (the program does not read) stops the reading, and so does
/// the program's end: the engine would drop the rest, as fast as it came.
fn feed_stdin(mut input: impl Read + AsFd, requests: &mpsc::Sender<Request>, program_ended: &AtomicBool) {
    let mut buf = vec![0; INPUT_PIECE];
    while !program_ended.load(Ordering::Acquire) {
        let (bytes, end) = match read_waiting(&mut input, &mut buf) {
            Ok(0) => (Vec::new(), true),
            Ok(n) => (buf[..n].to_vec(), false),
            Err(error) => {
                tracing::warn!(%error, "cannot read standard input: it ends here");
                (Vec::new(), true)
            }
        };
        if requests
            .blocking_send(Request::input(RUN_ID.into(), bytes, end))
            .is_err()
            || end
        {
            return;
        }
    }
}

/// The error for a run given up on a signal, saying what it left.
fn interrupted(agent: &DomainAgent, abandoned: Vec<Abandoned>) -> CliError {
    match abandoned.into_iter().next() {
        Some(Abandoned { left, .. }) => agent.abandoned(left),
        // The signal came as the engine replied: nothing was in flight.
        None => CliError::interrupted(Interruption::Connecting),
    }
}

fn read_stdin() -> Result<Vec<u8>, CliError> {
    let mut input = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_INPUT_LEN as u64 + 1)
        .read_to_end(&mut input)
        .map_err(|e| CliError::io("cannot read standard input", e))?;
    if input.len() > MAX_INPUT_LEN {
        return Err(CliError::input_too_large(
            input.len().div_ceil(3) * 4,
            MAX_REQUEST_LEN,
            false,
        ));
    }
    Ok(input)
}
