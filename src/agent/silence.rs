//! What explains an agent that went silent, or away, under a run: the
//! state the VM is in, as QEMU, libvirtd or the host's process table
//! tells it. Asked after the failure, since asking takes a moment (up to
//! a few seconds through libvirtd), and only where the failure fits.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use virtomate_protocol::follow::FollowError;
use virtomate_protocol::libvirt::{DomainState, LibvirtClient, ERR_NO_DOMAIN};
use virtomate_protocol::session::{Failure, Stage};
use virtomate_protocol::{ClientOptions, Error as AgentError};

use super::errors::{AgentErrors, RunFront};
use crate::domain::{self, run_state, Domain, Scope, Source};
use crate::error::{CliError, ErrorKind};

/// What a domain's agent that does not answer, or hangs up, may be
/// explained by: the state the VM is in.
#[derive(Clone)]
pub struct Silence {
    found: Domain,
    scope: Scope,
    options: ClientOptions,
    /// For a VM given by its agent socket: the QEMU that listened on it at
    /// the first connection.
    listener: QemuListener,
}

impl Silence {
    pub fn new(found: &Domain, scope: &Scope, options: ClientOptions) -> Silence {
        Silence {
            found: found.clone(),
            scope: scope.clone(),
            options,
            listener: QemuListener::default(),
        }
    }

    /// Where the connections to a VM given by its agent socket note the
    /// QEMU listening on it; `None` for a VM found otherwise, whose QEMU
    /// virtomate knows.
    pub fn listener(&self) -> Option<QemuListener> {
        (self.found.source == Source::Socket).then(|| self.listener.clone())
    }

    /// What a run's failure means, in the terms of `front`: a VM that
    /// stopped under the program is said to have (the program went with
    /// it), a silent agent comes with QEMU's run state, and any other
    /// failure is [`AgentErrors::run_failure`]'s. The one mapping of
    /// `guest-run`, `shell` and `session`.
    pub async fn run_failure(&self, failure: Failure, errors: &AgentErrors, front: RunFront) -> CliError {
        if let Some(pid) = cut_off(&failure, errors) {
            if let Some(stopped) = self.stopped_under(pid, errors.through_libvirtd).await {
                return stopped;
            }
        }
        self.explain(errors.run_failure(failure, front)).await
    }

    /// Whether [`Silence::run_failure`] may say more of `failure` than
    /// [`AgentErrors::run_failure`]: `session`, which prints replies as
    /// they come, explains these after the others.
    pub fn may_explain(failure: &Failure, errors: &AgentErrors) -> bool {
        cut_off(failure, errors).is_some()
    }

    /// An [`ErrorKind::AgentTimeout`] with QEMU's run state and what to do
    /// about it where the VM does not run; any other error as it is.
    pub async fn explain(&self, error: CliError) -> CliError {
        if error.kind() != ErrorKind::AgentTimeout {
            return error;
        }
        let Some(vm) = run_state::owner_of(&self.found, &self.scope) else {
            return error;
        };
        match run_state::ask(&vm, &self.options).await {
            Some(state) => match state.advice(&vm.name, vm.source == Source::Libvirt) {
                Some(advice) => error.with_hint_instead(advice),
                None => error,
            },
            None => error,
        }
    }

    /// The error for a program (guest pid `pid`) whose VM stopped under
    /// it, if it did: libvirtd's word on its domain, or for a VM reached
    /// directly whose QEMU virtomate knows, that process's end. `None`
    /// when the VM runs, or virtomate cannot tell.
    async fn stopped_under(&self, pid: i64, through_libvirtd: bool) -> Option<CliError> {
        let stopped = self.vm_stopped(through_libvirtd).await?;
        Some(
            stopped
                .error(&format!(
                    "its agent, and the program (guest pid {pid}), went with it"
                ))
                .with_hint("the program's result is lost; start the domain again to run it anew"),
        )
    }

