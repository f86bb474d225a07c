//! What an agent's failures mean to the user: the same protocol error
//! reads differently on a direct channel and through libvirtd, and once a
//! program runs in the guest, it names its pid.

use std::path::{Path, PathBuf};

use virtomate_protocol::follow::{output_path, FollowError, Stream};
use virtomate_protocol::qga::GuestExecStatusReply;
use virtomate_protocol::session::{Failure, Left, Stage};
use virtomate_protocol::Error as AgentError;
use virtomate_protocol::Stopped;

use crate::domain::socket_holders::{self, Holder};
use crate::error::{CliError, ErrorKind, Interruption, Peer};

/// Turns the protocol's errors on one agent channel into the CLI's.
#[derive(Debug, Clone)]
pub struct AgentErrors {
    /// The agent's socket, or libvirtd's.
    pub socket: PathBuf,
    pub through_libvirtd: bool,
    /// The control master's socket, where the agent is reached through one.
    pub master: Option<PathBuf>,
}

impl AgentErrors {
    /// The agent acts on a request once it has read all of it: a timeout
    /// or a hang-up after that leaves the program perhaps started, under a
    /// pid the agent never told. Say so, since running it again may run it
    /// twice.
    pub fn error_while_starting(&self, error: virtomate_protocol::Error) -> CliError {
        use virtomate_protocol::Phase;
        let request_was_whole = matches!(
            error,
            AgentError::Timeout {
                phase: Phase::Reply(_),
                ..
            } | AgentError::Disconnected
        );
        let error = self.error(error);
        if request_was_whole {
            error.with_hint(
                "the request had reached the agent, so the program may have started in the guest, \
                 under a pid the agent did not tell: check before running it again",
            )
        } else {
            error
        }
    }

    /// Once the program runs, an agent that forgets it, or stops
    /// answering, has most likely restarted (or died) in the guest: say
    /// so, and that the program may live on.
    pub fn error_while_running(&self, error: virtomate_protocol::Error, pid: i64) -> CliError {
        use virtomate_protocol::Phase;
        let shown = self.socket.display();
        match error {
            // Let go of between polls, the channel's socket is gone: the
            // VM stopped while the program ran.
            AgentError::Connect { ref source, .. } if !self.through_libvirtd => CliError::new(
                ErrorKind::AgentDisconnected,
                format!(
                    "the agent socket {shown} went away while the program (guest pid {pid}) ran: {source}"
                ),
            )
            .with_hint("the VM may have stopped; the program's result is lost")
            .with_source(error),
            AgentError::Agent { ref desc, .. } => CliError::new(
                ErrorKind::AgentDisconnected,
                format!("the agent on {shown} no longer knows the program (guest pid {pid}): {desc}"),
            )
            .with_hint("it has probably restarted in the guest, and the program's result is lost")
            .with_source(error),
            // Between polls the channel may have been let go of: a new
            // connection that gets no answer is the same silent agent.
            AgentError::Timeout {
                phase: ref phase @ (Phase::Reply(_) | Phase::Handshake),
                after,
            } if !self.through_libvirtd => CliError::new(
                ErrorKind::AgentTimeout,
                format!(
                    "the agent on {shown} did not answer {} within {} s \
                     while the program (guest pid {pid}) ran",
                    match phase {
                        Phase::Reply(command) => command.as_str(),
                        _ => "guest-sync-delimited",
                    },
                    after.as_secs_f64()
                ),
            )
            .with_hint(
                "it may have stopped or restarted in the guest, \
                 or the guest is very slow (raise --reply-timeout)",
            )
            .with_source(error),
            AgentError::Disconnected if self.gone_master().is_some() => self.master_lost(
                Failure::new(Stage::Running { pid }, error),
                self.gone_master().expect("guarded"),
            ),
            AgentError::Disconnected if !self.through_libvirtd => CliError::new(
                ErrorKind::AgentDisconnected,
                format!("the agent on {shown} closed the connection while the program (guest pid {pid}) ran"),
            )
            .with_hint("the VM may have stopped or its agent restarted; the program's result is lost")
            .with_source(error),
            other => self.error(other),
        }
    }

    pub fn error(&self, error: virtomate_protocol::Error) -> CliError {
        use virtomate_protocol::Phase;
        if let (AgentError::Disconnected, Some(master)) = (&error, self.gone_master()) {
            return CliError::new(
                ErrorKind::AgentDisconnected,
                format!(
                    "the control master {} of the agent on {} closed the connection",
                    master.display(),
                    self.socket.display()
                ),
            )
            .with_hint(
                "the master may have been killed, after the request reached the agent or before: \
                 check before running it again, which starts a new master",
            )
            .with_source(error);
        }
        if self.through_libvirtd {
            return CliError::from_libvirtd(error, &self.socket, Peer::Agent);
        }
        // A channel that did not answer may be held by a client that does
        // not take turns (socat, an old virtomate): name it.
        let silent = matches!(
            error,
            AgentError::Timeout {
                phase: Phase::Handshake | Phase::Connecting,
                ..
            }
        );
        // A turn kept by another virtomate of this user may itself have
        // waited for another user's client, which takes no turns with it.
        let busy = matches!(error, AgentError::Busy { .. });
        let error = CliError::from_agent(error, &self.socket);
        let holders = if silent || busy {
            socket_holders::holders(&self.socket)
        } else {
            Vec::new()
        };
        let held = format!("the channel is {}", socket_holders::describe(&holders));
        if holders.iter().any(Holder::is_other_users) {
            error.with_hint_instead(format!(
                "{held}: another user's process. virtomate runs take turns only with runs of the same \
                 user (each user's lock files are its own), so they meet another user's on the socket \
                 itself, and wait for it without telling it; run them as one user, or one after the other"
            ))
        } else if holders.is_empty() || busy {
            error
        } else {
            error.with_hint(held)
        }
    }

