//! Bulk input: a chunk file, moved into the pipe by a helper in the guest.
//!
//! Each request costs the agent a fixed time besides its Base64, and a
//! pipe takes at most 4 KiB whole; so much input waiting goes instead in
//! one request of up to a chunk (1 MiB on a direct channel) to a file
//! beside the pipe, and a `guest-exec`'d helper copies it into the pipe
//! ([`MOVE_SCRIPT`]: `dd` of exactly the chunk's length). The helper
//! execs `dd`, so its pid is `dd`'s, and `dd` blocks while the program
//! does not read: that is the backpressure.
//!
//! Two chunk files, `in.0` and `in.1`, each opened once, at its first
//! chunk, and written from its start with each chunk through the agent's
//! handle (`guest-file-write`, then `guest-file-seek` back to the start,
//! which also flushes the agent's buffer): a chunk costs what it costs
//! `copy`. (An earlier stager, a `cat` started per chunk with the chunk as
//! its `input-data`, cost the guest a pipe from the agent for every byte
//! besides: about 10 % of bulk input's time on a TCG guest.) The opens are
//! awaited by a caller giving up (see [`Settling`](crate::Settling)), as
//! the pipe's is, so that every handle is learnt; one whose reply is lost
//! for good (the connection gone) stays with the agent until it restarts,
//! as any file the run opens would. [`Bulk::stop`] closes them, and the
//! directory's removal takes the files. A helper whose start is cut short
//! ends by itself, at the broken pipe once the feed's handle is closed.
//!
//! At most one helper runs, and while it runs (or a chunk waits for it)
//! nothing else writes to the pipe, so the bytes keep their order. The
//! next chunk is written to the other file while a helper runs; its helper
//! starts once the last one is seen to have exited (`guest-exec-status`,
//! which also reaps it from the agent's table).
//!
//! The feed's own `r+` handle keeps a reader on the pipe, so a helper
//! never meets a pipe without one: its `open` does not block and its `dd`
//! gets no broken pipe while the feed holds the handle, even once the
//! program has ended. Only when the handle is closed does a helper still
//! writing get a broken pipe; [`Bulk::stop`] then reaps it (or stops it,
//! should something else in the guest still hold the pipe open).

use std::time::Duration;

use crate::follow::FollowError;
use crate::qga::{
    GuestExec, GuestExecStatus, GuestExecStatusReply, GuestFileClose, GuestFileOpen, GuestFileSeek,
    GuestFileWrite, Whence,
};
use crate::{stop_group, Channel, Connector, Error, StopScope};

/// The helper: `$1` is the chunk file, `$2` the pipe, `$3` the chunk's
/// length (the file may be longer, from an earlier chunk). `dd` reads a
/// regular file's block whole, and a blocking write to a pipe writes all.
pub(super) const MOVE_SCRIPT: &str = r#"exec dd if="$1" of="$2" bs="$3" count=1"#;

/// How long a helper still running once the pipe's handle is closed gets
/// after SIGTERM.
const HELPER_GRACE: Duration = Duration::from_secs(1);

/// What a caller giving up awaits while a helper starts (see
/// [`Settling`](crate::Settling)).
const STARTING_HELPER: &str =
    "a helper moving input into the pipe is being started: awaiting its pid, to stop it";

/// What a caller giving up awaits while a chunk file is opened.
const OPENING_CHUNK_FILE: &str =
    "a chunk file of the input is being opened: awaiting its handle, to close it";

/// What the agent says when the file system is full (ENOSPC).
const NO_SPACE: &str = "No space left on device";

/// A chunk written to the file `slot`, not yet handed to a helper.
#[derive(Debug)]
struct Staged {
    slot: usize,
    len: usize,
}

/// A helper moving the chunk in the file `slot` into the pipe.
#[derive(Debug)]
struct Helper {
    pid: i64,
    slot: usize,
    len: usize,
}

/// The chunk files and the helper of one pipe; see the [module](self)
/// docs.
#[derive(Debug)]
pub(super) struct Bulk {
    pipe: String,
    /// The most bytes in one chunk file.
    chunk: usize,
    /// The agent's handles on the chunk files, once opened.
    files: [Option<i64>; 2],
    staged: Option<Staged>,
    helper: Option<Helper>,
}

impl Bulk {
    /// Chunks of at most `chunk` bytes for the pipe at `pipe`.
    pub(super) fn new(pipe: String, chunk: usize) -> Bulk {
        Bulk {
            pipe,
            chunk,
            files: [None; 2],
            staged: None,
            helper: None,
        }
    }

    /// The most bytes in one chunk file.
    pub(super) fn chunk(&self) -> usize {
        self.chunk
    }

    /// Whether no chunk is on its way: the pipe is free for other writes.
    pub(super) fn idle(&self) -> bool {
        self.staged.is_none() && self.helper.is_none()
    }

    /// Whether a chunk file waits for its helper.
    pub(super) fn staged(&self) -> bool {
        self.staged.is_some()
    }

    /// Whether a helper is moving a chunk: the feed looks again soon.
    pub(super) fn moving(&self) -> bool {
        self.helper.is_some()
    }

