//! A client's whole run in the master: its request served by the run
//! engine (the one `virtomate session` uses) over an in-process connection
//! to the hub, its replies relayed back as they come. A client that gives
//! up (a signal) is answered with what its run left; one that goes away
//! has its run given up alike, so that a time limit is kept and followed
//! output stopped, as its own engine would have on a signal.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use virtomate_protocol::framing::{Frame, LineCodec};
use virtomate_protocol::session::{relay, Outcome, Request, Session, SessionOptions};
use virtomate_protocol::{ClientOptions, Connection, Deadline};

use super::client_conn::RunHandover;
use super::hub_connector::HubConnector;
use super::wire::{self, LinkFailure, RunArguments, GIVE_UP, REFUSE};

/// The most of a followed program's output passed on after a give-up.
const GIVE_UP_OUTPUT_LIMIT: usize = 16 << 20;

/// How a client's whole run ended on the master's side.
enum End {
    /// The client asked to give it up.
    GivenUp,
    /// The client went away.
    Gone,
}

/// Serves the run `handover` asks for, over connections from `connect`
/// (given the client's timeouts), until the client leaves.
pub async fn serve_run(
    handover: RunHandover,
    connect: impl FnOnce(ClientOptions) -> HubConnector,
    max_reply_len: usize,
) {
    let RunHandover {
        mut conn,
        mut write,
        arguments,
    } = handover;
    let (attach_within, options, request) = match parse(&arguments, max_reply_len) {
        Ok(parsed) => parsed,
        Err(error) => {
            tracing::warn!(%error, "a whole run asked for with arguments not understood: dropped");
            return;
        }
    };
    let mut connector = connect(options);
    // Answered as an attach is: the client fails as it would have alone.
    let attached = tokio::select! {
        attached = connector.attach_first(Deadline::after(attach_within)) => attached,
        // Interrupted while the agent is waited for: nothing was started.
        said = client_says(&mut conn) => {
            if let Said::GiveUp = said {
                let _ = write.write_all(&relay::abandoned_line(&[])).await;
            }
            return;
        }
    };
    let answer = match attached {
        Ok(answer) => answer,
        Err(error) => {
            let failure = LinkFailure::from_error(&error);
            let desc = serde_json::to_string(&failure).expect("plain data serializes");
            wire::own_error(wire::LINK_FAILURE_CLASS, &desc, None)
        }
    };
    if write.write_all(&answer).await.is_err() || wire::attach_outcome(&answer).is_err() {
        return;
    }
    let engine = SessionOptions {
        announce_start: true,
        ..SessionOptions::default()
    };
    let mut session = Session::new(connector, engine);
    let (requests, mut incoming) = mpsc::channel(1);
    requests
        .try_send(request)
        .expect("an empty channel takes one request");
    let (relayed, mut outgoing) = mpsc::unbounded_channel::<Vec<u8>>();
    // The client cannot take more output: the engine is told so at the
    // next chunk, and stops the program.
    let refused = AtomicBool::new(false);
    let settling = session.channel().settling();
    let end = {
        let served = session.serve(&mut incoming, |reply| {
            if refused.load(Ordering::Relaxed) && matches!(reply.outcome, Ok(Outcome::Chunk { .. })) {
                return Err(io::Error::from(io::ErrorKind::BrokenPipe));
            }
            relayed
                .send(relay::reply_line(&reply))
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
        });
        tokio::pin!(served);
        let mut served_all = false;
        loop {
            // What the run has said goes out first, and the client is
            // heard, before the run goes on: no more of its output waits
            // here than one step of the engine makes, however slowly the
            // client reads.
            tokio::select! {
                biased;
                Some(line) = outgoing.recv() => {
                    if write.write_all(&line).await.is_err() {
                        break End::Gone;
                    }
                }
                said = client_says(&mut conn) => match said {
                    Said::Refuse => refused.store(true, Ordering::Relaxed),
                    // What the agent keeps for a step in flight (a file's
                    // handle, a helper's pid) is awaited, for the give-up
                    // to undo, as the client's own engine would; unless
                    // the client leaves first (a second signal).
                    Said::GiveUp if served_all => break End::GivenUp,
                    Said::GiveUp => tokio::select! {
                        _ = settling.settle(&mut served) => break End::GivenUp,
                        _ = client_says(&mut conn) => break End::Gone,
                    },
                    Said::Gone => break End::Gone,
                },
                // Ends only once `requests` is gone, which the client's
                // leaving decides.
                () = &mut served, if !served_all => served_all = true,
            }
        }
    };
    drop(requests);
    // What the run still owes the client was its before the give-up.
    while let Ok(line) = outgoing.try_recv() {
        if write.write_all(&line).await.is_err() {
            break;
        }
    }
    // The rest of a followed program's output, for a client that asked
    // to give up (one gone takes none): kept here until the end is known,
    // so bounded; past the bound the engine is told the client refuses it.
    let given_up = matches!(end, End::GivenUp);
    let mut kept = 0;
    let left = session.give_up(|reply| {
        let line = relay::reply_line(&reply);
        kept += line.len();
        if !given_up || kept > GIVE_UP_OUTPUT_LIMIT {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        let _ = relayed.send(line);
        Ok(())
    });
    let abandoned = left.await;
    session.close().await;
    if matches!(end, End::GivenUp) {
        let _ = write_rest(&mut write, &mut outgoing).await;
        let _ = write.write_all(&relay::abandoned_line(&abandoned)).await;
    } else if !abandoned.is_empty() {
        tracing::info!(?abandoned, "a client left while its run was in flight: given up");
    }
}

fn parse(arguments: &[u8], max_reply_len: usize) -> Result<(Duration, ClientOptions, Request), String> {
    let arguments: RunArguments = serde_json::from_slice(arguments).map_err(|e| e.to_string())?;
    let (id, run) = relay::parse_run(arguments.request.get().as_bytes()).map_err(|e| e.to_string())?;
    let options = ClientOptions {
        handshake_timeout: Duration::from_millis(arguments.handshake_ms),
        reply_timeout: Duration::from_millis(arguments.reply_ms),
        max_reply_len,
        ..ClientOptions::default()
    };
    Ok((
        Duration::from_millis(arguments.timeout_ms),
        options,
        Request::run(id, run),
    ))
}

/// What a client of a whole run may say while it runs.
enum Said {
    Refuse,
    GiveUp,
    /// It left, or said what no client of ours says.
    Gone,
}

async fn client_says(conn: &mut Connection<OwnedReadHalf, LineCodec>) -> Said {
    match conn.read_frame().await {
        Ok(Frame::Line(line)) if line.trim_ascii() == GIVE_UP.trim_ascii() => Said::GiveUp,
        Ok(Frame::Line(line)) if line.trim_ascii() == REFUSE.trim_ascii() => Said::Refuse,
        _ => Said::Gone,
    }
}

async fn write_rest(
    write: &mut OwnedWriteHalf,
    outgoing: &mut mpsc::UnboundedReceiver<Vec<u8>>,
) -> io::Result<()> {
    while let Ok(line) = outgoing.try_recv() {
        write.write_all(&line).await?;
    }
    Ok(())
}
