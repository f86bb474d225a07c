//! One client of the master: its request lines read (bounded), the
//! handshake and the master's own commands answered here, everything
//! else handed to the hub with a master-unique id; replies written back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use virtomate_protocol::framing::{Frame, LineCodec, SENTINEL};
use virtomate_protocol::{Connection, MAX_REQUEST_LEN};

use super::wire::{self, ClientRequest};

/// What a client asks of the hub.
pub enum ClientEvent {
    /// A new client, and where its replies go.
    Opened {
        client: u64,
        replies: mpsc::UnboundedSender<Vec<u8>>,
    },
    /// Make sure the agent is connected, within `timeout`.
    Attach {
        timeout: std::time::Duration,
        answer: oneshot::Sender<Result<(), wire::LinkFailure>>,
    },
    /// A request for the agent, with the master's id in it.
    Request {
        client: u64,
        id: u64,
        /// The client's own id, raw JSON.
        client_id: Option<String>,
        name: String,
        line: Vec<u8>,
        written: oneshot::Sender<()>,
    },
    Info {
        answer: oneshot::Sender<wire::MasterInfo>,
    },
    /// A client's whole run begins (counted, for `control check`).
    Run,
    Exit,
    Closed {
        client: u64,
    },
}

/// The longest request line a client may send: the agent's own limit,
/// and a little for the JSON around it.
const MAX_CLIENT_LINE: usize = MAX_REQUEST_LEN + 1024;

/// A client that asked the master to run a program whole
/// ([`wire::RUN`]): its connection, and the request's arguments.
pub struct RunHandover<R = OwnedReadHalf, W = OwnedWriteHalf> {
    pub conn: Connection<R, LineCodec>,
    pub write: W,
    pub arguments: Vec<u8>,
}

