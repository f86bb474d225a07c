//! The lines `session` writes: a reply (`{"id", "result"}` or
//! `{"error", "id"}`) or a chunk of a followed program's output.

use std::collections::{BTreeSet, VecDeque};
use std::io::Write;
use std::sync::{Condvar, Mutex, MutexGuard};

use serde::Serialize;
use serde_json::Value;

use crate::copy::{Summary, TreeSummary};
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
/// it, a copy's summary as `copy` (or `copy -r`) prints it, or `{}` for a
/// ping.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Answered {
    Run(RunResult),
    Copied(Summary),
    Tree(TreeSummary),
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
pub fn print(line: &impl Serialize) {
    let mut text = Vec::new();
    let _ = output::write_json(&mut text, line, false);
    write_line(text);
}

/// The most bytes of lines that wait for stdout's reader, beyond the one
/// being written: past them, whoever prints waits too.
const QUEUED_OUTPUT: usize = 64 << 20;

/// Lines printed and not yet written: a thread of its own writes them,
/// so that a reader slow to read stdout holds up no time limit.
static OUTPUT: Output = Output {
    pending: Mutex::new(Pending {
        lines: VecDeque::new(),
        bytes: 0,
        writing: false,
        started: false,
    }),
    changed: Condvar::new(),
};

struct Output {
    pending: Mutex<Pending>,
    changed: Condvar,
}

struct Pending {
    lines: VecDeque<Vec<u8>>,
    bytes: usize,
    writing: bool,
    started: bool,
}

impl Output {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, pending: MutexGuard<'a, Pending>) -> MutexGuard<'a, Pending> {
        self.changed.wait(pending).unwrap_or_else(|e| e.into_inner())
    }
}

/// Queues a whole line (its newline included) for stdout.
pub fn write_line(line: Vec<u8>) {
    let mut pending = OUTPUT.lock();
    if !pending.started {
        pending.started = true;
        std::thread::spawn(write_lines);
    }
    while pending.bytes > 0 && pending.bytes + line.len() > QUEUED_OUTPUT {
        pending = OUTPUT.wait(pending);
    }
    pending.bytes += line.len();
    pending.lines.push_back(line);
    OUTPUT.changed.notify_all();
}

/// Waits until every line printed has been written.
pub fn flush() {
    let mut pending = OUTPUT.lock();
    while !pending.lines.is_empty() || pending.writing {
        pending = OUTPUT.wait(pending);
    }
}

/// The writer: one line at a time, in order.
fn write_lines() {
    let mut pending = OUTPUT.lock();
    loop {
        let Some(line) = pending.lines.pop_front() else {
            pending = OUTPUT.wait(pending);
            continue;
        };
        pending.writing = true;
        drop(pending);
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&line).and_then(|()| out.flush());
        drop(out);
        pending = OUTPUT.lock();
        pending.writing = false;
        pending.bytes -= line.len();
        OUTPUT.changed.notify_all();
    }
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
