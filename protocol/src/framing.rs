//! Splitting the agent's byte stream into replies.
//!
//! Both QGA and QMP send one JSON object per line. The peer is untrusted, so
//! the reader never holds more than one reply's worth of bytes (plus one read
//! chunk): a line longer than the bound is reported and then skipped.
//!
//! ```
//! use virtomate_protocol::framing::{ReplyReader, DEFAULT_MAX_REPLY_LEN};
//!
//! # tokio_test::block_on(async {
//! // What a fresh connection reads: a stale parse error, then the sync reply.
//! let stream: &[u8] = b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error\"}}\n\xff{\"return\": 1234}\n";
//! let mut reader = ReplyReader::new(stream, DEFAULT_MAX_REPLY_LEN);
//! reader.skip_past_sentinel().await?;
//! assert_eq!(reader.read_reply().await?, b"{\"return\": 1234}");
//! # Ok::<(), virtomate_protocol::Error>(())
//! # }).unwrap();
//! ```

use memchr::memchr;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::{Direction, Error, Trace};

/// Byte the agent sends right before the reply to `guest-sync-delimited`.
///
/// It never occurs in JSON text, which is UTF-8, so it marks a point in
/// the stream whatever came before.
///
/// ```
/// use virtomate_protocol::framing::SENTINEL;
///
/// assert_eq!(SENTINEL, 0xFF);
/// assert!(std::str::from_utf8(&[SENTINEL]).is_err());
/// ```
pub const SENTINEL: u8 = 0xFF;

/// Default bound on one reply: two 16 MiB program outputs in Base64
/// (2 × 22.4 MB) plus room for the JSON around them.
///
/// ```
/// use virtomate_protocol::framing::DEFAULT_MAX_REPLY_LEN;
///
/// let capped_output = (16usize << 20).div_ceil(3) * 4;
/// assert!(2 * capped_output < DEFAULT_MAX_REPLY_LEN);
/// ```
pub const DEFAULT_MAX_REPLY_LEN: usize = 48 << 20;

const READ_CHUNK: usize = 64 << 10;

/// Reads newline-terminated replies from a byte stream, each at most
/// `max_len` bytes long.
///
/// ```
/// use virtomate_protocol::framing::ReplyReader;
///
/// # tokio_test::block_on(async {
/// let stream: &[u8] = b"{\"return\": {}}\n{\"return\": 7}\n";
/// let mut reader = ReplyReader::new(stream, 1024);
/// assert_eq!(reader.read_reply().await?, b"{\"return\": {}}");
/// assert_eq!(reader.read_reply().await?, b"{\"return\": 7}");
/// # Ok::<(), virtomate_protocol::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct ReplyReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Bytes of `buf` already known to hold no newline.
    scanned: usize,
    max_len: usize,
    /// Set after an over-long line: the rest of it is dropped as it arrives.
    discarding: bool,
    trace: Option<Trace>,
}

impl<R: AsyncRead + Unpin> ReplyReader<R> {
    /// Wraps `inner`; replies longer than `max_len` bytes are refused with
    /// [`Error::ReplyTooLong`].
    ///
    /// ```
    /// use virtomate_protocol::framing::ReplyReader;
    /// use virtomate_protocol::Error;
    ///
    /// # tokio_test::block_on(async {
    /// let stream: &[u8] = b"{\"return\": \"far too long\"}\n{\"return\": {}}\n";
    /// let mut reader = ReplyReader::new(stream, 16);
    /// assert!(matches!(reader.read_reply().await, Err(Error::ReplyTooLong { limit: 16 })));
    /// assert_eq!(reader.read_reply().await?, b"{\"return\": {}}");
    /// # Ok::<(), Error>(())
    /// # }).unwrap();
    /// ```
    pub fn new(inner: R, max_len: usize) -> Self {
        ReplyReader {
            inner,
            buf: Vec::new(),
            scanned: 0,
            max_len,
            discarding: false,
            trace: None,
        }
    }

