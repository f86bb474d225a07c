//! How a finished `guest-run` is told: the original's JSON, or with `--raw`
//! the program's own bytes and exit status, as `ssh host cmd` gives them.

use std::io::{self, Write};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Serialize;
use virtomate_protocol::qga::GuestExecStatusReply;

use crate::error::{CliError, ErrorKind};
use crate::output;

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

/// GNU `timeout`'s exit status for a program it had to stop.
pub const TIMED_OUT: u8 = 124;

/// A program's end, ready to print.
#[derive(Debug)]
pub enum RunOutput {
    /// The JSON result; exit status 0, or [`TIMED_OUT`].
    Json { result: RunResult, timed_out: bool },
    /// The bytes themselves and the program's exit status.
    Raw {
        status: GuestExecStatusReply,
        timed_out: bool,
    },
}

impl RunOutput {
    /// virtomate's exit status: with `--raw` the program's own (128+N for
    /// signal N, as shells report it), and [`TIMED_OUT`] after `--max-time`.
    pub fn exit_status(&self) -> u8 {
        match self {
            RunOutput::Json { timed_out: true, .. } | RunOutput::Raw { timed_out: true, .. } => TIMED_OUT,
            RunOutput::Json { .. } => 0,
            RunOutput::Raw { status, .. } => match (status.exitcode, status.signal) {
                // Linux gives WEXITSTATUS, 0-255; the low byte is what a
                // shell would see of anything else.
                (Some(code), _) => (code & 0xFF) as u8,
                (None, Some(signal)) => (128 + (signal & 0x7F)) as u8,
                (None, None) => 0,
            },
        }
    }

    /// Prints it: JSON on stdout, or the program's stdout and stderr on
    /// ours, byte for byte.
    pub fn print(&self, pretty: bool) -> io::Result<()> {
        match self {
            RunOutput::Json { result, .. } => output::print_json(result, pretty),
            RunOutput::Raw { status, .. } => {
                if let Some(err) = &status.err_data {
                    io::stderr().write_all(err)?;
                }
                for (cut, stream) in [
                    (status.out_truncated, "standard output"),
                    (status.err_truncated, "standard error"),
                ] {
                    if cut {
                        eprintln!("virtomate: the agent cut the program's {stream} at its 16 MiB cap");
                    }
                }
                let mut stdout = io::stdout().lock();
                if let Some(out) = &status.out_data {
                    stdout.write_all(out)?;
                }
                stdout.flush()
            }
        }
    }
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

    fn raw(json: serde_json::Value, timed_out: bool) -> RunOutput {
        RunOutput::Raw {
            status: serde_json::from_value(json).unwrap(),
            timed_out,
        }
    }

    #[test]
    fn raw_exit_statuses_are_the_programs_as_a_shell_reports_them() {
        assert_eq!(
            raw(serde_json::json!({"exited": true, "exitcode": 3}), false).exit_status(),
            3
        );
        assert_eq!(
            raw(serde_json::json!({"exited": true, "signal": 9}), false).exit_status(),
            137
        );
        assert_eq!(
            raw(serde_json::json!({"exited": true, "signal": 15}), true).exit_status(),
            124
        );
    }

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
