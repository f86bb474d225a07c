//! `virtomate guest-shutdown`: asks the guest to power down, reboot or
//! halt. The agent never answers a shutdown that works, so with `--wait`
//! the outcome is confirmed by what virtomate can watch, best first:
//! QEMU's monitor (a `SHUTDOWN` or `RESET` event, or QEMU exiting), then
//! libvirt's record of its domain, then the agent going away. The output
//! says which was seen.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::{sleep, Instant};
use virtomate_protocol::qga::schema::GuestShutdown;
use virtomate_protocol::qmp::QueryStatus;
use virtomate_protocol::{ClientOptions, Command, QmpClient};

use super::{Answer, Context};
use crate::agent::DomainAgent;
use crate::cli::ShutdownMode;
use crate::domain::{self, run_state, socket_holders, Domain, Source};
use crate::error::{CliError, ErrorKind};

/// How long an error reply to the shutdown may take.
const ERROR_GRACE: Duration = Duration::from_secs(2);
/// Pause between looks at whatever confirms the shutdown.
const POLL: Duration = Duration::from_millis(100);

pub async fn run(
    domain: &str,
    mode: ShutdownMode,
    wait: Option<Duration>,
    context: &Context,
) -> Result<Answer, CliError> {
    let found = domain::find(domain, &context.scope)?;
    let vm = run_state::owner_of(&found, &context.scope);
    // Watching starts before the request, so that no event is missed.
    let monitor = match (&vm, wait) {
        (Some(vm), Some(_)) => free_monitor(vm, &context.options).await,
        _ => None,
    };
    let mut agent = DomainAgent::connect(domain, context).await?;
    agent.require(&[GuestShutdown::NAME]).await?;
    let arguments = json!({ "mode": mode.name() });
    let grace = Some(ERROR_GRACE.min(context.options.reply_timeout));
    let sent = agent
        .execute_json(GuestShutdown::NAME, Some(&arguments), grace)
        .await;
    if let Err(e) = sent {
        return Err(agent.raw_error(e));
    }
    agent.close().await;
    let Some(wait) = wait else {
        return Ok(Answer::Json(json!({ "mode": mode.name(), "seen": Value::Null })));
    };
    let watch = Watch {
        domain,
        mode,
        vm,
        context,
    };
    match tokio::time::timeout(wait, watch.confirm(monitor)).await {
        Ok(seen) => Ok(Answer::Json(json!({ "mode": mode.name(), "seen": seen }))),
        Err(_) => Err(CliError::new(
            ErrorKind::AgentTimeout,
            format!(
                "the guest was asked to {} but did not within {} s",
                mode.name(),
                wait.as_secs_f64()
            ),
        )
        .with_hint("it may ignore the request (no ACPI, or an init without shutdown); see its console")),
    }
}

/// QEMU's monitor of `vm`, where nobody else holds it.
async fn free_monitor(vm: &Domain, options: &ClientOptions) -> Option<QmpClient> {
    for socket in &vm.qmp_sockets {
        if socket_holders::holders(socket).is_empty() {
            if let Ok(monitor) = QmpClient::connect(socket, options.clone()).await {
                return Some(monitor);
            }
        }
    }
    None
}

struct Watch<'a> {
    domain: &'a str,
    mode: ShutdownMode,
    vm: Option<Domain>,
    context: &'a Context,
}

impl Watch<'_> {
    /// What confirmed the shutdown; runs until one thing does.
    async fn confirm(&self, monitor: Option<QmpClient>) -> &'static str {
        if let Some(monitor) = monitor {
            return watch_monitor(monitor).await;
        }
        let libvirt = self.vm.as_ref().filter(|vm| vm.source == Source::Libvirt);
        match libvirt {
            // A rebooted libvirt domain stays running: only the agent tells.
            Some(vm) if self.mode != ShutdownMode::Reboot => self.watch_libvirt(&vm.name).await,
            _ => self.watch_agent().await,
        }
    }

    /// libvirt removes a domain's status file when it stops.
    async fn watch_libvirt(&self, name: &str) -> &'static str {
        loop {
            match domain::find(name, &self.context.scope) {
                Err(_) => return "libvirt-shut-off",
                Ok(found)
                    if found
                        .libvirt_state
                        .as_ref()
                        .is_some_and(|(state, _)| state != "running") =>
                {
                    return "libvirt-shut-off"
                }
                Ok(_) => sleep(POLL).await,
            }
        }
    }

    /// The agent stops answering a ping within a second.
    async fn watch_agent(&self) -> &'static str {
        let quick = ClientOptions {
            handshake_timeout: Duration::from_secs(1),
            reply_timeout: Duration::from_secs(1),
            ..self.context.options.clone()
        };
        loop {
            let started = Instant::now();
            let answered =
                match DomainAgent::connect_with(self.domain, &self.context.scope, quick.clone()).await {
                    Ok(agent) => {
                        agent.close().await;
                        true
                    }
                    Err(_) => false,
                };
            if !answered {
                return "agent-gone";
            }
            sleep(POLL.saturating_sub(started.elapsed())).await;
        }
    }
}

/// A `SHUTDOWN` or `RESET` event, or QEMU exiting (its monitor closing).
async fn watch_monitor(mut monitor: QmpClient) -> &'static str {
    loop {
        let status = monitor.execute(&QueryStatus {}).await;
        for event in monitor.take_events() {
            match event.event.as_str() {
                "SHUTDOWN" => return "qmp-shutdown-event",
                "RESET" => return "qmp-reset-event",
                _ => {}
            }
        }
        match status {
            Ok(status) if status.status == "shutdown" => return "qmp-status-shutdown",
            Ok(_) => sleep(POLL).await,
            Err(_) => return "qemu-exited",
        }
    }
}
