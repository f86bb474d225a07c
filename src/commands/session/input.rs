//! The session's input: request lines, the data lines of copies into the
//! guest (`{"id": ID, "data": BASE64}`, the last with `"end": true`, or
//! `{"id": ID, "abort": WHY}`), and the input lines of interactive runs
//! (`{"id": ID, "stdin": BASE64}`, `{"id": ID, "eof": true}`),
//! read on a thread of their own. A line that is no request is answered
//! at once; the others go to the session as they come.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, ErrorKind as IoErrorKind};
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::Sender;
use virtomate_protocol::qga::base64_data;
use virtomate_protocol::session::{Request, Work};
use virtomate_protocol::{fields, MAX_REQUEST_LEN};

use super::copies::{CopyJob, Streamed};
use super::lines::{self, print, Line};

/// The longest line: one agent request (a program's input in Base64
/// included) and room for the JSON around it. A longer line is answered
/// with an error and skipped, never held whole.
pub const MAX_LINE_LEN: usize = MAX_REQUEST_LEN + (1 << 20);

/// The most bytes of lines read and not yet taken up, the session's
/// requests and the copies' data together, beyond the line being read:
/// reading waits there (the count of requests is bounded too, by the
/// session's queue).
pub const QUEUED_BYTES: usize = 64 << 20;

/// How often a reader that waits for room looks again.
const LOOK_AGAIN: Duration = Duration::from_millis(5);

/// Reads lines until EOF, sending the session its work.
pub fn read(mut input: impl BufRead, work: Sender<Work<CopyJob>>) {
    let mut reader = Reader {
        work: WorkQueue {
            sender: work,
            sizes: VecDeque::new(),
            bytes: 0,
        },
        copies: HashMap::new(),
    };
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = std::io::Read::take(&mut input, MAX_LINE_LEN as u64 + 1).read_until(b'\n', &mut line);
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if line.len() > MAX_LINE_LEN && line.last() != Some(&b'\n') {
            let message = format!("a request line may be at most {MAX_LINE_LEN} bytes long");
            print(&Line::bad_request(Value::Null, message));
            if !skip_line(&mut input) {
                break;
            }
            continue;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if !reader.take(&line) {
            break;
        }
    }
    reader.end_of_input();
}

/// Where the lines go.
struct Reader {
    work: WorkQueue,
    /// The `copy_to`s whose data is still to come, by their id as JSON.
    copies: HashMap<String, OpenCopy>,
}

/// The session's queue, and the sizes of the lines in it.
struct WorkQueue {
    sender: Sender<Work<CopyJob>>,
    sizes: VecDeque<usize>,
    bytes: usize,
}

impl WorkQueue {
    /// The bytes of the lines the session has not taken yet.
    fn queued(&mut self) -> usize {
        let waiting = self.sender.max_capacity() - self.sender.capacity();
        while self.sizes.len() > waiting {
            self.bytes -= self.sizes.pop_front().unwrap_or(0);
        }
        self.bytes
    }
}

struct OpenCopy {
    /// `None` once the copy has been failed for want of its data: its
    /// later lines are dropped quietly (its reply says why).
    stream: Option<Streamed>,
}

impl Reader {
    /// Takes one line; false once the session takes no more.
    fn take(&mut self, line: &[u8]) -> bool {
        let len = line.len();
        let object = match serde_json::from_slice(line) {
            Ok(Value::Object(object)) => object,
            // Not an object: the protocol's parser says what is wrong.
            _ => match Request::parse(line) {
                Ok(request) => return self.request(request, len),
                Err(bad) => return answer(bad.id, bad.message),
            },
        };
        if CopyJob::is_copy(&object) {
            return self.copy(object, len);
        }
        if ["data", "end", "abort"]
            .iter()
            .any(|key| object.contains_key(*key))
        {
            return self.data(object);
        }
        let is_input = ["stdin", "eof"].iter().any(|key| object.contains_key(*key));
        if is_input && !object.contains_key("run") && !object.contains_key("ping") {
            // Input for a run in flight: its id is taken up already.
            return match Request::from_object(object) {
                Ok(request) => self.send(Work::Request(request), len),
                Err(bad) => answer(bad.id, bad.message),
            };
        }
        if !object.contains_key("run") && !object.contains_key("ping") {
            let id = object.get("id").cloned().unwrap_or(Value::Null);
            let message = "a request needs \"run\", \"ping\", \"copy_to\" or \"copy_from\"";
            return answer(id, message.to_owned());
        }
        match Request::from_object(object) {
            Ok(request) => self.request(request, len),
            Err(bad) => answer(bad.id, bad.message),
        }
    }

