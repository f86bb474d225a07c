//! `virtomate doctor`: why does the agent not answer? A step-by-step
//! diagnosis, each step with its outcome and, when it fails, what to do.
//!
//! Each [`Step`] has one function that checks it and hands the next steps
//! what they need: the domain, the channel examined, the route to its
//! agent, the agent itself. So every step looks at the channel the steps
//! before it examined, and the handshake connects over that very channel
//! (or through libvirtd, where the `held` step found libvirtd holding it)
//! rather than choosing again.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::unistd::{access, AccessFlags};
use serde::Serialize;
use tokio::net::UnixStream;
use virtomate_protocol::qga::schema::COMMANDS;
use virtomate_protocol::qga::schema::{GuestFsfreezeStatus, GuestFsfreezeStatusReply as FreezeStatus};
use virtomate_protocol::qga::{Command, GuestInfo, GuestInfoReply};
use virtomate_protocol::qmp::QueryChardev;
use virtomate_protocol::{ClientOptions, QmpClient};

use super::{Answer, Context};
use crate::agent::{how_to_enable, why_lacking, DomainAgent};
use crate::domain::{self, run_state, socket_holders, Channel, Domain, Route, Source};
use crate::error::ErrorKind;

/// Every step, in the order a person would check them by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// DOMAIN is found, and how.
    Domain,
    /// The agent channel examined exists and is a socket.
    Socket,
    /// We may read and write it.
    Permission,
    /// Whether another client holds it, and which process.
    Held,
    /// A connection is accepted.
    Connect,
    /// The guest has opened its end of the port.
    GuestPortOpen,
    /// The VM runs, as QEMU (or libvirt's record) tells.
    RunState,
    /// The agent answers `guest-sync-delimited`.
    Handshake,
    /// The agent answers `guest-info`.
    AgentVersion,
    /// The agent does not hold the guest frozen (`guest-fsfreeze-status`),
    /// which disables `guest-exec` and the file commands.
    Frozen,
    /// `guest-exec` is enabled.
    GuestExec,
}

impl Step {
    const ALL: [Step; 11] = [
        Step::Domain,
        Step::Socket,
        Step::Permission,
        Step::Held,
        Step::Connect,
        Step::GuestPortOpen,
        Step::RunState,
        Step::Handshake,
        Step::AgentVersion,
        Step::Frozen,
        Step::GuestExec,
    ];

    /// The name shown in the report (as serialized).
    fn name(self) -> &'static str {
        match self {
            Step::Domain => "domain",
            Step::Socket => "socket",
            Step::Permission => "permission",
            Step::Held => "held",
            Step::Connect => "connect",
            Step::GuestPortOpen => "guest-port-open",
            Step::RunState => "run-state",
            Step::Handshake => "handshake",
            Step::AgentVersion => "agent-version",
            Step::Frozen => "frozen",
            Step::GuestExec => "guest-exec",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    /// Not checked: an earlier step failed, or nothing to check it with.
    Skip,
}

/// The detail of a step skipped after a failure.
const NOT_CHECKED: &str = "not checked: an earlier step failed";

/// One line of the report. (Fields in key order: the JSON keys come out
/// sorted, as the original's.)
#[derive(Debug, Serialize)]
pub struct StepReport {
    /// What to do about a failure.
    advice: Option<String>,
    detail: String,
    name: Step,
    outcome: Outcome,
}

#[derive(Debug, Serialize)]
pub struct Report {
    ok: bool,
    steps: Vec<StepReport>,
}

impl Report {
    /// The table shown when stdout is a terminal.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for step in &self.steps {
            let outcome = match step.outcome {
                Outcome::Pass => "pass",
                Outcome::Fail => "FAIL",
                Outcome::Skip => "skip",
            };
            text.push_str(&format!(
                "{outcome:<5} {:<16} {}\n",
                step.name.name(),
                step.detail
            ));
            if let Some(advice) = &step.advice {
                text.push_str(&format!("{:<22} -> {advice}\n", ""));
            }
        }
        text
    }

    pub fn ok(&self) -> bool {
        self.ok
    }
}

