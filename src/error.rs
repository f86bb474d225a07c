//! The CLI's errors: a [`CliError`] is of one [`ErrorKind`] (the `type` of
//! the JSON error, and the exit status), says what happened and, where it
//! can, what to do next, and keeps what caused it.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use virtomate_protocol::{Error as AgentError, Phase};

/// What kind of failure it was: the `type` of the JSON error (documented
/// in README.md) and the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// DOMAIN names nothing that runs.
    NotFound,
    /// DOMAIN names several QEMU processes.
    Ambiguous,
    /// A libvirt domain that is defined but not running.
    IllegalState,
    /// A bad argument that clap could not catch: reported like a usage error.
    Usage,
    /// The socket cannot be used: missing, refused, held by another client.
    AgentUnavailable,
    /// Connected, but the peer did not answer in time.
    AgentTimeout,
    /// The peer went away during the exchange.
    AgentDisconnected,
    /// The agent (or QEMU) refused the command.
    AgentCommand,
    /// The peer sent something that is not the protocol.
    Protocol,
    /// The program's output is not UTF-8.
    Encoding,
    /// Standard input beyond what one agent request carries.
    InputTooLarge,
    /// SIGINT, SIGTERM or SIGHUP during a run.
    Interrupted,
    /// `guest-run --follow`: the output files in the guest could not be
    /// made, were removed, or their file system filled up.
    GuestOutput,
    /// libvirtd refused a call made on our behalf.
    Libvirt,
    /// The guest's agent lacks, or has disabled, a command that is needed:
    /// the message says which QEMU brought it, or how to enable it.
    Unavailable,
    /// A local I/O error.
    Io,
    /// A path of `copy`, local or in the guest, that cannot be used as
    /// asked: missing, unreadable, a directory where a file is expected.
    Path,
    /// `copy` moved the bytes, but what arrived is not what was sent, or
    /// `--verify` was asked and the guest cannot compute a checksum.
    Verification,
    /// `guest-freeze` could not freeze safely (the guest is frozen
    /// already, or lacks what the watchdog that thaws it needs), or a
    /// thaw failed.
    Freeze,
}

impl ErrorKind {
    /// The `type` member of the JSON error.
    pub fn json_type(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "NotFoundError",
            ErrorKind::Ambiguous => "AmbiguousDomainError",
            ErrorKind::IllegalState => "IllegalStateError",
            ErrorKind::Usage => "UsageError",
            ErrorKind::AgentUnavailable => "AgentUnavailable",
            ErrorKind::AgentTimeout => "AgentTimeout",
            ErrorKind::AgentDisconnected => "AgentDisconnected",
            ErrorKind::AgentCommand => "AgentCommandError",
            ErrorKind::Protocol => "ProtocolError",
            ErrorKind::Encoding => "EncodingError",
            ErrorKind::InputTooLarge => "InputTooLarge",
            ErrorKind::Interrupted => "Interrupted",
            ErrorKind::GuestOutput => "GuestOutputError",
            ErrorKind::Libvirt => "libvirtError",
            ErrorKind::Unavailable => "CommandUnavailable",
            ErrorKind::Io => "IoError",
            ErrorKind::Path => "PathError",
            ErrorKind::Verification => "VerificationError",
            ErrorKind::Freeze => "FreezeError",
        }
    }
}

/// A failure of the CLI: its kind, what happened, what to do about it,
/// and what caused it. The message is built once, here: `message`, then
/// `; hint` when there is one.
#[derive(Debug)]
pub struct CliError {
    kind: ErrorKind,
    message: String,
    hint: Option<String>,
    /// The agent's error class, shown by the raw commands (guest-cmd, qmp)
    /// only: guest-run's error keeps the original's two keys.
    class: Option<String>,
    /// Told by the exit status alone (125), as `guest-ping` does when the
    /// agent does not answer.
    silent: bool,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        match &self.hint {
            Some(hint) => write!(f, "; {hint}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for CliError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|source| source as _)
    }
}

impl CliError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> CliError {
        CliError {
            kind,
            message: message.into(),
            hint: None,
            class: None,
            silent: false,
            source: None,
        }
    }

