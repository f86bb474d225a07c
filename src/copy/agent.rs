//! What a copy asks of the agent, whoever holds the channel: `virtomate
//! copy`'s own [`DomainAgent`], or a session's channel lent for the copy.

use std::future::Future;
use std::path::PathBuf;

use virtomate_protocol::qga::Command;
use virtomate_protocol::{
    wait_for_exit_on, Channel, Error as AgentError, Finished, HoldPolicy, PollSchedule,
};

use crate::agent::{AgentErrors, DomainAgent, DomainConnector};
use crate::error::CliError;

/// An agent a copy can work through.
pub trait FileAgent {
    /// Sends `command`, its error as the agent gave it, for the callers
    /// that tell its cases apart (a missing file, a stale handle).
    fn execute_raw<C: Command>(&mut self, command: &C)
        -> impl Future<Output = Result<C::Output, AgentError>>;

    /// Polls until the program `pid` has ended.
    fn wait_for_exit(&mut self, pid: i64) -> impl Future<Output = Result<Finished, CliError>>;

    /// An agent failure in the user's terms.
    fn error(&self, error: AgentError) -> CliError;

    /// An agent failure while the copy's program `pid` runs in the guest,
    /// as a run's is told (an agent that forgot it has restarted).
    fn error_while_running(&self, error: AgentError, pid: i64) -> CliError;

    /// The socket the agent is reached on now (the agent's, or
    /// libvirtd's): for messages.
    fn socket(&self) -> PathBuf;

    /// Whether the agent is reached through libvirtd, with its size limits.
    fn through_libvirtd(&self) -> bool;

    /// The channel, for the protocol crate's drivers (following a
    /// program's output).
    fn channel(&mut self) -> &mut Channel<DomainConnector>;
}

impl FileAgent for DomainAgent {
    fn execute_raw<C: Command>(
        &mut self,
        command: &C,
    ) -> impl Future<Output = Result<C::Output, AgentError>> {
        DomainAgent::execute_raw(self, command)
    }

    fn wait_for_exit(&mut self, pid: i64) -> impl Future<Output = Result<Finished, CliError>> {
        DomainAgent::wait_for_exit(self, pid)
    }

    fn error(&self, error: AgentError) -> CliError {
        DomainAgent::error(self, error)
    }

    fn error_while_running(&self, error: AgentError, pid: i64) -> CliError {
        DomainAgent::error_while_running(self, error, pid)
    }

    fn socket(&self) -> PathBuf {
        DomainAgent::socket_now(self)
    }

    fn through_libvirtd(&self) -> bool {
        DomainAgent::through_libvirtd(self)
    }

    fn channel(&mut self) -> &mut Channel<DomainConnector> {
        DomainAgent::channel(self)
    }
}

/// A session's channel, lent to one copy.
pub struct LentChannel<'a> {
    pub channel: &'a mut Channel<DomainConnector>,
    pub errors: &'a AgentErrors,
}

impl FileAgent for LentChannel<'_> {
    async fn execute_raw<C: Command>(&mut self, command: &C) -> Result<C::Output, AgentError> {
        self.channel.execute(command).await
    }

    async fn wait_for_exit(&mut self, pid: i64) -> Result<Finished, CliError> {
        let finished =
            wait_for_exit_on(self.channel, pid, PollSchedule::default(), HoldPolicy::default()).await;
        finished.map_err(|e| self.errors.error_while_running(e, pid))
    }

    fn error(&self, error: AgentError) -> CliError {
        self.errors.error(error)
    }

    fn error_while_running(&self, error: AgentError, pid: i64) -> CliError {
        self.errors.error_while_running(error, pid)
    }

    fn socket(&self) -> PathBuf {
        self.errors.socket.clone()
    }

    fn through_libvirtd(&self) -> bool {
        self.errors.through_libvirtd
    }

    fn channel(&mut self) -> &mut Channel<DomainConnector> {
        self.channel
    }
}
