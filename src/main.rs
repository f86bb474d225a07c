//! `virtomate`: a thin command line over the `virtomate-protocol` crate.

mod cli;
mod commands;
mod domain;
mod error;
mod output;

use std::io::ErrorKind;
use std::process::ExitCode;

use clap::Parser;
use virtomate_protocol::ClientOptions;

use cli::{Cli, Command};
use error::{CliError, ErrorJson};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let options = ClientOptions {
        handshake_timeout: cli.timeout,
        reply_timeout: cli.reply_timeout,
        ..ClientOptions::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime needs no resources that can be missing");

    let printed = match cli.command {
        Command::GuestRun(args) => runtime
            .block_on(commands::guest_run::run(args, options))
            .map(|result| output::print_json(&result, cli.pretty)),
    };
    match printed {
        Ok(Ok(())) => ExitCode::SUCCESS,
        // Like ripgrep: a reader that went away (`| head -c1`) is not an error.
        Ok(Err(e)) if e.kind() == ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Ok(Err(e)) => report(&CliError::Io(format!("cannot write the result: {e}")), cli.pretty),
        Err(e) => report(&e, cli.pretty),
    }
}

fn report(error: &CliError, pretty: bool) -> ExitCode {
    // If even the error cannot be written there is nobody left to tell.
    let _ = output::print_json(&ErrorJson::from(error), pretty);
    ExitCode::from(error.exit_status() as u8)
}