    /// What the user can do about it; a second hint follows the first.
    pub fn with_hint(mut self, hint: impl Into<String>) -> CliError {
        let hint = hint.into();
        self.hint = Some(match self.hint.take() {
            Some(first) => format!("{first}; {hint}"),
            None => hint,
        });
        self
    }

    /// What the user can do about it, in place of any hint given before:
    /// for a cause found later that makes the first advice wrong.
    pub fn with_hint_instead(mut self, hint: impl Into<String>) -> CliError {
        self.hint = Some(hint.into());
        self
    }

    /// What caused it, kept for `source()`.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> CliError {
        self.source = Some(Box::new(source));
        self
    }

    /// DOMAIN names nothing: the original's sentence, then where virtomate
    /// looked (`looked`).
    pub fn not_found(domain: &str, looked: &str) -> CliError {
        CliError::new(
            ErrorKind::NotFound,
            format!("Domain '{domain}' does not exist; {looked}"),
        )
        .with_hint("check the name (virtomate domain-list) or pass the agent's socket path")
    }

    /// Several QEMU processes carry the name: `candidates` lists their
    /// agent sockets, which is what to pass instead.
    pub fn ambiguous(name: &str, pids: &str, candidates: &str) -> CliError {
        CliError::new(
            ErrorKind::Ambiguous,
            format!("Domain '{name}' matches several QEMU processes (pids {pids})"),
        )
        .with_hint(format!("pass one of their agent sockets instead: {candidates}"))
    }

    pub fn usage(message: impl Into<String>) -> CliError {
        CliError::new(ErrorKind::Usage, message)
    }

    pub fn io(message: impl Into<String>, source: std::io::Error) -> CliError {
        let message = format!("{}: {source}", message.into());
        CliError::new(ErrorKind::Io, message).with_source(source)
    }

    pub fn interrupted(stage: Interruption) -> CliError {
        CliError::new(ErrorKind::Interrupted, stage.to_string())
    }

    /// The agent (or, for `qmp`, QEMU's monitor) refused `command`.
    pub fn command_refused(command: &str, desc: &str, peer: Peer) -> CliError {
        let who = match peer {
            Peer::Agent => "QEMU agent",
            Peer::Qmp => "QMP",
        };
        CliError::new(
            ErrorKind::AgentCommand,
            format!("unable to execute {who} command '{command}': {desc}"),
        )
    }

    /// Standard input that one request cannot carry: with it in Base64 the
    /// request would be `request_len` bytes or more, over `limit`, which is
    /// libvirtd's when `through_libvirtd`.
    pub fn input_too_large(request_len: usize, limit: usize, through_libvirtd: bool) -> CliError {
        let at_most = match through_libvirtd {
            true => format!(
                "through libvirtd, which holds the agent channel, one request is at most {} KiB (a little \
                 under {} KiB of input): libvirt stalls on longer agent commands",
                limit >> 10,
                (limit >> 10) * 3 / 4
            ),
            false => format!(
                "the agent takes at most {} MiB in one request (a little under {} MiB of input)",
                limit >> 20,
                (limit >> 20) / 4 * 3
            ),
        };
        let error = CliError::new(
            ErrorKind::InputTooLarge,
            format!(
                "standard input is too large for the agent: with the input in Base64 the request would be \
                 at least {request_len} bytes; {at_most}; nothing was sent"
            ),
        );
        match through_libvirtd {
            true => {
                error.with_hint("give the domain a second agent channel to pass up to 48 MiB (see README)")
            }
            false => error,
        }
    }

    /// What failed before anything was started in the guest.
    pub fn nothing_started(kind: ErrorKind, error: impl std::fmt::Display) -> CliError {
        CliError::new(kind, format!("{error}; nothing was started"))
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The `type` member of the JSON error, documented in README.md.
    pub fn json_type(&self) -> &'static str {
        self.kind.json_type()
    }

    /// The same failure, told by the exit status alone (125), as
    /// `guest-ping` reports an agent that does not answer.
    pub fn into_silent(mut self) -> CliError {
        self.message = format!("the agent did not answer: {}", self.message);
        self.silent = true;
        self
    }

    /// Errors end the process with status 1, except a silent agent for
    /// `guest-ping` (125); 2 is left to usage errors, as clap reports them.
    pub fn exit_status(&self) -> u8 {
        match self.kind {
            _ if self.silent => 125,
            ErrorKind::Usage => 2,
            _ => 1,
        }
    }

    /// Whether the error is told by the exit status alone.
    pub fn is_silent(&self) -> bool {
        self.silent
    }

    /// Like [`CliError::from_agent`], keeping the error class of an error
    /// reply and speaking of QEMU's monitor where `peer` is QMP.
    pub fn from_raw(error: AgentError, socket: &Path, peer: Peer) -> CliError {
        match &error {
            AgentError::Agent { command, class, desc } => {
                let mut refused = CliError::command_refused(command, desc, peer);
                refused.class = Some(class.clone());
                refused.with_source(error)
            }
            _ => CliError::from_peer(error, socket, peer),
        }
    }

    /// A failure on the way through libvirtd's RPC `socket` to `peer`:
    /// what timed out or hung up is libvirtd, not the agent or QEMU.
    pub fn from_libvirtd(error: AgentError, socket: &Path, peer: Peer) -> CliError {
        let shown = socket.display();
        let described = match &error {
            AgentError::Timeout { phase, after } => CliError::new(
                ErrorKind::AgentTimeout,
                format!("libvirtd on {shown} did not answer within {}", seconds(*after)),
            )
            .with_hint(match phase {
                Phase::Connecting | Phase::Handshake => {
                    "check that libvirtd (or virtqemud) runs and is not stuck".to_owned()
                }
                _ => format!(
                    "it waits for {} itself, which may be stuck; raise --reply-timeout if the guest is slow",
                    match peer {
                        Peer::Agent => "the guest agent",
                        Peer::Qmp => "QEMU",
                    }
                ),
            }),
            AgentError::Disconnected => CliError::new(
                ErrorKind::AgentDisconnected,
                format!("libvirtd closed the connection on {shown}"),
            )
            .with_hint("it may have restarted, or the domain stopped"),
            AgentError::RequestTooLarge { len, limit } => CliError::input_too_large(*len, *limit, true),
            AgentError::Libvirt { code, message, .. } => libvirt_error(*code, message, peer),
            AgentError::Agent { .. } if peer == Peer::Qmp => return CliError::from_raw(error, socket, peer),
            _ => return CliError::from_peer(error, socket, peer),
        };
        described.with_source(error)
    }

    /// Puts an agent-side failure in terms of the socket it happened on.
    pub fn from_agent(error: AgentError, socket: &Path) -> CliError {
        CliError::from_peer(error, socket, Peer::Agent)
    }

    /// A failure on the socket of `peer` itself, the agent's or QEMU's
    /// monitor's.
    fn from_peer(error: AgentError, socket: &Path, peer: Peer) -> CliError {
        peer_failure(&error, socket, peer).with_source(error)
    }
}

