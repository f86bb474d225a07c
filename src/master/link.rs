//! The master's one connection to the agent: connected after taking the
//! turn on the channel (as every virtomate process does), synchronised,
//! then split so that requests are written while replies are read.
//! Replies come to the master's hub as [`LinkEvent`]s tagged with the
//! connection's generation, so that the late words of an old connection
//! are told apart.

use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use virtomate_protocol::framing::{LineCodec, SENTINEL};
use virtomate_protocol::{ChannelLock, Connection, Deadline, Error, Phase, Turn};

/// What the hub hears from a connection to the agent.
#[derive(Debug)]
pub enum LinkEvent {
    /// A reply line, without its newline.
    Line { generation: u64, line: Vec<u8> },
    /// A reply longer than the bound, dropped.
    TooLong { generation: u64 },
    /// The connection ended: the agent closed it, or writing failed.
    Closed { generation: u64 },
}

/// A line to write to the agent, and who waits until it is written.
pub type Outgoing = (Vec<u8>, oneshot::Sender<()>);

/// A synchronised connection to the agent, and the turn it was taken on.
pub struct Link {
    pub generation: u64,
    writer: mpsc::UnboundedSender<Outgoing>,
    reader: JoinHandle<()>,
    writer_task: JoinHandle<()>,
    turn: Option<Turn>,
}

/// How long a refused connection is tried again: `qemu-ga -m
/// unix-listen` stops listening for a moment after each client.
const REFUSED_GRACE: Duration = Duration::from_secs(1);

/// Lets a waiting process take the turn before the connection closes,
/// so that it connects while the agent is still awake (see the
/// protocol crate's `SocketConnector`).
const HANDOVER: Duration = Duration::from_millis(3);

impl Link {
    /// Takes the turn on the channel, connects to the agent at `agent` and
    /// synchronises, all by `deadline`; replies will go to `events`.
    pub async fn connect(
        agent: &Path,
        lock: Option<&ChannelLock>,
        deadline: Deadline,
        generation: u64,
        max_reply_len: usize,
        events: mpsc::UnboundedSender<LinkEvent>,
    ) -> Result<Link, Error> {
        let turn = match lock {
            Some(lock) => Some(lock.acquire(deadline).await?),
            None => None,
        };
        let stream = connect_refused_briefly(agent, deadline).await?;
        let (read, mut write) = stream.into_split();
        let mut conn = Connection::new(read, LineCodec::new(max_reply_len), None);
        let synchronised = deadline
            .run(Phase::Handshake, synchronise(&mut conn, &mut write))
            .await;
        match (synchronised, lock) {
            // Answered: the agent has read whatever came before.
            (Ok(()), Some(lock)) => lock.clear_request_note(),
            (Ok(()), None) => {}
            // As a lone client says it: another client's big request.
            (
                Err(Error::Timeout {
                    phase: Phase::Handshake,
                    after,
                }),
                Some(lock),
            ) => {
                if let Some(request) = lock.request_still_read() {
                    return Err(Error::BusyWithEarlierRequest {
                        path: agent.to_owned(),
                        after,
                        request,
                    });
                }
                return Err(Error::Timeout {
                    phase: Phase::Handshake,
                    after,
                });
            }
            (Err(error), _) => return Err(error),
        }
        let (writer, outgoing) = mpsc::unbounded_channel();
        let writer_task = tokio::spawn(write_lines(write, outgoing, generation, events.clone()));
        let reader = tokio::spawn(read_lines(conn, generation, events));
        Ok(Link {
            generation,
            writer,
            reader,
            writer_task,
            turn,
        })
    }

    /// Queues `line` for the agent; `written` fires once it is out.
    pub fn send(&self, line: Vec<u8>, written: oneshot::Sender<()>) {
        // A writer that has ended has told the hub (`Closed`).
        let _ = self.writer.send((line, written));
    }

    /// Ends the connection, handing the turn to a waiting process first.
    pub async fn close(mut self, handover: bool) {
        drop(self.turn.take());
        if handover {
            tokio::time::sleep(HANDOVER).await;
        }
        self.reader.abort();
        self.writer_task.abort();
    }
}

async fn connect_refused_briefly(agent: &Path, deadline: Deadline) -> Result<UnixStream, Error> {
    let refused_until = tokio::time::Instant::now() + REFUSED_GRACE;
    loop {
        let connected = deadline
            .run(Phase::Connecting, async {
                UnixStream::connect(agent).await.map_err(|source| Error::Connect {
                    path: agent.to_owned(),
                    source,
                })
            })
            .await;
        match connected {
            Err(Error::Connect { ref source, .. })
                if source.kind() == std::io::ErrorKind::ConnectionRefused
                    && tokio::time::Instant::now() < refused_until.min(deadline.at()) =>
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => return other,
        }
    }
}

/// `0xFF` to reset the agent's parser, then `guest-sync-delimited` with a
/// random id, skipping everything up to its reply.
async fn synchronise(
    conn: &mut Connection<OwnedReadHalf, LineCodec>,
    write: &mut OwnedWriteHalf,
) -> Result<(), Error> {
    let id = u64::from_ne_bytes(virtomate_protocol::random_bytes::<8>().map_err(Error::Io)?) >> 12;
    let mut request = vec![SENTINEL];
    request.extend(
        format!("{{\"execute\":\"guest-sync-delimited\",\"arguments\":{{\"id\":{id}}},\"id\":{id}}}\n")
            .as_bytes(),
    );
    write.write_all(&request).await.map_err(Error::from)?;
    conn.skip_past_sentinel().await?;
    loop {
        let line = match conn.read_reply().await {
            Err(Error::ReplyTooLong { .. }) => continue,
            other => other?,
        };
        let after_sentinel = match memchr_last(&line) {
            Some(pos) => &line[pos + 1..],
            None => &line[..],
        };
        #[derive(serde::Deserialize)]
        struct Echo {
            #[serde(rename = "return")]
            ret: u64,
        }
        if serde_json::from_slice::<Echo>(after_sentinel).is_ok_and(|echo| echo.ret == id) {
            return Ok(());
        }
    }
}

fn memchr_last(line: &[u8]) -> Option<usize> {
    line.iter().rposition(|&b| b == SENTINEL)
}

async fn write_lines(
    mut write: OwnedWriteHalf,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
    generation: u64,
    events: mpsc::UnboundedSender<LinkEvent>,
) {
    while let Some((line, written)) = outgoing.recv().await {
        if write.write_all(&line).await.is_err() {
            let _ = events.send(LinkEvent::Closed { generation });
            return;
        }
        let _ = written.send(());
    }
}

async fn read_lines(
    mut conn: Connection<OwnedReadHalf, LineCodec>,
    generation: u64,
    events: mpsc::UnboundedSender<LinkEvent>,
) {
    loop {
        let event = match conn.read_reply().await {
            Ok(line) => LinkEvent::Line { generation, line },
            Err(Error::ReplyTooLong { .. }) => LinkEvent::TooLong { generation },
            Err(_) => {
                let _ = events.send(LinkEvent::Closed { generation });
                return;
            }
        };
        if events.send(event).is_err() {
            return;
        }
    }
}