/// What checking one step found.
enum Checked<T> {
    /// Passed, with a detail and what the later steps need.
    Pass(String, T),
    /// Failed: what was found and what to do about it.
    Fail { detail: String, advice: String },
    /// Not checked, for the reason given; the later steps go on with `T`.
    Skip(String, T),
}

fn fail<T>(detail: impl Into<String>, advice: impl Into<String>) -> Checked<T> {
    Checked::Fail {
        detail: detail.into(),
        advice: advice.into(),
    }
}

/// The steps checked so far.
#[derive(Default)]
struct Diagnosis {
    checked: Vec<StepReport>,
}

impl Diagnosis {
    /// Records a step's outcome; what the next steps need, unless it failed.
    fn record<T>(&mut self, step: Step, checked: Checked<T>) -> Option<T> {
        debug_assert!(
            self.checked.last().map_or(true, |last| last.name < step),
            "{step:?} checked out of order"
        );
        let (outcome, detail, advice, next) = match checked {
            Checked::Pass(detail, next) => (Outcome::Pass, detail, None, Some(next)),
            Checked::Fail { detail, advice } => (Outcome::Fail, detail, Some(advice), None),
            Checked::Skip(detail, next) => (Outcome::Skip, detail, None, Some(next)),
        };
        self.checked.push(StepReport {
            advice,
            detail,
            name: step,
            outcome,
        });
        next
    }

    /// Every step, those not reached listed as skipped, so that the report
    /// always has all of them.
    fn report(self) -> Report {
        let ok = self.checked.iter().all(|step| step.outcome != Outcome::Fail);
        let mut checked = self.checked.into_iter().peekable();
        let steps = Step::ALL
            .into_iter()
            .map(|step| {
                checked.next_if(|done| done.name == step).unwrap_or(StepReport {
                    advice: None,
                    detail: NOT_CHECKED.to_owned(),
                    name: step,
                    outcome: Outcome::Skip,
                })
            })
            .collect();
        Report { ok, steps }
    }
}

pub async fn run(domain_arg: &str, json: bool, context: &Context) -> Answer {
    let mut diagnosis = Diagnosis::default();
    diagnose(domain_arg, context, &mut diagnosis).await;
    Answer::Report {
        report: diagnosis.report(),
        json,
    }
}

/// Checks each step in turn, until one fails that the next ones need.
async fn diagnose(domain_arg: &str, context: &Context, d: &mut Diagnosis) -> Option<()> {
    let found = d.record(Step::Domain, find_domain(domain_arg, context))?;
    let channel = d.record(Step::Socket, socket(&found))?;
    d.record(Step::Permission, permission(&channel.path))?;
    let route = d.record(Step::Held, held(&found, channel))?;
    d.record(Step::Connect, connect(&route, context).await)?;
    // A port the guest has not opened is worth saying, but the handshake
    // is what tells for sure: it is tried all the same.
    d.record(
        Step::GuestPortOpen,
        guest_port_open(&found, channel, context).await,
    );
    // A VM that does not run cannot answer: no need to wait out the handshake.
    d.record(Step::RunState, run_state(&found, context).await)?;
    let agent = d.record(Step::Handshake, handshake(&found, route, context).await)?;
    let (info, agent) = d.record(Step::AgentVersion, agent_version(agent).await)?;
    d.record(Step::Frozen, frozen(agent, &info, domain_arg).await)?;
    d.record(Step::GuestExec, guest_exec(&info))
}

fn find_domain(domain_arg: &str, context: &Context) -> Checked<Domain> {
    match domain::find(domain_arg, &context.scope) {
        Ok(found) => Checked::Pass(how_found(&found), found),
        // The VM's name is what just failed for an ambiguous one: the
        // error itself lists the sockets to pass instead.
        Err(e) if e.kind() == ErrorKind::Ambiguous => {
            fail(e.to_string(), "pass one of the agent sockets named")
        }
        Err(e) => fail(
            e.to_string(),
            "pass the agent's socket path, the VM's -name, or a running libvirt domain",
        ),
    }
}

