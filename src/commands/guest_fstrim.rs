//! `virtomate guest-fstrim`: discards the blocks the guest's file systems
//! do not use, so that a thin disk image can shrink; prints what the
//! agent reports per file system.

use virtomate_protocol::qga::schema::GuestFstrim;
use virtomate_protocol::Command;

use super::{Answer, Context};
use crate::agent::DomainAgent;
use crate::error::CliError;

pub async fn run(domain: &str, minimum: Option<u64>, context: &Context) -> Result<Answer, CliError> {
    let mut agent = DomainAgent::connect(domain, context).await?;
    agent.require(&[GuestFstrim::NAME]).await?;
    let minimum = minimum.map(|bytes| i64::try_from(bytes).unwrap_or(i64::MAX));
    let reply = agent.execute(&GuestFstrim { minimum }).await?;
    agent.close().await;
    Ok(Answer::Json(
        serde_json::to_value(reply).expect("plain data always serializes"),
    ))
}
