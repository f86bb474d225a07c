//! Copies in a session: `{"copy_to": PATH}` writes a guest file from data
//! the client sends as lines of the session, `{"copy_from": PATH}` sends a
//! guest file back as lines. The copy is `crate::copy`'s, the one `virtomate
//! copy` runs; the session lends it its channel.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use serde::de::{Deserializer, Error as _};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::Notify;
use tokio_stream::Stream;
use tokio_util::io::StreamReader;
use virtomate_protocol::qga::base64_data;
use virtomate_protocol::session::Jobs;
use virtomate_protocol::{fields, Channel};

use super::data_lines::DataLines;
use super::lines::{answered, print, Answered, Line};
use crate::agent::{cut_short, DomainConnector, RouteErrors, Silence};
use crate::copy::progress::Show;
use crate::copy::{self, Copy, LentChannel, Options, Source, Target, CLEAN_UP_TIME};
use crate::error::{CliError, ErrorKind};

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
    To {
        path: String,
        source: Source,
    },
    /// Out of the guest, as data lines.
    From {
        path: String,
    },
    /// `"recursive": true`: a directory of this host into the guest, or
    /// out of it, as `copy -r` copies it.
    TreeTo {
        path: String,
        local: PathBuf,
    },
    TreeFrom {
        path: String,
        local: PathBuf,
    },
}

/// A `copy_to` whose data is still to come, for the reader of the
/// session's lines; dropped, the data has ended.
pub struct Streamed {
    pub data: Arc<DataQueue>,
    pub started: Arc<AtomicBool>,
}

impl Drop for Streamed {
    fn drop(&mut self) {
        self.data.end();
    }
}

/// The data lines of a `copy_to` read but not yet taken by its copy, and
/// their bytes: the reader of the session's lines keeps those of all the
/// copies within a bound (as lines for a copy that has not started yet
/// wait here, not in front of the lines after them).
#[derive(Default)]
pub struct DataQueue {
    state: Mutex<Queued>,
}

#[derive(Default)]
struct Queued {
    lines: VecDeque<Data>,
    bytes: usize,
    ended: bool,
    /// The copy is over: its data goes nowhere.
    gone: bool,
    waker: Option<Waker>,
}

impl DataQueue {
    fn state(&self) -> MutexGuard<'_, Queued> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a line's bytes for the copy, unless it is over.
    pub fn push(&self, bytes: Bytes) {
        let mut state = self.state();
        if !state.gone && !state.ended {
            state.bytes += bytes.len();
            state.lines.push_back(Ok(bytes));
            wake(&mut state);
        }
    }

    /// The copy's data has ended: it reads to its end.
    pub fn end(&self) {
        let mut state = self.state();
        state.ended = true;
        wake(&mut state);
    }

    /// Fails the copy with `error`, dropping what it has not read yet.
    pub fn fail(&self, error: std::io::Error) {
        let mut state = self.state();
        if !state.ended {
            state.lines.clear();
            state.bytes = 0;
            state.lines.push_back(Err(error));
            state.ended = true;
            wake(&mut state);
        }
    }

    /// The bytes queued and not yet read by the copy.
    pub fn queued(&self) -> usize {
        self.state().bytes
    }

    /// Whether the copy is over, and takes no more data.
    pub fn gone(&self) -> bool {
        self.state().gone
    }
}

fn wake(state: &mut Queued) {
    if let Some(waker) = state.waker.take() {
        waker.wake();
    }
}

/// What the copy reads its data lines from.
struct Lines(Arc<DataQueue>);

impl Stream for Lines {
    type Item = Data;

    fn poll_next(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Data>> {
        let mut state = self.0.state();
        if let Some(line) = state.lines.pop_front() {
            if let Ok(bytes) = &line {
                state.bytes -= bytes.len();
            }
            return Poll::Ready(Some(line));
        }
        if state.ended {
            return Poll::Ready(None);
        }
        state.waker = Some(context.waker().clone());
        Poll::Pending
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.gone = true;
        state.lines.clear();
        state.bytes = 0;
    }
}

impl CopyJob {
    /// Whether `request` asks for a copy.
    pub fn is_copy(request: &Map<String, Value>) -> bool {
        request.contains_key("copy_to") || request.contains_key("copy_from")
    }

