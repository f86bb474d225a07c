//! A note that a big request is on its way to the agent, for the next
//! client whose handshake goes unanswered.
//!
//! The agent reads a request whole before it answers anything else, and
//! a request of megabytes keeps it busy for seconds (its JSON parser takes
//! about 1 MB/s in a slow guest), also when its sender was killed half-way:
//! the bytes already in the channel are still read. The next client then
//! gets no answer for those seconds, and a plain timeout would blame an
//! agent that runs. So a client that sends a big request notes it in a
//! file beside the channel's lock files (see [`ChannelLock`]), with its
//! size, the sender and the time, and removes it once the reply came; a
//! client whose handshake times out reads it, and one whose handshake is
//! answered removes it, since the agent has then read everything before.
//!
//! Small requests, the common case, write nothing (the client says which
//! are big: [`BigRequestWatch`]); a connect that is answered costs one
//! `unlink` of a note that is mostly not there. The file is made and read
//! as the lock files are: never through a symlink, only if ours.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::lock::{open_own_file, ChannelLock};
use crate::qga::client::{BigRequestWatch, BIG_REQUEST};

/// The longest note read: a note is a short line.
const NOTE_MAX_LEN: u64 = 4096;

/// A big request a client sent to the agent and whose reply it did not
/// read: it was killed, or gave up waiting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestInFlight {
    /// The request's length in bytes.
    pub bytes: u64,
    /// The process that sent it.
    pub pid: u32,
    /// That process's start time (`/proc/PID/stat`, in clock ticks since
    /// boot), to tell it from a later process under the same pid.
    pub started: Option<u64>,
    /// When the request began to be sent, in milliseconds since the epoch.
    pub sent_ms: u64,
}

impl RequestInFlight {
    /// How long ago the request began to be sent.
    pub fn age(&self) -> Duration {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        now.saturating_sub(Duration::from_millis(self.sent_ms))
    }

    /// Whether the process that sent it still runs.
    pub fn sender_runs(&self) -> bool {
        start_time(format!("/proc/{}/stat", self.pid)).is_some_and(|now| Some(now) == self.started)
    }

    /// Whether the agent may still be busy with it: sent no longer ago
    /// than a slow agent takes to read a request that long. The agent
    /// reads as the request comes (a TCG guest about 1 MB/s), so it is
    /// done a few seconds after its sender stopped sending: ten seconds,
    /// and two per MiB. An older note says nothing (the agent may have
    /// died since).
    pub fn may_still_be_read(&self) -> bool {
        self.age() <= Duration::from_secs(10 + 2 * (self.bytes >> 20))
    }
}

/// Where the channel's note of a big request goes.
#[derive(Debug, Clone)]
pub(crate) struct RequestNote {
    path: PathBuf,
}

impl RequestNote {
    /// The note of the channel `lock` is the lock of.
    pub(crate) fn beside(lock: &ChannelLock) -> RequestNote {
        RequestNote {
            path: lock.path().with_extension("request"),
        }
    }

    /// The note at `path`, wherever [`beside`](Self::beside) put it.
    pub(crate) fn at(path: PathBuf) -> RequestNote {
        RequestNote { path }
    }

    /// Notes that a request of `bytes` is about to be sent by this
    /// process. A note that cannot be written only costs the next
    /// client's message its reason.
    pub(crate) fn write(&self, bytes: usize) {
        let note = RequestInFlight {
            bytes: bytes as u64,
            pid: std::process::id(),
            started: start_time("/proc/self/stat"),
            sent_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        let written = open_own_file(&self.path, true).and_then(|mut file| {
            file.set_len(0)?;
            file.write_all(&serde_json::to_vec(&note).expect("plain fields"))
        });
        if let Err(error) = written {
            tracing::debug!(%error, path = %self.path.display(), "no note of the big request");
        }
    }

    /// The note left there, if any.
    pub(crate) fn read(&self) -> Option<RequestInFlight> {
        let file = open_own_file(&self.path, false).ok()?;
        let mut text = Vec::new();
        file.take(NOTE_MAX_LEN).read_to_end(&mut text).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Removes the note: its reply came, or the agent has since answered.
    pub(crate) fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }

    #[cfg(test)]
    fn path(&self) -> &Path {
        &self.path
    }
}

impl BigRequestWatch for RequestNote {
    fn sending(&self, bytes: usize) {
        self.write(bytes);
    }

