//! `virtomate doctor`: why does the agent not answer? A step-by-step
//! diagnosis, each step with its outcome and, when it fails, what to do.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::Duration;

use nix::unistd::{access, AccessFlags};
use serde::Serialize;
use tokio::net::UnixStream;
use virtomate_protocol::qga::GuestInfo;
use virtomate_protocol::qmp::QueryChardev;
use virtomate_protocol::{ClientOptions, QmpClient};

use super::{Answer, Context, DomainAgent};
use crate::domain::{self, socket_holders, Channel, Domain, Route, Source};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    /// Not checked: an earlier step failed, or nothing to check it with.
    Skip,
}

#[derive(Debug, Serialize)]
pub struct Step {
    /// What to do about a failure.
    advice: Option<String>,
    detail: String,
    name: &'static str,
    outcome: Outcome,
}

#[derive(Debug, Serialize)]
pub struct Report {
    ok: bool,
    steps: Vec<Step>,
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
            text.push_str(&format!("{outcome:<5} {:<16} {}\n", step.name, step.detail));
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

/// Collects steps; once one fails, the steps that need it are skipped.
struct Diagnosis {
    steps: Vec<Step>,
    failed: bool,
}

impl Diagnosis {
    fn pass(&mut self, name: &'static str, detail: impl Into<String>) {
        self.push(name, Outcome::Pass, detail.into(), None);
    }

    fn fail(&mut self, name: &'static str, detail: impl Into<String>, advice: impl Into<String>) {
        self.failed = true;
        self.push(name, Outcome::Fail, detail.into(), Some(advice.into()));
    }

    fn skip(&mut self, name: &'static str, detail: impl Into<String>) {
        self.push(name, Outcome::Skip, detail.into(), None);
    }

    fn push(&mut self, name: &'static str, outcome: Outcome, detail: String, advice: Option<String>) {
        self.steps.push(Step {
            advice,
            detail,
            name,
            outcome,
        });
    }

    fn report(self) -> Report {
        Report {
            ok: !self.failed,
            steps: self.steps,
        }
    }
}

/// Every step, in the order a person would check them by hand.
const STEPS: &[&str] = &[
    "domain",
    "socket",
    "permission",
    "held",
    "connect",
    "guest-port-open",
    "handshake",
    "agent-version",
    "guest-exec",
];

pub async fn run(domain_arg: &str, context: &Context) -> Answer {
    let mut diagnosis = Diagnosis {
        steps: Vec::new(),
        failed: false,
    };
    diagnose(domain_arg, context, &mut diagnosis).await;
    // Whatever was not reached is listed as skipped, so the report always
    // has every step.
    for name in STEPS.iter().skip(diagnosis.steps.len()) {
        diagnosis.skip(name, "not checked: an earlier step failed");
    }
    Answer::Report(diagnosis.report())
}

async fn diagnose(domain_arg: &str, context: &Context, d: &mut Diagnosis) {
    let found = match domain::find(domain_arg, &context.scope) {
        Ok(found) => found,
        Err(e) => {
            return d.fail(
                "domain",
                e.to_string(),
                "pass the agent's socket path, the VM's -name, or a running libvirt domain",
            )
        }
    };
    d.pass("domain", how_found(&found));
    let Some(channel) = found
        .agent_channels
        .iter()
        .find(|c| socket_holders::holders(&c.path).is_empty())
        .or(found.agent_channels.first())
    else {
        return d.fail(
            "socket",
            "the domain has no guest agent channel",
            "add a virtio serial port named org.qemu.guest_agent.0 backed by a UNIX socket",
        );
    };
    let path = channel.path.as_path();
    let port = channel.port_name.as_deref().unwrap_or("agent channel");

    match std::fs::metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => d.pass("socket", format!("{port} at {}", path.display())),
        Ok(_) => {
            return d.fail(
                "socket",
                format!("{} is not a UNIX socket", path.display()),
                "pass the agent's socket path",
            )
        }
        Err(e) => {
            return d.fail(
                "socket",
                format!("{}: {e}", path.display()),
                "check the path; is the VM running with its -chardev socket?",
            )
        }
    }

    match access(path, AccessFlags::R_OK | AccessFlags::W_OK) {
        Ok(()) => d.pass("permission", "may read and write the socket"),
        Err(e) => {
            return d.fail(
                "permission",
                format!("{}: {e}", path.display()),
                "run as a user who may open the socket (often root)",
            )
        }
    }

