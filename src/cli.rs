//! The command line, as clap sees it.

use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};

pub mod parse_tree;
use serde_json::Value;

/// Run programs in QEMU virtual machines through the guest agent's UNIX
/// socket, without libvirt. Every answer is JSON on stdout.
#[derive(Debug, Parser)]
#[command(name = "virtomate", version, disable_version_flag = true)]
pub struct Cli {
    #[command(flatten)]
    pub options: Options,

    #[command(subcommand)]
    pub command: Command,
}

/// The options before the command: `--version`, and the global ones,
/// which every command also takes after its name.
#[derive(Debug, Args)]
pub struct Options {
    /// Indent the JSON output by two spaces
    #[arg(short, long, global = true)]
    pub pretty: bool,

    /// Print the version and exit
    #[arg(short = 'v', long = "version", action = ArgAction::Version)]
    version: (),

    /// Seconds allowed for connecting to the agent and the handshake
    #[arg(
        long,
        global = true,
        value_name = "SECONDS",
        default_value = "5",
        value_parser = seconds,
        allow_hyphen_values = true
    )]
    pub timeout: Duration,

    /// Seconds allowed for each single reply of the agent
    #[arg(
        long,
        global = true,
        value_name = "SECONDS",
        default_value = "30",
        value_parser = seconds,
        allow_hyphen_values = true
    )]
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

    /// Reach agents through a control master that keeps their connection
    /// and stays SECONDS after its last request (as VIRTOMATE_PERSIST)
    #[arg(
        long,
        global = true,
        value_name = "SECONDS",
        value_parser = seconds,
        allow_hyphen_values = true
    )]
    pub persist: Option<Duration>,
}

/// `domain-iface-list --source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IfaceSource {
    Agent,
    Lease,
    Arp,
}

/// `guest-shutdown --mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ShutdownMode {
    Powerdown,
    Reboot,
    Halt,
}

impl ShutdownMode {
    /// The agent's word for it.
    pub fn name(self) -> &'static str {
        match self {
            ShutdownMode::Powerdown => "powerdown",
            ShutdownMode::Reboot => "reboot",
            ShutdownMode::Halt => "halt",
        }
    }
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
    GuestPing(GuestPingArgs),

    /// List the running domains: libvirt's and bare QEMU processes
    DomainList,

    /// List a domain's network interfaces and their addresses, as the original virtomate
    DomainIfaceList(DomainIfaceListArgs),

    /// Diagnose, step by step, why the agent of a domain does not answer
    Doctor(DoctorArgs),

    /// Send any agent request after the handshake and print its return value; the request is
    /// checked against QEMU's schema first
    GuestCmd(GuestCmdArgs),

    /// Send any QMP command to QEMU's monitor and print its return value
    Qmp(QmpArgs),

    /// Serve requests given as JSON lines on stdin over one agent connection, replies as JSON lines on stdout
    Session(SessionArgs),

    /// Show the agent's version and its commands, enabled or not
    GuestInfo(GuestInfoArgs),

    /// What the agent tells of the guest, as JSON: os, hostname, timezone, time, users,
    /// filesystems, disks, interfaces, routes, vcpus, load, cpu_stats, disk_stats; a section the
    /// agent cannot give holds {"error": {...}} saying why
    GuestFacts(GuestFactsArgs),

    /// Set a guest user's password; it is read from standard input, or prompted for without
    /// echo on a terminal, never taken from the command line
    GuestSetPassword(GuestSetPasswordArgs),

    /// List a guest user's authorized SSH keys, or change them and list them after
    GuestSshKeys(GuestSshKeysArgs),

    /// Set the guest's clock to the host's (after a resume or restore)
    GuestSetTime(GuestSetTimeArgs),

    /// Discard the blocks the guest's file systems do not use
    GuestFstrim(GuestFstrimArgs),

    /// Ask the guest to power down, reboot or halt; with --wait, confirm that it did
    GuestShutdown(GuestShutdownArgs),

    /// Copy a file (or with -r a directory tree) into or out of a domain: one of SRC and DEST is
    /// DOMAIN:/PATH
    Copy(CopyArgs),

    /// Freeze the guest's file systems, for at most --max-time: with COMMAND, run it (a
    /// snapshot) and thaw; without, leave them frozen until guest-thaw or --max-time
    GuestFreeze(GuestFreezeArgs),

    /// Thaw the guest's file systems, and stand down the watchdogs of a guest-freeze
    GuestThaw(GuestThawArgs),

    /// Ask the control master of a domain's agent (VIRTOMATE_PERSIST) what it is, or end it
    Control(ControlArgs),

    /// An interactive shell (or PROGRAM) in the guest, on a terminal where the guest can make one
    /// (util-linux script or python3's pty module), else in line mode; ~. at a line's start leaves;
    /// exit status the program's, 255 for virtomate's own failures
    Shell(ShellArgs),
}

