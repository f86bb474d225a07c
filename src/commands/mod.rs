//! One module per subcommand, and what they share: reaching the agent of
//! a domain, and the answer to print.

pub mod doctor;
pub mod domain_list;
pub mod guest_cmd;
pub mod guest_info;
pub mod guest_ping;
pub mod guest_run;
pub mod qmp;

use std::path::PathBuf;

use std::time::Duration;

use serde_json::Value;
use virtomate_protocol::libvirt::LibvirtAgent;
use virtomate_protocol::qga::{Command, ExecStarted, GuestExec};
use virtomate_protocol::{wait_for_exit, Agent as _, ClientOptions, Finished, PollSchedule, QgaClient};

use crate::domain::{self, Domain, Route, Scope};
use crate::error::{CliError, Peer};

/// What every command needs besides its own arguments.
pub struct Context {
    pub options: ClientOptions,
    pub scope: Scope,
}

/// What a command prints on success.
pub enum Answer {
    /// A program's result (kept typed: its output may be 16 MiB).
    Run(guest_run::RunResult),
    /// Any other JSON answer.
    Json(serde_json::Value),
    /// Nothing at all, as `guest-ping` on success.
    Nothing,
    /// A diagnosis: a table on a terminal, JSON otherwise; exit 1 when a
    /// step failed.
    Report(doctor::Report),
}

/// The agent of a domain, synchronised and ready, with the socket it was
/// reached on so that errors can name it.
pub struct Agent {
    link: Link,
    socket: PathBuf,
}

/// How commands reach the agent.
enum Link {
    /// Straight over the agent's own socket.
    Direct(QgaClient),
    /// Through libvirtd, which holds the agent's only channel.
    Libvirt(LibvirtAgent),
}

impl Agent {
    pub async fn connect(domain: &str, context: &Context) -> Result<Agent, CliError> {
        Agent::connect_with(domain, &context.scope, context.options.clone()).await
    }

    pub async fn connect_with(
        domain: &str,
        scope: &Scope,
        options: ClientOptions,
    ) -> Result<Agent, CliError> {
        let found = domain::find(domain, scope)?;
        let route = found.agent_route()?;
        Agent::connect_to(&found, route, options).await
    }

    /// Connects to the agent of `found` over `route`, as chosen by
    /// [`Domain::agent_route`] or, for `doctor`, the channel it examined.
    pub async fn connect_to(found: &Domain, route: Route, options: ClientOptions) -> Result<Agent, CliError> {
        match route {
            Route::Direct(socket) => {
                tracing::debug!(socket = %socket.display(), source = ?found.source, "connecting to the agent of {}", found.name);
                let client = QgaClient::connect(&socket, options)
                    .await
                    .map_err(|e| CliError::from_agent(e, &socket))?;
                Ok(Agent {
                    link: Link::Direct(client),
                    socket,
                })
            }
            Route::Libvirt { socket, uri } => {
                tracing::info!(socket = %socket.display(), "libvirtd holds the agent channel: going through libvirtd");
                let agent = LibvirtAgent::connect(&socket, uri, &found.name, &options)
                    .await
                    .map_err(|e| CliError::from_libvirtd(e, &socket, Peer::Agent))?;
                Ok(Agent {
                    link: Link::Libvirt(agent),
                    socket,
                })
            }
        }
    }

    pub async fn execute<C: Command>(&mut self, command: &C) -> Result<C::Output, CliError> {
        let result = match &mut self.link {
            Link::Direct(client) => client.execute(command).await,
            Link::Libvirt(agent) => agent.execute(command).await,
        };
        result.map_err(|e| self.error(e))
    }

    /// Starts a program. On a direct channel its input is encoded while
    /// it is sent, so that a big input takes no second copy in memory.
    pub async fn start(&mut self, exec: &GuestExec) -> Result<ExecStarted, CliError> {
        let result = match &mut self.link {
            Link::Direct(client) => client.guest_exec(exec).await,
            Link::Libvirt(agent) => agent.execute(exec).await,
        };
        result.map_err(|e| self.error(e))
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
        match (&mut self.link, without_reply) {
            (Link::Direct(client), Some(grace)) => client
                .execute_without_reply(name, arguments, grace)
                .await
                .map(|()| Value::Null),
            (Link::Direct(client), None) => client.execute_json(name, arguments).await,
            (Link::Libvirt(agent), Some(grace)) => agent
                .execute_without_reply(name, arguments, grace)
                .await
                .map(|()| Value::Null),
            (Link::Libvirt(agent), None) => agent.execute_json(name, arguments).await,
        }
    }

    /// Ends the session. Through libvirtd, the hypervisor connection is
    /// closed as libvirt's clients close it, so that libvirtd does not log
    /// a client that vanished; a failure to close changes nothing the
    /// command did, so it is only logged.
    pub async fn close(self) {
        if let Link::Libvirt(agent) = self.link {
            if let Err(error) = agent.into_client().close().await {
                tracing::debug!(%error, "closing the connection to libvirtd");
            }
        }
    }

    /// Polls until the program `pid` has ended.
    pub async fn wait_for_exit(&mut self, pid: i64) -> Result<Finished, CliError> {
        let schedule = PollSchedule::default();
        let result = match &mut self.link {
            Link::Direct(client) => wait_for_exit(client, pid, schedule).await,
            Link::Libvirt(agent) => wait_for_exit(agent, pid, schedule).await,
        };
        result.map_err(|e| self.error_while_running(e, pid))
    }

    /// Once the program runs, an agent that forgets it, or stops
    /// answering, has most likely restarted (or died) in the guest: say
    /// so, and that the program may live on.
    fn error_while_running(&self, error: virtomate_protocol::Error, pid: i64) -> CliError {
        use virtomate_protocol::{Error as AgentError, Phase};
        let shown = self.socket.display();
        match (&self.link, error) {
            (_, AgentError::Agent { desc, .. }) => CliError::AgentDisconnected(format!(
                "the agent on {shown} no longer knows the program (guest pid {pid}): {desc}; it has probably restarted in the guest, and the program's result is lost"
            )),
            (Link::Direct(_), AgentError::Timeout { phase: Phase::Reply(command), after }) => {
                CliError::AgentTimeout(format!(
                    "the agent on {shown} did not answer {command} within {} s while the program (guest pid {pid}) ran; it may have stopped or restarted in the guest, or the guest is very slow (raise --reply-timeout)",
                    after.as_secs_f64()
                ))
            }
            (_, other) => self.error(other),
        }
    }

    pub fn error(&self, error: virtomate_protocol::Error) -> CliError {
        match self.link {
            Link::Direct(_) => CliError::from_agent(error, &self.socket),
            Link::Libvirt(_) => CliError::from_libvirtd(error, &self.socket, Peer::Agent),
        }
    }

    /// Like [`Agent::error`], keeping the class of the agent's error reply,
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
