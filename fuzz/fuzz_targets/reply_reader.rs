//! Arbitrary bytes from an untrusted agent, handed to `ReplyReader` in
//! chunks whose sizes come from the input too.
//!
//! Input layout: `[bound] [n] [n chunk-size bytes] [stream...]`. The reader
//! must agree with a plain model of the framing (split after the first
//! 0xFF at `\n`, strip one `\r`, refuse lines over the bound) and never hand
//! out a line longer than its bound.

#![no_main]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};
use virtomate_protocol::framing::{LineCodec, SENTINEL};
use virtomate_protocol::{Connection, Error};

/// Serves `data` in chunks of the given sizes (cycled), one per read.
struct Chunked<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    next_size: usize,
}

impl Chunked<'_> {
    fn chunk_len(&mut self) -> usize {
        if self.sizes.is_empty() {
            return usize::MAX;
        }
        let b = self.sizes[self.next_size % self.sizes.len()];
        self.next_size += 1;
        // 0 means "everything that is left"; otherwise 1 to ~8 KiB,
        // mostly small.
        if b == 0 {
            usize::MAX
        } else {
            1 + (b as usize * b as usize) / 8
        }
    }
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.chunk_len().min(self.data.len()).min(buf.remaining());
        let (head, tail) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = tail;
        Poll::Ready(Ok(()))
    }
}

#[derive(Debug, PartialEq)]
enum Event {
    Line(Vec<u8>),
    TooLong,
    Disconnected,
    /// The stream opened with QEMU's QMP greeting: no agent at all.
    QmpGreeting,
}

/// What the reader should return for `stream`, by the documented rules.
fn model(stream: &[u8], bound: usize) -> Vec<Event> {
    if stream.starts_with(b"{\"QMP\":") {
        return vec![Event::QmpGreeting];
    }
    let Some(start) = stream.iter().position(|&b| b == SENTINEL) else {
        return vec![Event::Disconnected];
    };
    let mut rest = &stream[start + 1..];
    let mut events = Vec::new();
    while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
        let mut line = &rest[..nl];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        events.push(if line.len() > bound {
            Event::TooLong
        } else {
            Event::Line(line.to_vec())
        });
        rest = &rest[nl + 1..];
    }
    // An unterminated tail is never returned; one that already overflowed
    // the buffer is reported before the disconnect.
    if rest.len() > bound + 1 {
        events.push(Event::TooLong);
    }
    events.push(Event::Disconnected);
    events
}

async fn run(stream: Chunked<'_>, bound: usize) -> Vec<Event> {
    let max_events = stream.data.len() + 1;
    let mut reader = Connection::new(stream, LineCodec::new(bound), None);
    let mut events = Vec::new();
    match reader.skip_past_sentinel().await {
        Ok(()) => {}
        Err(Error::Disconnected) => return vec![Event::Disconnected],
        Err(Error::NotAnAgent { .. }) => return vec![Event::QmpGreeting],
        Err(e) => panic!("skip_past_sentinel: unexpected error {e:?}"),
    }
    loop {
        match reader.read_reply().await {
            Ok(line) => {
                assert!(line.len() <= bound, "line of {} bytes, bound {bound}", line.len());
                events.push(Event::Line(line));
            }
            Err(Error::ReplyTooLong { limit }) => {
                assert_eq!(limit, bound);
                events.push(Event::TooLong);
            }
            Err(Error::Disconnected) => {
                events.push(Event::Disconnected);
                return events;
            }
            Err(e) => panic!("read_reply: unexpected error {e:?}"),
        }
        // Every event but the last consumes at least one byte.
        assert!(events.len() <= max_events, "the reader makes no progress");
    }
}

fuzz_target!(|input: &[u8]| {
    let [bound_byte, n_sizes, rest @ ..] = input else {
        return;
    };
    let n_sizes = (*n_sizes as usize % 16).min(rest.len());
    let (sizes, data) = rest.split_at(n_sizes);
    // 16 bytes to 4 KiB.
    let bound = (*bound_byte as usize + 1) * 16;

    let stream = Chunked {
        data,
        sizes,
        next_size: 0,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let got = runtime.block_on(run(stream, bound));
    assert_eq!(got, model(data, bound));
});