// Each command's arguments, a struct of their own so that the parsing
// tree can make only the given command's (`parse_tree`); its variant's
// doc comment is its help.
#[derive(Debug, Args)]
pub struct GuestPingArgs {
    /// Keep trying for up to SECONDS until the agent answers (0: ping once)
    #[arg(long, value_name = "SECONDS", value_parser = seconds_or_zero, allow_hyphen_values = true)]
    pub wait: Option<Duration>,

    /// Also wait until the agent has COMMAND enabled (e.g. guest-exec); without it enabled
    /// by the end of --wait, a CommandUnavailable error says why
    #[arg(long, value_name = "COMMAND", value_parser = agent_command_names())]
    pub wait_for: Option<String>,

    /// Agent socket path, libvirt domain name or UUID, or -name of a QEMU process
    pub domain: String,
}

#[derive(Debug, Args)]
pub struct DomainIfaceListArgs {
    /// Where the addresses come from: the guest agent (any domain), libvirt's DHCP leases or
    /// the host's ARP table (libvirt domains)
    #[arg(long, value_enum, default_value = "lease")]
    pub source: IfaceSource,

    /// Agent socket path, libvirt domain name or UUID, or -name of a QEMU process
    pub domain: String,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The report as JSON even on a terminal (it is JSON whenever stdout is not one)
    #[arg(long)]
    pub json: bool,
    /// Agent socket path, libvirt domain name or UUID, or -name of a QEMU process
    pub domain: String,
}

#[derive(Debug, Args)]
pub struct GuestCmdArgs {
    /// Send the request as it is, unchecked (for commands newer than virtomate knows)
    #[arg(long)]
    pub unchecked: bool,

    /// Agent socket path, libvirt domain name or UUID, or -name of a QEMU process
    pub domain: String,

    /// The request, {"execute": COMMAND, "arguments": {...}}, or a COMMAND's name alone
    #[arg(value_name = "REQUEST", value_parser = AgentRequestParser, hide_possible_values = true)]
    pub request: Request,

    /// The command's arguments as a JSON object, after a COMMAND's name
    #[arg(value_name = "ARGUMENTS", value_parser = parse_arguments)]
    pub arguments: Option<Value>,
}

#[derive(Debug, Args)]
pub struct QmpArgs {
    /// Include the events that arrived meanwhile: {"events": [...], "return": ...}
    #[arg(long)]
    pub events: bool,

    /// QMP socket path, libvirt domain name or UUID, or -name of a QEMU process
    pub domain: String,

    /// The command: {"execute": COMMAND, "arguments": {...}}
    #[arg(value_parser = parse_request)]
    pub request: Request,
}

#[derive(Debug, Args)]
pub struct SessionArgs {
    /// Let go of the agent connection after SECONDS without a request
    #[arg(
        long,
        value_name = "SECONDS",
        default_value = "1",
        value_parser = seconds,
        allow_hyphen_values = true
    )]
    pub idle: Duration,

    /// Agent socket path, libvirt domain name or UUID, or -name of a QEMU process
    pub domain: String,
}

#[derive(Debug, Args)]
pub struct GuestInfoArgs {
    /// Agent socket path, libvirt domain name or UUID, or -name of a QEMU process
    pub domain: String,
}

#[derive(Debug, Args)]
pub struct GuestFactsArgs {
    /// Agent socket path, libvirt domain name or UUID, or -name of a QEMU process
    pub domain: String,
}

#[derive(Debug, Args)]
pub struct GuestSetPasswordArgs {
    /// The password is already crypt()ed (e.g. by openssl passwd -6)
    #[arg(long)]
    pub crypted: bool,

    /// Agent socket path, libvirt domain name or UUID, or -name of a QEMU process
    pub domain: String,

    /// The guest user
    pub user: String,
}

