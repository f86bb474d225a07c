//! `virtomate guest-freeze`: freezes the guest's file systems for at most
//! `--max-time`, runs a local COMMAND meanwhile if given, and thaws.
//!
//! Both watchdogs (`crate::freeze`) are armed before the freeze and stood
//! down after the thaw; without COMMAND the guest stays frozen until
//! `guest-thaw` or until they thaw it.

use std::process::ExitStatus;
use std::time::Duration;

use serde_json::json;
use tokio::time::{sleep_until, timeout, Instant};
use virtomate_protocol::qga::schema::{
    GuestFsfreezeFreeze, GuestFsfreezeFreezeList, GuestFsfreezeStatus,
    GuestFsfreezeStatusReply as FreezeStatus, GuestFsfreezeThaw,
};
use virtomate_protocol::qga::GuestInfo;

use super::{Answer, Context};
use crate::agent::{DomainAgent, Signals};
use crate::cli::GuestFreezeArgs;
use crate::error::{CliError, ErrorKind};
use crate::freeze::{guest_watchdog, host_watchdog, new_token, registry, Schedule, MIN_MAX_TIME};

/// How long a COMMAND stopped at the limit has between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The exit status when COMMAND ran into the limit, as timeout(1)'s.
const PAST_THE_LIMIT: u8 = 124;

pub async fn run(
    args: GuestFreezeArgs,
    connection: Option<&str>,
    context: &Context,
) -> Result<Answer, CliError> {
    if args.max_time < MIN_MAX_TIME {
        return Err(CliError::usage(format!(
            "--max-time must be at least {} seconds: the watchdogs act some seconds before it",
            MIN_MAX_TIME.as_secs()
        )));
    }
    let domain = args.domain.as_str();
    // The turn first: waiting for it connected would keep the other
    // guest-freeze from the channel.
    let mut agent = DomainAgent::open(domain, &context.scope, context.options.clone())?;
    let turn = registry::take_turn(&agent, domain, context.options.handshake_timeout).await?;
    agent.connect_now(&context.scope).await?;
    check_agent(&mut agent, domain, !args.mountpoints.is_empty()).await?;
    // A watchdog of an earlier freeze must not thaw this one.
    host_watchdog::stop_registered(&agent, domain);
    let token = new_token()?;
    let armed_at = Instant::now();
    let schedule = Schedule::for_limit(args.max_time);
    guest_watchdog::arm(&mut agent, &token, schedule.guest_seconds).await?;
    // With COMMAND, virtomate ends the freeze itself: should it die first,
    // the host's watchdog thaws at once rather than at its deadline. (The
    // pipe that tells it is closed when virtomate exits, after the thaw.)
    let with_command = !args.command.is_empty();
    let _lifeline = match host_watchdog::spawn(domain, connection, &token, schedule.host, with_command) {
        Ok(lifeline) => lifeline,
        Err(e) => {
            let _ = guest_watchdog::disarm(&mut agent, Some(&token)).await;
            return Err(e);
        }
    };
    let frozen = match freeze(&mut agent, &args.mountpoints).await {
        Ok(frozen) => frozen,
        // The agent thaws what it froze when the freeze fails: only the
        // watchdogs are left (and a thaw could end somebody else's freeze).
        Err(e) if e.kind() == ErrorKind::AgentCommand => {
            stand_down(&mut agent, domain, &token).await;
            return Err(e);
        }
        // No answer: the guest may be frozen, or not.
        Err(e) => {
            let _ = thaw(&mut agent, domain, &token).await;
            return Err(e);
        }
    };
    drop(turn);
    if !with_command {
        // Nothing frozen leaves the agent as it was: nothing to guard.
        if frozen == 0 {
            stand_down(&mut agent, domain, &token).await;
        }
        agent.close().await;
        return Ok(Answer::Json(json!({
            "frozen": frozen,
            "max_time": args.max_time.as_secs_f64(),
        })));
    }
    // Let go of the channel while COMMAND runs: the watchdog may need it.
    agent.channel().release().await;
    let limit = armed_at + schedule.host.saturating_sub(Duration::from_secs(1));
    run_command(&args.command, limit, &mut agent, domain, &token).await
}