    let holders = socket_holders::holders(path);
    let through_libvirtd = matches!(found.agent_route(), Ok(Route::Libvirt { .. }));
    if holders.is_empty() {
        d.pass("held", "no other client is connected");
    } else if through_libvirtd {
        d.pass(
            "held",
            format!(
                "{}: virtomate goes through libvirtd's RPC socket",
                socket_holders::describe(&holders)
            ),
        );
    } else {
        let advice = if found.source == Source::Libvirt {
            "libvirtd keeps org.qemu.guest_agent.0; give the domain a second agent channel (see README)"
        } else {
            "stop that client: the channel serves one client at a time"
        };
        return d.fail("held", socket_holders::describe(&holders), advice);
    }

    let timeout = context.options.handshake_timeout;
    if through_libvirtd {
        d.skip("connect", "libvirtd holds the channel");
    } else {
        match tokio::time::timeout(timeout, UnixStream::connect(path)).await {
            Ok(Ok(stream)) => {
                drop(stream);
                d.pass("connect", "connected")
            }
            Ok(Err(e)) => {
                return d.fail(
                    "connect",
                    e.to_string(),
                    "is the VM (or qemu-ga -m unix-listen) running?",
                )
            }
            Err(_) => {
                return d.fail(
                    "connect",
                    "connecting timed out",
                    "the socket's backlog is full: a client is waiting",
                )
            }
        }
    }

    guest_port_open(&found, channel, context, d).await;

    let started = std::time::Instant::now();
    let mut agent = match DomainAgent::connect(domain_arg, context).await {
        Ok(agent) => {
            d.pass("handshake", format!("answered in {} ms", started.elapsed().as_millis()));
            agent
        }
        Err(e) => {
            return d.fail(
                "handshake",
                e.to_string(),
                "start qemu-ga in the guest (qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0), or raise --timeout for a slow guest",
            )
        }
    };
    let info = match agent.execute(&GuestInfo {}).await {
        Ok(info) => {
            d.pass("agent-version", format!("qemu-ga {}", info.version));
            agent.close().await;
            info
        }
        Err(e) => {
            return d.fail(
                "agent-version",
                e.to_string(),
                "the agent answers the handshake but not guest-info: update qemu-ga",
            )
        }
    };
    match info.supported_commands.iter().find(|c| c.name == "guest-exec") {
        Some(c) if c.enabled => d.pass("guest-exec", "enabled"),
        Some(_) => d.fail(
            "guest-exec",
            "disabled",
            "remove guest-exec from qemu-ga's --block-rpcs (or the block-rpcs of its config file)",
        ),
        None => d.fail("guest-exec", "not supported by this agent", "update qemu-ga"),
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

/// Whether the guest has opened its end of the agent port: if not, nothing
/// runs qemu-ga in the guest and requests wait forever. QEMU knows
/// (`query-chardev`) when its QMP socket is free; else libvirt's record of
/// it in the status file does.
async fn guest_port_open(found: &Domain, channel: &Channel, context: &Context, d: &mut Diagnosis) {
    const NAME: &str = "guest-port-open";
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
        (Ok(Some((label, true))), _) => d.pass(NAME, format!("the guest has opened port {label}")),
        (Ok(Some((label, false))), _) => {
            d.fail(NAME, format!("the guest has not opened port {label}"), ADVICE)
        }
        (_, Some(true)) => d.pass(
            NAME,
            format!("libvirt records that the guest has opened port {port}"),
        ),
        (_, Some(false)) => d.fail(
            NAME,
            format!("libvirt records that the guest has not opened port {port}"),
            ADVICE,
        ),
        (Ok(None), None) => d.skip(NAME, "QEMU does not list the agent socket among its chardevs"),
        (Err(why), None) => d.skip(NAME, why),
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
        let mut d = Diagnosis {
            steps: Vec::new(),
            failed: false,
        };
        d.pass("domain", "socket path /run/qga.sock");
        d.fail("handshake", "no answer within 5 s", "start qemu-ga in the guest");
        d.skip("agent-version", "the handshake failed");
        let report = d.report();
        assert!(!report.ok());
        assert_eq!(
            report.to_text(),
            "pass  domain           socket path /run/qga.sock\n\
             FAIL  handshake        no answer within 5 s\n\
             \x20                      -> start qemu-ga in the guest\n\
             skip  agent-version    the handshake failed\n"
        );
    }
}