    fn request(&mut self, request: Request, len: usize) -> bool {
        if !lines::take_up(&request.id) {
            return answer(request.id.clone(), in_flight(&request.id));
        }
        self.send(Work::Request(request), len)
    }

    fn copy(&mut self, mut object: Map<String, Value>, len: usize) -> bool {
        let id = object.remove("id").unwrap_or(Value::Null);
        let key = id.to_string();
        if self.copies.contains_key(&key) {
            let message = format!("a copy_to with the id {key} still waits for its data");
            return answer(id, message);
        }
        match CopyJob::parse(id.clone(), object) {
            Ok(_) if !lines::take_up(&id) => answer(id.clone(), in_flight(&id)),
            Ok((job, streamed)) => {
                if let Some(stream) = streamed {
                    let stream = Some(stream);
                    self.copies.insert(key, OpenCopy { stream });
                }
                self.send(Work::Job(job), len)
            }
            Err(message) => answer(id, message),
        }
    }

    /// A data line: `{"id", "data": BASE64}`, `"end": true` on the last,
    /// or `{"id", "abort": WHY}` to give the copy up.
    fn data(&mut self, mut object: Map<String, Value>) -> bool {
        let id = object.remove("id").unwrap_or(Value::Null);
        let key = id.to_string();
        let DataLine { data, end, abort } = match fields::parse(object, "a data line") {
            Ok(line) => line,
            Err(message) => return answer(id, message),
        };
        if !self.copies.contains_key(&key) {
            return answer(id, format!("no copy_to with the id {key} waits for data"));
        }
        if let Some(why) = abort {
            let why = match why {
                Value::String(why) => why,
                other => other.to_string(),
            };
            if let Some(mut open) = self.copies.remove(&key) {
                let why = format!("the client gave the copy up: {why}");
                fail(&mut open, std::io::Error::other(why));
            }
            return true;
        }
        match data.unwrap_or(Ok(Vec::new())) {
            Ok(bytes) if !bytes.is_empty() => self.queue_data(&key, Bytes::from(bytes)),
            Ok(_) => {}
            Err(message) => {
                if let Some(open) = self.copies.get_mut(&key) {
                    fail(open, std::io::Error::new(IoErrorKind::InvalidData, message));
                }
            }
        }
        if end {
            // The sender dropped: the copy reads to its end.
            self.copies.remove(&key);
        }
        true
    }

    /// Queues `bytes` for the copy `key`, waiting for room while it is
    /// under way and takes its data. A copy that has not started yet and
    /// whose lines find no room while the one under way waits for lines
    /// after them fails: waiting would hold both for ever.
    fn queue_data(&mut self, key: &str, bytes: Bytes) {
        loop {
            let Some(stream) = self.copies.get(key).and_then(|open| open.stream.as_ref()) else {
                return;
            };
            let (data, started) = (stream.data.clone(), stream.started.load(Ordering::Acquire));
            // A copy that is over drops its data.
            if data.gone() {
                return;
            }
            if (started && data.queued() == 0) || self.queued() + bytes.len() <= QUEUED_BYTES {
                data.push(bytes);
                return;
            }
            if !started && self.stuck(Some(key)) {
                let why = format!(
                    "the data lines of the copy_to {key} came before it could start and filled the \
                     session's queue ({} MiB) while another copy waited for its data; send a copy_to's \
                     data lines right after it",
                    QUEUED_BYTES >> 20
                );
                if let Some(open) = self.copies.get_mut(key) {
                    fail(open, std::io::Error::other(why));
                }
                return;
            }
            std::thread::sleep(LOOK_AGAIN);
        }
    }

    /// The bytes read and not yet taken up.
    fn queued(&mut self) -> usize {
        let data: usize = self
            .copies
            .values()
            .filter_map(|open| open.stream.as_ref())
            .map(|stream| stream.data.queued())
            .sum();
        self.work.queued() + data
    }

    /// Whether a copy under way (not `but`) has read all its data lines
    /// and waits for more, which only lines after the one being read can
    /// bring.
    fn stuck(&self, but: Option<&str>) -> bool {
        self.copies
            .iter()
            .any(|(key, open)| Some(key.as_str()) != but && waits_for_data(open))
    }

