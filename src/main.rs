//! `virtomate`: a thin command line over the `virtomate-protocol` crate.

#![forbid(unsafe_code)]

mod agent;
mod cli;
mod commands;
mod copy;
mod domain;
mod error;
#[cfg(feature = "generate")]
mod generate;
mod output;
mod run_output;
mod std_streams;
mod terminal;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use virtomate_protocol::{escape_bytes, ClientOptions, Direction, Trace};

use cli::{Cli, Command, LogLevel};
use commands::{Answer, Context};
use domain::Scope;
use error::{CliError, ErrorJson, ErrorKind};

fn main() -> ExitCode {
    #[cfg(feature = "generate")]
    if let Some(status) = generate::from_args() {
        return status;
    }
    let cli = Cli::parse();
    if let Some(level) = cli.log {
        init_logging(level);
    }
    let options = ClientOptions {
        handshake_timeout: cli.timeout,
        reply_timeout: cli.reply_timeout,
        trace: cli.trace.then(stderr_trace),
        ..ClientOptions::default()
    };
    // With --raw, stdout is the program's: virtomate's own failures go to
    // stderr as one line, with ssh's exit status.
    // `shell` likewise: its exit status is the guest shell's.
    let raw = match &cli.command {
        Command::GuestRun(args) => args.raw || args.follow || args.interactive,
        Command::Shell { .. } => true,
        _ => false,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime needs no resources that can be missing");

    let answer = runtime.block_on(async {
        let context = Context {
            options,
            scope: Scope::new(
                cli.connection.as_deref(),
                std::env::var("LIBVIRT_DEFAULT_URI").ok().as_deref(),
            )?,
        };
        match cli.command {
            Command::GuestRun(args) => commands::guest_run::run(args, &context).await,
            Command::GuestPing { wait, domain } => commands::guest_ping::run(&domain, wait, &context).await,
            Command::Session { idle, domain } => commands::session::run(&domain, idle, &context).await,
            Command::GuestInfo { domain } => commands::guest_info::run(&domain, &context).await,
            Command::DomainList => commands::domain_list::run(&context),
            Command::Doctor { domain, json } => Ok(commands::doctor::run(&domain, json, &context).await),
            Command::GuestCmd { domain, request } => {
                commands::guest_cmd::run(&domain, &request, &context).await
            }
            Command::Qmp {
                events,
                domain,
                request,
            } => commands::qmp::run(&domain, &request, events, &context).await,
            Command::Copy(args) => commands::copy::run(args, &context).await,
            Command::Shell { domain, command } => commands::shell::run(&domain, command, &context).await,
        }
    });
    // tokio reads standard input on a blocking thread that cannot be
    // cancelled: an interrupted `copy - ...` would otherwise wait at
    // shutdown for input that may never come.
    runtime.shutdown_background();
    // A diagnosis with a failed step exits 1 however its printing went.
    let mut success = ExitCode::SUCCESS;
    let printed = match answer {
        Ok(Answer::Run(run)) => {
            success = ExitCode::from(run.exit_status());
            run.print(cli.pretty)
        }
        Ok(Answer::Json(json)) => output::print_json(&json, cli.pretty),
        Ok(Answer::Nothing) => Ok(()),
        Ok(Answer::Status(status)) => {
            success = ExitCode::from(status);
            Ok(())
        }
        Ok(Answer::Failed) => {
            success = ExitCode::FAILURE;
            Ok(())
        }
        Ok(Answer::Report { report, json }) => {
            if !report.ok() {
                success = ExitCode::FAILURE;
            }
            if !json && std::io::stdout().is_terminal() {
                std::io::stdout().write_all(report.to_text().as_bytes())
            } else {
                output::print_json(&report, cli.pretty)
            }
        }
        Err(error) => return report(&error, cli.pretty, raw),
    };
    match printed {
        Ok(()) => success,
        // Like ripgrep: a reader that went away (`| head -c1`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => success,
        Err(e) => report(&CliError::io("cannot write the result", e), cli.pretty, raw),
    }
}

/// What `guest-run --raw` exits with when virtomate itself failed, as
/// `ssh` does: the program's own statuses are all the others.
const RAW_FAILURE: u8 = 255;

fn report(error: &CliError, pretty: bool, raw: bool) -> ExitCode {
    tracing::error!("{}: {error}", error.json_type());
    if raw && error.kind() != ErrorKind::Usage {
        eprintln!("virtomate: {}: {error}", error.json_type());
        return ExitCode::from(RAW_FAILURE);
    }
    if error.kind() == ErrorKind::Usage {
        eprintln!("error: {error}\n\nFor more information, try '--help'.");
    } else if !error.is_silent() {
        // If even the error cannot be written there is nobody left to tell.
        let _ = output::print_json(&ErrorJson::from(error), pretty);
    }
    ExitCode::from(error.exit_status())
}

fn init_logging(level: LogLevel) {
    let max = match level {
        LogLevel::Debug => tracing::Level::DEBUG,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Warning => tracing::Level::WARN,
        // tracing has no level above error; virtomate has nothing critical
        // that is not an error.
        LogLevel::Error | LogLevel::Critical => tracing::Level::ERROR,
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(max)
        .with_target(false)
        .init();
}

/// `--trace`: every chunk on the wire, with the seconds since start and
/// its direction, bytes outside printable ASCII escaped (`\xff`).
fn stderr_trace() -> Trace {
    let started = Instant::now();
    Trace::new(move |direction, bytes| {
        let arrow = match direction {
            Direction::Sent => ">>",
            Direction::Received => "<<",
        };
        eprintln!(
            "[{:>10.6}] {arrow} {}",
            started.elapsed().as_secs_f64(),
            escape_bytes(bytes)
        );
    })
}
