//! The CLI's errors: each variant is one situation the user can act on, and
//! maps to the `type` of the JSON error and to the exit status.

use std::path::PathBuf;

use serde::Serialize;
use virtomate_protocol::{Error as AgentError, Phase};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("Domain '{0}' does not exist")]
    NotFound(String),

    #[error("{0}")]
    IllegalState(String),

    /// A bad argument that clap could not catch: reported like a usage error.
    #[error("{0}")]
    Usage(String),

    #[error(
        "Domain '{name}' matches several QEMU processes (pids {pids}); pass the agent's socket path instead"
    )]
    Ambiguous { name: String, pids: String },

    #[error("{0}")]
    AgentUnavailable(String),

    #[error("{0}")]
    AgentTimeout(String),

    #[error("{0}")]
    AgentDisconnected(String),

    #[error("unable to execute {} command '{command}': {desc}", if *qmp { "QMP" } else { "QEMU agent" })]
    AgentCommand {
        command: String,
        desc: String,
        /// The agent's error class, shown by the raw commands (guest-cmd,
        /// qmp) only: guest-run's error keeps the original's two keys.
        class: Option<String>,
        /// Whether QEMU's monitor refused it, rather than the agent.
        qmp: bool,
    },

    #[error("the agent on {} sent a reply that violates the protocol: {reason}", path.display())]
    Protocol { path: PathBuf, reason: String },

    #[error("{stream} of the program is not valid UTF-8; run again with --encode to get it as Base64")]
    Encoding { stream: &'static str },

    #[error("standard input is too large for the agent: {0}")]
    InputTooLarge(String),

    #[error(
        "interrupted while waiting for the program (guest pid {pid}); it may still be running in the guest"
    )]
    Interrupted { pid: i64 },

    /// libvirtd refused a call made on our behalf (its own message).
    #[error("{0}")]
    Libvirt(String),

    #[error("{0}")]
    Io(String),

    /// `guest-ping` got no answer: exit 125 and print nothing.
    #[error("the agent did not answer: {0}")]
    NoAnswer(Box<CliError>),
}