/// What a failure on the socket of `peer` means, and what to do.
fn peer_failure(error: &AgentError, socket: &Path, peer: Peer) -> CliError {
    let shown = socket.display();
    match (error, peer) {
        (AgentError::Connect { source, .. }, Peer::Qmp) => CliError::new(
            ErrorKind::AgentUnavailable,
            format!("cannot connect to QEMU's monitor socket {shown}: {source}"),
        )
        .with_hint("check the path, or the -qmp/-mon option QEMU was started with"),
        (AgentError::Timeout { after, .. }, Peer::Qmp) => CliError::new(
            ErrorKind::AgentTimeout,
            format!("QEMU's monitor on {shown} did not answer within {}", seconds(*after)),
        )
        .with_hint(
            "QEMU serves one QMP client at a time: check that no other client (libvirtd, a management tool) \
             holds it",
        ),
        (AgentError::Disconnected, Peer::Qmp) => CliError::new(
            ErrorKind::AgentDisconnected,
            format!("QEMU's monitor on {shown} closed the connection"),
        )
        .with_hint("QEMU may have exited"),
        (AgentError::Connect { source, .. }, Peer::Agent) => connect_failure(socket, source),
        (AgentError::Timeout { phase, after }, Peer::Agent) => {
            let within = seconds(*after);
            let (message, hint) = match phase {
                Phase::Connecting => (
                    format!(
                        "the agent socket {shown} stayed busy for {within}: its queue of clients \
                         waiting to be accepted was full"
                    ),
                    "other clients are connecting to it at the same time, and QEMU serves one at a time; \
                     raise --timeout, or run fewer at once",
                ),
                Phase::Handshake => (
                    format!("the agent on {shown} did not answer within {within}"),
                    "check that the QEMU Guest Agent runs in the guest and that no other client (libvirtd, \
                     another virtomate) holds the channel; raise --timeout if the guest is just slow",
                ),
                Phase::Sending(command) => (
                    format!("the agent on {shown} did not take the {command} request within {within}"),
                    "it may be stuck or out of memory in the guest",
                ),
                Phase::Reply(command) => (
                    format!("the agent on {shown} did not answer {command} within {within}"),
                    "raise --reply-timeout if the guest is slow",
                ),
            };
            CliError::new(ErrorKind::AgentTimeout, message).with_hint(hint)
        }
        (AgentError::BusyWithEarlierRequest { after, request, .. }, _) => CliError::new(
            ErrorKind::AgentTimeout,
            format!(
                "the agent on {shown} did not answer within {}: it is most likely still busy with a request \
                 of {:.1} MiB that process {} ({}) sent {:.1} s ago",
                seconds(*after),
                request.bytes as f64 / (1 << 20) as f64,
                request.pid,
                if request.sender_runs() { "still running" } else { "gone" },
                request.age().as_secs_f64()
            ),
        )
        .with_hint(
            "the agent reads a request whole before it answers anything else, also one whose sender has \
             gone; try again in a few seconds (or raise --timeout). Should it still not answer then, it may \
             have stopped in the guest",
        ),
        (AgentError::Busy { .. }, _) => CliError::new(ErrorKind::AgentTimeout, error.to_string()).with_hint(
            "virtomate processes take turns on a channel one exchange at a time, and that one kept its turn; \
             raise --timeout, or run fewer at once",
        ),
        (AgentError::Disconnected, Peer::Agent) => CliError::new(
            ErrorKind::AgentDisconnected,
            format!("the agent on {shown} closed the connection"),
        )
        .with_hint("the VM may have stopped or its agent restarted"),
        (
            AgentError::AgentTooOld {
                feature,
                needs: (major, minor),
                version,
            },
            _,
        ) => CliError::new(
            ErrorKind::AgentCommand,
            format!(
                "{feature} needs qemu-ga {major}.{minor} or newer, and the agent is {version}; \
                 nothing was started"
            ),
        )
        .with_hint("update qemu-ga in the guest, or run without it"),
        (AgentError::NotAnAgent { found }, _) => CliError::new(
            ErrorKind::AgentUnavailable,
            format!("{shown} is {found}, not the guest agent"),
        )
        .with_hint(
            "pass the agent's socket (the -chardev of the virtserialport named org.qemu.guest_agent.0) or \
             the VM's name",
        ),
        // The rest reads the same whichever peer caused it.
        (AgentError::Io(e), _) => {
            CliError::new(ErrorKind::AgentUnavailable, format!("I/O error on {shown}: {e}"))
        }
        (AgentError::ReplyTooLong { limit }, _) => {
            protocol_violation(socket, peer, &format!("a reply exceeded {limit} bytes"))
        }
        (AgentError::Malformed { command, reason }, _) => {
            protocol_violation(socket, peer, &format!("{command}: {reason}"))
        }
        (AgentError::RequestTooLarge { len, limit }, _) => CliError::input_too_large(*len, *limit, false),
        (AgentError::Libvirt { code, message, .. }, _) => libvirt_error(*code, message, peer),
        (AgentError::Agent { command, desc, .. }, _) => CliError::command_refused(command, desc, peer),
        (AgentError::EndNotReported { pid, waited }, _) => CliError::new(
            ErrorKind::AgentTimeout,
            format!(
                "the agent did not report the end of the program (guest pid {pid}) within {} of SIGKILL to \
                 it and what it started: a process outside its tree still holds its output",
                seconds(*waited)
            ),
        )
        .with_hint("its output is lost; `ls -l /proc/*/fd` in the guest shows who holds the pipe"),
    }
}