#[derive(Debug, Args)]
pub struct GuestSshKeysArgs {
    /// Add the keys of FILE (one per line; - for standard input); repeatable
    #[arg(long, value_name = "FILE")]
    pub add: Vec<String>,

    /// Remove the keys of FILE; repeatable
    #[arg(long, value_name = "FILE")]
    pub remove: Vec<String>,

    /// Replace all keys by those of --add (none: remove all)
    #[arg(long)]
    pub reset: bool,

    /// Agent socket path, libvirt domain name or UUID, or -name of a QEMU process
    pub domain: String,

    /// The guest user
    pub user: String,
}

#[derive(Debug, Args)]
pub struct GuestSetTimeArgs {
    /// Agent socket path, libvirt domain name or UUID, or -name of a QEMU process
    pub domain: String,
}

#[derive(Debug, Args)]
pub struct GuestFstrimArgs {
    /// Skip free ranges smaller than BYTES (a hint to the guest)
    #[arg(long, value_name = "BYTES")]
    pub minimum: Option<u64>,

    /// Agent socket path, libvirt domain name or UUID, or -name of a QEMU process
    pub domain: String,
}

#[derive(Debug, Args)]
pub struct GuestShutdownArgs {
    /// What the guest does
    #[arg(long, value_enum, default_value = "powerdown")]
    pub mode: ShutdownMode,

    /// Wait up to SECONDS for QEMU's monitor, libvirt or the agent's going away to confirm it;
    /// the output's "seen" says which did
    #[arg(long, value_name = "SECONDS", value_parser = seconds, allow_hyphen_values = true)]
    pub wait: Option<Duration>,

    /// Agent socket path, libvirt domain name or UUID, or -name of a QEMU process
    pub domain: String,
}

#[derive(Debug, Args)]
pub struct GuestThawArgs {
    /// Agent socket path, libvirt domain name or UUID, or -name of a QEMU process
    pub domain: String,
}

#[derive(Debug, Args)]
pub struct ControlArgs {
    #[command(subcommand)]
    pub action: ControlAction,
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// Agent socket path, libvirt domain name or UUID, or -name of a QEMU process
    pub domain: String,

    /// The program to run instead of the guest's bash or sh, and its arguments
    #[arg(last = true, value_names = ["PROGRAM", "ARGUMENT"])]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum ControlAction {
    /// Whether a master runs: its pid, since when, requests served (exit 0), or not (exit 1)
    Check {
        /// Agent socket path, libvirt domain name or UUID, or -name of a QEMU process
        domain: String,
    },
    /// End the master, if one runs
    Exit {
        /// Agent socket path, libvirt domain name or UUID, or -name of a QEMU process
        domain: String,
    },
    /// Be the master of the agent socket AGENT, on the socket given as standard input
    #[command(hide = true)]
    Serve {
        #[arg(long, value_name = "SECONDS", value_parser = seconds)]
        persist: Duration,
        agent: std::path::PathBuf,
    },
}

/// `virtomate freeze-watchdog`: the host's watchdog that `guest-freeze`
/// starts (`freeze::host_watchdog`). Not a command of [`Cli`], where it
/// would show in `--help`, the man pages and the completions (clap's
/// completions offer hidden commands too): looked for before clap parses
/// anything, as `--generate` is.
#[derive(Debug, Parser)]
#[command(name = "virtomate freeze-watchdog")]
pub struct WatchdogArgs {
    /// Look for the domain in this libvirt daemon only, as guest-freeze was told
    #[arg(long, value_name = "URI")]
    pub connection: Option<String>,
    /// The freeze it guards
    #[arg(long)]
    pub token: String,
    /// Seconds until it thaws
    #[arg(long, value_parser = seconds)]
    pub after: Duration,
    /// Thaw at once when standard input closes: the virtomate that froze is gone
    #[arg(long)]
    pub thaw_when_orphaned: bool,
    pub domain: String,
}

impl WatchdogArgs {
    /// The watchdog's arguments if the command line is `virtomate
    /// freeze-watchdog ...`; `None` for any other (a bad one exits 2).
    pub fn from_args() -> Option<WatchdogArgs> {
        if std::env::args_os().nth(1).as_deref() != Some("freeze-watchdog".as_ref()) {
            return None;
        }
        Some(WatchdogArgs::parse_from(std::env::args_os().skip(1)))
    }
}

