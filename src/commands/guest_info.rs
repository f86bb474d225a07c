//! `virtomate guest-info`: the agent's version and its commands.

use virtomate_protocol::qga::GuestInfo;

use super::{Answer, Context};
use crate::agent::DomainAgent;
use crate::error::CliError;

pub async fn run(domain: &str, context: &Context) -> Result<Answer, CliError> {
    let mut agent = DomainAgent::connect(domain, context).await?;
    let info = agent.execute(&GuestInfo {}).await?;
    agent.close().await;
    // Through Value, whose maps are sorted: keys come out in order.
    let json = serde_json::to_value(info).expect("plain data always serializes");
    Ok(Answer::Json(json))
}
