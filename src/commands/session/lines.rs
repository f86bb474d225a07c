//! The lines `session` writes: a reply (`{"id", "result"}` or
//! `{"error", "id"}`) or a chunk of a followed program's output.

use std::io::Write;

use serde::Serialize;
use serde_json::Value;

use crate::copy::Summary;
use crate::error::{CliError, ErrorJson};
use crate::output;
use crate::run_output::RunResult;

/// A chunk of a followed program's output: `{"id", "stdout"}` or
/// `{"id", "stderr"}`, the bytes in Base64.
#[derive(Serialize)]
pub struct ChunkLine {
    pub id: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
}

/// One reply line: `{"id", "result"}` or `{"error", "id"}`, keys sorted as
/// every output of virtomate.
#[derive(Serialize)]
pub struct Line {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorJson>,
    pub id: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Answered>,
    /// Present, and true, when the request's `max_time` passed and the
    /// program was stopped (guest-run's exit status 124).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub timed_out: bool,
}

/// What a request gave: a program's result exactly as `guest-run` prints
/// it, a copy's summary as `copy` prints it, or `{}` for a ping.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Answered {
    Run(RunResult),
    Copied(Summary),
    Pong {},
}

impl Line {
    pub fn result(id: Value, result: Answered) -> Line {
        Line {
            error: None,
            id,
            result: Some(result),
            timed_out: false,
        }
    }

    pub fn error(id: Value, error: &CliError) -> Line {
        tracing::info!("{}: {error}", error.json_type());
        Line {
            error: Some(ErrorJson::from(error)),
            id,
            result: None,
            timed_out: false,
        }
    }

    pub fn bad_request(id: Value, message: String) -> Line {
        Line::error(id, &CliError::usage(message))
    }
}

/// Writes one line to stdout. A reader that went away is not an error:
/// the programs in flight still end, and their replies go nowhere.
pub fn print(line: &Line) {
    let mut out = std::io::stdout().lock();
    let _ = output::write_json(&mut out, line, false).and_then(|()| out.flush());
}