fn protocol_violation(socket: &Path, peer: Peer, reason: &str) -> CliError {
    CliError::new(
        ErrorKind::Protocol,
        format!(
            "{peer} on {} sent a reply that violates the protocol: {reason}",
            socket.display()
        ),
    )
}

/// `N s`, as the messages give a time allowed.
fn seconds(after: Duration) -> String {
    format!("{} s", after.as_secs_f64())
}

/// libvirt's message, and for the failures its size limits cause, which
/// limit it was and what to do about it.
fn libvirt_error(code: i32, message: &str, peer: Peer) -> CliError {
    use virtomate_protocol::libvirt::{AGENT_RESPONSE_MAX, ERR_INTERNAL_ERROR, ERR_RPC, STRING_MAX};
    // VIR_ERR_SYSTEM_ERROR, for "No complete agent response found in N bytes".
    const ERR_SYSTEM_ERROR: i32 = 38;
    // The codes libvirt gives a failure its size limits cause.
    let sized = matches!(code, ERR_INTERNAL_ERROR | ERR_SYSTEM_ERROR | ERR_RPC);
    let reply_over_cap = sized && message.contains("No complete agent response");
    let string_over_cap = sized && message.contains("payload");
    let error = CliError::new(ErrorKind::Libvirt, message);
    match peer {
        Peer::Agent if reply_over_cap => error.with_hint(format!(
            "libvirt refuses agent replies over {} MiB, and now takes this domain's agent for broken \
             until the domain restarts; give the domain a second agent channel to go around libvirt \
             (see README)",
            AGENT_RESPONSE_MAX >> 20
        )),
        Peer::Agent if string_over_cap => error.with_hint(format!(
            "libvirt's RPC carries strings of at most {} MiB, and the agent's reply (the program's output \
             in Base64, for guest-run) was longer, so libvirtd dropped it; give the domain a second agent \
             channel to go around libvirt (see README)",
            STRING_MAX >> 20
        )),
        Peer::Qmp if string_over_cap => error.with_hint(format!(
            "libvirt's RPC carries strings of at most {} MiB: ask QEMU for less at a time",
            STRING_MAX >> 20
        )),
        _ => error,
    }
}

