//! A control master of an older virtomate, one that persists across an
//! upgrade: it speaks the master's wire (QGA passed through to the agent,
//! plus the attach exchange) but knows no whole runs, so it passes
//! `x-virtomate-run` on and the agent answers `CommandNotFound`. Each
//! client connection gets a connection of its own to the real agent,
//! opened on its first request for the agent and closed with it.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// Listens on a master's socket path; ends (and removes it) on drop.
pub struct OlderMaster {
    socket: PathBuf,
    over: Arc<AtomicBool>,
    /// The `execute` of every request its clients sent, in order.
    got: Arc<Mutex<Vec<String>>>,
}

/// What qemu-ga 7.2 answers a command it does not know.
const NOT_FOUND: &[u8] = b"{\"error\": {\"class\": \"CommandNotFound\", \
    \"desc\": \"The command x-virtomate-run has not been found\"}}\n";

impl OlderMaster {
    /// Serves at `socket` (where the master of `agent` is looked for).
    pub fn serve(socket: &Path, agent: &Path) -> OlderMaster {
        let listener = UnixListener::bind(socket).unwrap();
        listener.set_nonblocking(true).unwrap();
        let over = Arc::new(AtomicBool::new(false));
        let got = Arc::new(Mutex::new(Vec::new()));
        let (stop, agent, seen) = (over.clone(), agent.to_owned(), got.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let (agent, seen) = (agent.clone(), seen.clone());
                        std::thread::spawn(move || serve_client(client, &agent, &seen));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => panic!("the older master cannot accept: {e}"),
                }
            }
        });
        OlderMaster {
            socket: socket.to_owned(),
            over,
            got,
        }
    }

    /// The commands its clients sent so far.
    pub fn got(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for OlderMaster {
    fn drop(&mut self) {
        self.over.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Answers the attach and `x-virtomate-run` itself, and passes every
/// other line to the agent, whose lines go back as they come.
fn serve_client(client: UnixStream, agent_socket: &Path, got: &Mutex<Vec<String>>) {
    let mut to_client = client.try_clone().unwrap();
    let mut agent: Option<UnixStream> = None;
    let mut lines = BufReader::new(client);
    let mut line = Vec::new();
    while lines.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
        let start = line.iter().position(|&b| b != 0xFF).unwrap_or(line.len());
        let request: Value = serde_json::from_slice(&line[start..]).unwrap_or_default();
        let execute = request["execute"].as_str().unwrap_or_default().to_owned();
        got.lock().unwrap().push(execute.clone());
        let sent = match execute.as_str() {
            // A fresh connection to the agent holds nothing stale.
            "x-virtomate-attach" => to_client.write_all(b"{\"return\": {}}\n"),
            "x-virtomate-run" => to_client.write_all(NOT_FOUND),
            _ => agent
                .get_or_insert_with(|| connect(agent_socket, &to_client))
                .write_all(&line),
        };
        if sent.is_err() {
            break;
        }
        line.clear();
    }
    if let Some(agent) = agent {
        let _ = agent.shutdown(std::net::Shutdown::Both);
    }
}

/// A connection to the agent whose lines go to `client` on a thread of
/// their own.
fn connect(agent_socket: &Path, client: &UnixStream) -> UnixStream {
    let agent = UnixStream::connect(agent_socket).unwrap();
    let (mut from_agent, mut to_client) = (agent.try_clone().unwrap(), client.try_clone().unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 << 10];
        loop {
            match from_agent.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) if to_client.write_all(&buf[..n]).is_err() => break,
                Ok(_) => {}
            }
        }
        let _ = to_client.shutdown(std::net::Shutdown::Both);
    });
    agent
}
