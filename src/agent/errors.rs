//! What an agent's failures mean to the user: the same protocol error
//! reads differently on a direct channel and through libvirtd, and once a
//! program runs in the guest, it names its pid.

use std::path::PathBuf;

use crate::domain::socket_holders;
use crate::error::{CliError, ErrorKind, Peer};

/// Turns the protocol's errors on one agent channel into the CLI's.
#[derive(Debug, Clone)]
pub struct AgentErrors {
    /// The agent's socket, or libvirtd's.
    pub socket: PathBuf,
    pub through_libvirtd: bool,
}

impl AgentErrors {
    /// The agent acts on a request once it has read all of it: a timeout
    /// or a hang-up after that leaves the program perhaps started, under a
    /// pid the agent never told. Say so, since running it again may run it
    /// twice.
    pub fn error_while_starting(&self, error: virtomate_protocol::Error) -> CliError {
        use virtomate_protocol::{Error as AgentError, Phase};
        let request_was_whole = matches!(
            error,
            AgentError::Timeout {
                phase: Phase::Reply(_),
                ..
            } | AgentError::Disconnected
        );
        let error = self.error(error);
        if request_was_whole {
            error.with_hint(
                "the request had reached the agent, so the program may have started in the guest, \
                 under a pid the agent did not tell: check before running it again",
            )
        } else {
            error
        }
    }

    /// Once the program runs, an agent that forgets it, or stops
    /// answering, has most likely restarted (or died) in the guest: say
    /// so, and that the program may live on.
    pub fn error_while_running(&self, error: virtomate_protocol::Error, pid: i64) -> CliError {
        use virtomate_protocol::{Error as AgentError, Phase};
        let shown = self.socket.display();
        match error {
            // Let go of between polls, the channel's socket is gone: the
            // VM stopped while the program ran.
            AgentError::Connect { ref source, .. } if !self.through_libvirtd => CliError::new(
                ErrorKind::AgentDisconnected,
                format!(
                    "the agent socket {shown} went away while the program (guest pid {pid}) ran: {source}"
                ),
            )
            .with_hint("the VM may have stopped; the program's result is lost")
            .with_source(error),
            AgentError::Agent { ref desc, .. } => CliError::new(
                ErrorKind::AgentDisconnected,
                format!("the agent on {shown} no longer knows the program (guest pid {pid}): {desc}"),
            )
            .with_hint("it has probably restarted in the guest, and the program's result is lost")
            .with_source(error),
            // Between polls the channel may have been let go of: a new
            // connection that gets no answer is the same silent agent.
            AgentError::Timeout {
                phase: ref phase @ (Phase::Reply(_) | Phase::Handshake),
                after,
            } if !self.through_libvirtd => CliError::new(
                ErrorKind::AgentTimeout,
                format!(
                    "the agent on {shown} did not answer {} within {} s \
                     while the program (guest pid {pid}) ran",
                    match phase {
                        Phase::Reply(command) => command.as_str(),
                        _ => "guest-sync-delimited",
                    },
                    after.as_secs_f64()
                ),
            )
            .with_hint(
                "it may have stopped or restarted in the guest, \
                 or the guest is very slow (raise --reply-timeout)",
            )
            .with_source(error),
            AgentError::Disconnected if !self.through_libvirtd => CliError::new(
                ErrorKind::AgentDisconnected,
                format!("the agent on {shown} closed the connection while the program (guest pid {pid}) ran"),
            )
            .with_hint("the VM may have stopped or its agent restarted; the program's result is lost")
            .with_source(error),
            other => self.error(other),
        }
    }

    pub fn error(&self, error: virtomate_protocol::Error) -> CliError {
        use virtomate_protocol::{Error as AgentError, Phase};
        if self.through_libvirtd {
            return CliError::from_libvirtd(error, &self.socket, Peer::Agent);
        }
        // A channel that did not answer may be held by a client that does
        // not take turns (socat, an old virtomate): name it.
        let silent = matches!(
            error,
            AgentError::Timeout {
                phase: Phase::Handshake | Phase::Connecting,
                ..
            }
        );
        let error = CliError::from_agent(error, &self.socket);
        let holders = if silent {
            socket_holders::holders(&self.socket)
        } else {
            Vec::new()
        };
        if holders.is_empty() {
            error
        } else {
            error.with_hint(format!("the channel is {}", socket_holders::describe(&holders)))
        }
    }

    /// Like [`DomainAgent::error`](super::DomainAgent::error), keeping the class of the agent's error reply,
    /// which the raw commands show.
    pub fn raw_error(&self, error: virtomate_protocol::Error) -> CliError {
        match error {
            refusal @ virtomate_protocol::Error::Agent { .. } => {
                CliError::from_raw(refusal, &self.socket, Peer::Agent)
            }
            other => self.error(other),
        }
    }
}
