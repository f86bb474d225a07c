//! `copy -r` into the guest, the live part: the packer's stream fed to the
//! standard input of the guest's `tar -x` while it runs, through the
//! protocol crate's named pipe ([`Feed`]), tar's standard error followed
//! meanwhile ([`Follow`]).
//!
//! Memory stays bounded: the packer's thread hands over pieces of
//! [`PIECE`] bytes through a queue of [`QUEUED`], and a piece is taken
//! only while the feed [wants more](Feed::wants_more). A guest `tar` that
//! reads slowly fills its pipe, the feed stops, the queue fills, and the
//! packer waits.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{self, error::TryRecvError};
use virtomate_protocol::feed::{Feed, DIRECT_CHUNK, FEED_HIGH_WATER, LIBVIRT_CHUNK};
use virtomate_protocol::follow::Stream;
use virtomate_protocol::qga::{GuestExecStatus, GuestExecStatusReply};
use virtomate_protocol::PollSchedule;

use super::pack::Packed;
use crate::copy::agent::FileAgent;
use crate::copy::progress::Progress;
use crate::copy::Copy;
use crate::error::{CliError, ErrorKind};

/// Bytes of the stream per piece handed over by the packer.
pub const PIECE: usize = 64 << 10;

/// Pieces packed and not yet fed: a chunk file's worth, so that the next
/// chunk waits whole once one is written (with fewer, the feed waits for
/// the packer, a few pieces a look, before each chunk). With the feed's
/// [`high_water`](Feed::high_water), also a chunk's worth, the memory a
/// copy holds.
pub const QUEUED: usize = DIRECT_CHUNK / PIECE;

/// The most of tar's standard error kept for a message.
const SAID_MAX: usize = 4 << 10;

/// How long to wait between looks at the guest while the pipe is full or
/// no input comes: short while bytes flow, longer once they stop.
const LOOKS: PollSchedule = PollSchedule {
    min_pause: Duration::from_millis(2),
    max_pause: Duration::from_millis(200),
    divisor: 5,
};

/// While bytes flow, how often to ask whether the program has ended (a
/// tar that failed stops reading: the feed would find a full pipe soon
/// after anyway).
const STATUS_EVERY: Duration = Duration::from_millis(250);

/// The longest pause between looks while a helper in the guest moves a
/// chunk into the pipe: its end lets the next chunk go.
const MOVING_PAUSE: Duration = Duration::from_millis(20);

/// What the packer's thread hands over.
pub enum Piece {
    /// The next bytes of the stream.
    Data(Vec<u8>),
    /// The stream is complete (all of it sent before), or the packing
    /// failed.
    End(Result<Packed, CliError>),
}

/// The write end of the queue, for the packer's thread: the stream in
/// pieces of [`PIECE`] bytes. A queue whose reader has gone is a broken
/// pipe, which ends the packing.
pub struct PieceWriter {
    pending: Vec<u8>,
    queue: mpsc::Sender<Piece>,
}

impl PieceWriter {
    pub fn new(queue: mpsc::Sender<Piece>) -> PieceWriter {
        PieceWriter {
            pending: Vec::with_capacity(PIECE),
            queue,
        }
    }

    /// Sends the end: `packed`, once the stream is all sent (flushed).
    pub fn end(mut self, packed: Result<Packed, CliError>) {
        let packed = packed.and_then(|packed| {
            self.flush()
                .map_err(|e| CliError::io("cannot send the archive", e))
                .map(|()| packed)
        });
        // A reader gone has failed already, and says why.
        let _ = self.queue.blocking_send(Piece::End(packed));
    }

    fn send(&mut self) -> io::Result<()> {
        let piece = std::mem::replace(&mut self.pending, Vec::with_capacity(PIECE));
        self.queue
            .blocking_send(Piece::Data(piece))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the copy stopped taking the archive"))
    }
}

impl Write for PieceWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = PIECE - self.pending.len();
        let taken = buf.len().min(room);
        self.pending.extend_from_slice(&buf[..taken]);
        if self.pending.len() == PIECE {
            self.send()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.pending.is_empty() {
            true => Ok(()),
            false => self.send(),
        }
    }
}

/// How the fed program ended.
pub struct Fed {
    pub status: GuestExecStatusReply,
    /// The start of its standard error.
    pub said: String,
    /// Bytes of the stream that went into the pipe.
    pub sent: u64,
    /// What was packed, once the whole stream was handed over.
    pub packed: Option<Packed>,
}