    /// Whether the VM stopped under work other than a run (a copy) that
    /// failed with `error`: where its agent's channel failed as a stopped
    /// VM explains (see [`Silence::run_failure`]), libvirtd's word on the
    /// domain, or its QEMU's end. `None` when the VM runs, or virtomate
    /// cannot tell.
    pub async fn stopped_during(&self, error: &CliError, through_libvirtd: bool) -> Option<VmStopped> {
        let fits = agent_errors(error).any(|e| cut_off_by(e, through_libvirtd));
        match fits {
            true => self.vm_stopped(through_libvirtd).await,
            false => None,
        }
    }

    /// How the VM stopped, if it did.
    async fn vm_stopped(&self, through_libvirtd: bool) -> Option<VmStopped> {
        if let (Some(qemu), false) = (self.listener.pid(), through_libvirtd) {
            return Some(VmStopped {
                what: format!("the VM of the agent socket {}", self.found.name),
                how: process_ended_within(qemu, ENDED_WITHIN).await?,
            });
        }
        let vm = run_state::owner_of(&self.found, &self.scope)?;
        let how = match (through_libvirtd, &vm.libvirt_daemon, vm.pid) {
            (true, Some((uri, socket)), _) => {
                libvirt_state_once_stopped(socket, uri, &vm.name, &self.options).await?
            }
            (false, _, Some(qemu)) => process_ended_within(qemu, ENDED_WITHIN).await?,
            _ => return None,
        };
        Some(VmStopped {
            what: format!("the domain {}", vm.name),
            how,
        })
    }
}

/// The QEMU listening on the agent socket a VM was given by, as the first
/// connection to it learned: once the VM is killed its listening socket,
/// and so the way from the socket's path to its QEMU, is gone, while
/// whether that process has ended tells a VM killed from an agent
/// restarted. Shared by the connector, which notes it, and [`Silence`].
#[derive(Debug, Clone, Default)]
pub struct QemuListener(Arc<OnceLock<Option<u32>>>);

impl QemuListener {
    /// Notes `listener`, the process listening on the socket as the first
    /// connection found it (see `QgaClient::listener_pid`), where it runs
    /// QEMU: a read of its command line, once.
    pub fn note(&self, listener: Option<u32>) {
        if self.0.get().is_none() {
            let _ = self.0.set(listener.filter(|&pid| domain::runs_qemu(pid)));
        }
    }

    /// The QEMU noted, if one was.
    fn pid(&self) -> Option<u32> {
        self.0.get().copied().flatten()
    }
}

/// A VM that stopped under an agent's work: what it is called (`the
/// domain web`) and how it is told.
#[derive(Debug, Clone)]
pub struct VmStopped {
    pub what: String,
    pub how: String,
}

impl VmStopped {
    /// The error that says so, then `what_went`.
    pub fn error(&self, what_went: &str) -> CliError {
        CliError::new(
            ErrorKind::AgentDisconnected,
            format!("{} is not running ({}): {what_went}", self.what, self.how),
        )
    }
}

/// The agent's errors behind `error`, outermost first.
fn agent_errors(error: &CliError) -> impl Iterator<Item = &AgentError> {
    let mut next = std::error::Error::source(error);
    std::iter::from_fn(move || {
        while let Some(cause) = next {
            next = cause.source();
            if let Some(agent) = cause.downcast_ref::<AgentError>() {
                return Some(agent);
            }
        }
        None
    })
}

/// Whether the channel failed with `error` as a stopped VM explains: any
/// libvirt error through libvirtd, or on a direct channel the connection
/// closed or its socket gone.
fn cut_off_by(error: &AgentError, through_libvirtd: bool) -> bool {
    match through_libvirtd {
        true => matches!(error, AgentError::Libvirt { .. }),
        false => matches!(error, AgentError::Disconnected | AgentError::Connect { .. }),
    }
}

/// The guest pid of a program whose run the agent's channel failed under
/// in a way a stopped VM explains: any libvirt error while it ran ("agent
/// is not connected", "Unable to read from agent", "domain is not
/// running", as libvirtd happens to see the end), or on a direct channel
/// the connection closed or its socket gone.
fn cut_off(failure: &Failure, errors: &AgentErrors) -> Option<i64> {
    let Stage::Running { pid } = failure.stage else {
        return None;
    };
    let fits = |error: &AgentError| cut_off_by(error, errors.through_libvirtd);
    let output_fits = match &failure.output {
        Some(FollowError::Agent(error)) => fits(error),
        _ => false,
    };
    (fits(&failure.error) || output_fits).then_some(pid)
}