impl CliError {
    /// The `type` member of the JSON error, documented in README.md.
    pub fn kind(&self) -> &'static str {
        match self {
            CliError::NotFound(_) => "NotFoundError",
            CliError::Ambiguous { .. } => "AmbiguousDomainError",
            CliError::IllegalState(_) => "IllegalStateError",
            CliError::Usage(_) => "UsageError",
            CliError::AgentUnavailable(_) => "AgentUnavailable",
            CliError::AgentTimeout(_) => "AgentTimeout",
            CliError::AgentDisconnected(_) => "AgentDisconnected",
            CliError::AgentCommand { .. } => "AgentCommandError",
            CliError::Protocol { .. } => "ProtocolError",
            CliError::Encoding { .. } => "EncodingError",
            CliError::InputTooLarge(_) => "InputTooLarge",
            CliError::Interrupted { .. } => "Interrupted",
            CliError::Libvirt(_) => "libvirtError",
            CliError::Io(_) => "IoError",
            CliError::NoAnswer(inner) => inner.kind(),
        }
    }

    /// Errors end the process with status 1, except a silent agent for
    /// `guest-ping` (125); 2 is left to usage errors, as clap reports them.
    pub fn exit_status(&self) -> u8 {
        match self {
            CliError::NoAnswer(_) => 125,
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }

    /// Whether the error is told by the exit status alone.
    pub fn is_silent(&self) -> bool {
        matches!(self, CliError::NoAnswer(_))
    }

    /// Like [`CliError::from_agent`], keeping the error class of an error
    /// reply and speaking of QEMU's monitor where `peer` is QMP.
    pub fn from_raw(error: AgentError, socket: &std::path::Path, peer: Peer) -> CliError {
        match error {
            AgentError::Agent { command, class, desc } => CliError::AgentCommand {
                command,
                desc,
                class: Some(class),
                qmp: peer == Peer::Qmp,
            },
            AgentError::Timeout { after, .. } if peer == Peer::Qmp => CliError::AgentTimeout(format!(
                "QEMU's monitor on {} did not answer within {} s; QEMU serves one QMP client at a time: check that no other client (libvirtd, a management tool) holds it",
                socket.display(),
                after.as_secs_f64()
            )),
            other => CliError::from_agent(other, socket),
        }
    }

    /// A failure on the way through libvirtd's RPC `socket` to `peer`:
    /// what timed out or hung up is libvirtd, not the agent or QEMU.
    pub fn from_libvirtd(error: AgentError, socket: &std::path::Path, peer: Peer) -> CliError {
        let shown = socket.display();
        let over = |after: std::time::Duration| after.as_secs_f64();
        match error {
            AgentError::Timeout {
                phase: Phase::Connecting | Phase::Handshake,
                after,
            } => CliError::AgentTimeout(format!(
                "libvirtd on {shown} did not answer within {} s; check that libvirtd (or virtqemud) runs and is not stuck",
                over(after)
            )),
            AgentError::Timeout { after, .. } => CliError::AgentTimeout(format!(
                "libvirtd on {shown} did not answer within {} s; it waits for {} itself, which may be stuck; raise --reply-timeout if the guest is slow",
                over(after),
                match peer {
                    Peer::Agent => "the guest agent",
                    Peer::Qmp => "QEMU",
                }
            )),
            AgentError::Disconnected => CliError::AgentDisconnected(format!(
                "libvirtd closed the connection on {shown}; it may have restarted, or the domain stopped"
            )),
            AgentError::Libvirt { code: 1 | 38 | 39, message, .. }
                if peer == Peer::Qmp && (message.contains("bytes") || message.contains("payload")) =>
            {
                CliError::Libvirt(format!(
                    "{message}; libvirt limits RPC strings to 4 MiB: ask QEMU for less at a time"
                ))
            }
            refusal @ AgentError::Agent { .. } if peer == Peer::Qmp => CliError::from_raw(refusal, socket, peer),
            other => CliError::from_agent(other, socket),
        }
    }

    /// Puts an agent-side failure in terms of the socket it happened on.
    pub fn from_agent(error: AgentError, socket: &std::path::Path) -> CliError {
        let path = socket.to_owned();
        let shown = socket.display();
        match error {
            AgentError::Connect { source, .. } => CliError::AgentUnavailable(connect_advice(socket, &source)),
            AgentError::Timeout { phase, after } => CliError::AgentTimeout(match phase {
                Phase::Connecting | Phase::Handshake => format!(
                    "the agent on {shown} did not answer within {} s; check that the QEMU Guest Agent runs in the guest and that no other client (libvirtd, another virtomate) holds the channel; raise --timeout if the guest is just slow",
                    after.as_secs_f64()
                ),
                Phase::Sending(command) => format!(
                    "the agent on {shown} did not take the {command} request within {} s; it may be stuck or out of memory in the guest",
                    after.as_secs_f64()
                ),
                Phase::Reply(command) => format!(
                    "the agent on {shown} did not answer {command} within {} s; raise --reply-timeout if the guest is slow",
                    after.as_secs_f64()
                ),
            }),
            AgentError::Disconnected => CliError::AgentDisconnected(format!(
                "the agent on {shown} closed the connection; the VM may have stopped or its agent restarted"
            )),
            AgentError::Io(e) => CliError::AgentUnavailable(format!("I/O error on {shown}: {e}")),
            AgentError::ReplyTooLong { limit } => CliError::Protocol {
                path,
                reason: format!("a reply exceeded {limit} bytes"),
            },
            AgentError::Malformed { command, reason } => CliError::Protocol {
                path,
                reason: format!("{command}: {reason}"),
            },
            AgentError::RequestTooLarge { len, limit } => CliError::InputTooLarge(format!(
                "with the input in Base64 the request would be {len} bytes; the agent takes at most {} MiB (about {} MiB of input); nothing was sent",
                limit >> 20,
                (limit >> 20) / 4 * 3
            )),
            AgentError::Libvirt { code, message, .. } => CliError::Libvirt(match code {
                // VIR_ERR_INTERNAL_ERROR for a reply over libvirt's cap, RPC
                // errors for a string over its RPC limit.
                1 | 38 | 39 if message.contains("bytes") || message.contains("payload") => format!(
                    "{message}; libvirt limits agent replies to 10 MiB and RPC strings to 4 MiB (Base64 included): give the domain a second agent channel to go around libvirt (see README)"
                ),
                _ => message,
            }),
            AgentError::Agent { command, desc, .. } => CliError::AgentCommand {
                command,
                desc,
                class: None,
                qmp: false,
            },
        }
    }
}

fn connect_advice(path: &std::path::Path, source: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    use std::os::unix::fs::FileTypeExt;
    let shown = path.display();
    let is_socket = std::fs::metadata(path).map(|meta| meta.file_type().is_socket());
    let hint = match (source.kind(), is_socket) {
        (PermissionDenied, _) => "run as a user who may open the socket (often root)".to_owned(),
        (_, Ok(false)) => {
            format!("{shown} is not a UNIX socket; pass the agent's socket path or the VM's name")
        }
        (NotFound, _) => "check the path; for a VM, check its -chardev socket option".to_owned(),
        (ConnectionRefused, _) => {
            "nothing listens on it: is the VM (or qemu-ga -m unix-listen) still running?".to_owned()
        }
        _ => "check that the VM runs and that the path is its agent socket".to_owned(),
    };
    format!("cannot connect to the agent socket {shown}: {source}; {hint}")
}

/// Who is at the other end of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Agent,
    Qmp,
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
        let class = match error {
            CliError::AgentCommand { class, .. } => class.clone(),
            _ => None,
        };
        ErrorJson {
            class,
            message: error.to_string(),
            kind: error.kind(),
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
        (error.kind(), error.to_string())
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
        assert_eq!(error.kind(), "AgentCommandError");
        assert!(
            error.to_string().starts_with("unable to execute QMP command"),
            "{error}"
        );
    }
}
