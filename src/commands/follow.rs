//! `guest-run --follow`: the program's output on virtomate's stdout and
//! stderr while it runs. The protocol crate's [`Follow`] does the work (a
//! private directory in the guest, the program's output redirected there,
//! the files read as they grow, removed at the end); this file starts it,
//! writes what comes, and stops the program on `--max-time` or a signal.

use std::io::{self, Write};
use std::time::Duration;

use virtomate_protocol::follow::{
    Follow, FollowError, FollowOptions, Stream, DIRECT_READ_COUNT, LIBVIRT_READ_COUNT,
};
use virtomate_protocol::qga::GuestExec;
use virtomate_protocol::StopScope;

use super::guest_run::{start, stopped_after_interruption};
use super::{Answer, Context};
use crate::agent::DomainAgent;
use crate::agent::Signals;
use crate::error::{CliError, ErrorKind, Interruption};
use crate::run_output::RunOutput;

pub async fn run(
    domain: &str,
    exec: GuestExec,
    max_time: Option<Duration>,
    grace: Duration,
    context: &Context,
) -> Result<Answer, CliError> {
    let mut signals = Signals::install()?;
    let mut agent = signals
        .unless_interrupted(Interruption::Connecting, DomainAgent::connect(domain, context))
        .await??;
    let options = FollowOptions {
        read_count: match agent.through_libvirtd() {
            true => LIBVIRT_READ_COUNT,
            false => DIRECT_READ_COUNT,
        },
        ..FollowOptions::default()
    };
    let prepared = signals
        .unless_interrupted(
            Interruption::Connecting,
            Follow::prepare(agent.channel(), options),
        )
        .await?;
    let mut follow = match prepared {
        Ok(follow) => follow,
        Err(error) => {
            let error = setup_error(&agent, error);
            agent.close().await;
            return Err(error);
        }
    };
    // Ctrl-C stops the program and what it started (`StopScope::Tree`): the
    // wrapper execs the program, which keeps its pid.
    let pid = match start(&mut agent, &follow.redirect(exec), &mut signals).await {
        Ok(started) => started,
        Err(error) => {
            // Refused by the agent: nothing runs, and the directory can go.
            if error.kind() == ErrorKind::AgentCommand {
                let _ = follow.clean_up(agent.channel()).await;
            }
            agent.close().await;
            return Err(error);
        }
    };
    tracing::info!(
        pid,
        dir = follow.dir(),
        "started in the guest, its output followed"
    );

    let mut sink = Sink::default();
    let followed = {
        let mut write = |stream, bytes: &[u8]| sink.write(stream, bytes);
        let work = follow.follow_to_exit(agent.channel(), pid, &mut write);
        let limited = async {
            match max_time {
                Some(limit) => tokio::time::timeout(limit, work).await.ok(),
                None => Some(work.await),
            }
        };
        signals
            .unless_interrupted(Interruption::Running { pid }, limited)
            .await
    };
    let mut interrupted = None;
    let (status, timed_out) = match followed {
        Ok(Some(Ok(finished))) => (finished.status, false),
        // The reader went away, or stdout failed: stopped as on Ctrl-C.
        Ok(Some(Err(FollowError::Sink(_)))) => {
            let stopped = stop(&mut agent, pid, grace, &follow).await?;
            (stopped.finished.status, false)
        }
        Ok(Some(Err(error))) => {
            let error = running_error(&agent, error, pid, &follow).await;
            agent.close().await;
            return Err(error);
        }
        Ok(None) => {
            tracing::info!(pid, "--max-time passed: stopping the program");
            let stopped = stop(&mut agent, pid, grace, &follow).await?;
            (stopped.finished.status, stopped.asked)
        }
        Err(interruption) => {
            let stopped = stop(&mut agent, pid, grace, &follow).await?;
            interrupted = Some(interruption.with_hint(stopped_after_interruption(pid, &stopped)));
            (stopped.finished.status, stopped.asked)
        }
    };
    if sink.failed.is_none() {
        let drained = follow
            .drain(agent.channel(), &mut |stream, bytes| sink.write(stream, bytes))
            .await;
        match drained {
            Ok(()) | Err(FollowError::Sink(_)) => {}
            Err(error) => {
                let error = running_error(&agent, error, pid, &follow).await;
                agent.close().await;
                return Err(error);
            }
        }
    }
    let cleaned = follow.clean_up(agent.channel()).await;
    agent.close().await;
    if let Some(interrupted) = interrupted {
        return Err(interrupted);
    }
    if let Err(error) = cleaned {
        return Err(clean_up_error(error, &status));
    }
    match sink.failed {
        // `virtomate … | head -1`: quietly, with the stopped program's status.
        Some(error) if error.kind() == io::ErrorKind::BrokenPipe => {}
        Some(error) => return Err(CliError::io("cannot write the program's output", error)),
        None => {}
    }
    Ok(Answer::Run(RunOutput::Raw { status, timed_out }))
}

