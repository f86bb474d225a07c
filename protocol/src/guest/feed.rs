//! Feeding a followed program's standard input while it runs.
//!
//! The agent gives a program its input only at the start. To stream it,
//! [`Follow`](crate::follow::Follow) makes a named pipe `in` in its private
//! directory and starts the program with its standard input redirected
//! from it; a [`Feed`] writes to the pipe with `guest-file-write` as the
//! input comes. What the agent does with a pipe (qemu-ga 7.2, seen on the
//! host and in the test VM) decides how:
//!
//! - It opens files non-blocking. Mode `w` on a pipe that no process has
//!   open for reading fails with "No such device or address"; a reader
//!   still waiting in its `open` counts. So the feed first opens the pipe
//!   `w` until that works: then the program's shell has reached its
//!   redirection, and closing the pipe later is an end of file the program
//!   sees, never data thrown away for want of a reader.
//! - It then writes through a handle opened `r+`, and lets the `w` one go.
//!   A pipe it also reads from never answers "broken pipe" (a signal that
//!   could end an agent that does not ignore it); a program that stops
//!   reading fills the pipe and stops the feed instead.
//! - A write larger than the pipe's free space fails after writing part
//!   of it, and the error does not say how much. A write of at most
//!   [`PIPE_BUF`] bytes goes in whole or not at all. So the feed writes
//!   pieces of at most that, each followed by `guest-file-flush` (a small
//!   write waits in the agent's `FILE` buffer until then): a piece whose
//!   write or flush fails with "Resource temporarily unavailable" went
//!   nowhere (a failed flush empties that buffer), and is written again
//!   later. Bytes arrive in order, each once.
//! - A failed flush leaves the `FILE`'s error flag set, and the next write
//!   then reports an error whatever it did: an empty write clears it
//!   first.
//! - The end of the input closes the handle: the program reads what the
//!   pipe holds, then an end of file.
//!
//! Each piece costs a request, which the agent in a slow guest takes
//! milliseconds for whatever its size; so when much input waits (at least
//! [`BULK_MIN`]), it goes as one chunk file of up to a chunk
//! ([`DIRECT_CHUNK`], through libvirtd [`LIBVIRT_CHUNK`]), which a helper
//! in the guest copies into the pipe (see `bulk.rs`); small input, a typed
//! line, still goes straight in.

mod bulk;

use std::collections::VecDeque;

use crate::follow::FollowError;
use crate::libvirt::AGENT_COMMAND_MAX;
use crate::qga::{GuestFileClose, GuestFileFlush, GuestFileOpen, GuestFileWrite};
use crate::{Channel, Connector, Error};
use bulk::Bulk;

/// The most bytes one write to a pipe puts in whole or not at all: Linux's
/// `PIPE_BUF`, and the agent's `FILE` buffer on a pipe.
pub const PIPE_BUF: usize = 4096;

/// Input waiting to go in beyond which a caller should stop giving more
/// ([`Feed::wants_more`]) when it goes straight into the pipe: about one
/// pipe's worth. With chunk files, a chunk's worth.
pub const FEED_HIGH_WATER: usize = 64 << 10;

/// Input waiting from which it goes as a chunk file rather than piece by
/// piece: 16 pieces, a pipe's worth.
pub const BULK_MIN: usize = 64 << 10;

/// The most bytes in one chunk file on a direct channel: as `copy` writes.
/// The agent holds the request whole, about four times that.
pub const DIRECT_CHUNK: usize = 1 << 20;

/// The most bytes in one chunk file through libvirtd, whose agent commands
/// are at most [`AGENT_COMMAND_MAX`] long, the chunk in Base64 among them:
/// whole pages, room left for the JSON around it.
///
/// ```
/// use virtomate_protocol::feed::{BULK_MIN, LIBVIRT_CHUNK};
/// use virtomate_protocol::libvirt::AGENT_COMMAND_MAX;
/// assert!(LIBVIRT_CHUNK.div_ceil(3) * 4 + 1024 <= AGENT_COMMAND_MAX);
/// assert!(LIBVIRT_CHUNK >= BULK_MIN);
/// ```
pub const LIBVIRT_CHUNK: usize = (AGENT_COMMAND_MAX - 1024) / 4 * 3 / PIPE_BUF * PIPE_BUF;

/// What a caller giving up awaits while the pipe is opened (see
/// [`Settling`](crate::Settling)).
const OPENING_PIPE: &str = "the input's pipe in the guest is being opened: awaiting its handle, to close it";

/// What the agent says when a pipe has no reader (ENXIO).
const NO_READER: &str = "No such device or address";
/// What the agent says when a pipe is full (EAGAIN).
const PIPE_FULL: &str = "Resource temporarily unavailable";

/// Where the pipe stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pipe {
    /// The program's shell has not opened it yet.
    NoReader,
    /// Open for writing, under this handle.
    Open(i64),
    /// Closed: the input ended, or the program did.
    Closed,
}

