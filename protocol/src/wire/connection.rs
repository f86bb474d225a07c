//! One connection: the socket and its read buffer, frames in, bytes out.
//!
//! Every client of this crate reads through a [`Connection`]; what a frame
//! is (a reply line, a libvirt message) is the codec's business, in
//! [`framing`](crate::framing) and [`libvirt::packet`](crate::libvirt::packet).
//! Nothing else touches the socket, so the bound on memory and the trace
//! hold for every byte.

use std::future::poll_fn;
use std::pin::Pin;

use futures_core::Stream;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, FramedRead};

use super::framing::{Frame, LineCodec};
use super::trace::Traced;
use crate::{Error, Trace};

/// A byte stream to a peer, read as frames of the codec `C`, written as
/// raw bytes.
///
/// Codecs here yield `Result` items: a frame the peer got wrong (one too
/// long, say) is reported and the stream goes on with the next one, while
/// an I/O error or the end of the stream ends it.
///
/// ```
/// use virtomate_protocol::framing::{Frame, LineCodec, DEFAULT_MAX_REPLY_LEN};
/// use virtomate_protocol::{Connection, Error};
///
/// # tokio_test::block_on(async {
/// // QMP ends its lines with `\r\n`; the end of the stream is a disconnect.
/// let stream: &[u8] = b"{\"return\": {}}\r\n";
/// let mut conn = Connection::new(stream, LineCodec::new(DEFAULT_MAX_REPLY_LEN), None);
/// assert_eq!(conn.read_frame().await?, Frame::Line(b"{\"return\": {}}".to_vec()));
/// assert!(matches!(conn.read_frame().await, Err(Error::Disconnected)));
/// # Ok::<(), Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct Connection<S, C> {
    frames: FramedRead<Traced<S>, C>,
}

impl<S, C> Connection<S, C> {
    /// Wraps `stream`, framing what is read with `codec`; `trace` sees
    /// every byte both ways.
    pub fn new(stream: S, codec: C, trace: Option<Trace>) -> Self {
        Connection {
            frames: FramedRead::new(Traced::new(stream, trace), codec),
        }
    }

    /// The codec, e.g. to read its bound.
    pub fn codec(&self) -> &C {
        self.frames.decoder()
    }

    pub(crate) fn codec_mut(&mut self) -> &mut C {
        self.frames.decoder_mut()
    }

    /// What the read buffer holds on to, for tests of the memory bound.
    #[cfg(test)]
    pub(crate) fn read_buffer_capacity(&self) -> usize {
        self.frames.read_buffer().capacity()
    }

    /// The stream itself, bypassing the trace: for tests that play the
    /// other side.
    pub fn get_mut(&mut self) -> &mut S {
        self.frames.get_mut().get_mut()
    }
}

impl<S, C, T> Connection<S, C>
where
    S: AsyncRead + Unpin,
    C: Decoder<Item = Result<T, Error>, Error = Error> + Unpin,
{
    /// The next frame; [`Error::Disconnected`] once the stream has ended.
    ///
    /// Cancel-safe: a frame half read stays in the buffer for the next call.
    pub async fn read_frame(&mut self) -> Result<T, Error> {
        match poll_fn(|cx| Pin::new(&mut self.frames).poll_next(cx)).await {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => Err(e),
            None => Err(Error::Disconnected),
        }
    }
}

impl<S: AsyncWrite + Unpin, C> Connection<S, C> {
    /// Writes all of `bytes` and flushes them.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let stream = self.frames.get_mut();
        stream.write_all(bytes).await.map_err(Error::from_io)?;
        stream.flush().await.map_err(Error::from_io)
    }
}

