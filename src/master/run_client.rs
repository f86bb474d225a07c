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
use virtomate_protocol::{Connection, Error};

use super::connector::MasterConnector;
use super::wire::{RunArguments, GIVE_UP, RUN};

/// A run given whole to a domain's control master.
pub struct MasterRun {
    conn: Connection<OwnedReadHalf, LineCodec>,
    write: OwnedWriteHalf,
    handshake_ms: u64,
    reply_ms: u64,
    /// How far the run has come, as far as this client knows.
    stage: Stage,
    /// The request's id, once sent.
    id: Option<Value>,
    /// Its end was read.
    ended: bool,
}

/// Room beside the longest reply the client takes, for the relayed
/// line's own keys.
const LINE_SLACK: usize = 4096;

impl MasterRun {
    /// Connects to the master behind `master`, whose agent is then
    /// connected, or the error says why not as a lone client's would.
    pub async fn attach(master: &MasterConnector) -> Result<MasterRun, Error> {
        let (read, write) = master.attached().await?.into_split();
        let options = master.options();
        let conn = Connection::new(read, LineCodec::new(options.max_reply_len + LINE_SLACK), None);
        Ok(MasterRun {
            conn,
            write,
            handshake_ms: options.handshake_timeout.as_millis() as u64,
            reply_ms: options.reply_timeout.as_millis() as u64,
            stage: Stage::Starting,
            id: None,
            ended: false,
        })
    }

    /// Runs `run` as `id` to its end, handing each reply to `reply` as the
    /// session engine does. A plain run only: neither followed nor
    /// interactive.
    pub async fn serve(
        &mut self,
        id: Value,
        run: &RunRequest,
        mut reply: impl FnMut(Reply) -> io::Result<()>,
    ) {
        let mut request = relay::run_line(&id, run);
        request.pop();
        self.id = Some(id.clone());
        let arguments = RunArguments {
            handshake_ms: self.handshake_ms,
            reply_ms: self.reply_ms,
            request: RawValue::from_string(String::from_utf8(request).expect("JSON is UTF-8"))
                .expect("a relayed run line is JSON"),
        };
        let line = format!(
            "{{\"execute\":\"{RUN}\",\"arguments\":{}}}\n",
            serde_json::to_string(&arguments).expect("plain data serializes")
        );
        if let Err(error) = self.write.write_all(line.as_bytes()).await {
            return self.lost(Error::from(error), &mut reply);
        }
        while !self.ended {
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
        let Some(id) = self.id.clone().filter(|_| !self.ended) else {
            return Vec::new();
        };
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
        vec![Abandoned::new(id, left)]
    }

    fn take(&mut self, got: Reply, reply: &mut impl FnMut(Reply) -> io::Result<()>) {
        match got.outcome {
            Ok(Outcome::Started { pid }) => self.stage = Stage::Running { pid },
            Ok(Outcome::Chunk { .. }) => {
                let _ = reply(got);
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
        let id = self.id.clone().unwrap_or(Value::Null);
        let _ = reply(Reply::failed(id, Failure::new(self.stage, error)));
    }

    async fn read(&mut self) -> Result<Relayed, Error> {
        loop {
            match self.conn.read_frame().await? {
                Frame::Line(line) => {
                    return relay::parse_line(&line).map_err(|e| Error::Malformed {
                        command: RUN.to_owned(),
                        reason: e.to_string(),
                    })
                }
                _ => continue,
            }
        }
    }
}
