//! Bulk input: a chunk file, moved into the pipe by a helper in the guest.
//!
//! Each request costs the agent a fixed time besides its Base64, and a
//! pipe takes at most 4 KiB whole; so much input waiting goes instead in
//! one `guest-file-write` of up to a chunk (1 MiB on a direct channel) to
//! a file beside the pipe, and a `guest-exec`'d helper copies it into the
//! pipe ([`MOVE_SCRIPT`]: `dd` of exactly the chunk's length). The helper
//! execs `dd`, so its pid is `dd`'s, and `dd` blocks while the program
//! does not read: that is the backpressure.
//!
//! Two chunk files, `in.0` and `in.1`, both opened in one round trip
//! with the first chunk and then written from their start again and
//! again: a handle is learnt only from the reply to its `guest-file-open`,
//! and a run cut short (Ctrl-C) between the request and the reply leaves
//! the agent holding a file nobody can close (as for every file the
//! engine opens); with one such round trip a run, that window is short.
//! The directory's removal takes the files.
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
    GuestExec, GuestExecStatus, GuestFileClose, GuestFileFlush, GuestFileOpen, GuestFileSeek, GuestFileWrite,
    Whence,
};
use crate::{stop_group, Channel, Connector, Error, StopScope};

/// The helper: `$1` is the chunk file, `$2` the pipe, `$3` the chunk's
/// length (the file may be longer, from an earlier chunk). `dd` reads a
/// regular file's block whole, and a blocking write to a pipe writes all.
pub(super) const MOVE_SCRIPT: &str = r#"exec dd if="$1" of="$2" bs="$3" count=1"#;

/// How long a helper still running once the pipe's handle is closed gets
/// after SIGTERM.
const HELPER_GRACE: Duration = Duration::from_secs(1);

/// What the agent says when the file system is full (ENOSPC).
const NO_SPACE: &str = "No space left on device";

/// A chunk written to the file `slot` and not yet handed to a helper.
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
    /// The handles of the two chunk files, once opened.
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
            files: [None, None],
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

    /// Whether a helper is moving a chunk.
    pub(super) fn moving(&self) -> bool {
        self.helper.is_some()
    }

    /// Looks whether the helper has exited (reaping it), then starts the
    /// helper of the chunk file waiting, if any and none runs.
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
                        match (status.exitcode, status.signal) {
                            (Some(code), _) => format!("status {code}"),
                            (None, Some(signal)) => format!("signal {signal}"),
                            (None, None) => "no status".to_owned(),
                        },
                        match said.trim() {
                            "" => String::new(),
                            said => format!(": {said}"),
                        }
                    ),
                });
            }
        }
        if self.helper.is_none() {
            if let Some(Staged { slot, len }) = self.staged.take() {
                let (file, size) = (self.path(slot), len.to_string());
                let exec = GuestExec::new("/bin/sh", ["-c", MOVE_SCRIPT, "sh", &file, &self.pipe, &size]);
                let pid = channel.guest_exec(&exec).await?.pid;
                self.helper = Some(Helper { pid, slot, len });
            }
        }
        Ok(())
    }

    /// Opens both chunk files, in one round trip: the first chunk's.
    async fn open<C: Connector>(&mut self, channel: &mut Channel<C>) -> Result<(), FollowError> {
        let open = |slot| GuestFileOpen::new(self.path(slot), "w");
        let (first, second) = channel.execute_both(&open(0), &open(1)).await?;
        // Kept as soon as known, for `stop` to close.
        self.files = [first.as_ref().ok().copied(), second.as_ref().ok().copied()];
        first.and(second).map(drop).map_err(|e| self.no_space(e))
    }

    /// The chunk file `slot`, as the guest names it.
    fn path(&self, slot: usize) -> String {
        format!("{}.{slot}", self.pipe)
    }

    /// Writes `bytes` (at most a chunk) from the start of the chunk file
    /// no helper reads, opened the first time; the chunk then waits for
    /// its helper ([`look`](Self::look) starts it). A full file system is
    /// an error saying so.
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
        if self.files == [None, None] {
            self.open(channel).await?;
        }
        let Some(handle) = self.files[slot] else {
            unreachable!("both chunk files are open once one is");
        };
        let len = bytes.len();
        let start = GuestFileSeek {
            handle,
            offset: 0,
            whence: Whence::Set,
        };
        channel.execute(&start).await?;
        // Flushed, so that the helper reads all of it.
        let write = GuestFileWrite { handle, buf: bytes };
        let (written, flushed) = channel.execute_both(&write, &GuestFileFlush { handle }).await?;
        match written.map_err(|e| self.no_space(e))? {
            reply if reply.count == len as u64 => {}
            reply => {
                return Err(FollowError::Input {
                    reason: format!(
                        "the agent took {} of {len} bytes into {}",
                        reply.count,
                        self.path(slot)
                    ),
                })
            }
        }
        flushed.map_err(|e| self.no_space(e))?;
        self.staged = Some(Staged { slot, len });
        Ok(())
    }

    /// Ends the helper and closes the chunk files (the directory's removal
    /// takes them): once the pipe's handle is closed, a helper still
    /// writing gets a broken pipe, and is reaped; one that somehow does
    /// not end is stopped.
    pub(super) async fn stop<C: Connector>(&mut self, channel: &mut Channel<C>) -> Result<(), Error> {
        self.staged = None;
        let stopped = match self.helper.take() {
            Some(helper) => {
                let agent = channel.agent().await?;
                stop_group(agent, helper.pid, HELPER_GRACE, StopScope::Program)
                    .await
                    .map(drop)
            }
            None => Ok(()),
        };
        let mut closed = Ok(());
        for handle in self.files.iter_mut().filter_map(Option::take) {
            closed = closed.and(channel.execute(&GuestFileClose { handle }).await.map(drop));
        }
        stopped.and(closed)
    }

    /// An agent's error as the error to report: a full file system said so.
    fn no_space(&self, error: Error) -> FollowError {
        match error {
            Error::Agent { desc, .. } if desc.contains(NO_SPACE) => FollowError::Input {
                reason: format!(
                    "no space left in the guest for a chunk of it beside {} (its temporary directory is \
                     full)",
                    self.pipe
                ),
            },
            other => other.into(),
        }
    }
}