impl<S: AsyncRead + Unpin> Connection<S, LineCodec> {
    /// The next line, without its `\n` (and without a `\r` before it,
    /// which QMP sends).
    ///
    /// A line longer than the bound yields [`Error::ReplyTooLong`] once;
    /// the next call returns the line after it.
    ///
    /// ```
    /// use virtomate_protocol::framing::LineCodec;
    /// use virtomate_protocol::{Connection, Error};
    ///
    /// # tokio_test::block_on(async {
    /// let stream: &[u8] = b"{\"return\": \"far too long\"}\n{\"return\": {}}\n";
    /// let mut conn = Connection::new(stream, LineCodec::new(16), None);
    /// assert!(matches!(conn.read_reply().await, Err(Error::ReplyTooLong { limit: 16 })));
    /// assert_eq!(conn.read_reply().await?, b"{\"return\": {}}");
    /// # Ok::<(), Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn read_reply(&mut self) -> Result<Vec<u8>, Error> {
        loop {
            if let Frame::Line(line) = self.read_frame().await? {
                return Ok(line);
            }
        }
    }

    /// Drops every byte up to and including the next
    /// [`SENTINEL`](crate::framing::SENTINEL).
    ///
    /// Memory stays bounded by one read chunk however much arrives before
    /// the sentinel.
    ///
    /// ```
    /// use virtomate_protocol::framing::LineCodec;
    /// use virtomate_protocol::Connection;
    ///
    /// # tokio_test::block_on(async {
    /// // A megabyte of leftovers, far beyond the bound on one reply.
    /// let mut stream = vec![b'x'; 1 << 20];
    /// stream.extend_from_slice(b"\xff{\"return\": 1234}\n");
    /// let mut conn = Connection::new(&stream[..], LineCodec::new(64), None);
    /// conn.skip_past_sentinel().await?;
    /// assert_eq!(conn.read_reply().await?, b"{\"return\": 1234}");
    /// # Ok::<(), virtomate_protocol::Error>(())
    /// # }).unwrap();
    /// ```
    ///
    /// A stream that begins with QEMU's QMP greeting is
    /// [`Error::NotAnAgent`]: no sentinel will come.
    pub async fn skip_past_sentinel(&mut self) -> Result<(), Error> {
        self.codec_mut().skip_to_sentinel();
        loop {
            match self.read_frame().await? {
                Frame::Sentinel => return Ok(()),
                Frame::QmpGreeting => {
                    return Err(Error::NotAnAgent {
                        found: "QEMU's monitor (QMP)".to_owned(),
                    })
                }
                Frame::Line(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::READ_CHUNK;
    use crate::wire::pieces;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn sent_bytes_reach_the_stream_whole() {
        let mut conn = Connection::new(Vec::new(), LineCodec::new(64), None);
        conn.send(b"{\"execute\": \"guest-ping\"}\n").await.unwrap();
        assert_eq!(conn.get_mut(), b"{\"execute\": \"guest-ping\"}\n");
        assert_eq!(conn.codec().max_len(), 64);
    }

    #[tokio::test]
    async fn reply_split_across_reads() {
        let mut r = Connection::new(
            pieces(&[b"{\"ret", b"urn\": ", b"1}\n"]),
            LineCodec::new(100),
            None,
        );
        assert_eq!(r.read_reply().await.unwrap(), b"{\"return\": 1}");
    }

    #[tokio::test]
    async fn several_replies_in_one_read() {
        let mut r = Connection::new(
            pieces(&[b"{\"a\":1}\n{\"b\":2}\r\n{\"c\""]),
            LineCodec::new(100),
            None,
        );
        assert_eq!(r.read_reply().await.unwrap(), b"{\"a\":1}");
        assert_eq!(r.read_reply().await.unwrap(), b"{\"b\":2}");
        assert!(matches!(r.read_reply().await, Err(Error::Disconnected)));
    }

    #[tokio::test]
    async fn stale_bytes_before_the_sentinel_are_dropped() {
        let stream = pieces(&[
            b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error\"}}\n",
            b"half a reply",
            b"\xff{\"return\": 42}\n{\"return\": {}}\n",
        ]);
        let mut r = Connection::new(stream, LineCodec::new(100), None);
        r.skip_past_sentinel().await.unwrap();
        assert_eq!(r.read_reply().await.unwrap(), b"{\"return\": 42}");
        assert_eq!(r.read_reply().await.unwrap(), b"{\"return\": {}}");
    }

    #[tokio::test]
    async fn bytes_after_the_sentinel_in_the_same_read_are_kept() {
        let mut r = Connection::new(
            pieces(&[b"junk\xff{\"return\"", b": 5}\n"]),
            LineCodec::new(100),
            None,
        );
        r.skip_past_sentinel().await.unwrap();
        assert_eq!(r.read_reply().await.unwrap(), b"{\"return\": 5}");
    }

    #[tokio::test]
    async fn over_long_line_is_refused_then_skipped() {
        let long = vec![b'x'; 300];
        let mut r = Connection::new(
            pieces(&[&long, &long, b"\n{\"ok\":1}\n"]),
            LineCodec::new(100),
            None,
        );
        assert!(matches!(
            r.read_reply().await,
            Err(Error::ReplyTooLong { limit: 100 })
        ));
        assert_eq!(r.read_reply().await.unwrap(), b"{\"ok\":1}");
    }

    #[tokio::test]
    async fn over_long_line_in_one_read_is_refused() {
        let mut line = vec![b'y'; 150];
        line.extend_from_slice(b"\n{}\n");
        let mut r = Connection::new(pieces(&[&line]), LineCodec::new(100), None);
        assert!(matches!(r.read_reply().await, Err(Error::ReplyTooLong { .. })));
        assert_eq!(r.read_reply().await.unwrap(), b"{}");
    }

    #[tokio::test]
    async fn a_line_of_exactly_the_bound_is_accepted() {
        let mut line = vec![b'z'; 100];
        line.push(b'\n');
        let mut r = Connection::new(pieces(&[&line]), LineCodec::new(100), None);
        assert_eq!(r.read_reply().await.unwrap().len(), 100);
    }

    #[tokio::test]
    async fn memory_stays_bounded_while_waiting_for_the_sentinel() {
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        let writer = tokio::spawn(async move {
            let junk = vec![b'j'; 1 << 16];
            for _ in 0..64 {
                tx.write_all(&junk).await.unwrap();
            }
            tx.write_all(b"\xff{}\n").await.unwrap();
        });
        let mut r = Connection::new(rx, LineCodec::new(1 << 20), None);
        r.skip_past_sentinel().await.unwrap();
        assert!(r.read_buffer_capacity() <= 4 * READ_CHUNK);
        assert_eq!(r.read_reply().await.unwrap(), b"{}");
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_qmp_greeting_where_the_sentinel_is_awaited_is_no_agent() {
        let greeting: &[u8] = b"{\"QMP\": {\"version\": {}, \"capabilities\": [\"oob\"]}}\r\n";
        for split in 1..10 {
            let stream = tokio::io::AsyncReadExt::chain(&greeting[..split], &greeting[split..]);
            let mut r = Connection::new(stream, LineCodec::new(100), None);
            assert!(
                matches!(r.skip_past_sentinel().await, Err(Error::NotAnAgent { .. })),
                "split at {split}"
            );
        }
        // Stale bytes that merely look like it later in the stream are skipped.
        let stream = pieces(&[b"x{\"QMP\": {}}\n\xff{}\n"]);
        let mut r = Connection::new(stream, LineCodec::new(100), None);
        r.skip_past_sentinel().await.unwrap();
        assert_eq!(r.read_reply().await.unwrap(), b"{}");
    }
}
