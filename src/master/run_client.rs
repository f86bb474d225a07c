//! A client's side of a whole run in the master (`wire::RUN`): the run
//! asked for in one line, its replies read back as the client's own
//! engine would have given them. A master that goes away mid-run leaves
//! the client with what it knows: the run perhaps started, or running as
//! the pid the master announced.

use std::io;

use serde_json::value::RawValue;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use virtomate_protocol::framing::{Frame, LineCodec};
use virtomate_protocol::session::relay::{self, Relayed};
use virtomate_protocol::session::{Abandoned, Failure, Left, Outcome, Reply, RunRequest, Stage};
use virtomate_protocol::{Connection, Deadline, Error, Phase};

use super::connector::{MasterConnector, MASTER_TRIES};
use super::wire::{self, RunArguments, GIVE_UP, REFUSE, RUN};

/// A run given whole to a domain's control master.
pub struct MasterRun {
    master: MasterConnector,
    /// The line that asks for the run, sent again to a master started anew.
    line: Vec<u8>,
    deadline: Deadline,
    conn: Connection<OwnedReadHalf, LineCodec>,
    write: OwnedWriteHalf,
    /// The master has said it is ready (its attach answer): the run goes on.
    ready: bool,
    /// How far the run has come, as far as this client knows.
    stage: Stage,
    /// The request's id.
    id: Value,
    /// Its end was read.
    ended: bool,
    /// The caller refused output: the master is to be told, once.
    refusal: Refusal,
    /// The master's connection failed before the run's end: it went away.
    master_lost: bool,
    /// Where a followed run's output goes in the guest, as the master said.
    output_dir: Option<String>,
}

#[derive(PartialEq)]
enum Refusal {
    None,
    ToSay,
    Said,
}

/// Room beside the longest reply the client takes, for the relayed
/// line's own keys.
const LINE_SLACK: usize = 4096;

impl MasterRun {
    /// Gives `run` as `id` to the master behind `master` (starting one
    /// where none runs). Not an interactive run. The master answers first
    /// as an attach does, read by [`ready`](Self::ready), within the
    /// client's handshake timeout from now.
    pub async fn send(master: &MasterConnector, id: Value, run: &RunRequest) -> Result<MasterRun, Error> {
        let options = master.options();
        let deadline = Deadline::after(options.handshake_timeout);
        let mut request = relay::run_line(&id, run);
        request.pop();
        let arguments = RunArguments {
            timeout_ms: deadline.remaining().as_millis() as u64,
            handshake_ms: options.handshake_timeout.as_millis() as u64,
            reply_ms: options.reply_timeout.as_millis() as u64,
            request: RawValue::from_string(String::from_utf8(request).expect("JSON is UTF-8"))
                .expect("a relayed run line is JSON"),
        };
        let line = format!(
            "{{\"execute\":\"{RUN}\",\"arguments\":{}}}\n",
            serde_json::to_string(&arguments).expect("plain data serializes")
        );
        let (conn, write) = MasterRun::reach_and_send(master, deadline, line.as_bytes()).await?;
        Ok(MasterRun {
            master: master.clone(),
            line: line.into_bytes(),
            deadline,
            conn,
            write,
            ready: false,
            stage: Stage::Connecting,
            id,
            ended: false,
            refusal: Refusal::None,
            master_lost: false,
            output_dir: None,
        })
    }

    async fn reach_and_send(
        master: &MasterConnector,
        deadline: Deadline,
        line: &[u8],
    ) -> Result<(Connection<OwnedReadHalf, LineCodec>, OwnedWriteHalf), Error> {
        let (read, mut write) = master.reach(deadline).await?.into_split();
        let limit = master.options().max_reply_len + LINE_SLACK;
        // A master gone meanwhile is read as such next, where the run is
        // given to a new one.
        let _ = write.write_all(line).await;
        Ok((Connection::new(read, LineCodec::new(limit), None), write))
    }

    /// Waits for the master's first answer: its agent is connected
    /// (`true`), or the error says why not, as a lone client's would;
    /// `false` for a master that does not run whole runs (an older
    /// virtomate's, which persists across an upgrade): the run is then the
    /// client's own, through that master command by command.
    pub async fn ready(&mut self) -> Result<bool, Error> {
        let mut answer = self.first_answer().await;
        // A master that ended as we came (its time was up), or was killed
        // before it answered, has started nothing (it answers before it
        // starts the run): again, which starts a new one.
        for _ in 1..MASTER_TRIES {
            if !answer.as_ref().is_err_and(went_away) {
                break;
            }
            answer = match MasterRun::reach_and_send(&self.master, self.deadline, &self.line).await {
                Ok((conn, write)) => {
                    (self.conn, self.write) = (conn, write);
                    self.first_answer().await
                }
                Err(error) => Err(error),
            };
        }
        let answer = answer.map_err(|error| {
            self.master_lost = went_away(&error);
            self.master.as_a_lone_client_says(error)
        })?;
        if wire::not_known(&answer) {
            // Nothing was started: the agent did not know the command either.
            self.ended = true;
            return Ok(false);
        }
        wire::attach_outcome(&answer)
            .map_err(|failure| self.master.as_a_lone_client_says(failure.into_error()))?;
        self.ready = true;
        // Sent whole and ready: from here on, it may have started.
        self.stage = Stage::Starting;
        Ok(true)
    }

