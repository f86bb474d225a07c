//! A copy's program in the guest (`tar`, `gzip`) followed as it writes:
//! its standard output is the data, its standard error what it said.

use std::time::Instant;

use tokio::time::sleep;
use virtomate_protocol::follow::{Follow, FollowError, FollowOptions, Stream};
use virtomate_protocol::qga::GuestExecStatusReply;
use virtomate_protocol::{leftovers, status_on, Channel, PollSchedule};

use crate::agent::DomainConnector;
use crate::copy::agent::FileAgent;
use crate::error::CliError;

/// Makes the private directory the program's output (and, with
/// `stdin_pipe`, its input) passes through, tagged with this process, so
/// that the next followed run or copy from this host sweeps it should
/// this one be killed; and sweeps those of dead ones it finds (see
/// [`leftovers`]).
pub async fn prepare(
    channel: &mut Channel<DomainConnector>,
    options: FollowOptions,
    stdin_pipe: bool,
) -> Result<Follow, FollowError> {
    let name = Follow::new_name()?;
    let follow = leftovers::prepare_tagged(channel, options, stdin_pipe, &name).await?;
    leftovers::sweep_beside(channel, &follow).await;
    Ok(follow)
}

/// One look at the program's output: what is new, or once it has
/// `ended`, the rest (up to the rotators' end marks); standard output
/// appended to `data`, standard error to `said` up to `said_max` bytes.
/// The bytes read and whether more may wait, as [`Follow::read_new`]
/// tells.
pub async fn look(
    follow: &mut Follow,
    channel: &mut Channel<DomainConnector>,
    ended: bool,
    data: &mut Vec<u8>,
    said: &mut Vec<u8>,
    said_max: usize,
) -> Result<(u64, bool), FollowError> {
    let mut sink = |stream: Stream, bytes: &[u8]| {
        match stream {
            Stream::Stdout => data.extend_from_slice(bytes),
            Stream::Stderr if said.len() < said_max => said.extend_from_slice(bytes),
            Stream::Stderr => {}
        }
        Ok(())
    };
    match ended {
        true => follow.drain(channel, &mut sink).await.map(|()| (0, false)),
        false => follow.read_new(channel, &mut sink).await,
    }
}

/// A copy's program between looks at its output: since when it has been
/// quiet, and its end once seen. Its output is whole only once drained
/// after that end.
pub struct Watched {
    pid: i64,
    schedule: PollSchedule,
    quiet_since: Instant,
    ended: Option<GuestExecStatusReply>,
}

impl Watched {
    pub fn new(pid: i64, schedule: PollSchedule) -> Watched {
        Watched {
            pid,
            schedule,
            quiet_since: Instant::now(),
            ended: None,
        }
    }

    /// Whether the next look is to drain the rest, the program being over.
    pub fn has_ended(&self) -> bool {
        self.ended.is_some()
    }

    /// After a look that read `read` bytes and left `more` perhaps
    /// waiting: the program's end once its output is drained after it.
    /// Else, when nothing more waits, asks whether it has ended, and
    /// pauses while it runs on, the longer the quieter it has been.
    pub async fn after_look(
        &mut self,
        agent: &mut impl FileAgent,
        read: u64,
        more: bool,
    ) -> Result<Option<GuestExecStatusReply>, CliError> {
        if read > 0 {
            self.quiet_since = Instant::now();
        }
        if more {
            return Ok(None);
        }
        if let Some(ended) = self.ended.take() {
            // Drained after its end: all of it is there.
            return Ok(Some(ended));
        }
        let status = status_on(agent.channel(), self.pid).await;
        let status = status.map_err(|e| agent.error_while_running(e, self.pid))?;
        match status.exited {
            true => self.ended = Some(status),
            false => sleep(self.schedule.pause_after(self.quiet_since.elapsed())).await,
        }
        Ok(None)
    }
}
