//! `virtomate guest-ping`: does the agent answer? Exit 0 when it does, 125
//! (and no output) when it does not. With `--wait-for COMMAND`, the agent
//! must also have COMMAND enabled (`guest-exec` may come later than the
//! first answer after boot, or never on a guest that disabled it).

use std::time::Duration;

use tokio::time::{sleep, Instant};
use virtomate_protocol::qga::GuestPing;
use virtomate_protocol::ClientOptions;

use super::{Answer, Context};
use crate::agent::DomainAgent;
use crate::domain::Scope;
use crate::error::{CliError, ErrorKind};
use crate::schema_check;

/// Pause between attempts while the socket cannot be connected to yet.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Pings once, or with `wait` keeps trying until the agent answers or the
/// time is up (for scripts that boot a VM and wait for it). A `wait` of
/// zero pings once, within `--timeout`, as without it: cut to a wait of
/// zero, even a healthy agent could never answer in time.
pub async fn run(
    domain: &str,
    wait: Option<Duration>,
    wait_for: Option<&str>,
    context: &Context,
) -> Result<Answer, CliError> {
    if let Some(command) = wait_for {
        schema_check::known_command(command)?;
    }
    let Some(wait) = wait.filter(|wait| !wait.is_zero()) else {
        return ping(domain, wait_for, &context.scope, context.options.clone())
            .await
            .map_err(no_answer);
    };
    let deadline = Instant::now() + wait;
    loop {
        // Each attempt waits up to --timeout on its connection, which covers
        // an agent that starts meanwhile: QEMU hands our request to the guest
        // once the agent opens its port. Not longer: the way to the agent is
        // found again for the next, because a connection made while the
        // channel looked free can sit in QEMU's queue behind a client that
        // came first and keeps it (libvirtd, back from a restart).
        let remaining = deadline.saturating_duration_since(Instant::now());
        let remaining = remaining.max(Duration::from_millis(1));
        let attempt = ClientOptions {
            handshake_timeout: remaining.min(context.options.handshake_timeout),
            reply_timeout: remaining.min(context.options.reply_timeout),
            ..context.options.clone()
        };
        match ping(domain, wait_for, &context.scope, attempt).await {
            Ok(answer) => return Ok(answer),
            Err(e) if Instant::now() + RETRY_PAUSE < deadline => {
                tracing::info!("no answer yet: {e}");
                sleep(RETRY_PAUSE).await;
            }
            Err(e) => return Err(no_answer(e)),
        }
    }
}

async fn ping(
    domain: &str,
    wait_for: Option<&str>,
    scope: &Scope,
    options: ClientOptions,
) -> Result<Answer, CliError> {
    let mut agent = DomainAgent::connect_with(domain, scope, options).await?;
    agent.execute(&GuestPing {}).await?;
    if let Some(command) = wait_for {
        agent.require(&[command]).await?;
    }
    agent.close().await;
    Ok(Answer::Nothing)
}

/// Failures of the agent become the silent status 125; not finding the
/// domain stays an ordinary error.
fn no_answer(error: CliError) -> CliError {
    match error.kind() {
        ErrorKind::NotFound
        | ErrorKind::Ambiguous
        | ErrorKind::IllegalState
        | ErrorKind::Usage
        | ErrorKind::Unavailable
        | ErrorKind::Io => error,
        _ => error.into_silent(),
    }
}