#[derive(Debug, Args)]
pub struct GuestFreezeArgs {
    /// Freeze the file system mounted at PATH only (repeatable; default: every file system
    /// on a block device)
    #[arg(long = "mountpoint", value_name = "PATH")]
    pub mountpoints: Vec<String>,

    /// The longest the guest stays frozen (at least 10): watchdogs on the host and in the
    /// guest thaw it by then, even if virtomate is killed or loses the agent's socket
    #[arg(long, value_name = "SECONDS", value_parser = seconds, allow_hyphen_values = true)]
    pub max_time: Duration,

    /// Agent socket path, libvirt domain name or UUID, or -name of a QEMU process
    pub domain: String,

    /// A local command to run while the guest is frozen, after `--`; virtomate thaws when it
    /// ends (or at --max-time, and stops it) and exits with its status
    #[arg(last = true, value_names = ["COMMAND", "ARG"])]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Copy a directory tree, with tar in the guest: modes, symbolic links and empty files kept
    #[arg(short, long, conflicts_with_all = ["mode", "verify"])]
    pub recursive: bool,

    /// Bytes per agent request (e.g. 64K, 4M; at most 16M); through
    /// libvirtd, capped to libvirt's limits
    #[arg(long, value_name = "BYTES", value_parser = crate::copy::chunks::parse)]
    pub chunk_size: Option<usize>,

    /// Mode of the file written in the guest (default: the local file's;
    /// 600 from standard input)
    #[arg(long, value_name = "OCTAL", value_parser = octal_mode)]
    pub mode: Option<u32>,

    /// Also compare SHA-256 sums computed on both sides (the guest needs sha256sum)
    #[arg(long)]
    pub verify: bool,

    /// Move the data gzipped (the guest needs gzip): pays for text and logs
    /// on a slow channel, not for data already compressed
    #[arg(long)]
    pub compress: bool,

    /// Show a progress bar on stderr even when it is not a terminal
    #[arg(long, overrides_with = "no_progress")]
    pub progress: bool,

    /// Show no progress bar, even on a terminal
    #[arg(long)]
    pub no_progress: bool,

    /// A local file, - for standard input, or DOMAIN:/PATH
    #[arg(value_name = "SRC")]
    pub source: String,

    /// A local file or directory, - for standard output, or DOMAIN:/PATH
    #[arg(value_name = "DEST")]
    pub dest: String,
}

/// `--mode`: permission bits in octal, as chmod takes them.
pub fn octal_mode(text: &str) -> Result<u32, String> {
    match u32::from_str_radix(text, 8) {
        Ok(mode) if mode <= 0o7777 && !text.is_empty() => Ok(mode),
        _ => Err("expected an octal mode from 0 to 7777, e.g. 640".to_owned()),
    }
}

#[derive(Debug, Args)]
pub struct GuestRunArgs {
    /// Encode output with Base64
    #[arg(short, long)]
    pub encode: bool,

    /// Consume standard input and pass it to the program
    #[arg(long)]
    pub stdin: bool,

    /// Stop the program after SECONDS: SIGTERM to it and to what it started, SIGKILL after
    /// --grace; the result as usual, exit status 124
    #[arg(long, value_name = "SECONDS", value_parser = seconds, allow_hyphen_values = true)]
    pub max_time: Option<Duration>,