fn how_found(found: &Domain) -> String {
    match found.source {
        Source::Socket => format!("socket path {}", found.name),
        Source::Qemu => format!(
            "QEMU process {} (-name {})",
            found.pid.unwrap_or_default(),
            found.name
        ),
        Source::Libvirt => format!(
            "libvirt domain {} ({}), QEMU pid {}",
            found.name,
            found.uuid.as_deref().unwrap_or("no uuid"),
            found.pid.map_or("unknown".to_owned(), |p| p.to_string())
        ),
    }
}

/// The channel every later step examines: the one `guest-run` would
/// connect to ([`Domain::agent_route`]) when no other client holds it.
/// Else one nobody holds: a socket whose guest end may be open first, as
/// `guest-run` prefers (rather than queue behind another virtomate on the
/// routed one, or examine a channel that libvirtd would stand in for);
/// else the routed one, held as it is; else the first usable one, else
/// the first one, so that the steps name what is wrong with it.
fn socket(found: &Domain) -> Checked<&Channel> {
    let usable = found.agent_channels.iter().filter(|c| c.is_usable());
    let routed = match found.agent_route() {
        Ok(Route::Direct(path)) => usable.clone().find(|c| c.path == path),
        _ => None,
    };
    let unheld = |c: &&Channel| socket_holders::holders(&c.path).is_empty();
    let reachable = |c: &&Channel| domain::is_abstract(&c.path) || domain::is_socket(&c.path);
    let Some(channel) = routed
        .filter(unheld)
        .or_else(|| {
            usable
                .clone()
                .filter(reachable)
                .find(|c| c.guest_connected != Some(false) && unheld(c))
        })
        .or(routed)
        .or_else(|| usable.clone().find(unheld))
        .or(usable.clone().next())
        .or(found.agent_channels.first())
    else {
        return fail(
            "the domain has no guest agent channel",
            "add a virtio serial port named org.qemu.guest_agent.0 backed by a UNIX socket",
        );
    };
    if let Some((problem, hint)) = channel.unusable_problem(&found.described()) {
        return fail(problem, hint);
    }
    let path = channel.path.display();
    let port = channel.port_name.as_deref().unwrap_or("agent channel");
    if domain::is_abstract(&channel.path) {
        // No file to look at: connecting tells.
        return Checked::Pass(format!("{port} at {path} (an abstract socket)"), channel);
    }
    match std::fs::metadata(&channel.path) {
        Ok(meta) if meta.file_type().is_socket() => Checked::Pass(format!("{port} at {path}"), channel),
        Ok(_) => fail(
            format!("{path} is not a UNIX socket"),
            "pass the agent's socket path",
        ),
        Err(e) => fail(
            format!("{path}: {e}"),
            "check the path; is the VM running with its -chardev socket?",
        ),
    }
}

fn permission(path: &Path) -> Checked<()> {
    if domain::is_abstract(path) {
        return Checked::Pass("an abstract socket has no file permissions".into(), ());
    }
    match access(path, AccessFlags::R_OK | AccessFlags::W_OK) {
        Ok(()) => Checked::Pass("may read and write the socket".into(), ()),
        Err(e) => fail(format!("{}: {e}", path.display()), crate::error::PERMISSION_HINT),
    }
}

/// Whether another client holds the channel. A held channel passes where
/// `guest-run` would go through libvirtd (libvirtd holds an agent channel
/// of the domain and no free one is better): the route handed on is then
/// libvirtd's, else always the examined channel's own.
fn held(found: &Domain, channel: &Channel) -> Checked<Route> {
    let holders = socket_holders::holders(&channel.path);
    let direct = Route::Direct(channel.path.clone());
    match found.agent_route() {
        _ if holders.is_empty() => Checked::Pass("no other client is connected".into(), direct),
        Ok(through_libvirtd @ Route::Libvirt { .. }) => Checked::Pass(
            format!(
                "{}: virtomate goes through libvirtd's RPC socket",
                socket_holders::describe(&holders)
            ),
            through_libvirtd,
        ),
        _ => fail(
            socket_holders::describe(&holders),
            if found.source == Source::Libvirt {
                "libvirtd keeps org.qemu.guest_agent.0; give the domain a second agent channel (see README)"
            } else {
                "stop that client: the channel serves one client at a time"
            },
        ),
    }
}

