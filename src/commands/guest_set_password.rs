//! `virtomate guest-set-password`: sets a guest user's password through
//! the agent. The password comes from standard input, or from a prompt
//! that does not echo on a terminal: never from the command line, where
//! other users see it (`ps`) and shells keep it (history).

use std::io::{BufRead, IsTerminal, Write};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use nix::sys::termios::{self, LocalFlags, SetArg};
use serde_json::json;
use virtomate_protocol::qga::schema::GuestSetUserPassword;
use virtomate_protocol::Command;

use super::{Answer, Context};
use crate::agent::DomainAgent;
use crate::error::CliError;

pub async fn run(domain: &str, user: &str, crypted: bool, context: &Context) -> Result<Answer, CliError> {
    let password = read_password(user)?;
    let mut agent = DomainAgent::connect(domain, context).await?;
    agent.require(&[GuestSetUserPassword::NAME]).await?;
    let request = GuestSetUserPassword {
        username: user.to_owned(),
        password: STANDARD.encode(password.as_bytes()),
        crypted,
    };
    agent.execute(&request).await?;
    agent.close().await;
    Ok(Answer::Json(json!({ "user": user, "crypted": crypted })))
}

/// The password: typed twice without echo on a terminal, else standard
/// input's first line.
fn read_password(user: &str) -> Result<String, CliError> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let first = prompt(&format!("New password for {user}: "))?;
        let again = prompt("Retype it: ")?;
        if first != again {
            return Err(CliError::usage("the two passwords differ; nothing was changed"));
        }
        first
    } else {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| CliError::io("cannot read the password", e))?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    if password.is_empty() {
        return Err(CliError::usage("the password is empty; nothing was changed"));
    }
    Ok(password)
}

/// One line from the terminal, its echo off while it is typed.
fn prompt(text: &str) -> Result<String, CliError> {
    let stdin = std::io::stdin();
    let failed = |e: std::io::Error| CliError::io("cannot read the password from the terminal", e);
    let saved = termios::tcgetattr(&stdin).map_err(|e| failed(e.into()))?;
    let mut silent = saved.clone();
    silent.local_flags.remove(LocalFlags::ECHO);
    silent.local_flags.insert(LocalFlags::ECHONL);
    eprint!("{text}");
    std::io::stderr().flush().map_err(failed)?;
    termios::tcsetattr(&stdin, SetArg::TCSAFLUSH, &silent).map_err(|e| failed(e.into()))?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    // Echo back on whatever happened.
    let _ = termios::tcsetattr(&stdin, SetArg::TCSAFLUSH, &saved);
    read.map_err(failed)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}
