//! `virtomate guest-cmd`: any agent request, after the handshake; prints
//! the agent's `return` value.

use std::time::Duration;

use serde_json::Value;

use super::{Answer, Context, DomainAgent};
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

/// A request as the user wrote it: `{"execute": NAME, "arguments": {...}}`.
#[derive(Debug, Clone)]
pub struct Request {
    pub name: String,
    pub arguments: Option<Value>,
}

/// Parses the JSON argument of `guest-cmd` and `qmp` (for clap).
pub fn parse_request(text: &str) -> Result<Request, String> {
    let json: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let object = json.as_object().ok_or("a request is a JSON object")?;
    if let Some(unknown) = object
        .keys()
        .find(|k| !["execute", "arguments", "id"].contains(&k.as_str()))
    {
        return Err(format!(
            "unknown member '{unknown}'; a request has 'execute' and 'arguments'"
        ));
    }
    let name = object
        .get("execute")
        .and_then(Value::as_str)
        .ok_or("the request needs \"execute\": \"COMMAND\"")?;
    let arguments = object.get("arguments").cloned();
    if arguments.as_ref().is_some_and(|a| !a.is_object()) {
        return Err("\"arguments\" must be a JSON object".to_owned());
    }
    Ok(Request {
        name: name.to_owned(),
        arguments,
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_need_execute_and_object_arguments() {
        let request = parse_request(r#"{"execute": "guest-exec", "arguments": {"path": "ls"}}"#).unwrap();
        assert_eq!(request.name, "guest-exec");
        assert!(parse_request(r#"{"execute": "guest-ping"}"#)
            .unwrap()
            .arguments
            .is_none());
        for bad in [
            "guest-ping",
            "[]",
            r#"{"arguments": {}}"#,
            r#"{"execute": 1}"#,
            r#"{"execute": "x", "arguments": [1]}"#,
            r#"{"execute": "x", "argument": {}}"#,
        ] {
            assert!(parse_request(bad).is_err(), "{bad}");
        }
    }
}