    /// Like [`DomainAgent::error`](super::DomainAgent::error), keeping the class of the agent's error reply,
    /// which the raw commands show.
    pub fn raw_error(&self, error: virtomate_protocol::Error) -> CliError {
        match error {
            refusal @ virtomate_protocol::Error::Agent { .. } => {
                CliError::from_raw(refusal, &self.socket, Peer::Agent)
            }
            other => self.error(other),
        }
    }
}

/// Which command a run's failure is told for: the two name the same
/// options differently (`--follow`, `"follow"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunFront {
    GuestRun,
    Session,
}

impl AgentErrors {
    /// What a failed run means to the user, by how far it had come: the
    /// one mapping of the engine's failures, for `guest-run` and `session`.
    pub fn run_failure(&self, failure: Failure, front: RunFront) -> CliError {
        if failure.output.is_none() && matches!(failure.error, AgentError::Disconnected) {
            if let Some(master) = self.gone_master() {
                return self.master_lost(failure, master);
            }
        }
        let Failure {
            stage,
            error,
            output,
            output_dir,
            ended,
            ..
        } = failure;
        if let Some(output) = output {
            return output_failure(output, stage, output_dir.as_deref(), ended.as_ref(), front);
        }
        match (stage, error) {
            (Stage::Starting, error) => self.error_while_starting(error),
            (Stage::Running { pid }, error) => {
                let error = self.error_while_running(error, pid);
                // Its output's files stay in the guest, in a session too.
                match output_dir {
                    Some(dir) => error.with_hint(keeps_running(pid, &dir)),
                    None => error,
                }
            }
            (Stage::Stopping { pid }, error) => match (front, output_dir) {
                (RunFront::Session, None) => self.error_while_running(error, pid),
                (_, output_dir) => self.stop_failed(error, pid, output_dir.as_deref()),
            },
            (_, AgentError::AgentTooOld { needs, version, .. }) if front == RunFront::GuestRun => {
                self.error(AgentError::AgentTooOld {
                    feature: "--merge-output (capture-output \"merged\")".to_owned(),
                    needs,
                    version,
                })
            }
            (_, error) => self.error(error),
        }
    }
}

/// How often a master's socket is tried, 50 ms apart, before a closed
/// connection is put down to the agent rather than the master.
const MASTER_LOOKS: usize = 3;

