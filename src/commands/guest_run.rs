//! `virtomate guest-run`: run a program in the guest and report its result.

use std::io::Read;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Serialize;
use virtomate_protocol::qga::{environment, CaptureOutput, GuestExec, GuestExecStatusReply, GuestInfo};
use virtomate_protocol::{RequestProgress, StopScope, Stopped, MAX_REQUEST_LEN};

use super::run_output::RunOutput;
use super::signals::Signals;
use super::{Answer, Context, DomainAgent};
use crate::cli::GuestRunArgs;
use crate::error::{CliError, ErrorKind, Interruption};

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
        return Err(input_too_large(request_len));
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
        return Err(input_too_large(input.len().div_ceil(3) * 4));
    }
    Ok(input)
}

fn input_too_large(request_len: usize) -> CliError {
    CliError::new(
        ErrorKind::InputTooLarge,
        format!(
            "standard input is too large for the agent: with the input in Base64 the request would be at \
             least {request_len} bytes; the agent takes at most {} MiB in one request (a little under {} MiB \
             of input); nothing was sent",
            MAX_REQUEST_LEN >> 20,
            MAX_INPUT_LEN >> 20
        ),
    )
}

impl RunResult {
    /// The result of a program that ended with `status`: its output as
    /// text, or with `encode` as Base64. Output that is not UTF-8 is an
    /// error that names every such stream; the result has a fixed shape
    /// (text or null), so the other stream, even if valid, is not shown.
    pub fn new(status: GuestExecStatusReply, encode: bool) -> Result<RunResult, CliError> {
        let stdout = stream_text(status.out_data, status.out_truncated, encode);
        let stderr = stream_text(status.err_data, status.err_truncated, encode);
        match (stdout, stderr) {
            (Ok(stdout), Ok(stderr)) => Ok(RunResult {
                exit_code: status.exitcode,
                signal: status.signal,
                stderr,
                stderr_truncated: status.err_truncated,
                stdout,
                stdout_truncated: status.out_truncated,
            }),
            (stdout, stderr) => {
                let invalid = [
                    ("standard output", stdout.err()),
                    ("standard error", stderr.err()),
                ];
                Err(not_utf8(&invalid, status.exitcode, status.signal))
            }
        }
    }
}

/// A stream as the result shows it: `None` when the program wrote nothing;
/// otherwise Base64 with `encode`, else text, or where the text is not
/// UTF-8, the offset of its first invalid byte.
fn stream_text(data: Option<Vec<u8>>, truncated: bool, encode: bool) -> Result<Option<String>, usize> {
    match data {
        None => Ok(None),
        Some(bytes) if encode => Ok(Some(STANDARD.encode(bytes))),
        Some(bytes) => decode(bytes, truncated).map(Some),
    }
}

/// `bytes` as UTF-8 text. Where the agent cut a stream at its cap
/// (`truncated`), the cut may split the last character: that incomplete
/// character is dropped, the stream being flagged truncated already. Any
/// other invalid byte gives the offset of the first one.
fn decode(bytes: Vec<u8>, truncated: bool) -> Result<String, usize> {
    let error = match String::from_utf8(bytes) {
        Ok(text) => return Ok(text),
        Err(error) => error,
    };
    let valid = error.utf8_error().valid_up_to();
    // error_len() is None only for an incomplete character at the very end.
    if !truncated || error.utf8_error().error_len().is_some() {
        return Err(valid);
    }
    let mut bytes = error.into_bytes();
    bytes.truncate(valid);
    Ok(String::from_utf8(bytes).expect("valid up to the cut character"))
}

