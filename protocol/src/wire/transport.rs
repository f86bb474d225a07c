//! What every client does with its socket, whatever it speaks: connecting,
//! bounding each step by a [`Deadline`], and showing the bytes to a
//! [`Trace`] on their way.

use std::future::Future;
use std::io;
use std::path::Path;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::time::{timeout_at, Instant};

use super::framing::DEFAULT_MAX_REPLY_LEN;
use crate::{Error, Phase, Trace};

/// Time limits and bounds of a [`QgaClient`](crate::QgaClient) (and of the QMP and libvirt clients).
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// One deadline for connecting and synchronising together.
    pub handshake_timeout: Duration,
    /// One deadline for each reply, however it trickles in.
    pub reply_timeout: Duration,
    /// Replies longer than this are refused ([`Error::ReplyTooLong`]).
    pub max_reply_len: usize,
    /// Sees every byte sent and received, e.g. for `--trace`.
    pub trace: Option<Trace>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            handshake_timeout: Duration::from_secs(5),
            reply_timeout: Duration::from_secs(30),
            max_reply_len: DEFAULT_MAX_REPLY_LEN,
            trace: None,
        }
    }
}

/// A point in time by which a step must be done, with the time it was
/// allowed, so that a timeout can say how long it waited.
///
/// ```
/// use std::time::Duration;
/// use virtomate_protocol::{Deadline, Error, Phase};
///
/// # tokio_test::block_on(async {
/// let deadline = Deadline::after(Duration::from_millis(10));
/// let never = std::future::pending::<Result<(), Error>>();
/// let err = deadline.run(Phase::Handshake, never).await.unwrap_err();
/// assert!(matches!(
///     err,
///     Error::Timeout { phase: Phase::Handshake, after } if after == Duration::from_millis(10)
/// ));
/// # });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    at: Instant,
    allowed: Duration,
}

impl Deadline {
    /// `allowed` from now.
    pub fn after(allowed: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + allowed,
            allowed,
        }
    }

    /// The instant itself, e.g. to hand on to `tokio::time::timeout_at`.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// The time allowed when the deadline was set, for messages.
    pub fn allowed(&self) -> Duration {
        self.allowed
    }

    /// The time left, zero once past.
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Runs `work` until the deadline; past it, [`Error::Timeout`] in
    /// `phase`, naming the time allowed.
    pub async fn run<T>(
        &self,
        phase: Phase,
        work: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        timeout_at(self.at, work).await.unwrap_or(Err(Error::Timeout {
            phase,
            after: self.allowed,
        }))
    }
}

/// Connects to the UNIX socket at `path` by `deadline`. A path spelled
/// `@NAME` is the abstract socket NAME (Linux), as `/proc/net/unix`, `ss`
/// and QEMU's `-chardev socket,abstract=on,path=NAME` name it; a file whose
/// name starts with `@` is reached as `./@NAME`.
///
/// A listener whose queue of connections not yet accepted is full makes
/// `connect` fail with `EAGAIN` at once (QEMU's chardev listens with a
/// backlog of 1 and serves one client at a time): that is a busy socket,
/// so connecting is tried again until the deadline, which then reports a
/// [`Phase::Connecting`] timeout.
pub(crate) async fn connect(path: &Path, deadline: Deadline) -> Result<UnixStream, Error> {
    const LONGEST_PAUSE: Duration = Duration::from_millis(50);
    deadline
        .run(Phase::Connecting, async {
            let mut pause = Duration::from_millis(1);
            loop {
                match UnixStream::connect(unix_address(path)).await {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(LONGEST_PAUSE);
                    }
                    connected => {
                        return connected.map_err(|source| Error::Connect {
                            path: path.to_owned(),
                            source,
                        })
                    }
                }
            }
        })
        .await
}

/// `@NAME` as tokio spells an abstract address (`\0NAME`); anything else
/// as is.
fn unix_address(path: &Path) -> std::borrow::Cow<'_, Path> {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    match path.as_os_str().as_bytes() {
        [b'@', name @ ..] => {
            let mut address = vec![0];
            address.extend_from_slice(name);
            std::borrow::Cow::Owned(std::ffi::OsString::from_vec(address).into())
        }
        _ => path.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_done_in_time_gives_its_result() {
        let deadline = Deadline::after(Duration::from_secs(60));
        assert_eq!(deadline.allowed(), Duration::from_secs(60));
        assert!(deadline.remaining() <= Duration::from_secs(60));
        assert!(deadline.at() > Instant::now());
        let quick = async { Ok::<_, Error>(7) };
        assert_eq!(deadline.run(Phase::Connecting, quick).await.unwrap(), 7);
        assert_eq!(Deadline::after(Duration::ZERO).remaining(), Duration::ZERO);
    }
}
