//! `virtomate guest-info`: the agent's version and its commands.

use virtomate_protocol::qga::GuestInfo;
use virtomate_protocol::ClientOptions;

use super::{Agent, Answer};
use crate::error::CliError;

pub async fn run(domain: &str, options: ClientOptions) -> Result<Answer, CliError> {
    let mut agent = Agent::connect(domain, options).await?;
    let info = agent.execute(&GuestInfo {}).await?;
    // Through Value, whose maps are sorted: keys come out in order.
    let json = serde_json::to_value(info).expect("plain data always serializes");
    Ok(Answer::Json(json))
}
