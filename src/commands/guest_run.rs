//! `virtomate guest-run`: run a program in the guest and report its result.

use std::io::Read;

use virtomate_protocol::qga::{environment, CaptureOutput, GuestExec, GuestInfo};
use virtomate_protocol::{RequestProgress, StopScope, Stopped, MAX_REQUEST_LEN};

use super::{Answer, Context};
use crate::agent::DomainAgent;
use crate::agent::Signals;
use crate::cli::GuestRunArgs;
use crate::error::{CliError, Interruption};
use crate::run_output::{RunOutput, RunResult};

/// The most of standard input read: what one request can carry at best.
/// The exact bound, which depends on the rest of the request, is checked
/// once the input is read.
const MAX_INPUT_LEN: usize = MAX_REQUEST_LEN / 4 * 3;

pub async fn run(args: GuestRunArgs, context: &Context) -> Result<Answer, CliError> {
    // Read stdin before connecting, so the channel is not held while the
    // user types.
    let input = if args.stdin { Some(read_stdin()?) } else { None };
    let options = RunOptions::of(&args);
    let domain = args.domain.clone();
    let env = environment(&args.env, args.env_clear);
    let (program, arguments) = args.into_command();
    let mut exec = GuestExec::new(program, arguments);
    exec.input_data = input;
    exec.env = env;
    if options.merge_output {
        exec.capture_output = CaptureOutput::Merged;
    }
    let request_len = exec.request_len();
    if request_len > MAX_REQUEST_LEN {
        return Err(CliError::input_too_large(request_len, MAX_REQUEST_LEN, false));
    }
    if options.follow {
        return super::follow::run(&domain, exec, options.max_time, options.grace, context).await;
    }

    let mut signals = Signals::install()?;
    let mut agent = signals
        .unless_interrupted(Interruption::Connecting, DomainAgent::connect(&domain, context))
        .await??;
    if let Some((major, minor)) = exec.capture_output.needs_agent() {
        let info = signals
            .unless_interrupted(Interruption::Connecting, agent.execute(&GuestInfo {}))
            .await??;
        if !info.is_at_least(major, minor) {
            let error = agent.error(virtomate_protocol::Error::AgentTooOld {
                feature: "--merge-output (capture-output \"merged\")".to_owned(),
                needs: (major, minor),
                version: info.version,
            });
            agent.close().await;
            return Err(error);
        }
    }
    // Started as it is: a stop finds what it started then (`StopScope::Tree`).
    let pid = start(&mut agent, &exec, &mut signals).await?;
    tracing::info!(pid, "started in the guest");

    let (status, timed_out) = match options.max_time {
        None => {
            let finished = match signals
                .unless_interrupted(Interruption::Running { pid }, agent.wait_for_exit(pid))
                .await
            {
                Ok(finished) => finished?,
                Err(_) => return Err(CliError::interrupted(after_interruption(&mut agent, pid).await)),
            };
            tracing::info!(polls = finished.polls, "the program ended");
            (finished.status, false)
        }
        Some(limit) => {
            let limited = tokio::time::timeout(limit, agent.wait_for_exit(pid));
            match signals
                .unless_interrupted(Interruption::Running { pid }, limited)
                .await
            {
                Ok(Ok(finished)) => (finished?.status, false),
                Ok(Err(_elapsed)) => {
                    tracing::info!(pid, "--max-time passed: stopping the program");
                    let stopped = agent.stop(pid, options.grace, StopScope::Tree).await?;
                    // One that ended by itself as the limit passed ran its course.
                    (stopped.finished.status, stopped.asked)
                }
                Err(interrupted) => {
                    let stopped = agent.stop(pid, options.grace, StopScope::Tree).await?;
                    agent.close().await;
                    return Err(interrupted.with_hint(stopped_after_interruption(pid, &stopped)));
                }
            }
        }
    };
    agent.close().await;
    let output = match options.raw {
        true => RunOutput::Raw { status, timed_out },
        false => RunOutput::Json {
            result: RunResult::new(status, options.encode)?,
            timed_out,
        },
    };
    Ok(Answer::Run(output))
}

/// What `guest-run`'s options ask beyond the program itself.
struct RunOptions {
    encode: bool,
    raw: bool,
    merge_output: bool,
    follow: bool,
    max_time: Option<std::time::Duration>,
    grace: std::time::Duration,
}

impl RunOptions {
    fn of(args: &GuestRunArgs) -> RunOptions {
        RunOptions {
            encode: args.encode,
            raw: args.raw,
            merge_output: args.merge_output,
            follow: args.follow,
            max_time: args.max_time,
            grace: args.grace,
        }
    }
}

/// Starts the program and returns its pid.
pub(super) async fn start(
    agent: &mut DomainAgent,
    exec: &GuestExec,
    signals: &mut Signals,
) -> Result<i64, CliError> {
    start_attempt(agent, exec, signals).await?
}

/// Starts the program; the outer error is an interruption, which says
/// whether the agent can have acted on the request: only a whole one.
async fn start_attempt(
    agent: &mut DomainAgent,
    exec: &GuestExec,
    signals: &mut Signals,
) -> Result<Result<i64, CliError>, CliError> {
    let started = signals
        .unless_interrupted(Interruption::Starting, agent.start(exec))
        .await;
    match started {
        Ok(started) => Ok(started.map(|reply| reply.pid)),
        Err(interrupted) => match agent.request_progress() {
            RequestProgress::Idle | RequestProgress::PartlySent => {
                Err(CliError::interrupted(Interruption::SendingStart))
            }
            RequestProgress::Sent | RequestProgress::Unknown => Err(interrupted),
        },
    }
}

/// What an interruption while waiting leaves in the guest, asked of the
/// agent once more (briefly): the status being read when it came may have
/// been the program's end, which the agent reports once and then forgets.
async fn after_interruption(agent: &mut DomainAgent, pid: i64) -> Interruption {
    const ASKING: std::time::Duration = std::time::Duration::from_secs(2);
    match tokio::time::timeout(ASKING, agent.status_once(pid)).await {
        Ok(Ok(status)) if !status.exited => Interruption::StillRunning { pid },
        // Its end, read now: gone, though its result is not shown.
        Ok(Ok(_)) => Interruption::Ended { pid },
        // The agent no longer knows the pid: it reported the end to the
        // poll that was cut short.
        Ok(Err(virtomate_protocol::Error::Agent { .. })) => Interruption::EndedJustNow { pid },
        _ => Interruption::Running { pid },
    }
}

pub(super) fn stopped_after_interruption(pid: i64, stopped: &Stopped) -> String {
    match (stopped.asked, stopped.killed) {
        (false, _) => format!("the program (guest pid {pid}) had ended by itself; its result is lost"),
        (true, false) => format!("the program (guest pid {pid}) was stopped with SIGTERM"),
        (true, true) => {
            format!("the program (guest pid {pid}) was stopped with SIGKILL after the grace period")
        }
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
