//! A relay between virtomate and a real agent that drops one reply: the
//! reply to the first request holding a given text. virtomate then waits
//! for it, and a test interrupts it at that moment for certain, while
//! the real agent has done what was asked.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tempfile::TempDir;

/// Whether the reply to drop is the agent's next line, and whether it
/// has been dropped.
#[derive(Default)]
struct Hold {
    next: bool,
    done: bool,
}

/// Listens on a socket of its own; each connection goes on to `agent`.
pub struct Relay {
    dir: TempDir,
    dropped: Receiver<()>,
    over: Arc<AtomicBool>,
}

impl Relay {
    pub fn start(agent: &Path, request_holding: &str) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("relay.sock")).unwrap();
        listener.set_nonblocking(true).unwrap();
        let (told, dropped) = mpsc::channel();
        let over = Arc::new(AtomicBool::new(false));
        let (agent, text, stop) = (agent.to_owned(), request_holding.to_owned(), over.clone());
        let hold = Arc::new(Mutex::new(Hold::default()));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let agent = UnixStream::connect(&agent).unwrap();
                        relay(client, agent, &text, hold.clone(), told.clone());
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => panic!("relay: {e}"),
                }
            }
        });
        Relay { dir, dropped, over }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("relay.sock")
    }

    /// Waits until the reply has been dropped (a minute at most).
    pub fn wait_until_dropped(&self) {
        self.dropped
            .recv_timeout(Duration::from_secs(60))
            .expect("no request with the text came");
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.over.store(true, Ordering::Relaxed);
    }
}

/// Copies `client`'s bytes to `agent` and `agent`'s lines back, each way
/// on a thread of its own, but for the one line to drop.
fn relay(client: UnixStream, agent: UnixStream, text: &str, hold: Arc<Mutex<Hold>>, told: Sender<()>) {
    let (mut to_agent, from_client) = (agent.try_clone().unwrap(), client.try_clone().unwrap());
    let (text, asked) = (text.to_owned(), hold.clone());
    std::thread::spawn(move || {
        let mut from_client = BufReader::new(from_client);
        let mut line = Vec::new();
        while from_client.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            {
                let mut hold = asked.lock().unwrap();
                let holding = line.windows(text.len()).any(|w| w == text.as_bytes());
                if holding && !hold.done {
                    hold.next = true;
                }
            }
            if to_agent.write_all(&line).is_err() {
                break;
            }
            line.clear();
        }
        let _ = to_agent.shutdown(std::net::Shutdown::Write);
    });
    std::thread::spawn(move || {
        let (mut from_agent, mut to_client) = (BufReader::new(agent), client);
        let mut line = Vec::new();
        while from_agent.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let drop_it = {
                let mut hold = hold.lock().unwrap();
                std::mem::take(&mut hold.next) && {
                    hold.done = true;
                    true
                }
            };
            if drop_it {
                let _ = told.send(());
            } else if to_client.write_all(&line).is_err() {
                break;
            }
            line.clear();
        }
        let _ = to_client.shutdown(std::net::Shutdown::Both);
        let mut rest = Vec::new();
        let _ = from_agent.read_to_end(&mut rest);
    });
}