async fn connect(route: &Route, context: &Context) -> Checked<()> {
    let path = match route {
        Route::Libvirt { .. } => return Checked::Skip("libvirtd holds the channel".into(), ()),
        Route::Direct(path) => path,
    };
    let timeout = context.options.handshake_timeout;
    match tokio::time::timeout(timeout, UnixStream::connect(domain::unix_address(path))).await {
        // Dropped at once: connecting is all this step checks.
        Ok(Ok(_stream)) => Checked::Pass("connected".into(), ()),
        Ok(Err(e)) => fail(e.to_string(), "is the VM (or qemu-ga -m unix-listen) running?"),
        Err(_) => fail(
            "connecting timed out",
            "the socket's backlog is full: a client is waiting",
        ),
    }
}

/// The handshake, over the route the earlier steps examined: not chosen
/// anew, which could pick another channel than the one they looked at.
async fn handshake(found: &Domain, route: Route, context: &Context) -> Checked<DomainAgent> {
    let started = Instant::now();
    match DomainAgent::connect_to(found, route, &context.scope, context.options.clone()).await {
        Ok(agent) => Checked::Pass(format!("answered in {} ms", started.elapsed().as_millis()), agent),
        Err(e) => fail(
            e.to_string(),
            "start qemu-ga in the guest \
             (qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0), \
             or raise --timeout for a slow guest",
        ),
    }
}

/// Whether the VM runs at all: asked of QEMU over a free QMP socket, else
/// read from libvirt's record.
async fn run_state(found: &Domain, context: &Context) -> Checked<()> {
    let Some(vm) = run_state::owner_of(found, &context.scope) else {
        return Checked::Skip("no running VM is known to own this socket".into(), ());
    };
    match run_state::ask(&vm, &context.options).await {
        Some(state) => match state.advice(&vm.name, vm.source == Source::Libvirt) {
            None => Checked::Pass(format!("{} reports the VM as running", state.told_by), ()),
            Some(advice) => fail(
                format!("{} reports the VM as {}", state.told_by, state.status),
                advice,
            ),
        },
        None => Checked::Skip(
            "neither a free QMP socket nor libvirt's record tells the run state".into(),
            (),
        ),
    }
}

async fn agent_version(mut agent: DomainAgent) -> Checked<(GuestInfoReply, DomainAgent)> {
    match agent.execute(&GuestInfo {}).await {
        Ok(info) => {
            let summary = format!("qemu-ga {}{}", info.version, against_schema(&info));
            Checked::Pass(summary, (info, agent))
        }
        Err(e) => fail(
            e.to_string(),
            "the agent answers the handshake but not guest-info: update qemu-ga",
        ),
    }
}

/// A frozen guest: its agent refuses `guest-exec` (which `guest-info`
/// then lists as disabled) until somebody thaws it.
async fn frozen(mut agent: DomainAgent, info: &GuestInfoReply, domain_arg: &str) -> Checked<()> {
    let name = GuestFsfreezeStatus::NAME;
    if !info
        .supported_commands
        .iter()
        .any(|c| c.name == name && c.enabled)
    {
        agent.close().await;
        return Checked::Skip(format!("the agent does not offer {name}"), ());
    }
    let status = agent.execute(&GuestFsfreezeStatus {}).await;
    agent.close().await;
    match status {
        Ok(FreezeStatus::Thawed) => Checked::Pass("the guest is not frozen".into(), ()),
        Ok(FreezeStatus::Frozen) => fail(
            "the agent holds the guest's file systems frozen: it refuses guest-exec and the file \
             commands until a thaw",
            format!(
                "once the snapshot or backup that froze it is done, run: virtomate guest-thaw {domain_arg} \
                 (a guest-freeze's watchdogs thaw it by its --max-time)"
            ),
        ),
        Ok(FreezeStatus::Other(status)) => Checked::Skip(format!("{name} says {status:?}"), ()),
        Err(e) => Checked::Skip(format!("{name} failed: {e}"), ()),
    }
}

