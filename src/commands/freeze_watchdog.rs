//! `virtomate freeze-watchdog` (hidden): the host's watchdog of a
//! `guest-freeze`, started by it (see `freeze::host_watchdog`).

use std::time::Duration;

use super::{Answer, Context};
use crate::error::CliError;
use crate::freeze::host_watchdog;

pub async fn run(domain: &str, token: &str, after: Duration, context: &Context) -> Result<Answer, CliError> {
    host_watchdog::run(domain, token, after, context).await?;
    Ok(Answer::Nothing)
}