    fn answered(&self) {
        self.remove();
    }
}

/// The note, for a process that passes other clients' requests on to the
/// agent over one connection of its own (virtomate's control master): it
/// notes them as a [`QgaClient`](crate::QgaClient) on the channel notes
/// its own, and reads a note when its handshake goes unanswered.
impl ChannelLock {
    /// Notes a request of `bytes` about to go to the agent, if it is big
    /// enough to keep the agent reading for a while; says whether it did.
    pub fn note_request_sent(&self, bytes: usize) -> bool {
        if bytes < BIG_REQUEST {
            return false;
        }
        RequestNote::beside(self).write(bytes);
        true
    }

    /// Removes the note: the agent has answered since.
    pub fn clear_request_note(&self) {
        RequestNote::beside(self).remove();
    }

    /// The note of a big request the agent may still be reading, if any.
    pub fn request_still_read(&self) -> Option<RequestInFlight> {
        RequestNote::beside(self)
            .read()
            .filter(RequestInFlight::may_still_be_read)
    }
}

/// The start time in a `/proc/PID/stat` (field 22), which follows the
/// command in parentheses, itself free to hold anything.
pub(crate) fn start_time(stat: impl AsRef<Path>) -> Option<u64> {
    let text = std::fs::read_to_string(stat).ok()?;
    text.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note_in(dir: &Path) -> (RequestNote, std::os::unix::net::UnixListener) {
        let socket = dir.join("qga.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let lock = ChannelLock::in_dir(&socket, dir).unwrap();
        (RequestNote::beside(&lock), listener)
    }

    #[test]
    fn a_note_says_who_sent_how_much_and_goes_once_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (note, _listener) = note_in(dir.path());
        assert_eq!(note.read(), None);
        note.write(16 << 20);
        let read = note.read().unwrap();
        assert_eq!((read.bytes, read.pid), (16 << 20, std::process::id()));
        assert!(read.sender_runs(), "{read:?}");
        assert!(read.age() < Duration::from_secs(5) && read.may_still_be_read());
        note.remove();
        assert_eq!(note.read(), None);
    }

    #[test]
    fn a_forwarder_notes_only_big_requests_and_reads_what_others_noted() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qga.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let lock = ChannelLock::in_dir(&socket, dir.path()).unwrap();
        assert!(!lock.note_request_sent(BIG_REQUEST - 1));
        assert_eq!(lock.request_still_read(), None);
        assert!(lock.note_request_sent(BIG_REQUEST));
        assert_eq!(
            lock.request_still_read().map(|r| r.bytes),
            Some(BIG_REQUEST as u64)
        );
        lock.clear_request_note();
        assert_eq!(lock.request_still_read(), None);
    }

    #[test]
    fn a_dead_or_old_sender_is_told_and_garbage_or_a_symlink_is_no_note() {
        let dir = tempfile::tempdir().unwrap();
        let (note, _listener) = note_in(dir.path());
        let old = RequestInFlight {
            bytes: 1 << 20,
            pid: std::process::id(),
            started: Some(1),
            sent_ms: 1000,
        };
        std::fs::write(note.path(), serde_json::to_vec(&old).unwrap()).unwrap();
        let read = note.read().unwrap();
        assert!(!read.sender_runs() && !read.may_still_be_read(), "{read:?}");
        std::fs::write(note.path(), b"{\"bytes\":").unwrap();
        assert_eq!(note.read(), None);
        std::fs::remove_file(note.path()).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, serde_json::to_vec(&old).unwrap()).unwrap();
        std::os::unix::fs::symlink(&elsewhere, note.path()).unwrap();
        assert_eq!(note.read(), None);
        note.write(2 << 20);
        assert_eq!(
            std::fs::read(&elsewhere).unwrap(),
            serde_json::to_vec(&old).unwrap()
        );
    }
}