    /// Seconds between SIGTERM and SIGKILL when --max-time passes or Ctrl-C stops the program
    #[arg(
        long,
        value_name = "SECONDS",
        default_value = "5",
        value_parser = seconds,
        allow_hyphen_values = true
    )]
    pub grace: Duration,

    /// Set KEY to VALUE in the program's environment (repeatable); the program then gets a
    /// standard PATH and these, not the agent's environment
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = env_assignment)]
    pub env: Vec<String>,

    /// Start the program with no environment but the --env given (no PATH: give PROGRAM's
    /// full path)
    #[arg(long)]
    pub env_clear: bool,

    /// Write the program's stdout and stderr as they are, byte for byte, and exit with its
    /// status (128+N for signal N, 124 after --max-time); virtomate's own failures: a line
    /// on stderr and exit status 255
    #[arg(long)]
    pub raw: bool,

    /// Write the program's stdout and stderr while it runs (implies --raw): its output goes
    /// to files in a private directory of the guest, read as they grow, removed at the end;
    /// the guest needs /bin/sh and a writable temporary directory
    #[arg(long, conflicts_with_all = ["encode", "merge_output"])]
    pub follow: bool,

    /// Stream standard input to the program while it runs, as through a pipe (implies
    /// --follow): it reaches the program through a named pipe in the same private directory;
    /// the end of standard input closes the program's, and the run goes on until it ends
    #[arg(short, long, conflicts_with_all = ["stdin", "encode", "merge_output"])]
    pub interactive: bool,

    /// Collect stdout and stderr as one stream in the order written, in "stdout" (needs
    /// qemu-ga 8.1 or newer)
    #[arg(long)]
    pub merge_output: bool,

    /// Agent socket path, libvirt domain name or UUID, or -name of a QEMU process
    pub domain: String,

    /// The program to run in the guest (its PATH is searched) and its
    /// arguments: everything from PROGRAM on is the program's, options included
    //
    // One positional that takes the rest: once PROGRAM has filled it, clap
    // stops looking for options, virtomate's global ones included (which
    // `global = true` would otherwise match after PROGRAM too). A `--`
    // before PROGRAM is still consumed as the end of virtomate's options.
    #[arg(
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        value_names = ["PROGRAM", "ARGUMENT"]
    )]
    command: Vec<String>,
}

impl GuestRunArgs {
    /// The program and its arguments, as the user wrote them.
    pub fn into_command(self) -> (String, Vec<String>) {
        let mut command = self.command.into_iter();
        let program = command.next().expect("clap requires PROGRAM");
        (program, command.collect())
    }
}

/// The longest time any option takes: deadlines are computed from it, and
/// beyond this they would overflow the clock.
const MAX_SECONDS: f64 = 1e9;

/// A time limit (`--timeout`, `--reply-timeout`): more than zero, since a
/// limit of zero fails every time.
fn seconds(text: &str) -> Result<Duration, String> {
    match duration(text) {
        Some(duration) if !duration.is_zero() => Ok(duration),
        _ => Err(format!(
            "expected a number of seconds greater than 0 and at most {MAX_SECONDS}"
        )),
    }
}

/// `KEY=VALUE` for `--env`: the value may hold anything, `=` included.
fn env_assignment(text: &str) -> Result<String, String> {
    match text.split_once('=') {
        Some((key, _)) if !key.is_empty() => Ok(text.to_owned()),
        _ => Err("expected KEY=VALUE, with a KEY that is not empty".to_owned()),
    }
}

/// A time to keep trying (`--wait`), where 0 means trying once.
fn seconds_or_zero(text: &str) -> Result<Duration, String> {
    duration(text).ok_or_else(|| format!("expected a number of seconds from 0 to {MAX_SECONDS}"))
}

/// `text` as a number of seconds from 0 to [`MAX_SECONDS`], if it is one.
fn duration(text: &str) -> Option<Duration> {
    let value: f64 = text.trim().parse().ok()?;
    if !(0.0..=MAX_SECONDS).contains(&value) {
        return None; // negative, too long, or NaN
    }
    Duration::try_from_secs_f64(value).ok()
}

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

/// `guest-cmd`'s REQUEST: a JSON request or a command's name, whose
/// possible values (for completions) are the names of QEMU's schema.
#[derive(Debug, Clone, Copy)]
pub struct AgentRequestParser;

impl clap::builder::TypedValueParser for AgentRequestParser {
    type Value = Request;

