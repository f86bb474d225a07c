//! Copies in a session: `{"copy_to": PATH}` writes a guest file from data
//! the client sends as lines of the session, `{"copy_from": PATH}` sends a
//! guest file back as lines. The copy is `crate::copy`'s, the one `virtomate
//! copy` runs; the session lends it its channel.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::io::StreamReader;
use virtomate_protocol::session::Jobs;
use virtomate_protocol::Channel;

use super::data_lines::DataLines;
use super::lines::{print, Answered, Line};
use crate::agent::{AgentErrors, DomainConnector};
use crate::copy::progress::Show;
use crate::copy::{self, Copy, LentChannel, Options, Source, Target, CLEAN_UP_TIME};
use crate::error::{CliError, ErrorKind};

/// Data lines of a `copy_to` read but not yet written: reading stops
/// there until the copy catches up.
pub const QUEUED_DATA: usize = 4;

/// What the client's data lines of a `copy_to` become.
pub type Data = std::io::Result<Bytes>;

/// One copy, parsed from its request line.
pub struct CopyJob {
    pub id: Value,
    side: Side,
    options: Options,
    /// Set once the copy has the channel: from then on it waits for the
    /// client's data, not behind other requests.
    pub started: Arc<AtomicBool>,
}

enum Side {
    /// Into the guest, the data in the request or in lines after it.
    To { path: String, source: Source },
    /// Out of the guest, as data lines.
    From { path: String },
}

/// A `copy_to` whose data is still to come, for the reader of the
/// session's lines.
pub struct Streamed {
    pub data: mpsc::Sender<Data>,
    pub started: Arc<AtomicBool>,
}

impl CopyJob {
    /// Whether `request` asks for a copy.
    pub fn is_copy(request: &Map<String, Value>) -> bool {
        request.contains_key("copy_to") || request.contains_key("copy_from")
    }

    /// Parses a copy request; for a `copy_to` without `data`, also where
    /// its data lines go.
    pub fn parse(id: Value, mut request: Map<String, Value>) -> Result<(CopyJob, Option<Streamed>), String> {
        let path = |value: Option<Value>, key: &str| match value {
            Some(Value::String(path)) if !path.is_empty() => Ok(path),
            _ => Err(format!("\"{key}\" must be the guest file's path")),
        };
        let to = request.remove("copy_to");
        let from = request.remove("copy_from");
        let options = Options {
            chunk_size: chunk_size(request.remove("chunk_size"))?,
            mode: mode(request.remove("mode"))?,
            verify: flag(request.remove("verify"), "verify")?,
            compress: flag(request.remove("compress"), "compress")?,
            progress: Show::Never,
        };
        let started = Arc::new(AtomicBool::new(false));
        let (side, streamed) = match (to, from) {
            (Some(_), Some(_)) => return Err("a copy has either \"copy_to\" or \"copy_from\"".to_owned()),
            (Some(to), None) => {
                let path = path(Some(to), "copy_to")?;
                match request.remove("data") {
                    Some(Value::String(data)) => {
                        let bytes = STANDARD
                            .decode(data)
                            .map_err(|e| format!("\"data\" is not Base64: {e}"))?;
                        (
                            Side::To {
                                path,
                                source: inline(bytes),
                            },
                            None,
                        )
                    }
                    Some(_) => return Err("\"data\" must be a Base64 string".to_owned()),
                    None => {
                        let (data, lines) = mpsc::channel(QUEUED_DATA);
                        let streamed = Streamed {
                            data,
                            started: started.clone(),
                        };
                        (
                            Side::To {
                                path,
                                source: streamed_source(lines),
                            },
                            Some(streamed),
                        )
                    }
                }
            }
            (None, Some(from)) => (
                Side::From {
                    path: path(Some(from), "copy_from")?,
                },
                None,
            ),
            (None, None) => unreachable!("not a copy"),
        };
        if let Some(key) = request.keys().next() {
            let kind = match side {
                Side::To { .. } => "copy_to",
                Side::From { .. } => "copy_from",
            };
            return Err(format!("unknown key {key:?} in a {kind} request"));
        }
        let job = CopyJob {
            id,
            side,
            options,
            started,
        };
        Ok((job, streamed))
    }
}

fn inline(bytes: Vec<u8>) -> Source {
    Source {
        len: Some(bytes.len() as u64),
        reader: Box::new(std::io::Cursor::new(bytes)),
        what: "the request's data",
        mode: None,
        name: None,
    }
}

