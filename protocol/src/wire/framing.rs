//! Splitting the agent's byte stream into replies: [`LineCodec`].
//!
//! Both QGA and QMP send one JSON object per line. The peer is untrusted, so
//! the codec never holds more than one reply's worth of bytes (plus one read
//! chunk): a line longer than the bound is reported and then skipped, and
//! skipping to the [`SENTINEL`] keeps one chunk at a time.
//!
//! ```
//! use virtomate_protocol::framing::{LineCodec, DEFAULT_MAX_REPLY_LEN};
//! use virtomate_protocol::Connection;
//!
//! # tokio_test::block_on(async {
//! // What a fresh connection reads: a stale parse error, then the sync reply.
//! let stream: &[u8] = b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error\"}}\n\
//!     \xff{\"return\": 1234}\n";
//! let mut conn = Connection::new(stream, LineCodec::new(DEFAULT_MAX_REPLY_LEN), None);
//! conn.skip_past_sentinel().await?;
//! assert_eq!(conn.read_reply().await?, b"{\"return\": 1234}");
//! # Ok::<(), virtomate_protocol::Error>(())
//! # }).unwrap();
//! ```

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

use super::scan;
use crate::Error;

/// Byte the agent sends right before the reply to `guest-sync-delimited`.
///
/// It never occurs in JSON text, which is UTF-8, so it marks a point in
/// the stream whatever came before.
pub const SENTINEL: u8 = 0xFF;

/// Default bound on one reply: two 16 MiB program outputs in Base64
/// (2 × 22.4 MB) plus room for the JSON around them.
pub const DEFAULT_MAX_REPLY_LEN: usize = 48 << 20;

/// What the buffer grows by before each read: replies are usually short,
/// and one read of this size takes most of them whole.
pub(crate) const READ_CHUNK: usize = 64 << 10;

/// What [`LineCodec`] finds in the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// One line, without its `\n` (and without a `\r` before it, which QMP
    /// sends).
    Line(Vec<u8>),
    /// The [`SENTINEL`] was found, after [`LineCodec::skip_to_sentinel`].
    Sentinel,
    /// The stream began with QEMU's QMP greeting while skipping to the
    /// sentinel: this is QEMU's monitor, which never sends one.
    QmpGreeting,
}

/// How QEMU's monitor greets every new client, before it is asked anything.
const QMP_GREETING: &[u8] = b"{\"QMP\":";

/// Frames newline-terminated replies, each at most `max_len` bytes long.
///
/// A longer line yields `Err(`[`Error::ReplyTooLong`]`)` once, as an item:
/// the stream goes on with the line after it.
///
/// ```
/// use bytes::BytesMut;
/// use tokio_util::codec::Decoder;
/// use virtomate_protocol::framing::{Frame, LineCodec};
///
/// let mut codec = LineCodec::new(1024);
/// let mut buf = BytesMut::from(&b"{\"return\": {}}\n{\"ret"[..]);
/// let frame = codec.decode(&mut buf)?.unwrap()?;
/// assert_eq!(frame, Frame::Line(b"{\"return\": {}}".to_vec()));
/// assert!(codec.decode(&mut buf)?.is_none()); // the rest has not arrived
/// # Ok::<(), virtomate_protocol::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct LineCodec {
    max_len: usize,
    /// Bytes at the buffer's start already known to hold no newline.
    scanned: usize,
    /// Set after an over-long line: the rest of it is dropped as it arrives.
    discarding: bool,
    /// Set until the next [`SENTINEL`]: everything before it is dropped.
    skipping: bool,
    /// Set once the first bytes of the stream have been looked at.
    started: bool,
}

impl LineCodec {
    /// A codec for replies of at most `max_len` bytes.
    pub fn new(max_len: usize) -> Self {
        LineCodec {
            max_len,
            scanned: 0,
            discarding: false,
            skipping: false,
            started: false,
        }
    }

    /// The bound on one reply, in bytes.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// From now on, drop every byte up to and including the next
    /// [`SENTINEL`], then yield [`Frame::Sentinel`] and go back to lines.
    pub fn skip_to_sentinel(&mut self) {
        self.skipping = true;
    }

    fn decode_line(&mut self, buf: &mut BytesMut) -> Option<Result<Frame, Error>> {
        loop {
            let Some(pos) = scan::find(b'\n', &buf[self.scanned..]) else {
                self.scanned = buf.len();
                if buf.len() > self.max_len + 1 {
                    // Let the memory go, not just the bytes: the next reply
                    // is likely short.
                    *buf = BytesMut::new();
                    self.scanned = 0;
                    if !std::mem::replace(&mut self.discarding, true) {
                        return Some(Err(Error::ReplyTooLong { limit: self.max_len }));
                    }
                }
                return None;
            };
            let end = self.scanned + pos;
            self.scanned = 0;
            // The (short) rest is copied, so that the (possibly huge) line
            // leaves as the buffer's own allocation, without a copy.
            let rest = BytesMut::from(&buf[end + 1..]);
            buf.truncate(end);
            let mut line = std::mem::replace(buf, rest);
            if line.last() == Some(&b'\r') {
                line.truncate(line.len() - 1);
            }
            if std::mem::take(&mut self.discarding) {
                continue;
            }
            if line.len() > self.max_len {
                return Some(Err(Error::ReplyTooLong { limit: self.max_len }));
            }
            return Some(Ok(Frame::Line(Vec::from(line))));
        }
    }
}

impl Decoder for LineCodec {
    type Item = Result<Frame, Error>;
    type Error = Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, Error> {
        if !self.started && self.skipping {
            // An agent says nothing before it is asked; QEMU's monitor greets.
            let head = &buf[..buf.len().min(QMP_GREETING.len())];
            if !QMP_GREETING.starts_with(head) {
                self.started = true;
            } else if head.len() == QMP_GREETING.len() {
                self.started = true;
                buf.clear();
                self.skipping = false;
                return Ok(Some(Ok(Frame::QmpGreeting)));
            } else {
                // Too short to tell yet: keep it.
                buf.reserve(READ_CHUNK);
                return Ok(None);
            }
        }
        let frame = if self.skipping {
            match scan::find(SENTINEL, buf) {
                Some(pos) => {
                    buf.advance(pos + 1);
                    self.skipping = false;
                    self.discarding = false;
                    self.scanned = 0;
                    Some(Ok(Frame::Sentinel))
                }
                None => {
                    buf.clear();
                    None
                }
            }
        } else {
            self.decode_line(buf)
        };
        if frame.is_none() {
            buf.reserve(READ_CHUNK);
        }
        Ok(frame)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, Error> {
        // A line cut short by the end of the stream is no reply: the
        // caller sees the end, as `Error::Disconnected`.
        self.decode(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sentinel_is_never_json() {
        assert!(std::str::from_utf8(&[SENTINEL]).is_err());
    }

    #[test]
    fn the_default_bound_holds_two_capped_outputs() {
        // A program's output is capped at 16 MiB, a third longer in Base64.
        let capped_output = (16usize << 20).div_ceil(3) * 4;
        assert!(2 * capped_output < DEFAULT_MAX_REPLY_LEN);
    }
}
