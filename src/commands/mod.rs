//! One module per subcommand, and what they share: reaching the agent of
//! a domain, and the answer to print.

pub mod guest_info;
pub mod guest_ping;
pub mod guest_run;

use std::path::PathBuf;

use virtomate_protocol::qga::Command;
use virtomate_protocol::{ClientOptions, QgaClient};

use crate::domain;
use crate::error::CliError;

/// What a command prints on success.
pub enum Answer {
    /// A program's result (kept typed: its output may be 16 MiB).
    Run(guest_run::RunResult),
    /// Any other JSON answer.
    Json(serde_json::Value),
    /// Nothing at all, as `guest-ping` on success.
    Nothing,
}

/// The synchronised agent of a domain, with the socket it was reached on so
/// that errors can name it.
pub struct Agent {
    client: QgaClient,
    socket: PathBuf,
}

impl Agent {
    pub async fn connect(domain: &str, options: ClientOptions) -> Result<Agent, CliError> {
        let socket = domain::resolve(domain)?.path;
        tracing::debug!(socket = %socket.display(), "connecting to the agent of {domain}");
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

    pub fn client(&mut self) -> &mut QgaClient {
        &mut self.client
    }
}
