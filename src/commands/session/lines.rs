//! The lines `session` writes: a reply (`{"id", "result"}` or
//! `{"error", "id"}`) or a chunk of a followed program's output.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Mutex;

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

/// The ids of the requests taken up and not yet answered, as JSON text.
static IN_FLIGHT: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Takes up a request with `id`: false when one with the same id is
/// still in flight, as its replies could not be told apart. A `null` id
/// (none given) is the client's choice not to tell them apart.
pub fn take_up(id: &Value) -> bool {
    id.is_null()
        || IN_FLIGHT
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string())
}

/// The request `id` is answered (its last line about to be written): its
/// id may be used again.
pub fn answered(id: &Value) {
    IN_FLIGHT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id.to_string());
}