/// What one turn of [`Feed::feed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Fed {
    /// Bytes that went into the pipe.
    pub written: u64,
    /// Whether the feed has more to do now: input waits, and neither the
    /// pipe was full nor the program's shell missing.
    pub more: bool,
    /// Whether a helper in the guest is moving a chunk into the pipe: the
    /// feed should look again soon, to start the next.
    pub moving: bool,
}

/// A named pipe in the guest and the input still to write to it; see the
/// [module](self) docs.
#[derive(Debug)]
pub struct Feed {
    path: String,
    pipe: Pipe,
    pending: VecDeque<u8>,
    /// The caller's input has ended: close the pipe once `pending` is in.
    ended: bool,
    /// A flush failed: the agent reports the next write as failed.
    stale_error: bool,
    bulk: Bulk,
}

impl Feed {
    /// A feed for the pipe at `path` (as the guest names it), not opened
    /// yet, writing straight into it only.
    pub fn new(path: String) -> Feed {
        Feed::with_chunks(path, 0)
    }

    /// A feed for the pipe at `path` that sends much input waiting as
    /// chunk files of at most `chunk` bytes beside it (see the
    /// [module](self) docs); below [`BULK_MIN`], none.
    pub fn with_chunks(path: String, chunk: usize) -> Feed {
        let chunk = if chunk < BULK_MIN { 0 } else { chunk };
        Feed {
            bulk: Bulk::new(path.clone(), chunk),
            path,
            pipe: Pipe::NoReader,
            pending: VecDeque::new(),
            ended: false,
            stale_error: false,
        }
    }

    /// Adds `bytes` to the input still to write; after the end of the
    /// input, or once the pipe is closed, they are dropped.
    pub fn push(&mut self, bytes: &[u8]) {
        if !self.ended && self.pipe != Pipe::Closed {
            self.pending.extend(bytes);
        }
    }

    /// The input has ended: the pipe is closed once what waits is in.
    pub fn end(&mut self) {
        self.ended = true;
    }

    /// Bytes waiting to go in.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Whether the caller may give more input now: it has not ended, and
    /// less than [`high_water`](Self::high_water) waits.
    pub fn wants_more(&self) -> bool {
        !self.ended && self.pipe != Pipe::Closed && !self.backed_up()
    }

    /// Whether so much input waits that no more should be given.
    pub fn backed_up(&self) -> bool {
        self.pending.len() >= self.high_water()
    }

    /// The input waiting beyond which the caller should stop giving more:
    /// [`FEED_HIGH_WATER`], or a chunk's worth with chunk files.
    pub fn high_water(&self) -> usize {
        FEED_HIGH_WATER.max(self.bulk.chunk())
    }

    /// Whether the feed could write some of what waits now: nothing is on
    /// its way as a chunk, or a chunk's worth waits for the other file.
    /// Input behind a chunk on its way otherwise waits for the next look.
    pub fn can_write_now(&self) -> bool {
        self.pipe != Pipe::Closed && (self.bulk.idle() || self.takes_a_chunk())
    }

    /// Whether the input waiting goes as a chunk file now: there is at
    /// least [`BULK_MIN`] of it, no chunk file waits already, and either
    /// the pipe is free, or a whole chunk waits, or no more will come.
    fn takes_a_chunk(&self) -> bool {
        let waiting = self.pending.len();
        self.bulk.chunk() > 0
            && waiting >= BULK_MIN
            && !self.bulk.staged()
            && (!self.bulk.moving() || waiting >= self.bulk.chunk() || self.ended)
    }

    /// Opens the pipe once the program's shell reads it, then writes what
    /// waits, at most about `budget` bytes, and closes the pipe after the
    /// end of the input. Returns at a full pipe or a missing reader, to be
    /// called again later.
    pub async fn feed<C: Connector>(
        &mut self,
        channel: &mut Channel<C>,
        budget: usize,
    ) -> Result<Fed, FollowError> {
        let mut written = 0;
        let idle = |written, more| Fed {
            written,
            more,
            moving: false,
        };
        if self.pipe == Pipe::NoReader && !self.open(channel).await? {
            return Ok(idle(written, false));
        }
        let Pipe::Open(handle) = self.pipe else {
            return Ok(idle(written, false));
        };
        self.bulk.look(channel).await?;
        while !self.pending.is_empty() {
            if written as usize >= budget {
                return Ok(Fed {
                    more: true,
                    moving: self.bulk.moving(),
                    written,
                });
            }
            if self.takes_a_chunk() {
                let len = self.pending.len().min(self.bulk.chunk());
                let chunk: Vec<u8> = self.pending.drain(..len).collect();
                self.bulk.stage(channel, chunk).await?;
                written += len as u64;
                // Starts its helper at once if the pipe is free.
                if !self.bulk.moving() {
                    self.bulk.look(channel).await?;
                }
                continue;
            }
            if !self.bulk.idle() {
                // A piece now would overtake the chunk on its way.
                break;
            }
            let len = self.pending.len().min(PIPE_BUF);
            if !self.write_piece(channel, handle, len).await? {
                return Ok(idle(written, false));
            }
            self.pending.drain(..len);
            written += len as u64;
        }
        if self.ended && self.pending.is_empty() && self.bulk.idle() {
            self.close(channel).await?;
        }
        Ok(Fed {
            more: false,
            moving: self.bulk.moving(),
            written,
        })
    }