    /// Whether the master said it is ready: the run goes on there.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Reads the run's replies to its end, handing each to `reply` as the
    /// session engine does.
    pub async fn serve(&mut self, mut reply: impl FnMut(Reply) -> io::Result<()>) {
        while !self.ended {
            if self.refusal == Refusal::ToSay {
                self.refusal = Refusal::Said;
                // A master gone meanwhile is read as such next.
                let _ = self.write.write_all(REFUSE).await;
            }
            match self.read().await {
                Ok(Relayed::Reply(got)) => self.take(got, &mut reply),
                // Not asked for: a master that says it is not understood.
                Ok(_) => return self.lost(Error::Disconnected, &mut reply),
                Err(error) => {
                    self.master_lost = went_away(&error);
                    return self.lost(error, &mut reply);
                }
            }
        }
    }

    /// Whether the run failed as its master went away (it was killed),
    /// before its answer ([`ready`](Self::ready)) or after: the failure
    /// is then the master's, not the agent's.
    pub fn lost_the_master(&self) -> bool {
        self.master_lost
    }

    /// The master's socket.
    pub fn socket(&self) -> &std::path::Path {
        self.master.socket()
    }

    /// After [`serve`](Self::serve) was cut short (a signal): the master
    /// gives the run up as the session engine's `give_up` does, and says
    /// what it left; a master gone meanwhile leaves what this client knows.
    pub async fn give_up(&mut self, mut reply: impl FnMut(Reply) -> io::Result<()>) -> Vec<Abandoned> {
        if self.ended {
            return Vec::new();
        }
        if self.write.write_all(GIVE_UP).await.is_err() {
            return self.what_is_known();
        }
        if !self.ready {
            // Its answer first, unless the give-up came while it waited for
            // the agent: a master not ready (or gone before it answered) has
            // started nothing.
            let Ok(answer) = read_line(&mut self.conn).await else {
                return Vec::new();
            };
            if let Ok(Relayed::Abandoned(abandoned)) = relay::parse_line(&answer) {
                return abandoned;
            }
            if wire::attach_outcome(&answer).is_err() {
                return Vec::new();
            }
            self.ready = true;
            self.stage = Stage::Starting;
        }
        loop {
            match self.read().await {
                Ok(Relayed::Abandoned(abandoned)) => return abandoned,
                Ok(Relayed::Reply(got)) => self.take(got, &mut reply),
                Ok(_) | Err(_) => return self.what_is_known(),
            }
        }
    }

    /// What the run left, as far as this client knows, with the master
    /// gone (or no longer waited for).
    pub fn what_is_known(&self) -> Vec<Abandoned> {
        let left = match self.stage {
            Stage::Connecting => return Vec::new(),
            Stage::Running { pid } => Left::Unknown { pid },
            _ => Left::MayHaveStarted,
        };
        vec![Abandoned::new(self.id.clone(), left)]
    }

    fn take(&mut self, got: Reply, reply: &mut impl FnMut(Reply) -> io::Result<()>) {
        match got.outcome {
            Ok(Outcome::Started { pid, ref output_dir }) => {
                self.stage = Stage::Running { pid };
                self.output_dir.clone_from(output_dir);
            }
            Ok(Outcome::Chunk { .. }) => {
                if reply(got).is_err() && self.refusal == Refusal::None {
                    self.refusal = Refusal::ToSay;
                }
            }
            _ => {
                self.ended = true;
                let _ = reply(got);
            }
        }
    }

    /// The master's connection failed: the run fails where it stood.
    fn lost(&mut self, error: Error, reply: &mut impl FnMut(Reply) -> io::Result<()>) {
        self.ended = true;
        let mut failure = Failure::new(self.stage, error);
        failure.output_dir.clone_from(&self.output_dir);
        let _ = reply(Reply::failed(self.id.clone(), failure));
    }

    async fn first_answer(&mut self) -> Result<Vec<u8>, Error> {
        self.deadline
            .run(Phase::Handshake, read_line(&mut self.conn))
            .await
    }

    async fn read(&mut self) -> Result<Relayed, Error> {
        let line = read_line(&mut self.conn).await?;
        relay::parse_line(&line).map_err(|e| Error::Malformed {
            command: RUN.to_owned(),
            reason: e.to_string(),
        })
    }
}

/// The master's connection closed or broke: a master killed leaves
/// either, whichever way the kernel reports it.
fn went_away(error: &Error) -> bool {
    matches!(error, Error::Disconnected | Error::Io(_))
}

async fn read_line(conn: &mut Connection<OwnedReadHalf, LineCodec>) -> Result<Vec<u8>, Error> {
    loop {
        if let Frame::Line(line) = conn.read_frame().await? {
            return Ok(line);
        }
    }
}
