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
//! Two chunk files, `in.0` and `in.1`, each written anew by a stager
//! ([`STAGE_SCRIPT`]: `cat` of its `input-data`, which the agent feeds it
//! and then closes), not through a handle of the agent's: a handle is
//! learnt only from the reply to its `guest-file-open`, and a run cut
//! short (Ctrl-C) between the request and the reply would leave the agent
//! holding a file nobody can close. A stager or helper whose start is cut
//! short the same way ends by itself: the stager at the end of its input,
//! the helper at the broken pipe once the feed's handle is closed. The
//! directory's removal takes the files.
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
use crate::qga::{GuestExec, GuestExecStatus, GuestExecStatusReply};
use crate::{stop_group, Channel, Connector, Error, StopScope};

/// The helper: `$1` is the chunk file, `$2` the pipe, `$3` the chunk's
/// length (the file may be longer, from an earlier chunk). `dd` reads a
/// regular file's block whole, and a blocking write to a pipe writes all.
pub(super) const MOVE_SCRIPT: &str = r#"exec dd if="$1" of="$2" bs="$3" count=1"#;

/// The stager: `$1` is the chunk file, written from its start with the
/// chunk the agent feeds in.
pub(super) const STAGE_SCRIPT: &str = r#"exec cat >"$1""#;

/// How long a helper still running once the pipe's handle is closed gets
/// after SIGTERM.
const HELPER_GRACE: Duration = Duration::from_secs(1);

/// What a caller giving up awaits while a helper starts (see
/// [`Settling`](crate::Settling)).
const STARTING_HELPER: &str =
    "a helper moving input into the pipe is being started: awaiting its pid, to stop it";

/// What a caller giving up awaits while a stager starts.
const STARTING_STAGER: &str = "a chunk of the input is being staged: awaiting its writer's pid, to stop it";

/// What the agent says when the file system is full (ENOSPC).
const NO_SPACE: &str = "No space left on device";

/// A chunk for the file `slot`, not yet handed to a helper.
#[derive(Debug)]
struct Staged {
    slot: usize,
    len: usize,
    /// The stager still writing it, until it is seen to have exited.
    stager: Option<i64>,
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
    staged: Option<Staged>,
    helper: Option<Helper>,
}

impl Bulk {
    /// Chunks of at most `chunk` bytes for the pipe at `pipe`.
    pub(super) fn new(pipe: String, chunk: usize) -> Bulk {
        Bulk {
            pipe,
            chunk,
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

    /// Whether a helper is moving a chunk, or a stager writing one: the
    /// feed looks again soon.
    pub(super) fn moving(&self) -> bool {
        self.helper.is_some() || self.staged.as_ref().is_some_and(|s| s.stager.is_some())
    }

    /// Looks whether the helper and the stager have exited (reaping them),
    /// then starts the helper of the chunk file written, if any and none
    /// runs.
    pub(super) async fn look<C: Connector>(&mut self, channel: &mut Channel<C>) -> Result<(), FollowError> {
        if let Some(pid) = self.staged.as_ref().and_then(|s| s.stager) {
            let status = channel.execute(&GuestExecStatus { pid }).await?;
            if status.exited {
                if status.exitcode != Some(0) {
                    self.staged = None;
                    return Err(self.stager_failed(&status));
                }
                self.staged.as_mut().expect("looked at").stager = None;
            }
        }
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
        let written = self.staged.as_ref().is_some_and(|s| s.stager.is_none());
        if self.helper.is_none() && written {
            if let Some(Staged { slot, len, .. }) = self.staged.take() {
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

    /// Starts writing `bytes` (at most a chunk) to the chunk file no
    /// helper reads, by a stager; the chunk then waits for it to end, and
    /// for its helper ([`look`](Self::look) starts it).
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
        let stage = GuestExec::new("/bin/sh", ["-c", STAGE_SCRIPT, "sh", &self.path(slot)]).with_input(bytes);
        let settling = channel.settling();
        let step = settling.begin(STARTING_STAGER);
        let pid = channel.guest_exec(&stage).await?.pid;
        self.staged = Some(Staged {
            slot,
            len,
            stager: Some(pid),
        });
        drop(step);
        settling.hold_if_given_up().await;
        Ok(())
    }

    /// The error for a stager that failed: a full file system said so.
    fn stager_failed(&self, status: &GuestExecStatusReply) -> FollowError {
        let said = String::from_utf8_lossy(status.err_data.as_deref().unwrap_or_default());
        if said.contains(NO_SPACE) {
            return self.no_space();
        }
        FollowError::Input {
            reason: format!(
                "the helper writing a chunk beside {} ended with {}{}",
                self.pipe,
                ended_with(status),
                said_then(&said)
            ),
        }
    }

    /// Ends the helper and the stager (the directory's removal takes the
    /// chunk files): once the pipe's handle is closed, a helper still
    /// writing gets a broken pipe, and is reaped, as is a stager at the
    /// end of its input; one that somehow does not end is stopped. One the
    /// agent no longer knows has ended: it reported the end to a look that
    /// was cut short (a run given up), and forgot the pid.
    pub(super) async fn stop<C: Connector>(&mut self, channel: &mut Channel<C>) -> Result<(), Error> {
        let stager = self.staged.take().and_then(|s| s.stager);
        let helper = self.helper.take().map(|h| h.pid);
        let mut stopped = Ok(());
        for pid in stager.into_iter().chain(helper) {
            match channel.execute(&GuestExecStatus { pid }).await {
                Ok(status) if status.exited => continue,
                Ok(_) => {}
                Err(Error::Agent { .. }) => {
                    tracing::debug!(
                        pid,
                        "a helper of the input the agent no longer knows: it has ended"
                    );
                    continue;
                }
                Err(error) => {
                    stopped = stopped.and(Err(error));
                    continue;
                }
            }
            let agent = channel.agent().await?;
            let done = stop_group(agent, pid, HELPER_GRACE, StopScope::Program).await;
            stopped = stopped.and(done.map(drop));
        }
        stopped
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

/// How a stager or helper ended, as its status says.
fn ended_with(status: &GuestExecStatusReply) -> String {
    match (status.exitcode, status.signal) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => "no status".to_owned(),
    }
}

/// What a stager or helper said on stderr, after a colon, if anything.
fn said_then(said: &str) -> String {
    match said.trim() {
        "" => String::new(),
        said => format!(": {said}"),
    }
}