    /// Parses a copy request; for a `copy_to` without `data`, also where
    /// its data lines go.
    pub fn parse(id: Value, request: Map<String, Value>) -> Result<(CopyJob, Option<Streamed>), String> {
        let what = match (request.contains_key("copy_to"), request.contains_key("copy_from")) {
            (true, true) => return Err("a copy has either \"copy_to\" or \"copy_from\"".to_owned()),
            (true, false) => "a copy_to request",
            _ => "a copy_from request",
        };
        let fields: CopyFields = fields::parse(request, what)?;
        if fields.recursive {
            return CopyJob::tree(id, fields);
        }
        if fields.local.is_some() {
            return Err("\"local\" names a directory of this host, only with \"recursive\": true".to_owned());
        }
        let options = Options {
            chunk_size: fields.chunk_size,
            mode: fields.mode,
            verify: fields.verify,
            compress: fields.compress,
            progress: Show::Never,
        };
        let started = Arc::new(AtomicBool::new(false));
        let (side, streamed) = match (fields.copy_to, fields.copy_from, fields.data) {
            (Some(path), _, Some(bytes)) => (
                Side::To {
                    path,
                    source: inline(bytes),
                },
                None,
            ),
            (Some(path), _, None) => {
                let data = Arc::new(DataQueue::default());
                let lines = Lines(data.clone());
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
            (None, _, Some(_)) => return Err(fields::unknown_key("data", what)),
            (None, Some(path), None) => (Side::From { path }, None),
            (None, None, None) => unreachable!("not a copy"),
        };
        let job = CopyJob {
            id,
            side,
            options,
            started,
        };
        Ok((job, streamed))
    }
}

impl CopyJob {
    /// A `"recursive": true` copy: `copy -r` between the guest's `copy_to`
    /// or `copy_from` and the directory `local` of this host.
    fn tree(id: Value, fields: CopyFields) -> Result<(CopyJob, Option<Streamed>), String> {
        let refused = match (&fields.data, fields.mode, fields.verify) {
            (Some(_), _, _) => Some("data"),
            (_, Some(_), _) => Some("mode"),
            (_, _, true) => Some("verify"),
            _ => None,
        };
        if let Some(key) = refused {
            return Err(format!("\"{key}\" does not go with \"recursive\": true"));
        }
        let Some(local) = fields.local else {
            return Err("a recursive copy needs \"local\": the directory of this host".to_owned());
        };
        let side = match (fields.copy_to, fields.copy_from) {
            (Some(path), _) => Side::TreeTo { path, local },
            (None, Some(path)) => Side::TreeFrom { path, local },
            (None, None) => unreachable!("not a copy"),
        };
        let options = Options {
            chunk_size: fields.chunk_size,
            mode: None,
            verify: false,
            compress: fields.compress,
            progress: Show::Never,
        };
        let started = Arc::new(AtomicBool::new(false));
        Ok((
            CopyJob {
                id,
                side,
                options,
                started,
            },
            None,
        ))
    }
}

/// The keys of a copy request: `copy_to` (with `data`, or without, the
/// data in lines after it) or `copy_from`, and `copy`'s options.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CopyFields {
    #[serde(default, deserialize_with = "path")]
    copy_to: Option<String>,
    #[serde(default, deserialize_with = "path")]
    copy_from: Option<String>,
    #[serde(default, deserialize_with = "base64_data::present")]
    data: Option<Vec<u8>>,
    #[serde(default, deserialize_with = "chunk_size")]
    chunk_size: Option<usize>,
    #[serde(default, deserialize_with = "mode")]
    mode: Option<u32>,
    #[serde(default, deserialize_with = "fields::flag")]
    verify: bool,
    #[serde(default, deserialize_with = "fields::flag")]
    compress: bool,
    #[serde(default, deserialize_with = "fields::flag")]
    recursive: bool,
    #[serde(default, deserialize_with = "local")]
    local: Option<PathBuf>,
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

fn streamed_source(lines: Lines) -> Source {
    Source {
        reader: Box::new(StreamReader::new(lines)),
        what: "the session's data lines",
        len: None,
        mode: None,
        name: None,
    }
}

/// `"copy_to"` or `"copy_from"`: a path in the guest.
fn path<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    match String::deserialize(deserializer) {
        Ok(path) if !path.is_empty() => Ok(Some(path)),
        _ => Err(D::Error::custom("must be the guest file's path")),
    }
}

/// `"local"`: a directory of this host, for a recursive copy.
fn local<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<PathBuf>, D::Error> {
    match String::deserialize(deserializer) {
        Ok(path) if !path.is_empty() => Ok(Some(PathBuf::from(path))),
        _ => Err(D::Error::custom("must be the path of a directory of this host")),
    }
}

/// `"mode": "640"`: octal digits, as `copy --mode` takes them.
fn mode<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    let text = String::deserialize(deserializer)
        .map_err(|_| D::Error::custom("must be a string of octal digits, e.g. \"640\""))?;
    crate::cli::octal_mode(&text)
        .map(Some)
        .map_err(|e| D::Error::custom(format!(": {e}")))
}

/// `"chunk_size"`: bytes, or a string as `copy --chunk-size` takes it.
fn chunk_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<usize>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Text(String),
        Bytes(serde_json::Number),
    }
    let text = match Size::deserialize(deserializer)
        .map_err(|_| D::Error::custom("must be bytes, e.g. 65536 or \"64K\""))?
    {
        Size::Text(text) => text,
        Size::Bytes(n) => n.to_string(),
    };
    copy::chunks::parse(&text)
        .map(Some)
        .map_err(|e| D::Error::custom(format!(": {e}")))
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
    pub errors: &'a RouteErrors,
    /// What explains an agent's timeout.
    pub silence: &'a Silence,
    pub state: Rc<CopyState>,
}

