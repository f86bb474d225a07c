//! Seeing every byte on the wire, for bug reports.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Which way bytes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From us to the agent or QEMU.
    Sent,
    /// From the agent or QEMU to us.
    Received,
}

/// A hook that sees every chunk of bytes sent or received, exactly as on
/// the socket (set it in [`ClientOptions::trace`](crate::ClientOptions)).
#[derive(Clone)]
pub struct Trace(Arc<TraceFn>);

type TraceFn = dyn Fn(Direction, &[u8]) + Send + Sync;

impl Trace {
    /// Wraps a function called with every chunk of bytes.
    ///
    /// ```
    /// use virtomate_protocol::{escape_bytes, ClientOptions, Trace};
    ///
    /// // What `--trace` does: every chunk on standard error, escaped.
    /// let trace = Trace::new(|direction, bytes| eprintln!("{direction:?}: {}", escape_bytes(bytes)));
    /// let options = ClientOptions { trace: Some(trace), ..ClientOptions::default() };
    /// ```
    pub fn new(hook: impl Fn(Direction, &[u8]) + Send + Sync + 'static) -> Trace {
        Trace(Arc::new(hook))
    }

    /// Hands `bytes` to the hook.
    ///
    /// Clones share the hook, so one trace can watch several connections.
    pub fn record(&self, direction: Direction, bytes: &[u8]) {
        (self.0)(direction, bytes)
    }
}

impl fmt::Debug for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Trace(..)")
    }
}

/// Renders bytes as printable ASCII: `\n`, `\r`, `\t`, `\\` and `\xNN`
/// for everything else outside printable ASCII (so the `0xFF` sentinel
/// shows as `\xff`).
///
/// ```
/// assert_eq!(virtomate_protocol::escape_bytes(b"\xff{}\n"), r"\xff{}\n");
/// ```
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    for &byte in bytes {
        match byte {
            b'\n' => text.push_str("\\n"),
            b'\r' => text.push_str("\\r"),
            b'\t' => text.push_str("\\t"),
            b'\\' => text.push_str("\\\\"),
            0x20..=0x7e => text.push(byte as char),
            _ => {
                text.push_str("\\x");
                super::hex::push_hex(&mut text, &[byte]);
            }
        }
    }
    text
}

/// A stream that shows every chunk read from or written to it to a
/// [`Trace`], exactly as it crossed the socket.
#[derive(Debug)]
pub(crate) struct Traced<S> {
    inner: S,
    trace: Option<Trace>,
}

impl<S> Traced<S> {
    pub(crate) fn new(inner: S, trace: Option<Trace>) -> Self {
        Traced { inner, trace }
    }

    pub(crate) fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Traced<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(trace)) = (&polled, &this.trace) {
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                trace.record(Direction::Received, read);
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Traced<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let (Poll::Ready(Ok(written)), Some(trace)) = (&polled, &this.trace) {
            if *written > 0 {
                trace.record(Direction::Sent, &buf[..*written]);
            }
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn clones_share_the_hook() {
        let received = Arc::new(AtomicUsize::new(0));
        let counter = received.clone();
        let trace = Trace::new(move |direction, bytes| {
            assert_eq!(direction, Direction::Received);
            counter.fetch_add(bytes.len(), Ordering::Relaxed);
        });
        trace.clone().record(Direction::Received, b"{\"return\": {}}\n");
        trace.record(Direction::Received, b"\xff");
        assert_eq!(received.load(Ordering::Relaxed), 16);
    }
}
