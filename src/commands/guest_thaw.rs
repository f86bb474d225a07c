//! `virtomate guest-thaw`: thaws the guest's file systems, whoever froze
//! them, and stands down the watchdogs of a `guest-freeze`.

use serde_json::json;
use virtomate_protocol::qga::schema::GuestFsfreezeThaw;

use super::{Answer, Context};
use crate::agent::DomainAgent;
use crate::error::CliError;
use crate::freeze::{guest_watchdog, host_watchdog};

pub async fn run(domain: &str, context: &Context) -> Result<Answer, CliError> {
    let mut agent = DomainAgent::connect(domain, context).await?;
    let thawed = agent.execute(&GuestFsfreezeThaw {}).await?;
    // Thawed: the watchdogs have nothing left to guard.
    host_watchdog::stop_registered(&agent, domain);
    if let Err(e) = guest_watchdog::disarm(&mut agent, None).await {
        tracing::warn!("the guest's watchdog was not stood down ({e}); it finds the guest thawed");
    }
    agent.close().await;
    Ok(Answer::Json(json!({ "thawed": thawed })))
}