impl AgentErrors {
    /// The control master this client went through, when it has gone (a
    /// connection to its socket is refused): a closed connection was then
    /// the master's doing, not the agent's. (A master that lives closes a
    /// client's connection when the agent's ends.)
    fn gone_master(&self) -> Option<&Path> {
        let master = self.master.as_deref()?;
        // A master killed closes its clients' connections and its
        // listening socket one after the other as it goes: a connection
        // taken in between is looked at again, a moment later. Blocking
        // is fine here: nothing else is left to do but report.
        for look in 0..MASTER_LOOKS {
            if std::os::unix::net::UnixStream::connect(master).is_err() {
                return Some(master);
            }
            if look + 1 < MASTER_LOOKS {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        None
    }

    /// The control master at `master` closed the connection of a whole
    /// run before its end (it was killed): the agent knows nothing of
    /// that, so the error says only what the master had told this client
    /// of the run, and names the master rather than the agent.
    pub fn master_lost(&self, failure: Failure, master: &Path) -> CliError {
        let gone = format!(
            "the control master {} of the agent on {} closed the connection",
            master.display(),
            self.socket.display()
        );
        let (message, hint) = match failure.stage {
            Stage::Running { pid } | Stage::Stopping { pid } => (
                format!("{gone} while the program (guest pid {pid}) ran"),
                match &failure.output_dir {
                    Some(dir) => format!(
                        "the master may have been killed, and the program's result is lost; {}",
                        keeps_running(pid, dir)
                    ),
                    None => format!(
                        "the master may have been killed; the program keeps running in the guest as \
                         pid {pid} if it has not ended, and its result is lost"
                    ),
                },
            ),
            Stage::Connecting | Stage::Preparing => (
                format!("{gone} before it answered the run"),
                "nothing was started (the master answers before it starts a run); the master may have \
                 been killed: run it again, which starts a new one"
                    .to_owned(),
            ),
            _ => (
                format!("{gone} before it said whether the program started"),
                "the master may have been killed after the run reached it, so the program may have \
                 started in the guest, under a pid the master did not tell: check before running it \
                 again"
                    .to_owned(),
            ),
        };
        CliError::new(ErrorKind::AgentDisconnected, message)
            .with_hint(hint)
            .with_source(failure.error)
    }

    /// Stopping the program `pid` failed: it may still run, and a
    /// followed one's output stays where it goes.
    pub fn stop_failed(&self, error: AgentError, pid: i64, output_dir: Option<&str>) -> CliError {
        if matches!(error, AgentError::EndNotReported { .. }) {
            return self.error(error);
        }
        let error = self.error_while_running(error, pid).with_hint(format!(
            "virtomate could not stop the program: it may still be running in the guest as pid {pid}"
        ));
        match output_dir {
            Some(dir) => error.with_hint(where_output_goes(dir)),
            None => error,
        }
    }
}

impl AgentErrors {
    /// The error for a run given up on a signal, saying what it left.
    pub fn abandoned(&self, left: Left) -> CliError {
        let stage = match left {
            Left::StartNotSent => Interruption::SendingStart,
            Left::Preparing => Interruption::Preparing,
            Left::MayHaveStarted => Interruption::Starting,
            Left::StartUndone => Interruption::StartUndone,
            Left::StillRunning { pid } => Interruption::StillRunning { pid },
            Left::Ended { pid } => Interruption::Ended { pid },
            Left::EndedJustNow { pid } => Interruption::EndedJustNow { pid },
            Left::Unknown { pid } => Interruption::Running { pid },
            Left::Stopped { pid, stopped } => stopped_on_a_signal(pid, &stopped),
            Left::NotStopped {
                pid,
                error,
                output_dir,
            } => return self.stop_failed(error, pid, output_dir.as_deref()),
            _ => Interruption::Connecting,
        };
        CliError::interrupted(stage)
    }
}

/// A program stopped as virtomate gave up on a signal: how it ended.
pub fn stopped_on_a_signal(pid: i64, stopped: &Stopped) -> Interruption {
    let how = match (stopped.asked, stopped.killed) {
        (false, _) => "had ended by itself; its result is lost",
        (true, false) => "was stopped with SIGTERM",
        (true, true) => "was stopped with SIGKILL after the grace period",
    };
    Interruption::Stopped { pid, how }
}

/// Following a program's output failed on the guest's side.
fn output_failure(
    error: FollowError,
    stage: Stage,
    output_dir: Option<&str>,
    ended: Option<&GuestExecStatusReply>,
    front: RunFront,
) -> CliError {
    let guest_run = front == RunFront::GuestRun;
    match (error, stage) {
        (error, Stage::Running { pid }) => {
            let error = CliError::new(ErrorKind::GuestOutput, error.to_string());
            match (guest_run, ended, output_dir) {
                (true, Some(status), _) => error.with_hint(format!(
                    "{}, and the output read was passed on",
                    how_it_ended(status)
                )),
                (true, None, Some(dir)) => error.with_hint(keeps_running(pid, dir)),
                _ => error.with_hint(format!("the program ran in the guest as pid {pid}")),
            }
        }
        (error @ FollowError::Unsupported { .. }, _) => {
            let error = CliError::nothing_started(ErrorKind::AgentCommand, error);
            match guest_run {
                true => error.with_hint(
                    "enable them in the guest's qemu-ga (see --block-rpcs/--allow-rpcs), or run without \
                     --follow or -i",
                ),
                false => error,
            }
        }
        (error, _) => CliError::new(ErrorKind::GuestOutput, format!("{error}; nothing was started"))
            .with_hint(match guest_run {
                true => {
                    "--follow and -i need /bin/sh, mkfifo, dd and a writable $TMPDIR or /tmp in the \
                     guest; run without them"
                }
                false => {
                    "\"follow\" and \"interactive\" need /bin/sh, mkfifo, dd and a writable $TMPDIR or \
                     /tmp in the guest"
                }
            }),
    }
}

/// Where a followed program's output stays when virtomate cannot remove it.
fn where_output_goes(dir: &str) -> String {
    format!(
        "its output goes to {} and {} in the guest, where it waits for room once two chunks of \
         each are unread: remove {dir} once it has ended (the next followed run from this host \
         does, and stops what is left there, once this virtomate has ended)",
        output_path(dir, Stream::Stdout),
        output_path(dir, Stream::Stderr),
    )
}

fn keeps_running(pid: i64, dir: &str) -> String {
    format!(
        "the program keeps running in the guest as pid {pid} if it has not ended; {}",
        where_output_goes(dir)
    )
}

fn how_it_ended(status: &GuestExecStatusReply) -> String {
    match (status.exitcode, status.signal) {
        (Some(code), _) => format!("the program exited with status {code}"),
        (None, Some(signal)) => format!("the program was killed by signal {signal}"),
        (None, None) => "the program ended".to_owned(),
    }
}
