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

    #[error("{peer} on {} sent a reply that violates the protocol: {reason}", path.display())]
    Protocol {
        path: PathBuf,
        reason: String,
        peer: Peer,
    },

    /// The program ran, but its output is not UTF-8 (the message says
    /// which stream, and how the program ended).
    #[error("{0}")]
    Encoding(String),

    #[error("standard input is too large for the agent: {0}")]
    InputTooLarge(String),

    #[error("{0}")]
    Interrupted(Interruption),

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
            CliError::Interrupted(_) => "Interrupted",
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
            other => CliError::from_peer(other, socket, peer),
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
            AgentError::RequestTooLarge { len, limit } => CliError::InputTooLarge(format!(
                "the request would be {len} bytes (the input in Base64 included), and through libvirtd, which holds the agent channel, one request is at most {} KiB (a little under {} KiB of input): libvirt stalls on longer agent commands; nothing was sent; give the domain a second agent channel to pass up to 48 MiB (see README)",
                limit >> 10,
                (limit >> 10) * 3 / 4
            )),
            AgentError::Libvirt { code, message, .. } => CliError::Libvirt(libvirt_advice(code, message, peer)),
            refusal @ AgentError::Agent { .. } if peer == Peer::Qmp => CliError::from_raw(refusal, socket, peer),
            other => CliError::from_peer(other, socket, peer),
        }
    }

    /// Puts an agent-side failure in terms of the socket it happened on.
    pub fn from_agent(error: AgentError, socket: &std::path::Path) -> CliError {
        CliError::from_peer(error, socket, Peer::Agent)
    }

    /// A failure on the socket of `peer` itself, the agent's or QEMU's
    /// monitor's.
    fn from_peer(error: AgentError, socket: &std::path::Path, peer: Peer) -> CliError {
        let shown = socket.display();
        match (error, peer) {
            (AgentError::Connect { source, .. }, Peer::Qmp) => CliError::AgentUnavailable(format!(
                "cannot connect to QEMU's monitor socket {shown}: {source}; check the path, or the -qmp/-mon option QEMU was started with"
            )),
            (AgentError::Timeout { after, .. }, Peer::Qmp) => CliError::AgentTimeout(format!(
                "QEMU's monitor on {shown} did not answer within {} s; QEMU serves one QMP client at a time: check that no other client (libvirtd, a management tool) holds it",
                after.as_secs_f64()
            )),
            (AgentError::Disconnected, Peer::Qmp) => CliError::AgentDisconnected(format!(
                "QEMU's monitor on {shown} closed the connection; QEMU may have exited"
            )),
            (AgentError::Connect { source, .. }, Peer::Agent) => {
                CliError::AgentUnavailable(connect_advice(socket, &source))
            }
            (AgentError::Timeout { phase, after }, Peer::Agent) => CliError::AgentTimeout(match phase {
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
            (AgentError::Disconnected, Peer::Agent) => CliError::AgentDisconnected(format!(
                "the agent on {shown} closed the connection; the VM may have stopped or its agent restarted"
            )),
            // The rest reads the same whichever peer caused it.
            (AgentError::Io(e), _) => CliError::AgentUnavailable(format!("I/O error on {shown}: {e}")),
            (AgentError::ReplyTooLong { limit }, _) => CliError::Protocol {
                path: socket.to_owned(),
                reason: format!("a reply exceeded {limit} bytes"),
                peer,
            },
            (AgentError::Malformed { command, reason }, _) => CliError::Protocol {
                path: socket.to_owned(),
                reason: format!("{command}: {reason}"),
                peer,
            },
            (AgentError::RequestTooLarge { len, limit }, _) => CliError::InputTooLarge(format!(
                "with the input in Base64 the request would be {len} bytes; the agent takes at most {} MiB (a little under {} MiB of input); nothing was sent",
                limit >> 20,
                (limit >> 20) / 4 * 3
            )),
            (AgentError::Libvirt { code, message, .. }, _) => {
                CliError::Libvirt(libvirt_advice(code, message, peer))
            }
            (AgentError::Agent { command, desc, .. }, _) => CliError::AgentCommand {
                command,
                desc,
                class: None,
                qmp: peer == Peer::Qmp,
            },
        }
    }
}

/// libvirt's message, and for the failures its size limits cause, which
/// limit it was and what to do about it.
fn libvirt_advice(code: i32, message: String, peer: Peer) -> String {
    use virtomate_protocol::libvirt::{AGENT_RESPONSE_MAX, ERR_INTERNAL_ERROR, ERR_RPC, STRING_MAX};
    // VIR_ERR_SYSTEM_ERROR, for "No complete agent response found in N bytes".
    const ERR_SYSTEM_ERROR: i32 = 38;
    // The codes libvirt gives a failure its size limits cause.
    let sized = matches!(code, ERR_INTERNAL_ERROR | ERR_SYSTEM_ERROR | ERR_RPC);
    let reply_over_cap = sized && message.contains("No complete agent response");
    let string_over_cap = sized && message.contains("payload");
    match peer {
        Peer::Agent if reply_over_cap => format!(
            "{message}; libvirt refuses agent replies over {} MiB, and now takes this domain's agent for broken until the domain restarts; give the domain a second agent channel to go around libvirt (see README)",
            AGENT_RESPONSE_MAX >> 20
        ),
        Peer::Agent if string_over_cap => format!(
            "{message}; libvirt's RPC carries strings of at most {} MiB, and the agent's reply (the program's output in Base64, for guest-run) was longer, so libvirtd dropped it; give the domain a second agent channel to go around libvirt (see README)",
            STRING_MAX >> 20
        ),
        Peer::Qmp if string_over_cap => format!(
            "{message}; libvirt's RPC carries strings of at most {} MiB: ask QEMU for less at a time",
            STRING_MAX >> 20
        ),
        _ => message,
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

/// What `guest-run` was doing when SIGINT or SIGTERM ended it: what the
/// user may have to clean up in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interruption {
    /// Nothing was sent to start the program.
    Connecting,
    /// The request was (perhaps partly) sent, its reply not yet read.
    Starting,
    /// The program runs in the guest as `pid`.
    Running { pid: i64 },
}

impl std::fmt::Display for Interruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Interruption::Connecting => {
                f.write_str("interrupted while connecting to the agent; nothing was started in the guest")
            }
            Interruption::Starting => f.write_str(
                "interrupted while the agent was starting the program; it may have started in the guest, under a pid the agent did not tell",
            ),
            Interruption::Running { pid } => write!(
                f,
                "interrupted while waiting for the program (guest pid {pid}); it may still be running in the guest"
            ),
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
        assert_eq!(error.kind(), "AgentDisconnected");
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
        assert_eq!(error.kind(), "ProtocolError");
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
        assert_eq!(error.kind(), "AgentUnavailable");
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
        let message = |stage| CliError::Interrupted(stage).to_string();
        assert!(message(Interruption::Connecting).contains("nothing was started"));
        assert!(message(Interruption::Starting).contains("may have started"));
        assert!(message(Interruption::Running { pid: 77 }).contains("guest pid 77"));
    }
}