/// The error for output that is not UTF-8, `invalid` giving each stream
/// and, if it is not UTF-8, the offset of its first invalid byte. The
/// program has run: it says how it ended, and that `--encode` runs it again.
fn not_utf8(invalid: &[(&str, Option<usize>)], exit_code: Option<i32>, signal: Option<i32>) -> CliError {
    let streams: Vec<String> = invalid
        .iter()
        .filter_map(|&(stream, offset)| {
            offset.map(|offset| format!("{stream} (first invalid byte at offset {offset})"))
        })
        .collect();
    let (streams, verb) = match streams.as_slice() {
        [one] => (one.clone(), "is"),
        several => (several.join(" and "), "are"),
    };
    let ended = match (exit_code, signal) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "ended".to_owned(),
    };
    CliError::new(
        ErrorKind::Encoding,
        format!(
            "{streams} of the program {verb} not valid UTF-8, so the result cannot be shown as text; the \
             program has run and {ended}"
        ),
    )
    .with_hint(
        "running it again with --encode gives its output as Base64, but runs the program a second time",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(out: &[u8], out_truncated: bool, err: &[u8]) -> GuestExecStatusReply {
        serde_json::from_value(serde_json::json!({
            "exited": true,
            "exitcode": 3,
            "out-data": STANDARD.encode(out),
            "out-truncated": out_truncated,
            "err-data": STANDARD.encode(err),
        }))
        .unwrap()
    }

    #[test]
    fn a_character_cut_by_the_agents_cap_is_dropped() {
        let e_acute = "é".as_bytes();
        let mut cut = b"aaa".to_vec();
        cut.push(e_acute[0]);
        assert_eq!(decode(cut.clone(), true), Ok("aaa".to_owned()));
        // Every way of cutting a four-byte character.
        let crab = "🦀".as_bytes();
        for len in 1..4 {
            let mut cut = b"x".to_vec();
            cut.extend(&crab[..len]);
            assert_eq!(decode(cut, true), Ok("x".to_owned()), "{len}");
        }
        // Not cut by the agent: the program wrote half a character.
        assert_eq!(decode(cut, false), Err(3));
    }

    #[test]
    fn truncated_output_that_is_invalid_before_the_cut_is_still_invalid() {
        assert_eq!(decode(b"a\xffb".to_vec(), true), Err(1));
        // An invalid byte followed by a cut character: invalid all the same.
        assert_eq!(decode(b"a\xff\xc3".to_vec(), true), Err(1));
        // A lone continuation byte at the end is not a cut character.
        assert_eq!(decode(b"ab\x80".to_vec(), true), Err(2));
        assert_eq!(decode("é".as_bytes().to_vec(), true), Ok("é".to_owned()));
    }

    #[test]
    fn valid_output_is_text_and_encode_takes_any_bytes() {
        let result = RunResult::new(status("é\n".as_bytes(), false, b"w"), false).unwrap();
        assert_eq!(result.stdout.as_deref(), Some("é\n"));
        assert_eq!(result.stderr.as_deref(), Some("w"));
        let result = RunResult::new(status(b"\xff", false, b"\xc3"), true).unwrap();
        assert_eq!(
            (result.stdout.as_deref(), result.stderr.as_deref()),
            (Some("/w=="), Some("ww=="))
        );
        let cut = RunResult::new(status(b"ab\xe2\x82", true, b""), false).unwrap();
        assert_eq!((cut.stdout.as_deref(), cut.stdout_truncated), (Some("ab"), true));
    }

    #[test]
    fn output_that_is_not_utf8_names_the_streams_and_how_the_program_ended() {
        let error = RunResult::new(status(b"ok\xff", false, b"fine"), false).unwrap_err();
        assert_eq!(error.json_type(), "EncodingError");
        assert_eq!(
            error.to_string(),
            "standard output (first invalid byte at offset 2) of the program is not valid UTF-8, \
             so the result cannot be shown as text; the program has run and exited with status 3; \
             running it again with --encode gives its output as Base64, but runs the program a second time"
        );

        let error = RunResult::new(status(b"ok", false, b"\xc3("), false).unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("standard error (first invalid byte at offset 0) of the program is not"),
            "{message}"
        );

        let error = RunResult::new(status(b"\xff", true, b"\xfe"), false).unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with(
                "standard output (first invalid byte at offset 0) and \
                 standard error (first invalid byte at offset 0) of the program are not valid UTF-8"
            ),
            "{message}"
        );

        let killed = not_utf8(
            &[("standard output", Some(5)), ("standard error", None)],
            None,
            Some(9),
        );
        assert!(
            killed
                .to_string()
                .contains("the program has run and was killed by signal 9;"),
            "{killed}"
        );
    }
}