/// The hint for a socket this user may not open.
pub const PERMISSION_HINT: &str = "run as a user who may open the socket (often root)";

fn connect_failure(path: &Path, source: &std::io::Error) -> CliError {
    use std::io::ErrorKind::*;
    use std::os::unix::fs::FileTypeExt;
    let shown = path.display();
    let is_socket = std::fs::metadata(path).map(|meta| meta.file_type().is_socket());
    let hint = match (source.kind(), is_socket) {
        (PermissionDenied, _) => PERMISSION_HINT.to_owned(),
        (_, Ok(false)) => {
            format!("{shown} is not a UNIX socket; pass the agent's socket path or the VM's name")
        }
        (NotFound, _) => "check the path; for a VM, check its -chardev socket option".to_owned(),
        (ConnectionRefused, _) => {
            "nothing listens on it: is the VM (or qemu-ga -m unix-listen) still running?".to_owned()
        }
        _ => "check that the VM runs and that the path is its agent socket".to_owned(),
    };
    CliError::new(
        ErrorKind::AgentUnavailable,
        format!("cannot connect to the agent socket {shown}: {source}"),
    )
    .with_hint(hint)
}

/// What `guest-run` was doing when SIGINT or SIGTERM ended it: what the
/// user may have to clean up in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interruption {
    /// Nothing was sent to start the program.
    Connecting,
    /// The start was being prepared (the agent's commands checked, the
    /// private directory of followed output being made): nothing was
    /// started.
    Preparing,
    /// The request to start it was being sent and is not whole: the agent
    /// acts only on a whole request, so nothing was started.
    SendingStart,
    /// It runs still: a status asked after the interruption said so.
    StillRunning { pid: i64 },
    /// It ended just as the interruption came: the status that said so was
    /// being read, and the agent, having reported its end, forgot it.
    EndedJustNow { pid: i64 },
    /// It ended as the interruption came, as a status asked after it said.
    Ended { pid: i64 },
    /// The request was (perhaps partly) sent, its reply not yet read.
    Starting,
    /// As `Starting`, for a followed program: what the start may have
    /// started was stopped, its private directory removed.
    StartUndone,
    /// The program runs in the guest as `pid`.
    Running { pid: i64 },
    /// It had a time limit or followed output, and was stopped with what it
    /// started: `how` says with what, or that it had ended by itself.
    Stopped { pid: i64, how: &'static str },
}

