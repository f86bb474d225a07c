//! `virtomate guest-cmd`: any agent request, after the handshake; prints
//! the agent's `return` value.

use std::time::Duration;

use serde_json::Value;
use virtomate_protocol::qga::schema::command_spec;

use super::{Answer, Context};
use crate::agent::DomainAgent;
use crate::cli::Request;
use crate::error::CliError;
use crate::schema_check;

/// Commands virtomate sends itself, before every command: one sent
/// through `guest-cmd` would answer with the sentinel in front, which only
/// the handshake knows to read.
const SYNC_COMMANDS: &[&str] = &["guest-sync", "guest-sync-delimited"];

/// How long to wait for an error reply to a command that does not reply
/// on success.
const ERROR_GRACE: Duration = Duration::from_secs(2);

/// Sends `request` (its arguments in the request, or given apart as
/// `arguments`), checked against QEMU's schema unless `unchecked`.
pub async fn run(
    domain: &str,
    mut request: Request,
    arguments: Option<Value>,
    unchecked: bool,
    context: &Context,
) -> Result<Answer, CliError> {
    if SYNC_COMMANDS.contains(&request.name.as_str()) {
        return Err(CliError::usage(format!(
            "guest-cmd does not send {}: virtomate synchronises with the agent itself before every command \
             (guest-ping checks that the agent answers)",
            request.name
        )));
    }
    if let Some(arguments) = arguments {
        if request.arguments.is_some() {
            return Err(CliError::usage(
                "the arguments are given twice: in the request and after it; give one",
            ));
        }
        request.arguments = Some(arguments);
    }
    if !unchecked {
        schema_check::check_request(&request.name, request.arguments.as_ref())?;
    }
    let mut agent = DomainAgent::connect(domain, context).await?;
    // Commands that never reply on success: the guest goes away instead.
    let without_reply = command_spec(&request.name)
        .is_some_and(|spec| !spec.success_response)
        .then(|| ERROR_GRACE.min(context.options.reply_timeout));
    let result = agent
        .execute_json(&request.name, request.arguments.as_ref(), without_reply)
        .await;
    let ret = match result {
        Ok(ret) => ret,
        Err(e) => {
            let hint = agent.refusal_hint(&request.name, &e).await;
            let error = agent.raw_error(e);
            return Err(match hint {
                Some(hint) => error.with_hint(hint),
                None => error,
            });
        }
    };
    agent.close().await;
    // Commands without reply succeed with `{}`, like guest-ping.
    Ok(Answer::Json(if ret.is_null() && without_reply.is_some() {
        Value::Object(Default::default())
    } else {
        ret
    }))
}
