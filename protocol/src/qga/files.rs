//! The agent's file commands: `guest-file-open`, `-read`, `-write`,
//! `-seek`, `-flush` and `-close` (`qga/qapi-schema.json`).
//!
//! The agent keeps an open file per handle until it is closed (or the agent
//! restarts): a caller that opens one must close it, failure or not.

use serde::{Deserialize, Serialize};

use super::{base64_data, Command, Empty};
use crate::Error;

/// The most `guest-file-read` returns in one reply: the agent refuses a
/// larger `count` (`value 'N' is invalid for argument count`).
pub const MAX_READ_COUNT: u64 = 48 << 20;

/// `guest-file-open`: opens `path` in the guest with an `fopen` mode
/// (`r` when none is given) and returns the handle.
///
/// Mode `w` follows a symlink to an existing file and truncates it, and
/// creates a missing file `rw-rw-rw-` whatever the guest's umask: write
/// to a fresh name in a directory only root can enter, then rename.
#[derive(Debug, Clone, Serialize)]
pub struct GuestFileOpen {
    /// The file, as the guest names it.
    pub path: String,
    /// An `fopen` mode: `r`, `w`, `a`, `r+`, ... (not `x`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

impl GuestFileOpen {
    /// Opens `path` with `mode`.
    pub fn new(path: impl Into<String>, mode: impl Into<String>) -> Self {
        GuestFileOpen {
            path: path.into(),
            mode: Some(mode.into()),
        }
    }
}

impl Command for GuestFileOpen {
    const NAME: &'static str = "guest-file-open";
    /// The handle, for the other `guest-file-*` commands.
    type Output = i64;
}

/// `guest-file-close`: closes a handle; the agent forgets it, and a
/// buffered write that fails here is an error reply.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct GuestFileClose {
    /// What `guest-file-open` returned.
    pub handle: i64,
}

impl Command for GuestFileClose {
    const NAME: &'static str = "guest-file-close";
    type Output = Empty;
}

/// `guest-file-flush`: writes what the agent's `FILE` buffers, so that a
/// full disk shows here rather than at close.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct GuestFileFlush {
    /// What `guest-file-open` returned.
    pub handle: i64,
}

impl Command for GuestFileFlush {
    const NAME: &'static str = "guest-file-flush";
    type Output = Empty;
}

/// `guest-file-read`: up to `count` bytes (4096 when none is given, at
/// most [`MAX_READ_COUNT`]).
///
/// ```
/// use virtomate_protocol::qga::{Command, GuestFileRead, GuestFileReadReply};
///
/// let read = GuestFileRead { handle: 7, count: Some(1 << 20) };
/// assert_eq!(serde_json::to_string(&read).unwrap(), r#"{"handle":7,"count":1048576}"#);
/// let reply: GuestFileReadReply =
///     serde_json::from_str(r#"{"count": 5, "buf-b64": "SGVsbG8=", "eof": false}"#).unwrap();
/// assert_eq!(reply.into_data(1 << 20).unwrap(), b"Hello");
/// ```
#[derive(Debug, Clone, Copy, Serialize)]
pub struct GuestFileRead {
    /// What `guest-file-open` returned.
    pub handle: i64,
    /// The most bytes to return.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

impl Command for GuestFileRead {
    const NAME: &'static str = "guest-file-read";
    type Output = GuestFileReadReply;
}

/// The `return` of `guest-file-read`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GuestFileReadReply {
    /// How many bytes the agent says it read.
    pub count: u64,
    /// The bytes.
    #[serde(rename = "buf-b64", with = "base64_data::required")]
    pub buf: Vec<u8>,
    /// True once the end of the file was reached.
    pub eof: bool,
}

impl GuestFileReadReply {
    /// The bytes, once checked against the `count` asked for: a reply that
    /// holds more than was asked, or other than it says, is no reply of
    /// this protocol.
    pub fn into_data(self, asked: u64) -> Result<Vec<u8>, Error> {
        let got = self.buf.len() as u64;
        let reason = if got > asked {
            format!("{got} bytes where at most {asked} were asked for")
        } else if got != self.count {
            format!("{got} bytes, but a count of {}", self.count)
        } else {
            return Ok(self.buf);
        };
        Err(Error::Malformed {
            command: GuestFileRead::NAME.to_owned(),
            reason,
        })
    }
}

