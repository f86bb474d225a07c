//! An in-process agent that does on demand what the real one will not:
//! stale bytes, garbage, silence, endless or malformed replies. It tells
//! the test what it got ([`FakeAgent::wait_for`]), so that a test disturbs
//! the client once it is where the test wants it, not after a guessed time.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

use super::wait_until;

/// A listening socket whose first connection is handed to a script, on a
/// thread of its own. The script's assertions count: dropping the agent
/// fails the test if the script panicked, if nobody connected, or if the
/// script does not end soon after the test (once its client has gone).
pub struct FakeAgent {
    dir: TempDir,
    /// `@NAME` for one listening on an abstract address.
    address: Option<PathBuf>,
    /// Dropped when the test is over, which ends [`Conn::linger`].
    over: Option<Sender<()>>,
    /// Tells whether a client connected.
    script: Option<JoinHandle<bool>>,
    /// What the script got: the `execute` of each request, and what it
    /// said with [`Conn::tell`].
    events: Receiver<String>,
}

impl FakeAgent {
    pub fn serve(script: impl FnOnce(Conn) + Send + 'static) -> FakeAgent {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("qga.sock")).unwrap();
        FakeAgent::serve_on(listener, dir, None, script)
    }

    /// The same on the abstract address `name`; [`FakeAgent::socket`] is
    /// then `@NAME`, as virtomate spells it.
    pub fn serve_abstract(name: &str, script: impl FnOnce(Conn) + Send + 'static) -> FakeAgent {
        use std::os::linux::net::SocketAddrExt;
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
        let listener = UnixListener::bind_addr(&address).unwrap();
        let dir = tempfile::tempdir().unwrap();
        FakeAgent::serve_on(listener, dir, Some(format!("@{name}").into()), script)
    }

    fn serve_on(
        listener: UnixListener,
        dir: TempDir,
        address: Option<PathBuf>,
        script: impl FnOnce(Conn) + Send + 'static,
    ) -> FakeAgent {
        // Polled, so that an agent nobody connects to can still end.
        listener.set_nonblocking(true).unwrap();
        let (over, test_over) = mpsc::channel();
        let (tell, events) = mpsc::channel();
        let script = std::thread::spawn(move || {
            let stream = loop {
                match listener.accept() {
                    Ok((stream, _)) => break stream,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        if test_over.try_recv() == Err(TryRecvError::Disconnected) {
                            return false;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("the fake agent cannot accept: {e}"),
                }
            };
            stream.set_nonblocking(false).unwrap();
            // The listener stays open while the script runs: a second
            // client waits in its backlog, as behind a real agent's one.
            script(Conn::new(stream, test_over, tell));
            drop(listener);
            true
        });
        FakeAgent {
            dir,
            address,
            over: Some(over),
            script: Some(script),
            events,
        }
    }

    /// Like [`FakeAgent::serve`], but serving one connection after
    /// another until the test is over, each with `script` and its number
    /// (0 for the first): for clients that let go of the channel between
    /// exchanges and connect again.
    pub fn serve_each(mut script: impl FnMut(Conn, usize) + Send + 'static) -> FakeAgent {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("qga.sock")).unwrap();
        listener.set_nonblocking(true).unwrap();
        let (over, test_over) = mpsc::channel::<()>();
        let (tell, events) = mpsc::channel();
        let script = std::thread::spawn(move || {
            let mut served = 0;
            loop {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        // linger() does not wait on these connections.
                        let (_, conn_test_over) = mpsc::channel();
                        script(Conn::new(stream, conn_test_over, tell.clone()), served);
                        served += 1;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        if test_over.try_recv() == Err(TryRecvError::Disconnected) {
                            return served > 0;
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => panic!("the fake agent cannot accept: {e}"),
                }
            }
        });
        FakeAgent {
            dir,
            address: None,
            over: Some(over),
            script: Some(script),
            events,
        }
    }

    /// [`FakeAgent::wait_for`], counting only what the script gets from
    /// now on: what it got before is skipped.
    pub fn wait_for_next(&self, what: &str) {
        while self.events.try_recv().is_ok() {}
        self.wait_for(what);
    }

    /// What the script has got (and told) so far and not yet waited for,
    /// without waiting for more.
    pub fn got_so_far(&self) -> Vec<String> {
        self.events.try_iter().collect()
    }

    /// Blocks until the script has got a request for `what` (or said
    /// `what` with [`Conn::tell`]), skipping everything before it; fails
    /// the test after 20 s, or once the script has ended without it.
    pub fn wait_for(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) if event == what => return,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("gave up waiting for the fake agent to get {what}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("the fake agent's script ended without getting {what}")
                }
            }
        }
    }

    pub fn socket(&self) -> PathBuf {
        match &self.address {
            Some(address) => address.clone(),
            None => self.dir.path().join("qga.sock"),
        }
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        drop(self.over.take());
        let script = self.script.take().unwrap();
        if std::thread::panicking() {
            return; // the test has failed already, and says why
        }
        wait_until(10, "the fake agent's script to end", || script.is_finished());
        match script.join() {
            Ok(true) => {}
            Ok(false) => panic!("nobody connected to the fake agent"),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                panic!("the fake agent's script failed: {message}");
            }
        }
    }
}

/// One client connection, seen from the agent's side.
pub struct Conn {
    reader: BufReader<UnixStream>,
    stream: UnixStream,
    test_over: Receiver<()>,
    tell: Sender<String>,
}

impl Conn {
    fn new(stream: UnixStream, test_over: Receiver<()>, tell: Sender<String>) -> Conn {
        Conn {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
            test_over,
            tell,
        }
    }

    /// Lets a test blocked in [`FakeAgent::wait_for`] `what` go on.
    pub fn tell(&self, what: &str) {
        // A test that waits for nothing has dropped nothing: this cannot fail
        // while the agent lives.
        let _ = self.tell.send(what.to_owned());
    }

    /// Blocks until the client has sent more bytes, reading none of them.
    pub fn wait_for_bytes(&mut self) {
        if !self.reader.buffer().is_empty() {
            return;
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.stream);
        let mut byte = [0u8; 1];
        nix::sys::socket::recv(fd, &mut byte, nix::sys::socket::MsgFlags::MSG_PEEK)
            .expect("the fake agent cannot peek");
    }

    /// The next request, without the `0xFF` the client may send first (see
    /// [`next_request`](Self::next_request)).
    pub fn request(&mut self) -> Value {
        self.next_request()
            .expect("the client closed the connection instead of sending a request")
    }

    /// The next request, or `None` once the client has closed the
    /// connection (leaving a reply unread, which resets it).
    pub fn next_request(&mut self) -> Option<Value> {
        let mut line = Vec::new();
        match self.reader.read_until(b'\n', &mut line) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("the fake agent cannot read: {e}"),
        }
        // As the agent does: a 0xFF drops what came before it, the rest of
        // a request the client cut short (whose line then goes on with the
        // client's new handshake).
        let start = line.iter().rposition(|&b| b == 0xFF).map_or(0, |last| last + 1);
        let request: Value = serde_json::from_slice(&line[start..])
            .unwrap_or_else(|e| panic!("client sent invalid JSON ({e}): {line:?}"));
        if let Some(command) = request["execute"].as_str() {
            self.tell(command);
        }
        Some(request)
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

    /// Keeps the connection open, reading nothing, until the test is over.
    pub fn linger(self) {
        let _ = self.test_over.recv();
    }
}