    /// Shows every chunk read to `trace` as it arrives.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use virtomate_protocol::framing::ReplyReader;
    /// use virtomate_protocol::Trace;
    ///
    /// # tokio_test::block_on(async {
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let sink = seen.clone();
    /// let mut reader = ReplyReader::new(&b"\xff{\"return\": 1}\n"[..], 1024);
    /// reader.set_trace(Some(Trace::new(move |_, bytes| sink.lock().unwrap().extend_from_slice(bytes))));
    /// reader.skip_past_sentinel().await?;
    /// // The trace sees the bytes as received, sentinel and newline included.
    /// assert_eq!(*seen.lock().unwrap(), b"\xff{\"return\": 1}\n");
    /// # Ok::<(), virtomate_protocol::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn set_trace(&mut self, trace: Option<Trace>) {
        self.trace = trace;
    }

    /// The wrapped stream, for writing requests between reads.
    ///
    /// ```
    /// use tokio::io::AsyncWriteExt;
    /// use virtomate_protocol::framing::ReplyReader;
    ///
    /// # tokio_test::block_on(async {
    /// let (ours, mut agent) = tokio::io::duplex(1024);
    /// let mut reader = ReplyReader::new(ours, 1024);
    /// reader.get_mut().write_all(b"{\"execute\": \"guest-ping\"}\n").await?;
    /// agent.write_all(b"{\"return\": {}}\n").await?; // the agent's answer
    /// assert_eq!(reader.read_reply().await?, b"{\"return\": {}}");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The bound on one reply, in bytes.
    ///
    /// ```
    /// use virtomate_protocol::framing::{ReplyReader, DEFAULT_MAX_REPLY_LEN};
    ///
    /// let reader = ReplyReader::new(tokio::io::empty(), DEFAULT_MAX_REPLY_LEN);
    /// assert_eq!(reader.max_len(), DEFAULT_MAX_REPLY_LEN);
    /// ```
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Returns the next line without its `\n` (and without a `\r` before
    /// it, which QMP sends).
    ///
    /// A line longer than the bound yields [`Error::ReplyTooLong`] once;
    /// the next call returns the line after it.
    ///
    /// ```
    /// use virtomate_protocol::framing::ReplyReader;
    /// use virtomate_protocol::Error;
    ///
    /// # tokio_test::block_on(async {
    /// // A QMP reply ends with "\r\n"; a closed stream ends the replies.
    /// let mut reader = ReplyReader::new(&b"{\"return\": {}}\r\n"[..], 1024);
    /// assert_eq!(reader.read_reply().await?, b"{\"return\": {}}");
    /// assert!(matches!(reader.read_reply().await, Err(Error::Disconnected)));
    /// # Ok::<(), Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn read_reply(&mut self) -> Result<Vec<u8>, Error> {
        loop {
            if let Some(pos) = memchr(b'\n', &self.buf[self.scanned..]) {
                let end = self.scanned + pos;
                // split_off copies the (short) rest, not the (possibly huge) line.
                let rest = self.buf.split_off(end + 1);
                let mut line = std::mem::replace(&mut self.buf, rest);
                self.scanned = 0;
                line.truncate(end);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if std::mem::take(&mut self.discarding) {
                    continue;
                }
                if line.len() > self.max_len {
                    return Err(Error::ReplyTooLong { limit: self.max_len });
                }
                return Ok(line);
            }
            self.scanned = self.buf.len();
            if self.buf.len() > self.max_len + 1 {
                // Let the memory go, not just the bytes: the next reply is
                // likely short.
                self.buf = Vec::new();
                self.scanned = 0;
                if !std::mem::replace(&mut self.discarding, true) {
                    return Err(Error::ReplyTooLong { limit: self.max_len });
                }
            }
            self.fill().await?;
        }
    }

    /// Drops every byte up to and including the next [`SENTINEL`].
    ///
    /// Memory stays bounded by one read chunk however much arrives before
    /// the sentinel.
    ///
    /// ```
    /// use virtomate_protocol::framing::ReplyReader;
    ///
    /// # tokio_test::block_on(async {
    /// // A megabyte of leftovers, far beyond the bound on one reply.
    /// let mut stream = vec![b'x'; 1 << 20];
    /// stream.extend_from_slice(b"\xff{\"return\": 1234}\n");
    /// let mut reader = ReplyReader::new(&stream[..], 64);
    /// reader.skip_past_sentinel().await?;
    /// assert_eq!(reader.read_reply().await?, b"{\"return\": 1234}");
    /// # Ok::<(), virtomate_protocol::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn skip_past_sentinel(&mut self) -> Result<(), Error> {
        loop {
            if let Some(pos) = memchr(SENTINEL, &self.buf) {
                self.buf.drain(..=pos);
                self.scanned = 0;
                self.discarding = false;
                return Ok(());
            }
            self.buf.clear();
            self.scanned = 0;
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<(), Error> {
        self.buf.reserve(READ_CHUNK);
        let start = self.buf.len();
        match self.inner.read_buf(&mut self.buf).await {
            Ok(0) => Err(Error::Disconnected),
            Ok(_) => {
                if let Some(trace) = &self.trace {
                    trace.record(Direction::Received, &self.buf[start..]);
                }
                Ok(())
            }
            Err(e) => Err(Error::from_io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// A stream that hands out its bytes in the given pieces, one per read.
    fn pieces(parts: &[&[u8]]) -> impl AsyncRead + Unpin {
        let mut builder = tokio_test::io::Builder::new();
        for part in parts {
            builder.read(part);
        }
        builder.build()
    }

    #[test]
    fn reply_split_across_reads() {
        block_on(async {
            let mut r = ReplyReader::new(pieces(&[b"{\"ret", b"urn\": ", b"1}\n"]), 100);
            assert_eq!(r.read_reply().await.unwrap(), b"{\"return\": 1}");
        });
    }

    #[test]
    fn several_replies_in_one_read() {
        block_on(async {
            let mut r = ReplyReader::new(pieces(&[b"{\"a\":1}\n{\"b\":2}\r\n{\"c\""]), 100);
            assert_eq!(r.read_reply().await.unwrap(), b"{\"a\":1}");
            assert_eq!(r.read_reply().await.unwrap(), b"{\"b\":2}");
            assert!(matches!(r.read_reply().await, Err(Error::Disconnected)));
        });
    }

    #[test]
    fn stale_bytes_before_the_sentinel_are_dropped() {
        block_on(async {
            let stream = pieces(&[
                b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error\"}}\n",
                b"half a reply",
                b"\xff{\"return\": 42}\n{\"return\": {}}\n",
            ]);
            let mut r = ReplyReader::new(stream, 100);
            r.skip_past_sentinel().await.unwrap();
            assert_eq!(r.read_reply().await.unwrap(), b"{\"return\": 42}");
            assert_eq!(r.read_reply().await.unwrap(), b"{\"return\": {}}");
        });
    }

    #[test]
    fn bytes_after_the_sentinel_in_the_same_read_are_kept() {
        block_on(async {
            let mut r = ReplyReader::new(pieces(&[b"junk\xff{\"return\"", b": 5}\n"]), 100);
            r.skip_past_sentinel().await.unwrap();
            assert_eq!(r.read_reply().await.unwrap(), b"{\"return\": 5}");
        });
    }

    #[test]
    fn over_long_line_is_refused_then_skipped() {
        block_on(async {
            let long = vec![b'x'; 300];
            let mut r = ReplyReader::new(pieces(&[&long, &long, b"\n{\"ok\":1}\n"]), 100);
            assert!(matches!(
                r.read_reply().await,
                Err(Error::ReplyTooLong { limit: 100 })
            ));
            assert_eq!(r.read_reply().await.unwrap(), b"{\"ok\":1}");
        });
    }

    #[test]
    fn over_long_line_in_one_read_is_refused() {
        block_on(async {
            let mut line = vec![b'y'; 150];
            line.extend_from_slice(b"\n{}\n");
            let mut r = ReplyReader::new(pieces(&[&line]), 100);
            assert!(matches!(r.read_reply().await, Err(Error::ReplyTooLong { .. })));
            assert_eq!(r.read_reply().await.unwrap(), b"{}");
        });
    }

    #[test]
    fn a_line_of_exactly_the_bound_is_accepted() {
        block_on(async {
            let mut line = vec![b'z'; 100];
            line.push(b'\n');
            let mut r = ReplyReader::new(pieces(&[&line]), 100);
            assert_eq!(r.read_reply().await.unwrap().len(), 100);
        });
    }

    #[test]
    fn memory_stays_bounded_while_waiting_for_the_sentinel() {
        block_on(async {
            let (mut tx, rx) = tokio::io::duplex(1 << 16);
            let writer = tokio::spawn(async move {
                let junk = vec![b'j'; 1 << 16];
                for _ in 0..64 {
                    tx.write_all(&junk).await.unwrap();
                }
                tx.write_all(b"\xff{}\n").await.unwrap();
            });
            let mut r = ReplyReader::new(rx, 1 << 20);
            r.skip_past_sentinel().await.unwrap();
            assert!(r.buf.capacity() <= 4 * READ_CHUNK);
            assert_eq!(r.read_reply().await.unwrap(), b"{}");
            writer.await.unwrap();
        });
    }
}
