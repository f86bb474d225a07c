use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong between this crate and an agent.
///
/// Each variant is a situation the caller can tell apart and act on.
///
/// ```
/// use virtomate_protocol::Error;
///
/// let err = Error::Agent {
///     command: "guest-exec".into(),
///     class: "GenericError".into(),
///     desc: "Failed to execute child process".into(),
/// };
/// assert_eq!(err.to_string(), "guest-exec failed: GenericError: Failed to execute child process");
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be connected to (missing, not a socket, no
    /// permission, nobody listening).
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        /// The socket path that was tried.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },

    /// Reading from or writing to the connected socket failed.
    #[error("I/O error on the agent channel: {0}")]
    Io(#[source] io::Error),

    /// The peer did not answer in time.
    #[error("no answer within {} s while {phase}", after.as_secs_f64())]
    Timeout {
        /// What was being waited for.
        phase: Phase,
        /// The time that was allowed.
        after: Duration,
    },

    /// The peer is no guest agent: it greeted as something else.
    #[error("the peer is not a guest agent but {found}")]
    NotAnAgent {
        /// What it is, e.g. `QEMU's monitor (QMP)`.
        found: String,
    },

    /// Another process kept its turn on the agent channel (see
    /// [`ChannelLock`](crate::ChannelLock)) for all the time allowed.
    #[error(
        "the agent channel {} stayed busy for {:.1} s: held by {}",
        path.display(),
        waited.as_secs_f64(),
        holder.as_deref().unwrap_or("another process")
    )]
    Busy {
        /// The agent socket.
        path: PathBuf,
        /// How long it was waited for.
        waited: Duration,
        /// The process holding it, e.g. `virtomate (pid 1234)`, if known.
        holder: Option<String>,
    },

    /// The agent did not answer the handshake in time, and a big request
    /// whose reply its sender never read (it was killed, or gave up) was
    /// sent to it not long ago: the agent most likely still reads it.
    #[error(
        "no answer within {} s: the agent is most likely still busy with a request of {} bytes \
         sent {:.1} s ago",
        after.as_secs_f64(),
        request.bytes,
        request.age().as_secs_f64()
    )]
    BusyWithEarlierRequest {
        /// The agent socket.
        path: PathBuf,
        /// The time that was allowed for the handshake.
        after: Duration,
        /// The request, as its sender noted it.
        request: crate::RequestInFlight,
    },

    /// The agent is too old for what was asked; nothing was sent.
    #[error("{feature} needs qemu-ga {}.{} or newer, and the agent is {version}", needs.0, needs.1)]
    AgentTooOld {
        /// What needs the newer agent, e.g. `capture-output "merged"`.
        feature: String,
        /// The oldest agent that has it, `(major, minor)`.
        needs: (u32, u32),
        /// The agent's version, as `guest-info` gives it.
        version: String,
    },

    /// The peer closed the connection.
    #[error("the agent closed the connection")]
    Disconnected,

    /// A reply was longer than the reader's bound and was dropped.
    #[error("a reply exceeded {limit} bytes and was dropped")]
    ReplyTooLong {
        /// The bound, in bytes.
        limit: usize,
    },

    /// A request would exceed what the agent accepts; nothing was sent.
    #[error("the request is {len} bytes long; the agent accepts at most {limit}")]
    RequestTooLarge {
        /// Length of the serialized request.
        len: usize,
        /// The most the agent's JSON parser takes in one request.
        limit: usize,
    },

    /// A reply that is not what the protocol promises: invalid JSON, a
    /// missing or mistyped member, invalid Base64.
    #[error("malformed reply to {command}: {reason}")]
    Malformed {
        /// The command whose reply it was.
        command: String,
        /// What was wrong with it.
        reason: String,
    },

    /// The agent answered with an error reply.
    #[error("{command} failed: {class}: {desc}")]
    Agent {
        /// The command that failed.
        command: String,
        /// The error class, e.g. `GenericError` or `CommandNotFound`.
        class: String,
        /// The agent's description of the error.
        desc: String,
    },

    /// A program was killed with what it started, and the agent still does
    /// not report its end: a process outside its tree holds its output
    /// (the agent reports an end once its output pipes have closed).
    #[error(
        "the agent did not report the end of the program (guest pid {pid}) within {} s of SIGKILL",
        waited.as_secs_f64()
    )]
    EndNotReported {
        /// The program's guest pid.
        pid: i64,
        /// How long the agent was asked after SIGKILL.
        waited: std::time::Duration,
    },

    /// libvirtd answered a call with an error: no such domain, the guest
    /// agent is not connected, the agent command failed, ...
    #[error("libvirt: {message} (error {code}, error domain {domain})")]
    Libvirt {
        /// libvirt's error number (`virErrorNumber`), e.g. 42 for
        /// `VIR_ERR_NO_DOMAIN`; see the `ERR_*` constants in [`crate::libvirt`].
        code: i32,
        /// The part of libvirt that raised it (`virErrorDomain`), e.g. 10
        /// for `VIR_FROM_QEMU`; not a virtual machine.
        domain: i32,
        /// libvirt's message.
        message: String,
    },
}

impl Error {
    /// An I/O error on a connected socket; a peer that went away is
    /// [`Error::Disconnected`], whichever way the kernel reports it.
    pub(crate) fn from_io(e: io::Error) -> Error {
        match e.kind() {
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof => {
                Error::Disconnected
            }
            _ => Error::Io(e),
        }
    }
}

/// For codecs, whose errors must come from I/O errors: a peer that went away
/// is [`Error::Disconnected`], whichever way the kernel reports it.
impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::from_io(e)
    }
}

/// What a client was waiting for when a [`Error::Timeout`] struck.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Connecting to the socket.
    Connecting,
    /// Waiting for the reply to `guest-sync-delimited` (or the QMP greeting).
    Handshake,
    /// Sending the named command (the peer did not read it in time).
    Sending(String),
    /// Waiting for the reply to the named command.
    Reply(String),
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Phase::Connecting => f.write_str("connecting"),
            Phase::Handshake => f.write_str("synchronising with the agent"),
            Phase::Sending(command) => write!(f, "sending {command}"),
            Phase::Reply(command) => write!(f, "waiting for the reply to {command}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_timeout_says_what_it_waited_for() {
        let err = Error::Timeout {
            phase: Phase::Reply("guest-exec-status".into()),
            after: Duration::from_secs(30),
        };
        assert_eq!(
            err.to_string(),
            "no answer within 30 s while waiting for the reply to guest-exec-status"
        );
    }
}