impl<A: FileAgent> Copy<'_, A> {
    /// Feeds the stream from `pieces` to the program `pid`, which reads
    /// it from the pipe of the followed directory, until it has ended.
    /// The pipe is closed only after a complete stream (a tar that sees an
    /// end of file may take a cut archive whole); a packer that failed
    /// gives its error. On an error the program may still run: the
    /// caller's [`Copy::clean_up`] stops it.
    pub(super) async fn feed_program(
        &mut self,
        pid: i64,
        mut pieces: mpsc::Receiver<Piece>,
        progress: &Progress,
    ) -> Result<Fed, CliError> {
        let pipe = self.left.follow.as_ref().and_then(|f| f.stdin_pipe());
        // Much input goes as chunk files, as `guest-run -i` sends it.
        let chunk = match self.agent.through_libvirtd() {
            true => LIBVIRT_CHUNK,
            false => DIRECT_CHUNK,
        };
        self.left.feed = Some(Feed::with_chunks(pipe.expect("prepared with a pipe"), chunk));
        let mut said = Vec::new();
        let mut sent = 0u64;
        let mut packed = None;
        let mut quiet_since = Instant::now();
        let mut looked_at = Instant::now();
        loop {
            let feed = self.left.feed.as_mut().expect("made above");
            while packed.is_none() && feed.wants_more() {
                match pieces.try_recv() {
                    Ok(piece) => packed = take(feed, piece)?,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Err(packer_gone()),
                }
            }
            let fed = feed.feed(self.agent.channel(), FEED_HIGH_WATER).await;
            let fed = fed.map_err(|e| self.tree_follow_error(e))?;
            if fed.written > 0 {
                sent += fed.written;
                progress.advance(fed.written);
                quiet_since = Instant::now();
                if fed.more || looked_at.elapsed() < STATUS_EVERY {
                    continue;
                }
            } else if fed.moving && looked_at.elapsed() < STATUS_EVERY {
                // A chunk on its way, whose end lets the next go: only
                // its helper is looked at. The reads and polls of tar
                // would take the guest's CPU from that helper and tar.
                tokio::time::sleep(moving_pause(quiet_since)).await;
                continue;
            }
            looked_at = Instant::now();
            let mut keep = |stream: Stream, bytes: &[u8]| {
                if stream == Stream::Stderr && said.len() < SAID_MAX {
                    said.extend_from_slice(&bytes[..bytes.len().min(SAID_MAX - said.len())]);
                }
                Ok(())
            };
            let follow = self.left.follow.as_mut().expect("prepared before");
            let read = follow.read_new(self.agent.channel(), &mut keep).await;
            read.map_err(|e| self.tree_follow_error(e))?;
            let status = self.agent.channel().execute(&GuestExecStatus { pid }).await;
            let status = status.map_err(|e| self.agent.error_while_running(e, pid))?;
            if status.exited {
                self.left.program = None;
                let follow = self.left.follow.as_mut().expect("prepared before");
                let drained = follow.drain(self.agent.channel(), &mut keep).await;
                drained.map_err(|e| self.tree_follow_error(e))?;
                return Ok(Fed {
                    status,
                    said: String::from_utf8_lossy(&said).into_owned(),
                    sent,
                    packed,
                });
            }
            let feed = self.left.feed.as_mut().expect("made above");
            let pause = LOOKS.pause_after(quiet_since.elapsed());
            if fed.written == 0 && feed.pending() == 0 && packed.is_none() {
                // Nothing to write: wait for the packer, no longer than a look.
                match tokio::time::timeout(pause, pieces.recv()).await {
                    Ok(Some(piece)) => packed = take(feed, piece)?,
                    Ok(None) => return Err(packer_gone()),
                    Err(_) => {}
                }
            } else if fed.written == 0 {
                // The pipe is full, or the shell has not opened it yet; or
                // a chunk is on its way, whose end starts the next.
                let pause = match fed.moving {
                    true => moving_pause(quiet_since),
                    false => pause,
                };
                tokio::time::sleep(pause).await;
            }
        }
    }
}

impl<A: FileAgent> Copy<'_, A> {
    /// Closes the pipe into the program, which has ended; a failure only
    /// leaves a handle in the agent, said in the log.
    pub(super) async fn close_feed(&mut self) {
        if let Some(mut feed) = self.left.feed.take() {
            if let Err(error) = feed.close(self.agent.channel()).await {
                tracing::warn!("{error}; the agent may keep the pipe into tar open");
            }
        }
    }
}

/// How soon to look again at a helper moving a chunk, the last written
/// at `since`: soon at first (it often ends while the next chunk is
/// written), less often the longer it takes (a `tar` that writes slowly),
/// [`MOVING_PAUSE`] at most.
fn moving_pause(since: Instant) -> Duration {
    LOOKS.pause_after(since.elapsed()).min(MOVING_PAUSE)
}

/// Gives `piece` to the feed; at the end of the stream, what was packed.
fn take(feed: &mut Feed, piece: Piece) -> Result<Option<Packed>, CliError> {
    match piece {
        Piece::Data(data) => {
            feed.push(&data);
            Ok(None)
        }
        Piece::End(packed) => {
            let packed = packed?;
            feed.end();
            Ok(Some(packed))
        }
    }
}

fn packer_gone() -> CliError {
    CliError::new(ErrorKind::Io, "the packing thread ended")
}
