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

use virtomate_protocol::qga::Command;
use virtomate_protocol::{ClientOptions, QgaClient};

use crate::domain::{self, Scope};
use crate::error::CliError;

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

/// The synchronised agent of a domain, with the socket it was reached on so
/// that errors can name it.
pub struct Agent {
    client: QgaClient,
    socket: PathBuf,
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
        let socket = found.agent_socket()?;
        tracing::debug!(socket = %socket.display(), source = ?found.source, "connecting to the agent of {domain}");
        let client = QgaClient::connect(&socket, options)
            .await
            .map_err(|e| CliError::from_agent(e, &socket))?;
        Ok(Agent { client, socket })
    }

    pub async fn execute<C: Command>(&mut self, command: &C) -> Result<C::Output, CliError> {
        self.client.execute(command).await.map_err(|e| self.error(e))
    }

    pub fn error(&self, error: virtomate_protocol::Error) -> CliError {
        CliError::from_agent(error, &self.socket)
    }

    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    pub fn client(&mut self) -> &mut QgaClient {
        &mut self.client
    }
}
