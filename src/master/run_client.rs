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

use super::connector::MasterConnector;
use super::wire::{self, RunArguments, GIVE_UP, REFUSE, RUN};

/// A run given whole to a domain's control master.
pub struct MasterRun {
    conn: Connection<OwnedReadHalf, LineCodec>,
    write: OwnedWriteHalf,
    /// How far the run has come, as far as this client knows.
    stage: Stage,
    /// The request's id.
    id: Value,
    /// Its end was read.
    ended: bool,
    /// The caller refused output: the master is to be told, once.
    refusal: Refusal,
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
    /// Gives `run` as `id` to the master behind `master`, which answers
    /// first as an attach does: its agent is connected, or the error says
    /// why not as a lone client's would; within the client's handshake
    /// timeout. The run then goes on, its replies read by
    /// [`serve`](Self::serve). Not an interactive one.
    pub async fn start(master: &MasterConnector, id: Value, run: &RunRequest) -> Result<MasterRun, Error> {
        let deadline = Deadline::after(master.options().handshake_timeout);
        let started = match MasterRun::try_start(master, deadline, &id, run).await {
            // A master that ended as we came (its time was up): once more,
            // which starts a new one.
            Err(Error::Disconnected) => MasterRun::try_start(master, deadline, &id, run).await,
            other => other,
        };
        started.map_err(|error| master.as_a_lone_client_says(error))
    }

    async fn try_start(
        master: &MasterConnector,
        deadline: Deadline,
        id: &Value,
        run: &RunRequest,
    ) -> Result<MasterRun, Error> {
        let (read, mut write) = master.reach(deadline).await?.into_split();
        let options = master.options();
        let mut conn = Connection::new(read, LineCodec::new(options.max_reply_len + LINE_SLACK), None);
        let mut request = relay::run_line(id, run);
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
        write.write_all(line.as_bytes()).await.map_err(Error::from)?;
        let answer = deadline.run(Phase::Handshake, read_line(&mut conn)).await?;
        wire::attach_outcome(&answer).map_err(wire::LinkFailure::into_error)?;
        Ok(MasterRun {
            conn,
            write,
            // Sent whole and ready: from here on, it may have started.
            stage: Stage::Starting,
            id: id.clone(),
            ended: false,
            refusal: Refusal::None,
        })
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
                Err(error) => return self.lost(error, &mut reply),
            }
        }
    }

    /// After [`serve`](Self::serve) was cut short (a signal): the master
    /// gives the run up as the session engine's `give_up` does, and says
    /// what it left; a master gone meanwhile leaves what this client knows.
    pub async fn give_up(&mut self, mut reply: impl FnMut(Reply) -> io::Result<()>) -> Vec<Abandoned> {
        if self.ended {
            return Vec::new();
        }
        if self.write.write_all(GIVE_UP).await.is_ok() {
            loop {
                match self.read().await {
                    Ok(Relayed::Abandoned(abandoned)) => return abandoned,
                    Ok(Relayed::Reply(got)) => self.take(got, &mut reply),
                    Ok(_) | Err(_) => break,
                }
            }
        }
        let left = match self.stage {
            Stage::Running { pid } => Left::Unknown { pid },
            _ => Left::MayHaveStarted,
        };
        vec![Abandoned::new(self.id.clone(), left)]
    }

    fn take(&mut self, got: Reply, reply: &mut impl FnMut(Reply) -> io::Result<()>) {
        match got.outcome {
            Ok(Outcome::Started { pid }) => self.stage = Stage::Running { pid },
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
        let _ = reply(Reply::failed(self.id.clone(), Failure::new(self.stage, error)));
    }

    async fn read(&mut self) -> Result<Relayed, Error> {
        let line = read_line(&mut self.conn).await?;
        relay::parse_line(&line).map_err(|e| Error::Malformed {
            command: RUN.to_owned(),
            reason: e.to_string(),
        })
    }
}

async fn read_line(conn: &mut Connection<OwnedReadHalf, LineCodec>) -> Result<Vec<u8>, Error> {
    loop {
        if let Frame::Line(line) = conn.read_frame().await? {
            return Ok(line);
        }
    }
}