/// Writes each chunk where it belongs, at once; after a failure, writes
/// nothing more.
#[derive(Default)]
struct Sink {
    failed: Option<io::Error>,
}

impl Sink {
    fn write(&mut self, stream: Stream, bytes: &[u8]) -> io::Result<()> {
        if self.failed.is_some() {
            return Err(io::Error::other("the output failed before"));
        }
        let written = match stream {
            Stream::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(bytes).and_then(|()| out.flush())
            }
            Stream::Stderr => io::stderr().lock().write_all(bytes),
        };
        written.inspect_err(|error| self.failed = Some(io::Error::new(error.kind(), error.to_string())))
    }
}

/// Stops the program and what it started; an error says where its
/// output goes, since nothing will remove it.
async fn stop(
    agent: &mut DomainAgent,
    pid: i64,
    grace: Duration,
    follow: &Follow,
) -> Result<virtomate_protocol::Stopped, CliError> {
    let stopped = agent.stop(pid, grace, StopScope::Tree).await;
    stopped.map_err(|error| error.with_hint(where_output_goes(follow)))
}

fn where_output_goes(follow: &Follow) -> String {
    format!(
        "its output goes to {} and {} in the guest: remove {} once it has ended",
        follow.path(Stream::Stdout),
        follow.path(Stream::Stderr),
        follow.dir()
    )
}

/// Following failed before anything was started.
fn setup_error(agent: &DomainAgent, error: FollowError) -> CliError {
    match error {
        FollowError::Agent(error) => agent.error(error),
        FollowError::Unsupported { .. } => {
            CliError::new(ErrorKind::AgentCommand, format!("{error}; nothing was started")).with_hint(
                "enable them in the guest's qemu-ga (see --block-rpcs/--allow-rpcs), or run without --follow",
            )
        }
        other => CliError::new(ErrorKind::GuestOutput, format!("{other}; nothing was started")).with_hint(
            "--follow needs /bin/sh and a writable $TMPDIR or /tmp in the guest; run without --follow",
        ),
    }
}

/// Following failed while the program ran: it may run on, and its output
/// files stay.
async fn running_error(agent: &DomainAgent, error: FollowError, pid: i64, follow: &Follow) -> CliError {
    let error = match error {
        FollowError::Agent(error) => agent.error_while_running(error, pid).await,
        other => CliError::new(ErrorKind::GuestOutput, other.to_string()),
    };
    error.with_hint(format!(
        "the program keeps running in the guest as pid {pid} if it has not ended; {}",
        where_output_goes(follow)
    ))
}

/// The directory could not be removed as it should: the program has ended
/// and what it wrote was passed on, but its status is not virtomate's.
fn clean_up_error(error: FollowError, status: &virtomate_protocol::qga::GuestExecStatusReply) -> CliError {
    let ended = match (status.exitcode, status.signal) {
        (Some(code), _) => format!("the program exited with status {code}"),
        (None, Some(signal)) => format!("the program was killed by signal {signal}"),
        (None, None) => "the program ended".to_owned(),
    };
    CliError::new(ErrorKind::GuestOutput, error.to_string())
        .with_hint(format!("{ended}, and the output read was passed on"))
}