impl std::fmt::Display for Interruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Interruption::Connecting => {
                f.write_str("interrupted while connecting to the agent; nothing was started in the guest")
            }
            Interruption::Preparing => f.write_str(
                "interrupted while preparing the program's start (checking the agent's commands, making the \
                 private directory for its output in the guest); nothing was started in the guest",
            ),
            Interruption::SendingStart => f.write_str(
                "interrupted while the request to start the program was being sent; the agent acts only on a \
                 whole request, so nothing was started in the guest",
            ),
            Interruption::StillRunning { pid } => write!(
                f,
                "interrupted while waiting for the program (guest pid {pid}); \
                 it is still running in the guest"
            ),
            Interruption::EndedJustNow { pid } => write!(
                f,
                "interrupted just as the program (guest pid {pid}) ended: the agent had reported its end and \
                 forgotten it, so its result is lost; it is no longer running, and its pid may be reused"
            ),
            Interruption::Ended { pid } => write!(
                f,
                "interrupted as the program (guest pid {pid}) ended; it is no longer running (its result is \
                 not shown: the run was interrupted)"
            ),
            Interruption::Starting => f.write_str(
                "interrupted while the agent was starting the program; it may have started in the guest, \
                 under a pid the agent did not tell",
            ),
            Interruption::StartUndone => f.write_str(
                "interrupted while the agent was starting the program; had it started, it was stopped, and \
                 its private directory in the guest was removed",
            ),
            Interruption::Running { pid } => write!(
                f,
                "interrupted while waiting for the program (guest pid {pid}); \
                 it may still be running in the guest"
            ),
            Interruption::Stopped { pid, how } => {
                write!(f, "interrupted while waiting for the program (guest pid {pid}), which {how}")
            }
        }
    }
}

/// Who is at the other end of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Agent,
    Qmp,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Peer::Agent => "the agent",
            Peer::Qmp => "QEMU's monitor",
        })
    }
}

/// The JSON form of an error: `{"message": ..., "type": ...}`.
#[derive(Serialize)]
pub struct ErrorJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

