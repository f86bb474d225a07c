//! The watchdog on the host: virtomate itself, started again as a process
//! of its own session (`virtomate freeze-watchdog`, which only virtomate
//! starts: see `cli::WatchdogArgs`) before the freeze, so
//! that neither a SIGKILL of the virtomate that froze the guest nor the
//! terminal's Ctrl-C or hang-up reaches it. At its deadline it thaws the
//! guest through the agent, as any client would, and stands the guest's
//! watchdog down.
//!
//! Each agent has at most one: the watchdog writes its pid and its
//! freeze's token into a file beside the agent's channel lock, and a new
//! freeze or a thaw stops the one registered there first, so that a
//! watchdog of an earlier freeze never thaws a later one.

use std::io::{BufRead, BufReader};
use std::process::{ChildStdin, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::{sleep, sleep_until, Instant};
use virtomate_protocol::qga::schema::{
    GuestFsfreezeStatus, GuestFsfreezeStatusReply as FreezeStatus, GuestFsfreezeThaw,
};

use super::guest_watchdog;
use super::registry::{self, on_guard, Registry};
use crate::agent::{Context, DomainAgent};
use crate::error::{CliError, ErrorKind};

/// How long after its deadline the watchdog keeps trying to reach an
/// agent that does not answer (a paused VM, a channel somebody else
/// holds); the guest's watchdog acts on its own meanwhile.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30 * 60);

/// The pause between two tries.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// What the watchdog prints once it is on its own and registered.
const ARMED: &str = "armed";

/// Starts the watchdog for freeze `token` of `domain`'s agent, to thaw it
/// `after` from now, and returns once it runs on its own. With
/// `while_we_live`, it also thaws as soon as this process is gone (the
/// pipe returned, which only this process holds, is closed): for a freeze
/// that this process means to end itself.
pub fn spawn(
    domain: &str,
    connection: Option<&str>,
    token: &str,
    after: Duration,
    while_we_live: bool,
) -> Result<Option<ChildStdin>, CliError> {
    let exe = std::env::current_exe().map_err(|e| CliError::io("cannot find virtomate's own binary", e))?;
    let mut command = std::process::Command::new(exe);
    command.arg("freeze-watchdog");
    if let Some(uri) = connection {
        command.args(["--connection", uri]);
    }
    command
        .args(["--token", token, "--after"])
        .arg(after.as_secs_f64().to_string())
        .args(while_we_live.then_some("--thaw-when-orphaned"))
        .args(["--", domain])
        .stdin(match while_we_live {
            true => Stdio::piped(),
            false => Stdio::null(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = command
        .spawn()
        .map_err(|e| CliError::io("cannot start the watchdog that thaws the guest", e))?;
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped");
    let _ = BufReader::new(stdout).read_line(&mut line);
    match line.trim() == ARMED {
        true => Ok(child.stdin.take()),
        false => Err(CliError::new(
            ErrorKind::Freeze,
            "the watchdog that thaws the guest at --max-time did not start; nothing was frozen",
        )),
    }
}

/// The watchdog's own life: registered, it waits for `after` (or, when
/// `orphaned_too`, for its standard input to close, as it does when the
/// virtomate that froze dies), then thaws and stands the guest's watchdog
/// down; SIGTERM stands it down (a thaw came first), SIGINT and SIGHUP are
/// ignored.
pub async fn run(
    domain: &str,
    token: &str,
    after: Duration,
    orphaned_too: bool,
    context: &Context,
) -> Result<(), CliError> {
    let deadline = Instant::now() + after;
    // Out of the terminal's session: its signals are not for us. (Fails
    // only for a group leader, which a spawned child is not.)
    let _ = nix::unistd::setsid();
    let catch = |kind| signal(kind).map_err(|e| CliError::io("cannot install a signal handler", e));
    let (mut terminate, _hangup, _interrupt) = (
        catch(SignalKind::terminate())?,
        catch(SignalKind::hangup())?,
        catch(SignalKind::interrupt())?,
    );
    let registry = Registry::of(
        &DomainAgent::open(domain, &context.scope, context.options.clone())?,
        domain,
    );
    if let Some(registry) = &registry {
        registry.write(token);
    }
    println!("{ARMED}");
    // Nobody reads on: stdout becomes /dev/null, and the parent's read ends.
    if let Ok(null) = std::fs::File::options().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
    // What killed freezes left, off every client's way: a watchdog starts
    // with each freeze, which is what leaves such files.
    if let Some(dir) = registry.as_ref().and_then(Registry::dir) {
        registry::sweep(dir).await;
    }
    let due = async {
        tokio::select! {
            () = sleep_until(deadline) => {}
            () = orphaned(orphaned_too) => {}
        }
    };
    tokio::select! {
        _ = terminate.recv() => {}
        () = thaw_when(due, domain, token, context) => {}
    }
    if let Some(registry) = &registry {
        registry.remove_if_ours(token);
    }
    Ok(())
}

/// Returns when standard input closes (if `watched`; never otherwise).
async fn orphaned(watched: bool) {
    if !watched {
        return std::future::pending().await;
    }
    let mut stdin = tokio::io::stdin();
    let mut buf = [0; 64];
    while let Ok(1..) = stdin.read(&mut buf).await {}
}

async fn thaw_when(due: impl std::future::Future<Output = ()>, domain: &str, token: &str, context: &Context) {
    due.await;
    let give_up = Instant::now() + GIVE_UP_AFTER;
    loop {
        match thaw_once(domain, token, context).await {
            Ok(()) => return,
            // The socket is gone, and with it QEMU and the freeze.
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::AgentUnavailable) => return,
            Err(_) if Instant::now() + RETRY_PAUSE > give_up => return,
            Err(_) => sleep(RETRY_PAUSE).await,
        }
    }
}

async fn thaw_once(domain: &str, token: &str, context: &Context) -> Result<(), CliError> {
    let mut agent = DomainAgent::connect(domain, context).await?;
    if agent.execute(&GuestFsfreezeStatus {}).await? != FreezeStatus::Thawed {
        agent.execute(&GuestFsfreezeThaw {}).await?;
    }
    guest_watchdog::disarm(&mut agent, Some(token)).await?;
    agent.close().await;
    Ok(())
}

/// Stops the watchdog registered for `agent`'s channel, if one runs: a
/// thaw has come, or a new freeze is about to be guarded by its own.
pub fn stop_registered(agent: &DomainAgent, domain: &str) {
    let Some(registry) = Registry::of(agent, domain) else {
        return;
    };
    if let Some((pid, token)) = registry.read() {
        if on_guard(pid, &token) {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        registry.remove_if_ours(&token);
    }
}