impl Jobs<DomainConnector> for Copies<'_> {
    type Job = CopyJob;

    async fn run(&mut self, job: CopyJob, channel: &mut Channel<DomainConnector>) {
        job.started.store(true, Ordering::Release);
        *self.state.in_flight.borrow_mut() = Some(job.id.clone());
        let (line, stopped) = self.copy(job, channel).await;
        *self.state.in_flight.borrow_mut() = None;
        answered(&line.id);
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
            errors: &self.errors.now(),
        };
        let mut copy = Copy::new(&mut agent);
        let settling = copy.settling();
        let id = job.id;
        let work = async {
            let options = &job.options;
            match job.side {
                Side::To { path, source } => copy.push(source, &path, options).await.map(Answered::Copied),
                Side::From { path } => {
                    let lines = Target::Stream(Box::new(DataLines::new(id.clone())));
                    copy.pull(&path, lines, options).await.map(Answered::Copied)
                }
                Side::TreeTo { path, local } => {
                    copy.push_tree(&local, &path, options).await.map(Answered::Tree)
                }
                Side::TreeFrom { path, local } => {
                    copy.pull_tree(&path, &local, options).await.map(Answered::Tree)
                }
            }
        };
        let (outcome, stopped) = {
            tokio::pin!(work);
            tokio::select! {
                outcome = &mut work => (outcome, false),
                () = self.state.stop.notified() => {
                    // As `virtomate copy`: a guest file being opened (or
                    // the private directory being made) is let be (within
                    // the reply timeout), for the clean-up to close the
                    // handle the agent keeps either way (or remove it).
                    let settled = settling.settle(&mut work).await;
                    (settled.unwrap_or_else(|| Err(interrupted())), true)
                }
            }
        };
        let error = match outcome {
            Ok(answered) => return (Line::result(id, answered), stopped),
            Err(error) => error,
        };
        // A VM that stopped under the copy: told as `virtomate copy` tells it.
        let through_libvirtd = self.errors.now().through_libvirtd;
        if let Some(vm) = self.silence.stopped_during(&error, through_libvirtd).await {
            let left = copy.clean_up_after_stop().await;
            let error = vm.error("its agent went with it, and the copy was cut short");
            return (Line::error(id, &error.with_hint(left)), stopped);
        }
        let left = tokio::time::timeout(CLEAN_UP_TIME, copy.clean_up()).await;
        let left = left.unwrap_or_else(|_| copy.pending());
        let error = self.silence.explain(error).await;
        (Line::error(id, &error.with_hint(left)), stopped)
    }
}

fn interrupted() -> CliError {
    CliError::new(ErrorKind::Interrupted, "interrupted during the copy")
}

/// The error for a copy whose clean-up a second signal cut short, or the
/// wait for the reply to its `step` in flight.
pub fn clean_up_cut_short(step: Option<&str>) -> CliError {
    match step {
        Some(step) => interrupted().with_hint(cut_short(step)),
        None => interrupted().with_hint(
            "a second signal cut its clean-up short: a temporary .virtomate-* directory may be left \
             beside the destination in the guest",
        ),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn refused(line: Value) -> String {
        let Value::Object(object) = line else {
            unreachable!()
        };
        CopyJob::parse(Value::Null, object).err().expect("refused")
    }

    #[test]
    fn a_bad_copy_request_says_which_key_is_wrong() {
        for (line, says) in [
            (
                json!({"copy_to": "/x", "copy_from": "/y"}),
                "a copy has either \"copy_to\" or \"copy_from\"",
            ),
            (
                json!({"copy_from": "/x", "owner": "me"}),
                "unknown key \"owner\" in a copy_from request",
            ),
            (
                json!({"copy_from": "/x", "data": "aGk="}),
                "unknown key \"data\" in a copy_from request",
            ),
            (
                json!({"copy_to": ""}),
                "\"copy_to\" must be the guest file's path",
            ),
            (
                json!({"copy_from": 1}),
                "\"copy_from\" must be the guest file's path",
            ),
            (
                json!({"copy_to": "/x", "data": null}),
                "\"data\" must be a Base64 string",
            ),
            (
                json!({"copy_to": "/x", "verify": "yes"}),
                "\"verify\" must be true or false",
            ),
            (
                json!({"copy_to": "/x", "mode": 640}),
                "\"mode\" must be a string of octal digits, e.g. \"640\"",
            ),
            (
                json!({"copy_to": "/x", "chunk_size": true}),
                "\"chunk_size\" must be bytes, e.g. 65536 or \"64K\"",
            ),
        ] {
            assert_eq!(refused(line.clone()), says, "{line}");
        }
        assert!(refused(json!({"copy_to": "/x", "mode": "999"})).starts_with("\"mode\": "));
        assert!(refused(json!({"copy_to": "/x", "data": "@@"})).starts_with("\"data\" is not Base64: "));
        let line =
            json!({"copy_to": "/x", "chunk_size": "64K", "mode": "640", "verify": true, "compress": null});
        let Value::Object(object) = line else {
            unreachable!()
        };
        let (job, streamed) = CopyJob::parse(Value::Null, object).expect("a copy");
        assert!(streamed.is_some() && job.options.verify && !job.options.compress);
        assert_eq!(
            (job.options.chunk_size, job.options.mode),
            (Some(64 << 10), Some(0o640))
        );
    }
}