    /// Sends the session work of a line of `len` bytes, waiting while its
    /// queue is full. A copy that has the channel and waits for data lines
    /// that come after this one would keep the queue full for ever: such
    /// a copy fails instead.
    fn send(&mut self, work: Work<CopyJob>, len: usize) -> bool {
        for look in 0.. {
            let queued = self.queued();
            if self.work.sender.is_closed() {
                return false;
            }
            if self.work.sender.capacity() > 0 && (queued == 0 || queued + len <= QUEUED_BYTES) {
                break;
            }
            if look == 0 {
                tracing::info!(queued, len, "the session's queue is full: reading waits for room");
            }
            for open in self.copies.values_mut() {
                if waits_for_data(open) {
                    let why = "other requests filled the session's queue while the copy waited for its \
                               data; send a copy_to's data lines right after it";
                    fail(open, std::io::Error::other(why));
                }
            }
            // A copy still queued may take the channel meanwhile: look again.
            std::thread::sleep(LOOK_AGAIN);
        }
        match self.work.sender.try_send(work) {
            Ok(()) => {
                self.work.sizes.push_back(len);
                self.work.bytes += len;
                true
            }
            // Only this thread sends: the room found is there.
            Err(TrySendError::Full(_)) => unreachable!("the session's queue had room"),
            Err(TrySendError::Closed(_)) => false,
        }
    }

    /// No more input: a copy whose data had not ended fails.
    fn end_of_input(&mut self) {
        for (_, mut open) in self.copies.drain() {
            let why = "the session's input ended before the copy's data line with \"end\": true";
            fail(&mut open, std::io::Error::new(IoErrorKind::UnexpectedEof, why));
        }
    }
}

/// A data line's keys but its `id`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DataLine {
    /// Decoded, but its error kept for the copy, which it fails: the
    /// line itself is no bad request.
    #[serde(default, deserialize_with = "for_the_copy")]
    data: Option<Result<Vec<u8>, String>>,
    #[serde(default, deserialize_with = "fields::flag")]
    end: bool,
    /// Any value, `null` too.
    #[serde(default, deserialize_with = "present")]
    abort: Option<Value>,
}

fn for_the_copy<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Result<Vec<u8>, String>>, D::Error> {
    let data = base64_data::required::deserialize(deserializer);
    Ok(Some(data.map_err(|e| format!("a data line {e}"))))
}

fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// Whether `open`'s copy has the channel and has read all its data lines.
fn waits_for_data(open: &OpenCopy) -> bool {
    open.stream.as_ref().is_some_and(|stream| {
        stream.started.load(Ordering::Acquire) && !stream.data.gone() && stream.data.queued() == 0
    })
}

/// Ends `open`'s data with `error`, which its copy reports.
fn fail(open: &mut OpenCopy, error: std::io::Error) {
    if let Some(stream) = open.stream.take() {
        stream.data.fail(error);
    }
}

/// Why a request whose id is in flight is refused.
fn in_flight(id: &Value) -> String {
    format!(
        "a request with the id {id} is still in flight: its replies would not be told apart; \
         use another id, or this one once that request has been answered"
    )
}

/// Answers a line that is no request; the session goes on.
fn answer(id: Value, message: String) -> bool {
    print(&Line::bad_request(id, message));
    true
}

/// Skips the rest of a line; false at EOF.
fn skip_line(input: &mut impl BufRead) -> bool {
    loop {
        let Ok(buffer) = input.fill_buf() else {
            return false;
        };
        if buffer.is_empty() {
            return false;
        }
        match buffer.iter().position(|&b| b == b'\n') {
            Some(end) => {
                input.consume(end + 1);
                return true;
            }
            None => {
                let len = buffer.len();
                input.consume(len);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parsed(line: Value) -> Result<DataLine, String> {
        let Value::Object(object) = line else {
            unreachable!()
        };
        fields::parse(object, "a data line")
    }

    #[test]
    fn a_data_lines_bad_data_is_for_its_copy_and_the_rest_for_the_line() {
        let line = parsed(json!({"data": "aGk=", "end": true})).unwrap();
        assert_eq!((line.data, line.end), (Some(Ok(b"hi".to_vec())), true));
        let Some(Err(message)) = parsed(json!({"data": "%%%"})).unwrap().data else {
            panic!()
        };
        assert!(message.starts_with("a data line is not Base64: "), "{message}");
        assert_eq!(parsed(json!({"abort": null})).unwrap().abort, Some(Value::Null));
        assert_eq!(
            parsed(json!({"end": 1})).err().unwrap(),
            "\"end\" must be true or false"
        );
        assert_eq!(
            parsed(json!({"last": 1})).err().unwrap(),
            "unknown key \"last\" in a data line"
        );
    }
}