/// Serves one client until it leaves or the hub drops it; one that asks
/// for a whole run is handed back, for the run engine.
pub async fn serve_client<R, W>(
    (read, mut write): (R, W),
    client: u64,
    ids: Arc<AtomicU64>,
    hub: mpsc::UnboundedSender<ClientEvent>,
) -> Option<RunHandover<R, W>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut conn = Connection::new(read, LineCodec::new(MAX_CLIENT_LINE), None);
    // Only the hub holds the sender: when it lets the client go, the
    // channel closes and so does the connection.
    let (replies_tx, mut replies) = mpsc::unbounded_channel::<Vec<u8>>();
    if hub
        .send(ClientEvent::Opened {
            client,
            replies: replies_tx,
        })
        .is_err()
    {
        return None;
    }
    // The master's own answers, written by this task.
    let mut own = Vec::new();
    // Requests are read one at a time: the next once the last is with
    // the agent, so that a client far ahead does not fill memory.
    let mut written: Option<oneshot::Receiver<()>> = None;
    let mut handover = None;
    loop {
        tokio::select! {
            reply = replies.recv() => match reply {
                Some(bytes) => {
                    if write.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                // The hub let this client go (the agent's connection ended).
                None => break,
            },
            done = async { written.as_mut().expect("guarded").await }, if written.is_some() => {
                written = None;
                if done.is_err() {
                    break;
                }
            }
            frame = conn.read_frame(), if written.is_none() => match frame {
                Ok(Frame::Line(line)) => {
                    let handled = handle_line(&line, client, &ids, &hub, &mut own).await;
                    for bytes in own.drain(..) {
                        if write.write_all(&bytes).await.is_err() {
                            break;
                        }
                    }
                    match handled {
                        Handled::Done => {}
                        Handled::Forwarded(waiting) => written = Some(waiting),
                        // The answer is out before the master ends.
                        Handled::Exit => {
                            let _ = hub.send(ClientEvent::Exit);
                        }
                        Handled::Run(arguments) => {
                            handover = Some(arguments);
                            break;
                        }
                    }
                }
                Ok(_) => {}
                Err(virtomate_protocol::Error::ReplyTooLong { limit }) => {
                    let desc = format!("the request is longer than the {limit} bytes the agent accepts");
                    if write.write_all(&wire::own_error("GenericError", &desc, None)).await.is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    }
    let _ = hub.send(ClientEvent::Closed { client });
    handover.map(|arguments| RunHandover {
        conn,
        write,
        arguments,
    })
}

/// Asks `hub` to have the agent connected within `timeout`: the answer
/// line, as a client's attach gets it; `None` once the hub has ended.
pub async fn attach(
    hub: &mpsc::UnboundedSender<ClientEvent>,
    timeout: std::time::Duration,
    client_id: Option<&str>,
) -> Option<Vec<u8>> {
    let (answer, answered) = oneshot::channel();
    hub.send(ClientEvent::Attach { timeout, answer }).ok()?;
    Some(match answered.await.ok()? {
        Ok(()) => wire::own_reply(serde_json::json!({ "return": {} }), client_id),
        Err(failure) => {
            let desc = serde_json::to_string(&failure).expect("plain data serializes");
            wire::own_error(wire::LINK_FAILURE_CLASS, &desc, client_id)
        }
    })
}

enum Handled {
    Done,
    Forwarded(oneshot::Receiver<()>),
    Exit,
    /// A whole run, with its arguments: the connection is the run's now.
    Run(Vec<u8>),
}

async fn handle_line(
    line: &[u8],
    client: u64,
    ids: &AtomicU64,
    hub: &mpsc::UnboundedSender<ClientEvent>,
    replies: &mut Vec<Vec<u8>>,
) -> Handled {
    // A 0xFF resets the agent's parser: what came before it is dropped.
    let line = match line.iter().rposition(|&b| b == SENTINEL) {
        Some(pos) => &line[pos + 1..],
        None => line,
    };
    if line.iter().all(u8::is_ascii_whitespace) {
        return Handled::Done;
    }
    let Ok(request) = serde_json::from_slice::<ClientRequest>(line) else {
        replies.push(wire::own_error("GenericError", "JSON parse error", None));
        return Handled::Done;
    };
    let client_id = request.id.map(|id| id.get().to_owned());
    let client_id = client_id.as_deref();
    match request.execute.as_str() {
        "guest-sync-delimited" | "guest-sync" => {
            let Some(sync) = request.sync_id() else {
                let desc = "Parameter 'id' is missing";
                replies.push(wire::own_error("GenericError", desc, client_id));
                return Handled::Done;
            };
            let mut reply = Vec::new();
            if request.execute == "guest-sync-delimited" {
                reply.push(SENTINEL);
            }
            reply.extend(wire::own_reply(serde_json::json!({ "return": sync }), client_id));
            replies.push(reply);
            Handled::Done
        }
        wire::ATTACH => {
            #[derive(serde::Deserialize)]
            struct AttachArguments {
                timeout_ms: u64,
            }
            let timeout_ms = request
                .arguments
                .and_then(|a| serde_json::from_str::<AttachArguments>(a.get()).ok())
                .map_or(5000, |a| a.timeout_ms);
            let timeout = std::time::Duration::from_millis(timeout_ms);
            if let Some(answer) = attach(hub, timeout, client_id).await {
                replies.push(answer);
            }
            Handled::Done
        }
        wire::INFO => {
            let (answer, answered) = oneshot::channel();
            if hub.send(ClientEvent::Info { answer }).is_ok() {
                if let Ok(info) = answered.await {
                    let info = serde_json::to_value(info).expect("plain data serializes");
                    replies.push(wire::own_reply(serde_json::json!({ "return": info }), client_id));
                }
            }
            Handled::Done
        }
        wire::RUN => Handled::Run(
            request
                .arguments
                .map_or_else(Vec::new, |a| a.get().as_bytes().to_vec()),
        ),
        wire::EXIT => {
            replies.push(wire::own_reply(serde_json::json!({ "return": {} }), client_id));
            Handled::Exit
        }
        name => {
            let id = ids.fetch_add(1, Ordering::Relaxed);
            let (written, waiting) = oneshot::channel();
            let event = ClientEvent::Request {
                client,
                id,
                client_id: client_id.map(str::to_owned),
                name: name.to_owned(),
                line: request.with_id(id),
                written,
            };
            match hub.send(event) {
                Ok(()) => Handled::Forwarded(waiting),
                Err(_) => Handled::Done,
            }
        }
    }
}