/// How long libvirtd may take to see a killed domain's QEMU gone after
/// it saw the agent's end: one second, then three, were too short in
/// loaded CI runs. A domain that runs on (its agent restarted) costs the
/// whole wait before the error is told.
const STOPPED_WITHIN: Duration = Duration::from_secs(10);

/// How long a QEMU killed may still show as a live process after its
/// agent's connection closed: the kernel closes its files before it
/// makes a zombie of it.
const ENDED_WITHIN: Duration = Duration::from_secs(1);

/// How often a state is looked at again while it still says running.
const LOOK_AGAIN: Duration = Duration::from_millis(200);

/// libvirtd's word on the domain `name`, asked until it no longer runs,
/// for [`STOPPED_WITHIN`] at most: how it stopped, or `None` while it
/// runs (or libvirtd cannot be asked).
async fn libvirt_state_once_stopped(
    socket: &std::path::Path,
    uri: &str,
    name: &str,
    options: &ClientOptions,
) -> Option<String> {
    let quick = ClientOptions {
        handshake_timeout: options.handshake_timeout.min(Duration::from_secs(2)),
        reply_timeout: options.reply_timeout.min(Duration::from_secs(2)),
        ..options.clone()
    };
    let give_up = tokio::time::Instant::now() + STOPPED_WITHIN;
    let mut libvirt = None;
    while tokio::time::Instant::now() < give_up {
        // A libvirtd slow to answer (under load) is asked again, on a new
        // connection, until the bound: not taken for a domain that runs.
        let client = match libvirt.as_mut() {
            Some(client) => client,
            None => match LibvirtClient::connect(socket, uri, &quick).await {
                Ok(client) => libvirt.insert(client),
                Err(error) => {
                    tracing::debug!(%error, "libvirtd, asked for the state of {name}");
                    tokio::time::sleep(LOOK_AGAIN).await;
                    continue;
                }
            },
        };
        let state = match client.lookup_domain_by_name(name).await {
            Ok(domain) => client.domain_state(&domain).await,
            Err(error) => Err(error),
        };
        tracing::debug!(
            ?state,
            "libvirtd's word on {name}, after its agent's channel failed"
        );
        match state {
            Ok((DomainState::Running, _)) => tokio::time::sleep(LOOK_AGAIN).await,
            Ok((DomainState::ShuttingDown, _)) => return Some("libvirt reports it shutting down".to_owned()),
            Ok((DomainState::ShutOff, _)) => return Some("libvirt reports it shut off".to_owned()),
            Ok((DomainState::Crashed, _)) => return Some("libvirt reports it crashed".to_owned()),
            // Paused, suspended, blocked: it is there, the agent's silence is another story.
            Ok(_) => return None,
            Err(AgentError::Libvirt { code, .. }) if code == ERR_NO_DOMAIN => {
                return Some("libvirt no longer knows it: a transient domain that stopped".to_owned())
            }
            // libvirtd's own refusal is its answer; a timeout or hang-up
            // is asked again.
            Err(AgentError::Libvirt { .. }) => return None,
            Err(_) => {
                libvirt = None;
                tokio::time::sleep(LOOK_AGAIN).await;
            }
        }
    }
    None
}

/// Whether the process `pid` (a VM's QEMU) ends within `within`: how it
/// is told, or `None` while it lives.
async fn process_ended_within(pid: u32, within: Duration) -> Option<String> {
    let give_up = tokio::time::Instant::now() + within;
    loop {
        if process_ended(pid) {
            return Some(format!("its QEMU, pid {pid}, has ended"));
        }
        if tokio::time::Instant::now() >= give_up {
            return None;
        }
        tokio::time::sleep(LOOK_AGAIN.min(within)).await;
    }
}

/// Gone from the process table, or a zombie whose parent has not yet
/// reaped it.
fn process_ended(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // The state follows the command's name, which may hold anything but
    // ends with the last ')'.
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
    matches!(state.and_then(|rest| rest.chars().next()), Some('Z' | 'X'))
}
