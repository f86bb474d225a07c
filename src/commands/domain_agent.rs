//! Reaching the agent of a domain, whichever way it is reached, with the
//! socket it was reached on so that errors can name it.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use virtomate_protocol::libvirt::LibvirtAgent;
use virtomate_protocol::qga::{Command, GuestExec, GuestExecReply};
use virtomate_protocol::{wait_for_exit, Agent, AnyAgent, ClientOptions, Finished, PollSchedule, QgaClient};

use super::Context;
use crate::domain::{self, Domain, Route, Scope};
use crate::error::{CliError, ErrorKind, Peer};

/// The agent of a domain, synchronised and ready.
pub struct DomainAgent {
    agent: AnyAgent,
    socket: PathBuf,
}

impl DomainAgent {
    pub async fn connect(domain: &str, context: &Context) -> Result<DomainAgent, CliError> {
        DomainAgent::connect_with(domain, &context.scope, context.options.clone()).await
    }

    pub async fn connect_with(
        domain: &str,
        scope: &Scope,
        options: ClientOptions,
    ) -> Result<DomainAgent, CliError> {
        let found = domain::find(domain, scope)?;
        let route = found.agent_route()?;
        DomainAgent::connect_to(&found, route, scope, options).await
    }

    /// Connects to the agent of `found` over `route`, as chosen by
    /// [`Domain::agent_route`] or, for `doctor`, the channel it examined.
    pub async fn connect_to(
        found: &Domain,
        route: Route,
        scope: &Scope,
        options: ClientOptions,
    ) -> Result<DomainAgent, CliError> {
        match route {
            Route::Direct(socket) => {
                tracing::debug!(socket = %socket.display(), source = ?found.source, "connecting to the agent of {}", found.name);
                let client = QgaClient::connect(&socket, options).await.map_err(|e| {
                    let monitor = matches!(e, virtomate_protocol::Error::NotAnAgent { .. });
                    let error = CliError::from_agent(e, &socket);
                    match monitor.then(|| agent_sockets_beside(&socket, scope)).flatten() {
                        Some(agents) => error.with_hint(format!("the agent socket of that VM: {agents}")),
                        None => error,
                    }
                })?;
                Ok(DomainAgent {
                    agent: AnyAgent::Direct(client),
                    socket,
                })
            }
            Route::Libvirt { socket, uri } => {
                tracing::info!(socket = %socket.display(), "libvirtd holds the agent channel: going through libvirtd");
                let agent = LibvirtAgent::connect(&socket, uri, &found.name, &options)
                    .await
                    .map_err(|e| CliError::from_libvirtd(e, &socket, Peer::Agent))?;
                Ok(DomainAgent {
                    agent: AnyAgent::Libvirt(agent),
                    socket,
                })
            }
        }
    }

    pub async fn execute<C: Command>(&mut self, command: &C) -> Result<C::Output, CliError> {
        let result = self.agent.execute(command).await;
        result.map_err(|e| self.error(e))
    }

    /// Starts a program. On a direct channel its input is encoded while
    /// it is sent, so that a big input takes no second copy in memory.
    pub async fn start(&mut self, exec: &GuestExec) -> Result<GuestExecReply, CliError> {
        let result = self.agent.guest_exec(exec).await;
        result.map_err(|e| self.error_while_starting(e))
    }

    /// The agent acts on a request once it has read all of it: a timeout
    /// or a hang-up after that leaves the program perhaps started, under a
    /// pid the agent never told. Say so, since running it again may run it
    /// twice.
    fn error_while_starting(&self, error: virtomate_protocol::Error) -> CliError {
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
                "the request had reached the agent, so the program may have started in the guest, under a pid \
                 the agent did not tell: check before running it again",
            )
        } else {
            error
        }
    }

    /// Any command by name. For the few that never reply on success,
    /// `without_reply` is how long an error reply may take (see `guest-cmd`)
    /// and the answer is `null`.
    pub async fn execute_json(
        &mut self,
        name: &str,
        arguments: Option<&Value>,
        without_reply: Option<Duration>,
    ) -> Result<Value, virtomate_protocol::Error> {
        match without_reply {
            Some(grace) => self
                .agent
                .execute_without_reply(name, arguments, grace)
                .await
                .map(|()| Value::Null),
            None => self.agent.execute_json(name, arguments).await,
        }
    }

    /// Ends the session (see [`AnyAgent::close`]).
    pub async fn close(self) {
        self.agent.close().await;
    }

    /// Polls until the program `pid` has ended.
    pub async fn wait_for_exit(&mut self, pid: i64) -> Result<Finished, CliError> {
        let result = wait_for_exit(&mut self.agent, pid, PollSchedule::default()).await;
        result.map_err(|e| self.error_while_running(e, pid))
    }

    /// Sends `command`, leaving the agent's error as it is: for callers
    /// that tell its cases apart (`copy`: a missing file, a stale handle).
    pub async fn execute_raw<C: Command>(
        &mut self,
        command: &C,
    ) -> Result<C::Output, virtomate_protocol::Error> {
        self.agent.execute(command).await
    }

    /// The socket the agent is reached on (the agent's, or libvirtd's).
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    pub fn through_libvirtd(&self) -> bool {
        matches!(self.agent, AnyAgent::Libvirt(_))
    }
    /// Once the program runs, an agent that forgets it, or stops
    /// answering, has most likely restarted (or died) in the guest: say
    /// so, and that the program may live on.
    fn error_while_running(&self, error: virtomate_protocol::Error, pid: i64) -> CliError {
        use virtomate_protocol::{Error as AgentError, Phase};
        let shown = self.socket.display();
        match error {
            AgentError::Agent { ref desc, .. } => CliError::new(
                ErrorKind::AgentDisconnected,
                format!("the agent on {shown} no longer knows the program (guest pid {pid}): {desc}"),
            )
            .with_hint("it has probably restarted in the guest, and the program's result is lost")
            .with_source(error),
            AgentError::Timeout {
                phase: Phase::Reply(ref command),
                after,
            } if !self.through_libvirtd() => CliError::new(
                ErrorKind::AgentTimeout,
                format!(
                    "the agent on {shown} did not answer {command} within {} s while the program (guest pid \
                     {pid}) ran",
                    after.as_secs_f64()
                ),
            )
            .with_hint(
                "it may have stopped or restarted in the guest, or the guest is very slow (raise --reply-timeout)",
            )
            .with_source(error),
            other => self.error(other),
        }
    }

    pub fn error(&self, error: virtomate_protocol::Error) -> CliError {
        if self.through_libvirtd() {
            CliError::from_libvirtd(error, &self.socket, Peer::Agent)
        } else {
            CliError::from_agent(error, &self.socket)
        }
    }

    /// Like [`DomainAgent::error`], keeping the class of the agent's error reply,
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

/// The agent sockets of the running VM whose QMP socket is `monitor`, if
/// virtomate can find it: for a user who gave the monitor's path.
fn agent_sockets_beside(monitor: &std::path::Path, scope: &Scope) -> Option<String> {
    let same = |qmp: &PathBuf| std::fs::canonicalize(qmp).ok() == std::fs::canonicalize(monitor).ok();
    let vm = domain::list(scope)
        .into_iter()
        .find(|vm| vm.qmp_sockets.iter().any(same))?;
    let paths: Vec<String> = vm
        .agent_channels
        .iter()
        .map(|c| c.path.display().to_string())
        .collect();
    (!paths.is_empty()).then(|| paths.join(", "))
}
