//! Bulk input: a chunk file, moved into the pipe by a helper in the guest.
//!
//! Each request costs the agent a fixed time besides its Base64, and a
//! pipe takes at most 4 KiB whole; so much input waiting goes instead in
//! one `guest-file-write` of up to a chunk (1 MiB on a direct channel) to
//! a file beside the pipe, `in.N`, and a `guest-exec`'d helper copies it
//! into the pipe ([`MOVE_SCRIPT`], with `in.N` and `in` as arguments).
//! The helper unlinks the file as soon as it has it
//! open, so nothing stays however it ends, and it execs `cat`, so its pid
//! is `cat`'s. Its `cat` blocks while the program does not read: that is
//! the backpressure.
//!
//! At most one helper runs, and while it runs (or a chunk file waits for
//! it) nothing else writes to the pipe, so the bytes keep their order. The
//! next chunk file is written while a helper runs; its helper starts once
//! the last one is seen to have exited (`guest-exec-status`, which also
//! reaps it from the agent's table).
//!
//! The feed's own `r+` handle keeps a reader on the pipe, so a helper
//! never meets a pipe without one: its `open` does not block and its
//! `cat` gets no broken pipe while the feed holds the handle, even once
//! the program has ended. Only when the handle is closed does a helper
//! still writing get a broken pipe; [`Bulk::stop`] then reaps it (or stops
//! it, should something else in the guest still hold the pipe open).

use std::time::Duration;

use crate::follow::FollowError;
use crate::qga::{GuestExec, GuestExecStatus, GuestFileClose, GuestFileOpen, GuestFileWrite};
use crate::{stop_group, Channel, Connector, Error, StopScope};

/// The helper: `$1` is the chunk file, `$2` the pipe.
const MOVE_SCRIPT: &str = r#"exec <"$1" && rm -f -- "$1" && exec cat >"$2""#;

/// How long a helper still running once the pipe's handle is closed gets
/// after SIGTERM.
const HELPER_GRACE: Duration = Duration::from_secs(1);

/// What the agent says when the file system is full (ENOSPC).
const NO_SPACE: &str = "No space left on device";

/// A chunk file written and not yet handed to a helper.
#[derive(Debug)]
struct Staged {
    path: String,
    len: usize,
}

/// A helper moving a chunk into the pipe.
#[derive(Debug)]
struct Helper {
    pid: i64,
    len: usize,
}

/// The chunk files and the helper of one pipe; see the [module](self)
/// docs.
#[derive(Debug)]
pub(super) struct Bulk {
    pipe: String,
    /// The most bytes in one chunk file.
    chunk: usize,
    /// Chunk files made so far, which numbers them.
    made: u64,
    staged: Option<Staged>,
    helper: Option<Helper>,
}

impl Bulk {
    /// Chunks of at most `chunk` bytes for the pipe at `pipe`.
    pub(super) fn new(pipe: String, chunk: usize) -> Bulk {
        Bulk {
            pipe,
            chunk,
            made: 0,
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
            if let Some(staged) = self.staged.take() {
                let exec = GuestExec::new("/bin/sh", ["-c", MOVE_SCRIPT, "sh", &staged.path, &self.pipe]);
                let pid = channel.guest_exec(&exec).await?.pid;
                self.helper = Some(Helper { pid, len: staged.len });
            }
        }
        Ok(())
    }

    /// Writes `bytes` (at most a chunk) to a new chunk file, which waits
    /// for its helper ([`look`](Self::look) starts it). A full file system
    /// is an error saying so; the file stays, for the directory's removal.
    pub(super) async fn stage<C: Connector>(
        &mut self,
        channel: &mut Channel<C>,
        bytes: Vec<u8>,
    ) -> Result<(), FollowError> {
        debug_assert!(self.staged.is_none());
        self.made += 1;
        let path = format!("{}.{}", self.pipe, self.made);
        let len = bytes.len();
        let handle = channel
            .execute(&GuestFileOpen::new(path.clone(), "w"))
            .await
            .map_err(|e| self.no_space(e))?;
        let written = channel.execute(&GuestFileWrite { handle, buf: bytes }).await;
        // Closing writes what the `FILE` buffered: a full file system may
        // show only here.
        let closed = channel.execute(&GuestFileClose { handle }).await;
        match written.map_err(|e| self.no_space(e))? {
            reply if reply.count == len as u64 => {}
            reply => {
                return Err(FollowError::Input {
                    reason: format!("the agent took {} of {len} bytes into {path}", reply.count),
                })
            }
        }
        closed.map_err(|e| self.no_space(e))?;
        self.staged = Some(Staged { path, len });
        Ok(())
    }

    /// Forgets the chunk file waiting (the directory's removal takes it)
    /// and ends the helper: once the pipe's handle is closed, a helper
    /// still writing gets a broken pipe, and is reaped; one that somehow
    /// does not end is stopped.
    pub(super) async fn stop<C: Connector>(&mut self, channel: &mut Channel<C>) -> Result<(), Error> {
        self.staged = None;
        let Some(helper) = self.helper.take() else {
            return Ok(());
        };
        let agent = channel.agent().await?;
        stop_group(agent, helper.pid, HELPER_GRACE, StopScope::Program)
            .await
            .map(drop)
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
