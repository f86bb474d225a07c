//! `virtomate guest-cmd`: any agent request, after the handshake; prints
//! the agent's `return` value.

use std::time::Duration;

use serde_json::Value;

use super::{Answer, Context};
use crate::agent::DomainAgent;
use crate::cli::Request;
use crate::error::CliError;

/// Commands that never reply on success: the guest goes away instead.
const WITHOUT_REPLY: &[&str] = &[
    "guest-shutdown",
    "guest-suspend-disk",
    "guest-suspend-ram",
    "guest-suspend-hybrid",
];

/// Commands virtomate sends itself, before every command: one sent
/// through `guest-cmd` would answer with the sentinel in front, which only
/// the handshake knows to read.
const SYNC_COMMANDS: &[&str] = &["guest-sync", "guest-sync-delimited"];

/// How long to wait for an error reply to a command that does not reply
/// on success.
const ERROR_GRACE: Duration = Duration::from_secs(2);

pub async fn run(domain: &str, request: &Request, context: &Context) -> Result<Answer, CliError> {
    if SYNC_COMMANDS.contains(&request.name.as_str()) {
        return Err(CliError::usage(format!(
            "guest-cmd does not send {}: virtomate synchronises with the agent itself before every command \
             (guest-ping checks that the agent answers)",
            request.name
        )));
    }
    let mut agent = DomainAgent::connect(domain, context).await?;
    let without_reply = WITHOUT_REPLY
        .contains(&request.name.as_str())
        .then(|| ERROR_GRACE.min(context.options.reply_timeout));
    let ret = agent
        .execute_json(&request.name, request.arguments.as_ref(), without_reply)
        .await
        .map_err(|e| agent.raw_error(e))?;
    agent.close().await;
    // Commands without reply succeed with `{}`, like guest-ping.
    Ok(Answer::Json(if ret.is_null() && without_reply.is_some() {
        Value::Object(Default::default())
    } else {
        ret
    }))
}
