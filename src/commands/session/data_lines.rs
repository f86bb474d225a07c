//! A guest file sent back in a session: each chunk the copy writes is
//! one line, `{"data": BASE64, "id": ID}`.

use std::pin::Pin;
use std::task::{Context, Poll};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Serialize;
use serde_json::Value;
use tokio::io::AsyncWrite;

/// Writes what it is given as data lines of the request `id` on stdout.
pub struct DataLines {
    id: Value,
}

#[derive(Serialize)]
struct DataLine<'a> {
    data: String,
    id: &'a Value,
}

impl DataLines {
    pub fn new(id: Value) -> DataLines {
        DataLines { id }
    }
}

impl AsyncWrite for DataLines {
    /// Takes all of `buf` at once: stdout is written as the session's
    /// other replies are, a line at a time.
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let line = DataLine {
            data: STANDARD.encode(buf),
            id: &self.id,
        };
        super::lines::print(&line);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