    /// Closes the pipe, dropping what waits: the input ended, or the
    /// program did. A helper still moving a chunk then ends with a broken
    /// pipe and is reaped (or stopped, if something else in the guest
    /// still reads the pipe); a chunk file waiting stays for the removal
    /// of the directory.
    pub async fn close<C: Connector>(&mut self, channel: &mut Channel<C>) -> Result<(), Error> {
        self.pending = VecDeque::new();
        let pipe = std::mem::replace(&mut self.pipe, Pipe::Closed);
        let closed = match pipe {
            Pipe::Open(handle) => channel.execute(&GuestFileClose { handle }).await.map(drop),
            _ => Ok(()),
        };
        let stopped = self.bulk.stop(channel).await;
        closed.and(stopped)
    }

    /// Opens the pipe for writing if the program's shell has it open for
    /// reading; false if not yet.
    async fn open<C: Connector>(&mut self, channel: &mut Channel<C>) -> Result<bool, FollowError> {
        // The handles awaited by a caller giving up (see `Settling`): the
        // probe's closed here, the pipe's kept for the close.
        let settling = channel.settling();
        let step = settling.begin(OPENING_PIPE);
        let probe = match channel.execute(&GuestFileOpen::new(self.path.clone(), "w")).await {
            Ok(handle) => handle,
            Err(Error::Agent { desc, .. }) if desc.contains(NO_READER) => return Ok(false),
            Err(error) => return Err(error.into()),
        };
        let opened = channel
            .execute(&GuestFileOpen::new(self.path.clone(), "r+"))
            .await;
        let closed = channel.execute(&GuestFileClose { handle: probe }).await;
        if let Ok(handle) = opened {
            self.pipe = Pipe::Open(handle);
        }
        drop(step);
        settling.hold_if_given_up().await;
        opened?;
        closed?;
        Ok(true)
    }

    /// Writes the first `len` (at most [`PIPE_BUF`]) bytes waiting, and
    /// flushes them: true if they went in, false if the pipe was full and
    /// nothing did.
    async fn write_piece<C: Connector>(
        &mut self,
        channel: &mut Channel<C>,
        handle: i64,
        len: usize,
    ) -> Result<bool, FollowError> {
        if self.stale_error {
            // Reports the stale error, writes nothing, clears the flag.
            let clear = GuestFileWrite {
                handle,
                buf: Vec::new(),
            };
            match channel.execute(&clear).await {
                Ok(_) | Err(Error::Agent { .. }) => self.stale_error = false,
                Err(error) => return Err(error.into()),
            }
        }
        let buf: Vec<u8> = self.pending.iter().take(len).copied().collect();
        // Both in one round trip: after a write that failed, the flush
        // finds nothing to write and succeeds.
        let write = GuestFileWrite { handle, buf };
        let (written, flushed) = channel.execute_both(&write, &GuestFileFlush { handle }).await?;
        match written {
            Ok(reply) if reply.count == len as u64 => {}
            Ok(reply) => {
                return Err(FollowError::Input {
                    reason: format!("the agent took {} of {len} bytes into the pipe", reply.count),
                })
            }
            Err(Error::Agent { desc, .. }) if desc.contains(PIPE_FULL) => return Ok(false),
            Err(error) => return Err(error.into()),
        }
        match flushed {
            Ok(_) => Ok(true),
            Err(Error::Agent { desc, .. }) if desc.contains(PIPE_FULL) => {
                self.stale_error = true;
                Ok(false)
            }
            Err(error) => Err(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_after_the_end_is_dropped_and_the_high_water_mark_stops_more() {
        let mut feed = Feed::new("/tmp/x/in".to_owned());
        assert!(feed.wants_more());
        feed.push(&vec![0; FEED_HIGH_WATER]);
        assert!(!feed.wants_more());
        feed.end();
        feed.push(b"late");
        assert_eq!(feed.pending(), FEED_HIGH_WATER);
    }

    #[test]
    fn with_chunk_files_a_chunk_waits_before_more_is_refused_and_small_chunks_mean_none() {
        let mut feed = Feed::with_chunks("/tmp/x/in".to_owned(), DIRECT_CHUNK);
        assert_eq!(feed.high_water(), DIRECT_CHUNK);
        feed.push(&vec![0; BULK_MIN - 1]);
        assert!(!feed.takes_a_chunk() && feed.wants_more());
        feed.push(&[0]);
        assert!(feed.takes_a_chunk());
        feed.push(&vec![0; DIRECT_CHUNK - BULK_MIN]);
        assert!(!feed.wants_more());
        let feed = Feed::with_chunks("/tmp/x/in".to_owned(), BULK_MIN - 1);
        assert_eq!(feed.high_water(), FEED_HIGH_WATER);
        assert_eq!(feed.bulk.chunk(), 0);
    }
}