/// Whether the agent can freeze, and be watched while it is frozen.
async fn check_agent(agent: &mut DomainAgent, domain: &str, listed: bool) -> Result<(), CliError> {
    // First: a frozen agent lists the freeze and guest-exec as disabled.
    if agent.execute(&GuestFsfreezeStatus {}).await? != FreezeStatus::Thawed {
        return Err(
            CliError::new(ErrorKind::Freeze, "the guest is frozen already; nothing was done")
                .with_hint(format!("virtomate guest-thaw {domain} thaws it")),
        );
    }
    let info = agent.execute(&GuestInfo {}).await?;
    let freeze = match listed {
        true => "guest-fsfreeze-freeze-list",
        false => "guest-fsfreeze-freeze",
    };
    let needed = [
        freeze,
        "guest-fsfreeze-thaw",
        "guest-fsfreeze-status",
        "guest-exec",
        "guest-exec-status",
    ];
    for name in needed {
        let state = info.supported_commands.iter().find(|c| c.name == name);
        if state.is_some_and(|c| c.enabled) {
            continue;
        }
        let why = match state {
            Some(_) => "has it disabled (--block-rpcs, or /etc/sysconfig/qemu-ga on RHEL-family guests)",
            None => "does not know it: update qemu-ga",
        };
        return Err(CliError::new(
            ErrorKind::Freeze,
            format!(
                "guest-freeze needs {name} (the watchdog in the guest is started with guest-exec), \
                 and the agent {why}; nothing was frozen"
            ),
        ));
    }
    Ok(())
}

async fn freeze(agent: &mut DomainAgent, mountpoints: &[String]) -> Result<i64, CliError> {
    match mountpoints.is_empty() {
        true => agent.execute(&GuestFsfreezeFreeze {}).await,
        false => {
            let request = GuestFsfreezeFreezeList {
                mountpoints: Some(mountpoints.to_vec()),
            };
            agent.execute(&request).await
        }
    }
}

/// Thaws, then stands both watchdogs down.
async fn thaw(agent: &mut DomainAgent, domain: &str, token: &str) -> Result<i64, CliError> {
    let thawed = agent.execute(&GuestFsfreezeThaw {}).await.map_err(|e| {
        e.with_hint("the watchdogs thaw the guest by --max-time; virtomate guest-thaw thaws it now")
    })?;
    stand_down(agent, domain, token).await;
    Ok(thawed)
}

/// Stops the watchdogs of freeze `token`: the guest is not frozen (any
/// more), and a watchdog left could end a later freeze.
async fn stand_down(agent: &mut DomainAgent, domain: &str, token: &str) {
    host_watchdog::stop_registered(agent, domain);
    if let Err(e) = guest_watchdog::disarm(agent, Some(token)).await {
        tracing::warn!("the guest's watchdog was not stood down ({e}); it finds the guest thawed");
    }
}

/// How COMMAND's run ended.
enum End {
    Exited(ExitStatus),
    Limit,
    Interrupted,
}

async fn run_command(
    command: &[String],
    limit: Instant,
    agent: &mut DomainAgent,
    domain: &str,
    token: &str,
) -> Result<Answer, CliError> {
    let mut signals = Signals::install()?;
    let spawned = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            thaw(agent, domain, token).await?;
            return Err(CliError::io(format!("cannot run {}", command[0]), e));
        }
    };
    let end = tokio::select! {
        status = child.wait() => match status {
            Ok(status) => End::Exited(status),
            Err(e) => {
                thaw(agent, domain, token).await?;
                return Err(CliError::io("cannot wait for COMMAND", e));
            }
        },
        () = sleep_until(limit) => End::Limit,
        () = signals.arrival() => End::Interrupted,
    };
    // The guest first, whatever happened.
    let thawed = thaw(agent, domain, token).await;
    agent.channel().release().await;
    let status = match end {
        End::Exited(status) => {
            thawed?;
            return Ok(Answer::Exit(exit_status(status)));
        }
        End::Limit | End::Interrupted => stop(&mut child).await,
    };
    thawed?;
    match end {
        End::Limit => {
            eprintln!(
                "virtomate: {} ran into the freeze's limit: the guest was thawed and it was stopped ({})",
                command[0],
                exit_status(status)
            );
            Ok(Answer::Exit(PAST_THE_LIMIT))
        }
        _ => Err(CliError::new(
            ErrorKind::Interrupted,
            format!("interrupted: the guest was thawed and {} stopped", command[0]),
        )),
    }
}

/// SIGTERM to COMMAND, SIGKILL after [`STOP_GRACE`].
async fn stop(child: &mut tokio::process::Child) -> ExitStatus {
    if let Some(pid) = child.id() {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    if let Ok(Ok(status)) = timeout(STOP_GRACE, child.wait()).await {
        return status;
    }
    let _ = child.start_kill();
    child.wait().await.unwrap_or_default()
}

/// A command's exit status as a shell shows it: 128+N for signal N.
fn exit_status(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.saturating_add(signal as u8),
        (None, None) => 1,
    }
}
