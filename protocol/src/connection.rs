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

use crate::transport::Traced;
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
/// use virtomate_protocol::Connection;
///
/// # tokio_test::block_on(async {
/// let stream: &[u8] = b"{\"return\": {}}\n";
/// let mut conn = Connection::new(stream, LineCodec::new(DEFAULT_MAX_REPLY_LEN), None);
/// assert_eq!(conn.read_frame().await?, Frame::Line(b"{\"return\": {}}".to_vec()));
/// # Ok::<(), virtomate_protocol::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct Connection<S, C> {
    frames: FramedRead<Traced<S>, C>,
}

impl<S, C> Connection<S, C> {
    /// Wraps `stream`, framing what is read with `codec`; `trace` sees
    /// every byte both ways.
    ///
    /// ```
    /// use virtomate_protocol::framing::LineCodec;
    /// use virtomate_protocol::{Connection, Trace};
    ///
    /// let trace = Trace::new(|direction, bytes| eprintln!("{direction:?} {bytes:?}"));
    /// let conn = Connection::new(tokio::io::empty(), LineCodec::new(1024), Some(trace));
    /// ```
    pub fn new(stream: S, codec: C, trace: Option<Trace>) -> Self {
        Connection {
            frames: FramedRead::new(Traced::new(stream, trace), codec),
        }
    }

    /// The codec, e.g. to read its bound.
    ///
    /// ```
    /// use virtomate_protocol::framing::LineCodec;
    /// use virtomate_protocol::Connection;
    ///
    /// let conn = Connection::new(tokio::io::empty(), LineCodec::new(64), None);
    /// assert_eq!(conn.codec().max_len(), 64);
    /// ```
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
    ///
    /// ```
    /// use virtomate_protocol::framing::LineCodec;
    /// use virtomate_protocol::Connection;
    ///
    /// let mut conn = Connection::new(std::io::Cursor::new(Vec::<u8>::new()), LineCodec::new(64), None);
    /// assert_eq!(conn.get_mut().position(), 0);
    /// ```
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
    ///
    /// ```
    /// use virtomate_protocol::framing::{Frame, LineCodec};
    /// use virtomate_protocol::{Connection, Error};
    ///
    /// # tokio_test::block_on(async {
    /// let mut conn = Connection::new(&b"{\"return\": 1}\r\n"[..], LineCodec::new(64), None);
    /// assert_eq!(conn.read_frame().await?, Frame::Line(b"{\"return\": 1}".to_vec()));
    /// assert!(matches!(conn.read_frame().await, Err(Error::Disconnected)));
    /// # Ok::<(), Error>(())
    /// # }).unwrap();
    /// ```
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
    ///
    /// ```
    /// use virtomate_protocol::framing::LineCodec;
    /// use virtomate_protocol::Connection;
    ///
    /// # tokio_test::block_on(async {
    /// let mut conn = Connection::new(Vec::new(), LineCodec::new(64), None);
    /// conn.send(b"{\"execute\": \"guest-ping\"}\n").await?;
    /// assert_eq!(conn.get_mut().len(), 26);
    /// # Ok::<(), virtomate_protocol::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let stream = self.frames.get_mut();
        stream.write_all(bytes).await.map_err(Error::from_io)?;
        stream.flush().await.map_err(Error::from_io)
    }
}
