//! The command line, as clap sees it.

use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::commands::guest_cmd::{parse_request, Request};

/// Run programs in QEMU virtual machines through the guest agent's UNIX
/// socket, without libvirt. Every answer is JSON on stdout.
#[derive(Debug, Parser)]
#[command(name = "virtomate", version, disable_version_flag = true)]
pub struct Cli {
    /// Indent the JSON output by two spaces
    #[arg(short, long, global = true)]
    pub pretty: bool,

    /// Print the version and exit
    #[arg(short = 'v', long = "version", action = ArgAction::Version)]
    version: (),

    /// Seconds allowed for connecting to the agent and the handshake
    #[arg(long, global = true, value_name = "SECONDS", default_value = "5", value_parser = seconds)]
    pub timeout: Duration,

    /// Seconds allowed for each single reply of the agent
    #[arg(long, global = true, value_name = "SECONDS", default_value = "30", value_parser = seconds)]
    pub reply_timeout: Duration,

    /// Look for domains in this libvirt daemon only: qemu:///system or qemu:///session
    #[arg(short = 'c', long = "connection", global = true, value_name = "URI")]
    pub connection: Option<String>,

    /// Log every byte sent to and received from the agent or QEMU to stderr
    #[arg(long, global = true)]
    pub trace: bool,

    /// Log messages of LEVEL and above to stderr
    #[arg(short = 'l', long = "log", global = true, value_name = "LEVEL")]
    pub log: Option<LogLevel>,

    #[command(subcommand)]
    pub command: Command,
}

/// The original tool's log levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    Debug,
    Info,
    Warning,
    Error,
    Critical,
}

// Variants are named after the commands, which share prefixes on purpose.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a program on a domain through the QEMU Guest Agent
    GuestRun(GuestRunArgs),

    /// Check whether the QEMU Guest Agent answers (exit 0), or not (exit 125)
    GuestPing {
        /// Keep trying for up to SECONDS until the agent answers
        #[arg(long, value_name = "SECONDS", value_parser = seconds)]
        wait: Option<Duration>,

        /// Agent socket path, libvirt domain name or UUID, or -name of a QEMU process
        domain: String,
    },

    /// List the running domains: libvirt's and bare QEMU processes
    DomainList,

    /// Diagnose, step by step, why the agent of a domain does not answer
    Doctor {
        /// Agent socket path, libvirt domain name or UUID, or -name of a QEMU process
        domain: String,
    },

    /// Send any agent request after the handshake and print its return value
    GuestCmd {
        /// Agent socket path, libvirt domain name or UUID, or -name of a QEMU process
        domain: String,

        /// The request: {"execute": COMMAND, "arguments": {...}}
        #[arg(value_parser = parse_request)]
        request: Request,
    },

    /// Send any QMP command to QEMU's monitor and print its return value
    Qmp {
        /// Include the events that arrived meanwhile: {"events": [...], "return": ...}
        #[arg(long)]
        events: bool,

        /// QMP socket path, libvirt domain name or UUID, or -name of a QEMU process
        domain: String,

        /// The command: {"execute": COMMAND, "arguments": {...}}
        #[arg(value_parser = parse_request)]
        request: Request,
    },

    /// Show the agent's version and its commands, enabled or not
    GuestInfo {
        /// Agent socket path, libvirt domain name or UUID, or -name of a QEMU process
        domain: String,
    },
}

#[derive(Debug, Args)]
pub struct GuestRunArgs {
    /// Encode output with Base64
    #[arg(short, long)]
    pub encode: bool,

    /// Consume standard input and pass it to the program
    #[arg(long)]
    pub stdin: bool,

    /// Agent socket path, libvirt domain name or UUID, or -name of a QEMU process
    pub domain: String,

    /// Program to run in the guest (its PATH is searched)
    pub program: String,

    /// Arguments of the program
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub arguments: Vec<String>,
}

/// The longest time any option takes: deadlines are computed from it, and
/// beyond this they would overflow the clock.
const MAX_SECONDS: f64 = 1e9;

fn seconds(text: &str) -> Result<Duration, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if value > MAX_SECONDS {
        return Err(format!("'{text}' is too long; at most {MAX_SECONDS} seconds"));
    }
    Duration::try_from_secs_f64(value).map_err(|_| format!("'{text}' is not a usable number of seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("virtomate").chain(line.iter().copied()))
    }

    fn guest_run(line: &[&str]) -> GuestRunArgs {
        match parse(line).unwrap().command {
            Command::GuestRun(args) => args,
            other => panic!("not guest-run: {other:?}"),
        }
    }

    #[test]
    fn program_options_after_double_dash_belong_to_the_program() {
        let args = guest_run(&["guest-run", "dom", "--", "echo", "-n", "Hello World"]);
        assert_eq!(args.domain, "dom");
        assert_eq!(args.program, "echo");
        assert_eq!(args.arguments, ["-n", "Hello World"]);
    }

    #[test]
    fn double_dash_may_come_before_the_domain() {
        let args = guest_run(&["guest-run", "--encode", "--", "dom", "wc", "-m"]);
        assert!(args.encode);
        assert_eq!((args.domain.as_str(), args.program.as_str()), ("dom", "wc"));
        assert_eq!(args.arguments, ["-m"]);
    }

    #[test]
    fn global_options_go_before_the_command() {
        let cli = parse(&["-p", "--timeout", "0.5", "guest-run", "--stdin", "dom", "cat"]).unwrap();
        assert!(cli.pretty);
        assert_eq!(cli.timeout, Duration::from_millis(500));
    }

    #[test]
    fn missing_program_is_a_usage_error() {
        assert_eq!(parse(&["guest-run", "dom"]).unwrap_err().exit_code(), 2);
        for bad in ["x", "-1", "1e19", "inf", "NaN"] {
            let line = ["--timeout", bad, "guest-run", "d", "p"];
            assert_eq!(parse(&line).unwrap_err().exit_code(), 2, "{bad}");
        }
    }
}