    /// Looks whether the helper has exited (reaping it), then starts the
    /// helper of the chunk file written, if any and none runs.
    pub(super) async fn look<C: Connector>(&mut self, channel: &mut Channel<C>) -> Result<(), FollowError> {
        if let Some(helper) = &self.helper {
            let status = channel.execute(&GuestExecStatus { pid: helper.pid }).await?;
            if !status.exited {
                return Ok(());
            }
            let len = helper.len;
            self.helper = None;
            if status.exitcode != Some(0) {
                let said = String::from_utf8_lossy(status.err_data.as_deref().unwrap_or_default());
                return Err(FollowError::Input {
                    reason: format!(
                        "the helper moving {len} bytes into the pipe ended with {}{}",
                        ended_with(&status),
                        said_then(&said)
                    ),
                });
            }
        }
        if self.helper.is_none() {
            if let Some(Staged { slot, len }) = self.staged.take() {
                let (file, size) = (self.path(slot), len.to_string());
                let exec = GuestExec::new("/bin/sh", ["-c", MOVE_SCRIPT, "sh", &file, &self.pipe, &size]);
                // Its pid awaited by a caller giving up (see `Settling`):
                // a helper whose `open` of the pipe comes after the feed's
                // handle is closed would wait there for a reader for ever.
                let settling = channel.settling();
                let step = settling.begin(STARTING_HELPER);
                let pid = channel.guest_exec(&exec).await?.pid;
                self.helper = Some(Helper { pid, slot, len });
                drop(step);
                settling.hold_if_given_up().await;
            }
        }
        Ok(())
    }

    /// The chunk file `slot`, as the guest names it.
    fn path(&self, slot: usize) -> String {
        format!("{}.{slot}", self.pipe)
    }

    /// Writes `bytes` (at most a chunk) to the chunk file no helper
    /// reads, from its start; the chunk then waits for its helper
    /// ([`look`](Self::look) starts it).
    pub(super) async fn stage<C: Connector>(
        &mut self,
        channel: &mut Channel<C>,
        bytes: Vec<u8>,
    ) -> Result<(), FollowError> {
        debug_assert!(self.staged.is_none());
        let slot = match &self.helper {
            Some(helper) => 1 - helper.slot,
            None => 0,
        };
        let len = bytes.len();
        let handle = self.file(channel, slot).await?;
        let write = GuestFileWrite { handle, buf: bytes };
        let written = channel
            .execute(&write)
            .await
            .map_err(|e| self.write_failed(e))?
            .count;
        // Back to the start for the next chunk, which flushes this one. (Not
        // sent with the write in one round trip: the pair would be built
        // for every connector, 11 KB of binary, for about 1 % of a chunk's time.)
        let rewind = GuestFileSeek {
            handle,
            offset: 0,
            whence: Whence::Set,
        };
        channel.execute(&rewind).await.map_err(|e| self.write_failed(e))?;
        if written != len as u64 {
            return Err(FollowError::Input {
                reason: format!(
                    "the agent took {written} of {len} bytes into a chunk file beside {}",
                    self.pipe
                ),
            });
        }
        self.staged = Some(Staged { slot, len });
        Ok(())
    }

    /// The handle on the chunk file `slot`, opened at its first chunk.
    async fn file<C: Connector>(
        &mut self,
        channel: &mut Channel<C>,
        slot: usize,
    ) -> Result<i64, FollowError> {
        if let Some(handle) = self.files[slot] {
            return Ok(handle);
        }
        let settling = channel.settling();
        let step = settling.begin(OPENING_CHUNK_FILE);
        let opened = channel.execute(&GuestFileOpen::new(self.path(slot), "w")).await;
        if let Ok(handle) = opened {
            self.files[slot] = Some(handle);
        }
        drop(step);
        settling.hold_if_given_up().await;
        opened.map_err(|e| self.write_failed(e))
    }

    /// The error for a chunk file that could not be written: a full file
    /// system said so.
    fn write_failed(&self, error: Error) -> FollowError {
        match error {
            Error::Agent { desc, .. } if desc.contains(NO_SPACE) => self.no_space(),
            error => error.into(),
        }
    }

    /// Closes the chunk files' handles (the directory's removal takes the
    /// files) and ends the helper: once the pipe's handle is closed, a
    /// helper still writing gets a broken pipe, and is reaped; one that
    /// somehow does not end is stopped. One the agent no longer knows has
    /// ended: it reported the end to a look that was cut short (a run
    /// given up), and forgot the pid.
    pub(super) async fn stop<C: Connector>(&mut self, channel: &mut Channel<C>) -> Result<(), Error> {
        self.staged = None;
        let mut stopped = Ok(());
        for handle in self.files.iter_mut().filter_map(Option::take) {
            let closed = channel.execute(&GuestFileClose { handle }).await;
            stopped = stopped.and(closed.map(drop));
        }
        if let Some(Helper { pid, .. }) = self.helper.take() {
            stopped = stopped.and(self.end_helper(channel, pid).await);
        }
        stopped
    }

    /// Reaps the helper `pid`, or stops it if it still runs.
    async fn end_helper<C: Connector>(&self, channel: &mut Channel<C>, pid: i64) -> Result<(), Error> {
        match channel.execute(&GuestExecStatus { pid }).await {
            Ok(status) if status.exited => return Ok(()),
            Ok(_) => {}
            Err(Error::Agent { .. }) => {
                tracing::debug!(
                    pid,
                    "a helper of the input the agent no longer knows: it has ended"
                );
                return Ok(());
            }
            Err(error) => return Err(error),
        }
        let agent = channel.agent().await?;
        stop_group(agent, pid, HELPER_GRACE, StopScope::Program)
            .await
            .map(drop)
    }

    /// The error for a full file system.
    fn no_space(&self) -> FollowError {
        FollowError::Input {
            reason: format!(
                "no space left in the guest for a chunk of it beside {} (its temporary directory is full)",
                self.pipe
            ),
        }
    }
}

/// How a helper ended, as its status says.
fn ended_with(status: &GuestExecStatusReply) -> String {
    match (status.exitcode, status.signal) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => "no status".to_owned(),
    }
}

/// What a helper said on stderr, after a colon, if anything.
fn said_then(said: &str) -> String {
    match said.trim() {
        "" => String::new(),
        said => format!(": {said}"),
    }
}
