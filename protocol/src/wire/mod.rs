//! The wire: bytes to frames and back, one connection's I/O, connecting
//! and deadlines, the JSON around every request and reply, and the trace
//! of every byte. Every client of the crate (QGA, QMP, libvirt) speaks
//! through this layer; nothing here knows a command.
//!
//! `framing` parses, `connection` owns the socket and its buffer and
//! reads frames through a codec, `transport` connects within a
//! `Deadline`, `envelope` and `command` type requests and replies,
//! `trace` sees the bytes, `scan` finds bytes in them, `hex` and `random`
//! make names, and `fields` reads the members of JSON lines (a session's).

pub(crate) mod command;
pub(crate) mod connection;
pub(crate) mod envelope;
pub mod fields;
pub mod framing;
pub(crate) mod hex;
pub(crate) mod random;
pub(crate) mod scan;
pub(crate) mod trace;
pub(crate) mod transport;

/// How far the last request got: what an exchange cut short (a timeout, a
/// dropped future) leaves the agent with. The agent acts on a request only
/// once it has read all of it.
///
/// ```
/// use virtomate_protocol::RequestProgress;
///
/// fn may_have_acted(progress: RequestProgress) -> bool {
///     !matches!(progress, RequestProgress::Idle | RequestProgress::PartlySent)
/// }
/// assert!(!may_have_acted(RequestProgress::PartlySent));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestProgress {
    /// No request is under way: the last one was answered.
    Idle,
    /// A request was being written and is not whole: the agent will not
    /// act on it.
    PartlySent,
    /// The request was sent whole; its reply had not been read.
    Sent,
    /// The carrier cannot tell.
    Unknown,
}

/// A stream that hands out its bytes in the given pieces, one per read:
/// for the tests of what reads frames.
#[cfg(test)]
pub(crate) fn pieces(parts: &[&[u8]]) -> impl tokio::io::AsyncRead + Unpin {
    let mut builder = tokio_test::io::Builder::new();
    for part in parts {
        builder.read(part);
    }
    builder.build()
}