fn guest_exec(info: &GuestInfoReply) -> Checked<()> {
    match info.supported_commands.iter().find(|c| c.name == "guest-exec") {
        Some(c) if c.enabled => Checked::Pass("enabled".into(), ()),
        Some(_) => fail("disabled", how_to_enable("guest-exec")),
        None => fail("not supported by this agent", why_lacking(info, "guest-exec")),
    }
}

/// The agent's version against QEMU's schema: the commands it has
/// disabled (with how to enable them), and the newer commands it lacks
/// with the QEMU that brought them.
fn against_schema(info: &GuestInfoReply) -> String {
    let disabled: Vec<&str> = info
        .supported_commands
        .iter()
        .filter(|c| !c.enabled)
        .map(|c| c.name.as_str())
        .collect();
    let newer: Vec<String> = COMMANDS
        .iter()
        .filter(|spec| !info.supported_commands.iter().any(|c| c.name == spec.name))
        .filter_map(|spec| {
            let (major, minor) = spec.since_version()?;
            (!info.is_at_least(major, minor)).then(|| format!("{} (QEMU {major}.{minor})", spec.name))
        })
        .collect();
    let mut text = String::new();
    if !disabled.is_empty() {
        text.push_str(&format!(
            "; disabled in the guest: {} ({})",
            disabled.join(", "),
            how_to_enable("COMMAND")
        ));
    }
    if !newer.is_empty() {
        text.push_str(&format!("; too old for {}", newer.join(", ")));
    }
    text
}

/// Whether the guest has opened its end of the agent port: if not, nothing
/// runs qemu-ga in the guest and requests wait forever. QEMU knows
/// (`query-chardev`) when its QMP socket is free; else libvirt's record of
/// it in the status file does.
async fn guest_port_open(found: &Domain, channel: &Channel, context: &Context) -> Checked<()> {
    const ADVICE: &str = "nothing runs qemu-ga in the guest: install and start it (qemu-guest-agent package)";
    let mut asked = Err("no QMP socket known for this domain".to_owned());
    for qmp_socket in &found.qmp_sockets {
        asked = ask_qemu(qmp_socket, &channel.path, found.pid, context).await;
        if asked.is_ok() {
            break;
        }
    }
    let port = channel.port_name.as_deref().unwrap_or("agent channel");
    match (asked, channel.guest_connected) {
        (Ok(Some((label, true))), _) => Checked::Pass(format!("the guest has opened port {label}"), ()),
        (Ok(Some((label, false))), _) => fail(format!("the guest has not opened port {label}"), ADVICE),
        (_, Some(true)) => Checked::Pass(
            format!("libvirt records that the guest has opened port {port}"),
            (),
        ),
        (_, Some(false)) => fail(
            format!("libvirt records that the guest has not opened port {port}"),
            ADVICE,
        ),
        (Ok(None), None) => Checked::Skip(
            "QEMU does not list the agent socket among its chardevs".into(),
            (),
        ),
        (Err(why), None) => Checked::Skip(why, ()),
    }
}

/// QEMU's chardev label for the socket at `path` and whether its frontend
/// (the guest's end) is open; `None` when QEMU does not list it.
async fn ask_qemu(
    qmp_socket: &Path,
    path: &Path,
    qemu_pid: Option<u32>,
    context: &Context,
) -> Result<Option<(String, bool)>, String> {
    let holders = socket_holders::holders(qmp_socket);
    if !holders.is_empty() {
        return Err(format!(
            "QMP socket {} is {}",
            qmp_socket.display(),
            socket_holders::describe(&holders)
        ));
    }
    let options = ClientOptions {
        handshake_timeout: context.options.handshake_timeout.min(Duration::from_secs(2)),
        ..context.options.clone()
    };
    let chardevs = match QmpClient::connect(qmp_socket, options).await {
        Ok(mut qmp) => qmp.execute(&QueryChardev {}).await,
        Err(e) => Err(e),
    };
    let chardevs = chardevs.map_err(|e| format!("QMP not usable: {e}"))?;
    // QEMU shows a path as it was given; a relative one is QEMU's own.
    let qemu_cwd = qemu_pid.map(|pid| Path::new("/proc").join(pid.to_string()).join("cwd"));
    Ok(chardevs
        .into_iter()
        .find(|c| {
            chardev_socket_path(&c.filename).is_some_and(|shown| {
                let shown = match &qemu_cwd {
                    Some(cwd) if shown.is_relative() => cwd.join(shown),
                    _ => shown.to_owned(),
                };
                same_socket(&shown, path)
            })
        })
        .map(|c| (c.label, c.frontend_open)))
}

