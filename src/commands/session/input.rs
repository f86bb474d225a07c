//! The session's input: request lines, and the data lines of copies into
//! the guest (`{"id": ID, "data": BASE64}`, the last with `"end": true`,
//! or `{"id": ID, "abort": WHY}`),
//! read on a thread of their own. A line that is no request is answered
//! at once; the others go to the session as they come.

use std::collections::HashMap;
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

use super::copies::{CopyJob, Data, Streamed};
use super::lines::{self, print, Line};

/// The longest line: one agent request (a program's input in Base64
/// included) and room for the JSON around it. A longer line is answered
/// with an error and skipped, never held whole.
pub const MAX_LINE_LEN: usize = MAX_REQUEST_LEN + (1 << 20);

/// Reads lines until EOF, sending the session its work.
pub fn read(mut input: impl BufRead, work: Sender<Work<CopyJob>>) {
    let mut reader = Reader {
        work,
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
    work: Sender<Work<CopyJob>>,
    /// The `copy_to`s whose data is still to come, by their id as JSON.
    copies: HashMap<String, OpenCopy>,
}

struct OpenCopy {
    /// `None` once the copy has been failed for want of its data: its
    /// later lines are dropped quietly (its reply says why).
    stream: Option<Streamed>,
}

impl Reader {
    /// Takes one line; false once the session takes no more.
    fn take(&mut self, line: &[u8]) -> bool {
        let object = match serde_json::from_slice(line) {
            Ok(Value::Object(object)) => object,
            // Not an object: the protocol's parser says what is wrong.
            _ => match Request::parse(line) {
                Ok(request) => return self.request(request),
                Err(bad) => return answer(bad.id, bad.message),
            },
        };
        if CopyJob::is_copy(&object) {
            return self.copy(object);
        }
        if ["data", "end", "abort"]
            .iter()
            .any(|key| object.contains_key(*key))
        {
            return self.data(object);
        }
        if !object.contains_key("run") && !object.contains_key("ping") {
            let id = object.get("id").cloned().unwrap_or(Value::Null);
            let message = "a request needs \"run\", \"ping\", \"copy_to\" or \"copy_from\"";
            return answer(id, message.to_owned());
        }
        match Request::from_object(object) {
            Ok(request) => self.request(request),
            Err(bad) => answer(bad.id, bad.message),
        }
    }

    fn request(&mut self, request: Request) -> bool {
        if !lines::take_up(&request.id) {
            return answer(request.id.clone(), in_flight(&request.id));
        }
        self.send(Work::Request(request))
    }

    fn copy(&mut self, mut object: Map<String, Value>) -> bool {
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
                self.send(Work::Job(job))
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
        let Some(open) = self.copies.get_mut(&key) else {
            return answer(id, format!("no copy_to with the id {key} waits for data"));
        };
        if let Some(why) = abort {
            let why = match why {
                Value::String(why) => why,
                other => other.to_string(),
            };
            fail(
                open,
                std::io::Error::other(format!("the client gave the copy up: {why}")),
            );
            self.copies.remove(&key);
            return true;
        }
        match data.unwrap_or(Ok(Vec::new())) {
            Ok(bytes) if !bytes.is_empty() => {
                if let Some(stream) = &open.stream {
                    // A copy that failed already drops its data.
                    let _ = stream.data.blocking_send(Ok(Bytes::from(bytes)));
                }
            }
            Ok(_) => {}
            Err(message) => fail(open, std::io::Error::new(IoErrorKind::InvalidData, message)),
        }
        if end {
            // The sender dropped: the copy reads to its end.
            self.copies.remove(&key);
        }
        true
    }

    /// Sends the session work, waiting while its queue is full. A copy
    /// that has the channel and waits for data lines that come after this
    /// one would keep the queue full for ever: such a copy fails instead.
    fn send(&mut self, mut work: Work<CopyJob>) -> bool {
        loop {
            work = match self.work.try_send(work) {
                Ok(()) => return true,
                Err(TrySendError::Closed(_)) => return false,
                Err(TrySendError::Full(work)) => work,
            };
            for open in self.copies.values_mut() {
                if open
                    .stream
                    .as_ref()
                    .is_some_and(|s| s.started.load(Ordering::Acquire))
                {
                    let why = "other requests filled the session's queue while the copy waited for its \
                               data; send a copy_to's data lines right after it";
                    fail(open, std::io::Error::other(why));
                }
            }
            // A copy still queued may take the channel meanwhile: look again.
            std::thread::sleep(Duration::from_millis(5));
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

/// Ends `open`'s data with `error`, which its copy reports.
fn fail(open: &mut OpenCopy, error: std::io::Error) {
    if let Some(stream) = open.stream.take() {
        let failed: Data = Err(error);
        let _ = stream.data.blocking_send(failed);
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