fn streamed_source(lines: mpsc::Receiver<Data>) -> Source {
    Source {
        reader: Box::new(StreamReader::new(ReceiverStream::new(lines))),
        what: "the session's data lines",
        len: None,
        mode: None,
        name: None,
    }
}

fn flag(value: Option<Value>, key: &str) -> Result<bool, String> {
    match value {
        None => Ok(false),
        Some(Value::Bool(flag)) => Ok(flag),
        Some(_) => Err(format!("\"{key}\" must be true or false")),
    }
}

/// `"mode": "640"`: octal digits, as `copy --mode` takes them.
fn mode(value: Option<Value>) -> Result<Option<u32>, String> {
    match value {
        None => Ok(None),
        Some(Value::String(text)) => crate::cli::octal_mode(&text)
            .map(Some)
            .map_err(|e| format!("\"mode\": {e}")),
        Some(_) => Err("\"mode\" must be a string of octal digits, e.g. \"640\"".to_owned()),
    }
}

/// `"chunk_size"`: bytes, or a string as `copy --chunk-size` takes it.
fn chunk_size(value: Option<Value>) -> Result<Option<usize>, String> {
    let text = match value {
        None => return Ok(None),
        Some(Value::String(text)) => text,
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err("\"chunk_size\" must be bytes, e.g. 65536 or \"64K\"".to_owned()),
    };
    copy::chunks::parse(&text)
        .map(Some)
        .map_err(|e| format!("\"chunk_size\": {e}"))
}

/// What the session command and the copies share: which copy has the
/// channel, and a way to stop it on a signal.
#[derive(Default)]
pub struct CopyState {
    in_flight: RefCell<Option<Value>>,
    stop: Notify,
    done: Notify,
}

impl CopyState {
    /// The id of the copy under way.
    pub fn in_flight(&self) -> Option<Value> {
        self.in_flight.borrow().clone()
    }

    /// Stops the copy under way, which cleans up, replies, and then
    /// holds the session until it is dropped; returns once it has replied.
    pub async fn stop(&self) {
        self.stop.notify_one();
        self.done.notified().await;
    }
}

/// Runs the session's copies on its channel.
pub struct Copies<'a> {
    pub errors: &'a AgentErrors,
    pub state: Rc<CopyState>,
}

impl Jobs<DomainConnector> for Copies<'_> {
    type Job = CopyJob;

    async fn run(&mut self, job: CopyJob, channel: &mut Channel<DomainConnector>) {
        job.started.store(true, Ordering::Release);
        *self.state.in_flight.borrow_mut() = Some(job.id.clone());
        let (line, stopped) = self.copy(job, channel).await;
        *self.state.in_flight.borrow_mut() = None;
        print(&line);
        if stopped {
            self.state.done.notify_one();
            // The session ends on the signal: it must not take up the
            // next request meanwhile, which could start a program.
            std::future::pending::<()>().await;
        }
    }
}

impl Copies<'_> {
    /// The copy's reply, and whether a signal stopped it.
    async fn copy(&self, job: CopyJob, channel: &mut Channel<DomainConnector>) -> (Line, bool) {
        let mut agent = LentChannel {
            channel,
            errors: self.errors,
        };
        let mut copy = Copy::new(&mut agent);
        let id = job.id;
        let work = async {
            match job.side {
                Side::To { path, source } => copy.push(source, &path, &job.options).await,
                Side::From { path } => {
                    let lines = Target::Stream(Box::new(DataLines::new(id.clone())));
                    copy.pull(&path, lines, &job.options).await
                }
            }
        };
        let (outcome, stopped) = tokio::select! {
            outcome = work => (outcome, false),
            () = self.state.stop.notified() => (Err(interrupted()), true),
        };
        let error = match outcome {
            Ok(summary) => return (Line::result(id, Answered::Copied(summary)), false),
            Err(error) => error,
        };
        let left = tokio::time::timeout(CLEAN_UP_TIME, copy.clean_up()).await;
        let left = left.unwrap_or_else(|_| copy.pending());
        (Line::error(id, &error.with_hint(left)), stopped)
    }
}

fn interrupted() -> CliError {
    CliError::new(ErrorKind::Interrupted, "interrupted during the copy")
}

/// The error for a copy whose clean-up a second signal cut short.
pub fn clean_up_cut_short() -> CliError {
    interrupted().with_hint(
        "a second signal cut its clean-up short: a temporary .virtomate-* directory may be left \
         beside the destination in the guest",
    )
}
