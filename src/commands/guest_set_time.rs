//! `virtomate guest-set-time`: sets the guest's clock (and its hardware
//! clock) to the host's, as after a resume or a restore, when the guest
//! lost track of time.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;
use virtomate_protocol::qga::schema::GuestSetTime;
use virtomate_protocol::Command;

use super::{Answer, Context};
use crate::agent::DomainAgent;
use crate::error::CliError;

pub async fn run(domain: &str, context: &Context) -> Result<Answer, CliError> {
    let mut agent = DomainAgent::connect(domain, context).await?;
    agent.require(&[GuestSetTime::NAME]).await?;
    // Read after connecting, as close to sending as it can be.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the host's clock is after 1970");
    let nanoseconds = i64::try_from(now.as_nanos()).expect("nanoseconds since 1970 fit i64 until 2262");
    agent
        .execute(&GuestSetTime {
            time: Some(nanoseconds),
        })
        .await?;
    agent.close().await;
    Ok(Answer::Json(json!({ "time": nanoseconds })))
}
