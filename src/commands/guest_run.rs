//! `virtomate guest-run`: run a program in the guest and report its result.

use std::io::Read;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Serialize;
use tokio::signal::unix::{signal, Signal, SignalKind};
use virtomate_protocol::qga::{GuestExec, GuestExecStatusReply};
use virtomate_protocol::MAX_REQUEST_LEN;

use super::{Answer, Context, DomainAgent};
use crate::cli::GuestRunArgs;
use crate::error::{CliError, Interruption};

/// What the program did, as the specification's RunResult: keys in sorted
/// order; a stream that produced no bytes is `null`.
#[derive(Debug, Serialize)]
pub struct RunResult {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stderr: Option<String>,
    pub stderr_truncated: bool,
    pub stdout: Option<String>,
    pub stdout_truncated: bool,
}

/// The most of standard input read: what one request can carry at best.
/// The exact bound, which depends on the rest of the request, is checked
/// once the input is read.
const MAX_INPUT_LEN: usize = MAX_REQUEST_LEN / 4 * 3;

pub async fn run(args: GuestRunArgs, context: &Context) -> Result<Answer, CliError> {
    // Read stdin before connecting, so the channel is not held while the
    // user types.
    let input = if args.stdin { Some(read_stdin()?) } else { None };
    let (encode, domain) = (args.encode, args.domain.clone());
    let (program, arguments) = args.into_command();
    let mut exec = GuestExec::new(program, arguments);
    exec.input_data = input;
    let request_len = exec.request_len();
    if request_len > MAX_REQUEST_LEN {
        return Err(input_too_large(request_len));
    }

    let mut signals = Signals::install()?;
    let mut agent = signals
        .unless_interrupted(Interruption::Connecting, DomainAgent::connect(&domain, context))
        .await??;
    let pid = signals
        .unless_interrupted(Interruption::Starting, agent.start(&exec))
        .await??
        .pid;
    drop(exec);
    tracing::info!(pid, "started in the guest");

    let finished = signals
        .unless_interrupted(Interruption::Running { pid }, agent.wait_for_exit(pid))
        .await??;
    tracing::info!(polls = finished.polls, "the program ended");
    agent.close().await;
    RunResult::new(finished.status, encode).map(Answer::Run)
}

/// SIGINT and SIGTERM, caught so that an interrupted run can still say
/// what it leaves behind in the guest.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn install() -> Result<Signals, CliError> {
        let io_error = |e: std::io::Error| CliError::Io(format!("cannot install a signal handler: {e}"));
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).map_err(io_error)?,
            terminate: signal(SignalKind::terminate()).map_err(io_error)?,
        })
    }

    /// Runs `work` unless a signal arrives first; then the error says
    /// what `stage` the run was in.
    async fn unless_interrupted<T>(
        &mut self,
        stage: Interruption,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, CliError> {
        tokio::select! {
            result = work => Ok(result),
            _ = self.interrupt.recv() => Err(CliError::Interrupted(stage)),
            _ = self.terminate.recv() => Err(CliError::Interrupted(stage)),
        }
    }
}

fn read_stdin() -> Result<Vec<u8>, CliError> {
    let mut input = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_INPUT_LEN as u64 + 1)
        .read_to_end(&mut input)
        .map_err(|e| CliError::Io(format!("cannot read standard input: {e}")))?;
    if input.len() > MAX_INPUT_LEN {
        return Err(input_too_large(input.len().div_ceil(3) * 4));
    }
    Ok(input)
}

fn input_too_large(request_len: usize) -> CliError {
    CliError::InputTooLarge(format!(
        "with the input in Base64 the request would be at least {request_len} bytes; the agent takes at most {} MiB in one request (a little under {} MiB of input); nothing was sent",
        MAX_REQUEST_LEN >> 20,
        MAX_INPUT_LEN >> 20
    ))
}

impl RunResult {
    fn new(status: GuestExecStatusReply, encode: bool) -> Result<RunResult, CliError> {
        Ok(RunResult {
            exit_code: status.exitcode,
            signal: status.signal,
            stderr: text(status.err_data, encode, "standard error")?,
            stderr_truncated: status.err_truncated,
            stdout: text(status.out_data, encode, "standard output")?,
            stdout_truncated: status.out_truncated,
        })
    }
}

fn text(data: Option<Vec<u8>>, encode: bool, stream: &'static str) -> Result<Option<String>, CliError> {
    match data {
        None => Ok(None),
        Some(bytes) if encode => Ok(Some(STANDARD.encode(bytes))),
        Some(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| CliError::Encoding { stream }),
    }
}
