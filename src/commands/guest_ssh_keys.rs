//! `virtomate guest-ssh-keys`: a guest user's `~/.ssh/authorized_keys`,
//! listed, or changed from local key files and listed after the change.

use serde_json::json;
use virtomate_protocol::qga::schema::{
    GuestSshAddAuthorizedKeys, GuestSshGetAuthorizedKeys, GuestSshRemoveAuthorizedKeys,
};
use virtomate_protocol::Command;

use super::{Answer, Context};
use crate::agent::DomainAgent;
use crate::error::CliError;

/// What to change: keys from these files (`-` for standard input).
pub struct KeyChanges {
    pub add: Vec<String>,
    pub remove: Vec<String>,
    /// Replace every key by those of `add` (none: remove them all).
    pub reset: bool,
}

pub async fn run(
    domain: &str,
    user: &str,
    changes: KeyChanges,
    context: &Context,
) -> Result<Answer, CliError> {
    let add = read_keys(&changes.add)?;
    let remove = read_keys(&changes.remove)?;
    let mut agent = DomainAgent::connect(domain, context).await?;
    let mut needed = vec![GuestSshGetAuthorizedKeys::NAME];
    if !remove.is_empty() {
        needed.push(GuestSshRemoveAuthorizedKeys::NAME);
    }
    if !add.is_empty() || changes.reset {
        needed.push(GuestSshAddAuthorizedKeys::NAME);
    }
    agent.require(&needed).await?;
    let username = user.to_owned();
    if !remove.is_empty() {
        let request = GuestSshRemoveAuthorizedKeys {
            username: username.clone(),
            keys: remove,
        };
        agent.execute(&request).await?;
    }
    if !add.is_empty() || changes.reset {
        let reset = changes.reset.then_some(true);
        let request = GuestSshAddAuthorizedKeys {
            username: username.clone(),
            keys: add,
            reset,
        };
        agent.execute(&request).await?;
    }
    let keys = agent.execute(&GuestSshGetAuthorizedKeys { username }).await?;
    agent.close().await;
    Ok(Answer::Json(json!({ "user": user, "keys": keys.keys })))
}

/// The keys of `files`: each line that is not empty nor a comment.
fn read_keys(files: &[String]) -> Result<Vec<String>, CliError> {
    let mut keys = Vec::new();
    for file in files {
        let text = match file.as_str() {
            "-" => std::io::read_to_string(std::io::stdin()),
            path => std::fs::read_to_string(path),
        }
        .map_err(|e| CliError::io(format!("cannot read the keys of {file}"), e))?;
        keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('#'))
                .map(str::to_owned),
        );
    }
    Ok(keys)
}
