//! `virtomate freeze-watchdog` (hidden): the host's watchdog of a
//! `guest-freeze`, started by it (see `freeze::host_watchdog`).

use std::time::Duration;

use super::{Answer, Context};
use crate::error::CliError;
use crate::freeze::host_watchdog;

pub async fn run(
    domain: &str,
    token: &str,
    after: Duration,
    thaw_when_orphaned: bool,
    context: &Context,
) -> Result<Answer, CliError> {
    host_watchdog::run(domain, token, after, thaw_when_orphaned, context).await?;
    Ok(Answer::Nothing)
}
