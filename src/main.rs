//! `virtomate`: a thin command line over the `virtomate-protocol` crate.

#![forbid(unsafe_code)]

mod agent;
mod cli;
mod commands;
mod copy;
mod domain;
mod error;
mod freeze;
#[cfg(feature = "generate")]
mod generate;
mod help;
mod lock_file;
mod master;
mod output;
mod run_output;
mod run_sink;
mod schema_check;
mod std_streams;
mod terminal;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Instant;

use virtomate_protocol::{escape_bytes, ClientOptions, Direction, Trace};

use cli::{Command, LogLevel, WatchdogArgs};
use cli::{
    ControlArgs, DoctorArgs, DomainIfaceListArgs, GuestCmdArgs, GuestFactsArgs, GuestFstrimArgs,
    GuestInfoArgs, GuestPingArgs, GuestSetPasswordArgs, GuestSetTimeArgs, GuestShutdownArgs,
    GuestSshKeysArgs, GuestThawArgs, QmpArgs, SessionArgs, ShellArgs,
};
use commands::{Answer, Context};
use domain::Scope;
use error::{CliError, ErrorJson, ErrorKind};

/// On musl (the shipped static build), a pure-Rust allocator: musl's own
/// made every command slower than glibc's (Cargo.toml).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

fn main() -> ExitCode {
    #[cfg(feature = "generate")]
    if let Some(status) = generate::from_args() {
        return status;
    }
    if let Some(args) = WatchdogArgs::from_args() {
        return freeze_watchdog(args);
    }
    let cli = help::parse();
    if let Some(persist) = cli.options.persist {
        // One setting for every command, read where an agent is reached;
        // set before any thread starts.
        std::env::set_var("VIRTOMATE_PERSIST", persist.as_secs_f64().to_string());
    }
    if let Some(level) = cli.options.log {
        init_logging(level);
    }
    let options = ClientOptions {
        handshake_timeout: cli.options.timeout,
        reply_timeout: cli.options.reply_timeout,
        trace: cli.options.trace.then(stderr_trace),
        ..ClientOptions::default()
    };
    // With --raw, stdout is the program's: virtomate's own failures go to
    // stderr as one line, with ssh's exit status.
    // So does a local command's, for guest-freeze, and `shell`: its exit
    // status is the guest shell's.
    let raw = match &cli.command {
        Command::GuestRun(args) => args.raw || args.follow || args.interactive,
        Command::GuestFreeze(args) => !args.command.is_empty(),
        Command::Shell(_) => true,
        _ => false,
    };
    let connection = cli.options.connection.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime needs no resources that can be missing");

    let answer = runtime.block_on(async {
        let context = Context {
            options,
            scope: Scope::new(
                cli.options.connection.as_deref(),
                std::env::var("LIBVIRT_DEFAULT_URI").ok().as_deref(),
            )?,
        };
        match cli.command {
            Command::GuestRun(args) => commands::guest_run::run(args, &context).await,
            Command::GuestPing(GuestPingArgs {
                wait,
                wait_for,
                domain,
            }) => commands::guest_ping::run(&domain, wait, wait_for.as_deref(), &context).await,
            Command::Session(SessionArgs { idle, domain }) => {
                commands::session::run(&domain, idle, &context).await
            }
            Command::GuestInfo(GuestInfoArgs { domain }) => {
                commands::guest_info::run(&domain, &context).await
            }
            Command::GuestFacts(GuestFactsArgs { domain }) => {
                commands::guest_facts::run(&domain, &context).await
            }
            Command::GuestSetPassword(GuestSetPasswordArgs {
                crypted,
                domain,
                user,
            }) => commands::guest_set_password::run(&domain, &user, crypted, &context).await,
            Command::GuestSshKeys(GuestSshKeysArgs {
                add,
                remove,
                reset,
                domain,
                user,
            }) => {
                let changes = commands::guest_ssh_keys::KeyChanges { add, remove, reset };
                commands::guest_ssh_keys::run(&domain, &user, changes, &context).await
            }
            Command::GuestSetTime(GuestSetTimeArgs { domain }) => {
                commands::guest_set_time::run(&domain, &context).await
            }
            Command::GuestFstrim(GuestFstrimArgs { minimum, domain }) => {
                commands::guest_fstrim::run(&domain, minimum, &context).await
            }
            Command::GuestShutdown(GuestShutdownArgs { mode, wait, domain }) => {
                commands::guest_shutdown::run(&domain, mode, wait, &context).await
            }
            Command::DomainList => commands::domain_list::run(&context).await,
            Command::DomainIfaceList(DomainIfaceListArgs { source, domain }) => {
                commands::domain_iface_list::run(&domain, source, &context).await
            }
            Command::Doctor(DoctorArgs { domain, json }) => {
                Ok(commands::doctor::run(&domain, json, &context).await)
            }
            Command::GuestCmd(GuestCmdArgs {
                unchecked,
                domain,
                request,
                arguments,
            }) => commands::guest_cmd::run(&domain, request, arguments, unchecked, &context).await,
            Command::Qmp(QmpArgs {
                events,
                domain,
                request,
            }) => commands::qmp::run(&domain, &request, events, &context).await,
            Command::Copy(args) => commands::copy::run(args, &context).await,
            Command::GuestFreeze(args) => {
                commands::guest_freeze::run(args, connection.as_deref(), &context).await
            }
            Command::GuestThaw(GuestThawArgs { domain }) => {
                commands::guest_thaw::run(&domain, &context).await
            }
            Command::Control(ControlArgs { action }) => commands::control::run(action, &context).await,
            Command::Shell(ShellArgs { domain, command }) => {
                commands::shell::run(&domain, command, &context).await
            }
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
            run.print(cli.options.pretty)
        }
        Ok(Answer::Json(json)) => output::print_json(&json, cli.options.pretty),
        Ok(Answer::Nothing) => Ok(()),
        Ok(Answer::Exit(status)) => {
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
                output::print_json(&report, cli.options.pretty)
            }
        }
        Err(error) => return report(&error, cli.options.pretty, raw),
    };
    match printed {
        Ok(()) => success,
        // Like ripgrep: a reader that went away (`| head -c1`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => success,
        Err(e) => report(
            &CliError::io("cannot write the result", e),
            cli.options.pretty,
            raw,
        ),
    }
}

/// `virtomate freeze-watchdog`: runs until it has thawed or is stood down;
/// nobody reads what it would print.
fn freeze_watchdog(args: WatchdogArgs) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime needs no resources that can be missing");
    let result = runtime.block_on(async {
        let context = Context {
            options: ClientOptions::default(),
            scope: Scope::new(
                args.connection.as_deref(),
                std::env::var("LIBVIRT_DEFAULT_URI").ok().as_deref(),
            )?,
        };
        let WatchdogArgs {
            token,
            after,
            thaw_when_orphaned,
            domain,
            ..
        } = args;
        commands::freeze_watchdog::run(&domain, &token, after, thaw_when_orphaned, &context).await
    });
    runtime.shutdown_background();
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
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