impl From<&CliError> for ErrorJson {
    fn from(error: &CliError) -> Self {
        ErrorJson {
            class: error.class.clone(),
            message: error.to_string(),
            kind: error.json_type(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;

    const LIBVIRTD: &str = "/run/libvirt/libvirt-sock";

    fn through_libvirtd(error: AgentError, peer: Peer) -> (&'static str, String) {
        let error = CliError::from_libvirtd(error, Path::new(LIBVIRTD), peer);
        (error.json_type(), error.to_string())
    }

    #[test]
    fn what_hangs_up_or_times_out_through_libvirtd_is_libvirtd() {
        let (kind, message) = through_libvirtd(AgentError::Disconnected, Peer::Agent);
        assert_eq!(kind, "AgentDisconnected");
        assert!(
            message.starts_with("libvirtd closed the connection on /run/libvirt/libvirt-sock"),
            "{message}"
        );

        let handshake = AgentError::Timeout {
            phase: Phase::Handshake,
            after: Duration::from_secs(5),
        };
        let (kind, message) = through_libvirtd(handshake, Peer::Agent);
        assert_eq!(kind, "AgentTimeout");
        assert!(message.contains("libvirtd (or virtqemud) runs"), "{message}");

        let reply = AgentError::Timeout {
            phase: Phase::Reply("query-status".into()),
            after: Duration::from_secs(30),
        };
        let (_, message) = through_libvirtd(reply, Peer::Qmp);
        assert!(message.contains("waits for QEMU itself"), "{message}");
    }

    #[test]
    fn a_handshake_unanswered_after_a_dead_senders_big_request_names_it() {
        let sent_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            - 3000;
        let error = AgentError::BusyWithEarlierRequest {
            path: "/run/vm/qga.sock".into(),
            after: Duration::from_secs(5),
            request: virtomate_protocol::RequestInFlight {
                bytes: 22369718,
                pid: u32::MAX,
                started: None,
                sent_ms,
            },
        };
        let error = CliError::from_agent(error, Path::new("/run/vm/qga.sock"));
        assert_eq!(error.json_type(), "AgentTimeout");
        let message = error.to_string();
        assert!(
            message.starts_with(
                "the agent on /run/vm/qga.sock did not answer within 5 s: it is most likely still busy \
                 with a request of 21.3 MiB that process 4294967295 (gone) sent 3."
            ),
            "{message}"
        );
        assert!(message.contains("try again in a few seconds"), "{message}");
        assert!(
            !message.contains("check that the QEMU Guest Agent runs"),
            "{message}"
        );
    }

    #[test]
    fn libvirts_size_limits_advise_per_peer() {
        let too_big = || AgentError::Libvirt {
            code: 39,
            domain: 7,
            message: "Unable to encode message payload".into(),
        };
        let (kind, message) = through_libvirtd(too_big(), Peer::Agent);
        assert_eq!(kind, "libvirtError");
        assert!(message.contains("second agent channel"), "{message}");
        let (_, message) = through_libvirtd(too_big(), Peer::Qmp);
        assert!(message.contains("ask QEMU for less"), "{message}");
    }

    #[test]
    fn qemus_refusal_through_libvirtd_keeps_its_class() {
        let refusal = AgentError::Agent {
            command: "no-such-command".into(),
            class: "CommandNotFound".into(),
            desc: "The command no-such-command has not been found".into(),
        };
        let error = CliError::from_libvirtd(refusal, Path::new(LIBVIRTD), Peer::Qmp);
        assert_eq!(error.json_type(), "AgentCommandError");
        assert!(
            error.to_string().starts_with("unable to execute QMP command"),
            "{error}"
        );
    }

    #[test]
    fn input_over_libvirts_string_limit_names_libvirtd_and_the_way_around() {
        let too_big = AgentError::RequestTooLarge {
            len: 5 << 20,
            limit: virtomate_protocol::libvirt::AGENT_COMMAND_MAX,
        };
        let (kind, message) = through_libvirtd(too_big, Peer::Agent);
        assert_eq!(kind, "InputTooLarge");
        assert!(message.contains("through libvirtd"), "{message}");
        assert!(message.contains("at most 192 KiB"), "{message}");
        assert!(message.contains("second agent channel"), "{message}");
    }

    #[test]
    fn each_of_libvirts_size_limits_is_named() {
        let error = |code, message: &str| AgentError::Libvirt {
            code,
            domain: 10,
            message: message.to_owned(),
        };
        let (_, message) = through_libvirtd(
            error(38, "No complete agent response found in 10485760 bytes"),
            Peer::Agent,
        );
        assert!(message.contains("over 10 MiB"), "{message}");
        assert!(message.contains("until the domain restarts"), "{message}");
        let (_, message) = through_libvirtd(error(39, "Unable to encode message payload"), Peer::Agent);
        assert!(message.contains("at most 4 MiB"), "{message}");
        assert!(!message.contains("10 MiB"), "{message}");
        // Anything else is libvirt's own word.
        let (kind, message) = through_libvirtd(error(42, "Domain not found"), Peer::Agent);
        assert_eq!((kind, message.as_str()), ("libvirtError", "Domain not found"));
    }

    #[test]
    fn qemus_monitor_is_named_as_such() {
        let socket = Path::new("/run/vm/qmp.sock");
        let qmp = |error| CliError::from_raw(error, socket, Peer::Qmp);
        let error = qmp(AgentError::Disconnected);
        assert_eq!(error.json_type(), "AgentDisconnected");
        assert!(
            error
                .to_string()
                .starts_with("QEMU's monitor on /run/vm/qmp.sock closed"),
            "{error}"
        );
        let error = qmp(AgentError::Malformed {
            command: "query-status".into(),
            reason: "missing field `status`".into(),
        });
        assert_eq!(error.json_type(), "ProtocolError");
        assert!(
            error
                .to_string()
                .starts_with("QEMU's monitor on /run/vm/qmp.sock sent"),
            "{error}"
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let error = qmp(AgentError::Connect {
            path: socket.into(),
            source: refused,
        });
        assert_eq!(error.json_type(), "AgentUnavailable");
        assert!(error.to_string().contains("-qmp/-mon option"), "{error}");
        let error = CliError::from_agent(AgentError::Disconnected, Path::new("/run/vm/qga.sock"));
        assert!(
            error
                .to_string()
                .starts_with("the agent on /run/vm/qga.sock closed"),
            "{error}"
        );
    }

    #[test]
    fn an_interruption_says_what_may_be_left_in_the_guest() {
        let message = |stage| CliError::interrupted(stage).to_string();
        assert!(message(Interruption::Connecting).contains("nothing was started"));
        let preparing = message(Interruption::Preparing);
        assert!(
            preparing.contains("while preparing the program's start")
                && preparing.contains("nothing was started"),
            "{preparing}"
        );
        assert!(message(Interruption::Starting).contains("may have started"));
        assert!(message(Interruption::StartUndone).contains("had it started, it was stopped"));
        assert!(message(Interruption::Running { pid: 77 }).contains("guest pid 77"));
        assert!(message(Interruption::SendingStart).contains("nothing was started"));
        assert!(message(Interruption::StillRunning { pid: 7 }).contains("it is still running"));
        assert!(message(Interruption::EndedJustNow { pid: 7 }).contains("no longer running"));
        assert!(message(Interruption::Ended { pid: 7 }).contains("no longer running"));
        // Stopped, it does not also say that it may still run.
        let stopped = message(Interruption::Stopped {
            pid: 7,
            how: "was stopped with SIGTERM",
        });
        assert!(
            stopped.ends_with("(guest pid 7), which was stopped with SIGTERM"),
            "{stopped}"
        );
        assert!(!stopped.contains("may still be running"), "{stopped}");
    }

    #[test]
    fn input_too_large_reads_the_same_from_each_place_but_for_its_limit() {
        let direct = CliError::input_too_large(90 << 20, 64 << 20, false);
        let libvirtd = CliError::input_too_large(300 << 10, 192 << 10, true);
        for (error, limit) in [(&direct, "at most 64 MiB"), (&libvirtd, "at most 192 KiB")] {
            let message = error.to_string();
            assert_eq!(error.json_type(), "InputTooLarge");
            assert!(
                message.starts_with("standard input is too large for the agent"),
                "{message}"
            );
            assert!(
                message.contains(limit) && message.contains("; nothing was sent"),
                "{message}"
            );
        }
        assert!(libvirtd
            .hint
            .as_deref()
            .unwrap_or_default()
            .contains("second agent channel"));
    }
}