/// The socket path in a chardev's `filename` as `query-chardev` shows it:
/// `unix:PATH,server=on`, with `disconnected:` before it while no client
/// is connected.
fn chardev_socket_path(filename: &str) -> Option<&Path> {
    let unix = filename.strip_prefix("disconnected:").unwrap_or(filename);
    let path = unix.strip_prefix("unix:")?;
    // `,server` before QEMU 6.0.
    let path = path
        .strip_suffix(",server=on")
        .or(path.strip_suffix(",server"))
        .unwrap_or(path);
    Some(Path::new(path))
}

fn same_socket(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if a == b {
        return true;
    }
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chardev_filenames_give_their_socket_path() {
        let path = |filename| chardev_socket_path(filename).map(Path::to_path_buf);
        assert_eq!(
            path("unix:/tmp/vm/qga.sock,server=on"),
            Some("/tmp/vm/qga.sock".into())
        );
        assert_eq!(
            path("disconnected:unix:/tmp/vm/qga.sock,server=on"),
            Some("/tmp/vm/qga.sock".into())
        );
        assert_eq!(path("unix:vm/qga.sock,server"), Some("vm/qga.sock".into()));
        assert_eq!(path("pty:/dev/pts/3"), None);
        // A longer path that starts the same is another socket.
        assert!(!same_socket(
            &path("unix:/tmp/vm/qga.sock.old,server=on").unwrap(),
            Path::new("/tmp/vm/qga.sock")
        ));
    }

    #[test]
    fn the_table_shows_each_step_and_the_advice_for_a_failure() {
        let mut d = Diagnosis::default();
        d.record(
            Step::Domain,
            Checked::Pass("socket path /run/qga.sock".into(), ()),
        );
        d.record::<()>(Step::Socket, fail("/run/qga.sock: gone", "check the path"));
        let report = d.report();
        assert!(!report.ok());
        let skipped = NOT_CHECKED;
        assert_eq!(
            report.to_text(),
            format!(
                "pass  domain           socket path /run/qga.sock\n\
                 FAIL  socket           /run/qga.sock: gone\n\
                 \x20                      -> check the path\n\
                 skip  permission       {skipped}\n\
                 skip  held             {skipped}\n\
                 skip  connect          {skipped}\n\
                 skip  guest-port-open  {skipped}\n\
                 skip  run-state        {skipped}\n\
                 skip  handshake        {skipped}\n\
                 skip  agent-version    {skipped}\n\
                 skip  frozen           {skipped}\n\
                 skip  guest-exec       {skipped}\n"
            )
        );
    }

    #[test]
    fn every_step_is_reported_in_order_and_only_a_failure_fails() {
        let mut d = Diagnosis::default();
        for step in &Step::ALL[..5] {
            d.record(*step, Checked::Pass("fine".into(), ()));
        }
        d.record(Step::GuestPortOpen, Checked::Skip("no QMP socket".into(), ()));
        let report = d.report();
        assert!(report.ok());
        let json = serde_json::to_value(&report).unwrap();
        let names: Vec<&str> = json["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|step| step["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, Step::ALL.map(Step::name));
        assert_eq!(
            names,
            [
                "domain",
                "socket",
                "permission",
                "held",
                "connect",
                "guest-port-open",
                "run-state",
                "handshake",
                "agent-version",
                "frozen",
                "guest-exec"
            ]
        );
        assert_eq!(json["steps"][5]["outcome"], "skip");
        assert_eq!(json["steps"][5]["detail"], "no QMP socket");
        assert_eq!(json["steps"][6]["detail"], NOT_CHECKED);
    }
}
