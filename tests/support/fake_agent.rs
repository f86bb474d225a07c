//! An in-process agent that does on demand what the real one will not:
//! stale bytes, garbage, silence, endless or malformed replies.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use serde_json::{json, Value};
use tempfile::TempDir;

/// A listening socket whose first connection is handed to a script.
pub struct FakeAgent {
    dir: TempDir,
}

impl FakeAgent {
    pub fn serve(script: impl FnOnce(Conn) + Send + 'static) -> FakeAgent {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("qga.sock")).unwrap();
        std::thread::spawn(move || {
            if let Ok((stream, _)) = listener.accept() {
                script(Conn::new(stream));
            }
        });
        FakeAgent { dir }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("qga.sock")
    }
}

/// One client connection, seen from the agent's side.
pub struct Conn {
    reader: BufReader<UnixStream>,
    pub stream: UnixStream,
}

impl Conn {
    fn new(stream: UnixStream) -> Conn {
        Conn {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
        }
    }

    /// The next request, without the `0xFF` the client may send first.
    pub fn request(&mut self) -> Value {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line).unwrap();
        let start = line.iter().position(|&b| b != 0xFF).unwrap_or(line.len());
        serde_json::from_slice(&line[start..])
            .unwrap_or_else(|e| panic!("client sent invalid JSON ({e}): {line:?}"))
    }

    /// Reads the sync request and returns its id, answering nothing.
    pub fn expect_sync(&mut self) -> u64 {
        let request = self.request();
        assert_eq!(request["execute"], "guest-sync-delimited", "{request}");
        request["arguments"]["id"].as_u64().unwrap()
    }

    /// Reads the sync request and answers it as the agent does.
    pub fn sync(&mut self) {
        let id = self.expect_sync();
        self.send("\u{FFFD}\n".as_bytes()); // stands in for the parse error of the 0xFF
        self.send_sync_reply(id);
    }

    /// `0xFF{"return": id}`, the reply to `guest-sync-delimited`.
    pub fn send_sync_reply(&mut self, id: u64) -> bool {
        let mut reply = vec![0xFF];
        reply.extend(format!("{{\"return\": {id}}}\n").as_bytes());
        self.send(&reply)
    }

    /// Reads a request for `command` and answers `return` with its id.
    pub fn answer(&mut self, command: &str, ret: Value) {
        let request = self.request();
        assert_eq!(request["execute"], command, "{request}");
        self.reply(&json!({"return": ret, "id": request["id"]}));
    }

    /// Reads a request for `command` and answers an error reply with its id.
    pub fn refuse(&mut self, command: &str, class: &str, desc: &str) {
        let request = self.request();
        assert_eq!(request["execute"], command, "{request}");
        self.reply(&json!({"error": {"class": class, "desc": desc}, "id": request["id"]}));
    }

    pub fn reply(&mut self, value: &Value) {
        let mut line = serde_json::to_vec(value).unwrap();
        line.push(b'\n');
        self.send(&line);
    }

    /// Writes bytes, ignoring a client that has gone.
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// Sync, a started program, then whatever `status` returns.
    pub fn start_program(&mut self) -> i64 {
        self.sync();
        self.answer("guest-exec", json!({"pid": 4242}));
        4242
    }

    /// Blocks until the client closes the connection.
    pub fn wait_for_close(&mut self) {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut self.reader, &mut sink);
    }
}