    fn parse_ref(
        &self,
        command: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Request, clap::Error> {
        let text = value.to_str().ok_or_else(|| {
            clap::Error::raw(clap::error::ErrorKind::InvalidUtf8, "the request is not UTF-8\n")
                .with_cmd(command)
        })?;
        if text.trim_start().starts_with('{') {
            return parse_request(text).map_err(|message| {
                let what = arg.map(ToString::to_string).unwrap_or_default();
                clap::Error::raw(
                    clap::error::ErrorKind::ValueValidation,
                    format!("invalid value '{text}' for '{what}': {message}\n"),
                )
                .with_cmd(command)
            });
        }
        Ok(Request {
            name: text.to_owned(),
            arguments: None,
        })
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        let names = virtomate_protocol::qga::schema::COMMANDS
            .iter()
            .map(|command| command.name);
        Some(Box::new(names.map(clap::builder::PossibleValue::new)))
    }
}

/// The names of QEMU's schema: completions offer them, and clap refuses
/// any other, naming the closest.
fn agent_command_names() -> impl clap::builder::TypedValueParser<Value = String> {
    let names = virtomate_protocol::qga::schema::COMMANDS
        .iter()
        .map(|command| command.name);
    clap::builder::PossibleValuesParser::new(names.map(clap::builder::PossibleValue::new))
}

/// `guest-cmd`'s ARGUMENTS: a JSON object.
fn parse_arguments(text: &str) -> Result<Value, String> {
    match serde_json::from_str(text) {
        Ok(object @ Value::Object(_)) => Ok(object),
        Ok(_) => Err("the arguments are a JSON object: {\"NAME\": VALUE, ...}".to_owned()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As `virtomate` parses its arguments (`help::parse`).
    fn parse(line: &[&str]) -> Result<Cli, clap::Error> {
        use clap::FromArgMatches;
        let matches = parse_tree::parse_tree()
            .try_get_matches_from(std::iter::once("virtomate").chain(line.iter().copied()))?;
        Cli::from_arg_matches(&matches)
    }

    fn guest_run(line: &[&str]) -> GuestRunArgs {
        match parse(line).unwrap().command {
            Command::GuestRun(args) => args,
            other => panic!("not guest-run: {other:?}"),
        }
    }

    fn command(program: &str, arguments: &[&str]) -> (String, Vec<String>) {
        (
            program.to_owned(),
            arguments.iter().map(|a| a.to_string()).collect(),
        )
    }

    #[test]
    fn everything_after_the_program_is_the_programs() {
        let cases: [&[&str]; 9] = [
            &["-e", "a\\tb"],
            &["-p", "x"],
            &["--", "x"],
            &["-c", "echo hi"],
            &["-l", "/"],
            &["--help"],
            &["--stdin", "--encode", "--version", "-v"],
            &[
                "--timeout",
                "-1",
                "--reply-timeout=0",
                "--log",
                "debug",
                "--trace",
            ],
            &["x", "--", "--", "-"],
        ];
        for arguments in cases {
            let mut line = vec!["guest-run", "dom", "/bin/echo"];
            line.extend(arguments);
            let args = guest_run(&line);
            assert!(!args.encode && !args.stdin, "{line:?}");
            assert_eq!(args.into_command(), command("/bin/echo", arguments), "{line:?}");
            // The same behind a `--`, which is virtomate's and consumed.
            let mut line = vec!["guest-run", "dom", "--", "/bin/echo"];
            line.extend(arguments);
            assert_eq!(guest_run(&line).into_command(), command("/bin/echo", arguments));
        }
        let cli = parse(&["guest-run", "dom", "ls", "-p", "--timeout", "0"]).unwrap();
        assert!(!cli.options.pretty);
        assert_eq!(cli.options.timeout, Duration::from_secs(5));
    }

    #[test]
    fn options_before_the_program_are_virtomates() {
        let line = [
            "guest-run",
            "-p",
            "-e",
            "--stdin",
            "-c",
            "qemu:///system",
            "--timeout",
            "2",
            "-l",
            "info",
            "--trace",
            "--reply-timeout",
            "3",
            "dom",
            "--",
            "-p",
            "-v",
        ];
        let cli = parse(&line).unwrap();
        assert!(cli.options.pretty && cli.options.trace);
        assert_eq!(cli.options.connection.as_deref(), Some("qemu:///system"));
        assert_eq!(cli.options.log, Some(LogLevel::Info));
        assert_eq!(
            (cli.options.timeout, cli.options.reply_timeout),
            (Duration::from_secs(2), Duration::from_secs(3))
        );
        let Command::GuestRun(args) = cli.command else {
            panic!("not guest-run")
        };
        assert!(args.encode && args.stdin);
        assert_eq!(args.into_command(), command("-p", &["-v"]));
        // Global options before the command, and between DOMAIN and PROGRAM.
        let cli = parse(&["-p", "guest-run", "dom", "--timeout", "2", "-e", "prog", "-p"]).unwrap();
        assert!(cli.options.pretty);
        assert_eq!(cli.options.timeout, Duration::from_secs(2));
        let Command::GuestRun(args) = cli.command else {
            panic!("not guest-run")
        };
        assert!(args.encode);
        assert_eq!(args.into_command(), command("prog", &["-p"]));
    }

    #[test]
    fn program_options_after_double_dash_belong_to_the_program() {
        let args = guest_run(&["guest-run", "dom", "--", "echo", "-n", "Hello World"]);
        assert_eq!(args.domain, "dom");
        assert_eq!(args.into_command(), command("echo", &["-n", "Hello World"]));
    }

    #[test]
    fn double_dash_may_come_before_the_domain() {
        let args = guest_run(&["guest-run", "--encode", "--", "dom", "wc", "-m"]);
        assert!(args.encode);
        assert_eq!(args.domain, "dom");
        assert_eq!(args.into_command(), command("wc", &["-m"]));
    }

    #[test]
    fn global_options_go_before_the_command() {
        let cli = parse(&["-p", "--timeout", "0.5", "guest-run", "--stdin", "dom", "cat"]).unwrap();
        assert!(cli.options.pretty);
        assert_eq!(cli.options.timeout, Duration::from_millis(500));
    }

    #[test]
    fn missing_program_is_a_usage_error() {
        assert_eq!(parse(&["guest-run", "dom"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn time_limits_refuse_zero_and_negatives_alike() {
        let expected = "expected a number of seconds greater than 0 and at most 1000000000";
        for option in ["--timeout", "--reply-timeout"] {
            for bad in [
                "0",
                "-0",
                "-1",
                "-0.5",
                "0.0000000001",
                "x",
                "",
                "1e19",
                "inf",
                "-inf",
                "NaN",
            ] {
                let error = parse(&[option, bad, "guest-run", "d", "p"]).unwrap_err();
                assert_eq!(
                    error.kind(),
                    clap::error::ErrorKind::ValueValidation,
                    "{option} {bad}"
                );
                assert_eq!(error.exit_code(), 2, "{option} {bad}");
                assert!(error.to_string().contains(expected), "{option} {bad}: {error}");
                // The same after the command, and written with `=`.
                let joined = format!("{option}={bad}");
                let error = parse(&["guest-ping", &joined, "d"]).unwrap_err();
                assert!(error.to_string().contains(expected), "{joined}: {error}");
            }
        }
        let cli = parse(&["--timeout", "0.001", "--reply-timeout", "1e9", "guest-info", "d"]).unwrap();
        assert_eq!(cli.options.timeout, Duration::from_millis(1));
        assert_eq!(cli.options.reply_timeout, Duration::from_secs(1_000_000_000));
    }

    #[test]
    fn wait_takes_zero_and_refuses_negatives() {
        let wait = |value: &str| -> Result<Option<Duration>, clap::Error> {
            match parse(&["guest-ping", "--wait", value, "d"])?.command {
                Command::GuestPing(GuestPingArgs { wait, .. }) => Ok(wait),
                other => panic!("not guest-ping: {other:?}"),
            }
        };
        assert_eq!(wait("0").unwrap(), Some(Duration::ZERO));
        assert_eq!(wait("2.5").unwrap(), Some(Duration::from_millis(2500)));
        for bad in ["-1", "-0.5", "x", "NaN", "1e10"] {
            let error = wait(bad).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{bad}");
            assert!(
                error
                    .to_string()
                    .contains("expected a number of seconds from 0 to 1000000000"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn guest_freeze_needs_max_time_and_takes_its_command_after_double_dash() {
        let freeze = |line: &[&str]| match parse(line).map(|cli| cli.command) {
            Ok(Command::GuestFreeze(args)) => Ok(args),
            Ok(other) => panic!("not guest-freeze: {other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(freeze(&["guest-freeze", "dom"]).unwrap_err().exit_code(), 2);
        let args = freeze(&["guest-freeze", "dom", "--max-time", "30"]).unwrap();
        assert_eq!(args.max_time, Duration::from_secs(30));
        assert!(args.command.is_empty() && args.mountpoints.is_empty());
        let line = [
            "guest-freeze",
            "--mountpoint",
            "/",
            "--mountpoint=/var",
            "dom",
            "--max-time",
            "60",
            "--",
            "snap",
            "--max-time",
            "-x",
        ];
        let args = freeze(&line).unwrap();
        assert_eq!(args.mountpoints, ["/", "/var"]);
        assert_eq!(args.domain, "dom");
        assert_eq!(args.command, ["snap", "--max-time", "-x"]);
        // COMMAND only after `--`: a stray word is not taken for one.
        assert!(freeze(&["guest-freeze", "dom", "--max-time", "30", "snap"]).is_err());
    }

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
