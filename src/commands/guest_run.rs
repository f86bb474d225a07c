//! `virtomate guest-run`: run a program in the guest and report its result.

use std::io::Read;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};
use virtomate_protocol::qga::{ExecStatus, GuestExec};
use virtomate_protocol::MAX_REQUEST_LEN;

use super::{Agent, Answer, Context};
use crate::cli::GuestRunArgs;
use crate::error::CliError;

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

/// Base64 text of the largest input that still fits in one request.
const MAX_INPUT_LEN: usize = MAX_REQUEST_LEN / 4 * 3;

pub async fn run(args: GuestRunArgs, context: &Context) -> Result<Answer, CliError> {
    // Read stdin before connecting, so the channel is not held while the
    // user types.
    let input = if args.stdin { Some(read_stdin()?) } else { None };
    let mut exec = GuestExec::new(args.program, args.arguments);
    exec.input_data = input;

    let mut agent = Agent::connect(&args.domain, context).await?;
    let pid = agent.start(&exec).await?.pid;
    drop(exec);
    tracing::info!(pid, "started in the guest");

    let finished = until_interrupted(pid, agent.wait_for_exit(pid)).await??;
    tracing::info!(polls = finished.polls, "the program ended");
    RunResult::new(finished.status, args.encode).map(Answer::Run)
}

/// Runs `wait` unless SIGINT or SIGTERM arrives first.
async fn until_interrupted<T>(pid: i64, wait: impl std::future::Future<Output = T>) -> Result<T, CliError> {
    let io_error = |e: std::io::Error| CliError::Io(format!("cannot install a signal handler: {e}"));
    let mut interrupt = signal(SignalKind::interrupt()).map_err(io_error)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(io_error)?;
    tokio::select! {
        result = wait => Ok(result),
        _ = interrupt.recv() => Err(CliError::Interrupted { pid }),
        _ = terminate.recv() => Err(CliError::Interrupted { pid }),
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
        return Err(CliError::InputTooLarge(format!(
            "more than {} MiB; the agent takes at most {} MiB in one request, the input in Base64 included; nothing was sent",
            MAX_INPUT_LEN >> 20,
            MAX_REQUEST_LEN >> 20
        )));
    }
    Ok(input)
}

impl RunResult {
    fn new(status: ExecStatus, encode: bool) -> Result<RunResult, CliError> {
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
