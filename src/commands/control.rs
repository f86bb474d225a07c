//! `virtomate control check|exit DOMAIN`: what the control master of a
//! domain's agent is, or its end, as `ssh -O check|exit` does; and the
//! hidden `control serve`, which is the master.

use std::time::Duration;

use serde_json::Value;
use virtomate_protocol::{ClientOptions, QgaClient};

use super::{Answer, Context};
use crate::cli::ControlAction;
use crate::domain::{self, Route};
use crate::error::{CliError, ErrorKind};
use crate::master::{self, MasterInfo, MasterPaths, Settings};

pub async fn run(action: ControlAction, context: &Context) -> Result<Answer, CliError> {
    match action {
        ControlAction::Check { domain } => {
            let (mut master, _) = reach(&domain, context).await?;
            Ok(Answer::Json(info(&mut master).await?))
        }
        ControlAction::Exit { domain } => {
            let (mut master, socket) = reach(&domain, context).await?;
            let info = info(&mut master).await?;
            let ended = master.execute_json(master::EXIT, None).await;
            ended.map_err(|e| {
                CliError::new(ErrorKind::AgentDisconnected, format!("{}: {e}", socket.display()))
            })?;
            drop(master);
            let pid = info["pid"].as_i64().unwrap_or_default();
            wait_for_end(pid as i32).await;
            Ok(Answer::Json(serde_json::json!({ "pid": pid, "exited": true })))
        }
        ControlAction::Serve { persist, agent } => {
            let paths = MasterPaths::for_agent(&agent)
                .map_err(|e| CliError::io(format!("no master for {}", agent.display()), e))?;
            let settings = Settings {
                paths,
                persist,
                handshake_timeout: context.options.handshake_timeout,
                max_reply_len: ClientOptions::default().max_reply_len,
            };
            master::serve_inherited(settings)
                .await
                .map_err(|e| CliError::io("the master cannot serve", e))?;
            Ok(Answer::Nothing)
        }
    }
}

/// A connection to the running master of DOMAIN's agent socket; never
/// starts one.
async fn reach(domain: &str, context: &Context) -> Result<(QgaClient, std::path::PathBuf), CliError> {
    let found = domain::find(domain, &context.scope)?;
    // A running master's socket first: the holders need no look then.
    let route = match master::route_to_running_master(&found) {
        Some(route) => route,
        None => found.agent_route()?,
    };
    let agent = match route {
        Route::Direct(socket) => socket,
        Route::Libvirt { .. } => {
            return Err(CliError::new(
                ErrorKind::NotFound,
                format!("no master for '{domain}': libvirtd holds its agent channel"),
            ))
        }
    };
    let none = |detail: String| {
        CliError::new(
            ErrorKind::NotFound,
            format!("no master runs for {}: {detail}", agent.display()),
        )
        .with_hint("VIRTOMATE_PERSIST=SECONDS (or --persist) starts one with the next command")
    };
    let paths = MasterPaths::for_agent(&agent).map_err(|e| none(e.to_string()))?;
    let stream = tokio::net::UnixStream::connect(&paths.socket)
        .await
        .map_err(|e| none(e.to_string()))?;
    let options = ClientOptions {
        handshake_timeout: context.options.handshake_timeout,
        reply_timeout: context.options.handshake_timeout,
        ..ClientOptions::default()
    };
    Ok((QgaClient::new(stream, options), paths.socket))
}

async fn info(master: &mut QgaClient) -> Result<Value, CliError> {
    let info = master.execute_json(master::INFO, None).await.map_err(|e| {
        CliError::new(
            ErrorKind::AgentUnavailable,
            format!("the master does not answer: {e}"),
        )
    })?;
    // Checked against its type, shown as it came.
    serde_json::from_value::<MasterInfo>(info.clone())
        .map_err(|e| CliError::new(ErrorKind::Protocol, format!("the master's answer: {e}")))?;
    Ok(info)
}

/// Waits (briefly) until the process `pid` is gone, so that the next
/// command finds no master ending.
async fn wait_for_end(pid: i32) {
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    let pid = nix::unistd::Pid::from_raw(pid);
    while nix::sys::signal::kill(pid, None).is_ok() && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