/// `guest-file-write`: writes `buf` at the handle's position.
#[derive(Debug, Clone, Serialize)]
pub struct GuestFileWrite {
    /// What `guest-file-open` returned.
    pub handle: i64,
    /// The bytes, sent as Base64.
    #[serde(rename = "buf-b64", with = "base64_data::required")]
    pub buf: Vec<u8>,
}

impl Command for GuestFileWrite {
    const NAME: &'static str = "guest-file-write";
    type Output = GuestFileWriteReply;
}

/// The `return` of `guest-file-write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct GuestFileWriteReply {
    /// How many bytes were written.
    pub count: u64,
    /// The `FILE`'s end-of-file flag.
    pub eof: bool,
}

/// Where `guest-file-seek` counts its offset from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Whence {
    /// The start of the file.
    Set,
    /// The current position.
    Cur,
    /// The end of the file.
    End,
}

/// `guest-file-seek`: moves the handle's position; it also flushes what
/// the agent buffers. Seeking to the end tells the file's size.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct GuestFileSeek {
    /// What `guest-file-open` returned.
    pub handle: i64,
    /// Bytes from `whence`.
    pub offset: i64,
    /// Where to count from.
    pub whence: Whence,
}

impl Command for GuestFileSeek {
    const NAME: &'static str = "guest-file-seek";
    type Output = GuestFileSeekReply;
}

/// The `return` of `guest-file-seek`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct GuestFileSeekReply {
    /// The new position, in bytes from the start.
    pub position: u64,
    /// The `FILE`'s end-of-file flag.
    pub eof: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json<T: Serialize>(value: &T) -> String {
        serde_json::to_string(value).unwrap()
    }

    #[test]
    fn requests_and_replies_are_what_the_agent_reads_and_sends() {
        assert_eq!(
            json(&GuestFileOpen::new("/var/log/syslog", "r")),
            r#"{"path":"/var/log/syslog","mode":"r"}"#
        );
        assert_eq!(
            serde_json::from_str::<<GuestFileOpen as Command>::Output>("1000").unwrap(),
            1000
        );
        assert_eq!(json(&GuestFileClose { handle: 7 }), r#"{"handle":7}"#);
        assert_eq!(json(&GuestFileFlush { handle: 7 }), r#"{"handle":7}"#);
        let write = GuestFileWrite {
            handle: 7,
            buf: b"Hello".to_vec(),
        };
        assert_eq!(json(&write), r#"{"handle":7,"buf-b64":"SGVsbG8="}"#);
        let seek = GuestFileSeek {
            handle: 7,
            offset: 0,
            whence: Whence::End,
        };
        assert_eq!(json(&seek), r#"{"handle":7,"offset":0,"whence":"end"}"#);
        let end: GuestFileReadReply =
            serde_json::from_str(r#"{"count": 0, "buf-b64": "", "eof": true}"#).unwrap();
        assert!(end.eof && end.buf.is_empty());
        let written: GuestFileWriteReply = serde_json::from_str(r#"{"count": 5, "eof": false}"#).unwrap();
        assert_eq!(written.count, 5);
        let at: GuestFileSeekReply = serde_json::from_str(r#"{"position": 4096, "eof": false}"#).unwrap();
        assert_eq!(at.position, 4096);
    }

    #[test]
    fn a_read_reply_must_hold_what_it_says_and_no_more_than_asked() {
        let reply = |count: u64, b64: &str| -> GuestFileReadReply {
            serde_json::from_value(serde_json::json!({"count": count, "buf-b64": b64, "eof": false})).unwrap()
        };
        assert_eq!(reply(2, "aGk=").into_data(2).unwrap(), b"hi");
        assert!(reply(3, "aGk=").into_data(4).is_err());
        assert!(reply(2, "aGk=").into_data(1).is_err());
        assert!(reply(0, "").into_data(0).unwrap().is_empty());
    }

    #[test]
    fn a_read_reply_without_valid_base64_is_refused() {
        for line in [
            r#"{"count": 1, "buf-b64": "!!", "eof": false}"#,
            r#"{"count": 1, "buf-b64": null, "eof": false}"#,
            r#"{"count": 1, "eof": false}"#,
            r#"{"count": -1, "buf-b64": "", "eof": false}"#,
        ] {
            assert!(
                serde_json::from_str::<GuestFileReadReply>(line).is_err(),
                "{line}"
            );
        }
    }
}
