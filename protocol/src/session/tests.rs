//! The engine, and the wait for a program's exit, over a go-between that
//! goes away under a run (see [`Connector::outlives_disconnect`]), against
//! a scripted agent.

use std::path::PathBuf;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::{Outcome, Request, RunRequest, Session, SessionOptions};
use crate::{ClientOptions, Connector, Error, QgaClient};

/// Connections to the scripted agent, as through a go-between that may
/// drop them while the agent goes on.
struct GoBetween(PathBuf);

impl Connector for GoBetween {
    type Agent = QgaClient;

    async fn connect(&mut self) -> Result<QgaClient, Error> {
        QgaClient::connect(&self.0, ClientOptions::default()).await
    }

    fn outlives_disconnect(&self) -> bool {
        true
    }
}

/// What the agent answers a poll on its second connection.
enum SecondPoll {
    Exited,
    /// The first poll's lost reply was the end, which the agent forgets.
    Forgotten,
    /// Dropped too, as on every connection after (a go-between in a crash
    /// loop).
    Dropped,
}

/// An agent whose first connection starts pid 7 and drops under the poll
/// that follows; its second answers that poll as `second` says.
fn scripted_agent(second: SecondPoll) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("qga.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    tokio::spawn(async move {
        for connection in 0.. {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let poll = match (connection, &second) {
                (0, _) | (_, SecondPoll::Dropped) => None,
                (_, SecondPoll::Exited) => Some(json!({"return": {"exited": true, "exitcode": 0}})),
                (_, SecondPoll::Forgotten) => {
                    Some(json!({"error": {"class": "GenericError", "desc": "Invalid parameter 'pid'"}}))
                }
            };
            serve(stream, poll).await;
        }
    });
    (dir, socket)
}

/// Answers the handshake and `guest-exec`; a poll with `poll`, or, where
/// there is none, by dropping the connection.
async fn serve(stream: UnixStream, poll: Option<Value>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).split(b'\n');
    while let Ok(Some(line)) = lines.next_segment().await {
        let start = line.iter().position(|&b| b != 0xFF).unwrap_or(line.len());
        let Ok(request) = serde_json::from_slice::<Value>(&line[start..]) else {
            continue;
        };
        let mut answer = match request["execute"].as_str() {
            Some("guest-sync-delimited") => {
                let mut sync = vec![0xFF];
                sync.extend(json!({"return": request["arguments"]["id"]}).to_string().bytes());
                sync
            }
            Some("guest-exec") => json!({"return": {"pid": 7}}).to_string().into_bytes(),
            Some("guest-exec-status") => match &poll {
                Some(answer) => answer.to_string().into_bytes(),
                None => return,
            },
            _ => json!({"return": {}}).to_string().into_bytes(),
        };
        answer.push(b'\n');
        if write.write_all(&answer).await.is_err() {
            return;
        }
    }
}

/// The one reply to a run of `/bin/true` over `socket`.
async fn run_over(socket: PathBuf) -> super::Reply {
    let mut session = Session::new(GoBetween(socket), SessionOptions::default());
    let (requests, mut incoming) = tokio::sync::mpsc::channel(1);
    let run = RunRequest::new("/bin/true", Vec::<String>::new());
    requests.send(Request::run(json!(1), run)).await.unwrap();
    drop(requests);
    let mut replies = Vec::new();
    session
        .serve(&mut incoming, |reply| {
            replies.push(reply);
            Ok(())
        })
        .await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    replies.pop().unwrap()
}

#[tokio::test]
async fn a_poll_whose_connection_dropped_is_asked_again_on_a_new_one() {
    let (_dir, socket) = scripted_agent(SecondPoll::Exited);
    let reply = run_over(socket).await;
    match reply.outcome {
        Ok(Outcome::Exited { pid: 7, status, .. }) => assert_eq!(status.exitcode, Some(0)),
        other => panic!("the run goes on to its end: {other:?}"),
    }
}

#[tokio::test]
async fn an_end_lost_with_the_dropped_reply_is_told_as_the_connection_lost() {
    let (_dir, socket) = scripted_agent(SecondPoll::Forgotten);
    let reply = run_over(socket).await;
    match reply.outcome {
        Err(failure) => assert!(matches!(failure.error, Error::Disconnected), "{failure:?}"),
        other => panic!("the end is lost: {other:?}"),
    }
}

#[tokio::test]
async fn polls_that_keep_dropping_are_given_up_on_as_the_connection_lost() {
    let (_dir, socket) = scripted_agent(SecondPoll::Dropped);
    let given_up = tokio::time::timeout(std::time::Duration::from_secs(10), run_over(socket));
    let reply = given_up.await.expect("not polled forever");
    match reply.outcome {
        Err(failure) => assert!(matches!(failure.error, Error::Disconnected), "{failure:?}"),
        other => panic!("given up on: {other:?}"),
    }
}

#[tokio::test]
async fn a_wait_for_exit_asks_again_on_a_new_connection_or_tells_the_end_lost() {
    use crate::{wait_for_exit_on, Channel, HoldPolicy, PollSchedule};
    let (_dir, socket) = scripted_agent(SecondPoll::Exited);
    let mut channel = Channel::new(GoBetween(socket));
    // Started, then polled, as a copy's helper program is.
    let exec = crate::qga::GuestExec::new("/bin/true", Vec::<String>::new());
    assert_eq!(channel.guest_exec(&exec).await.unwrap().pid, 7);
    let waited = wait_for_exit_on(&mut channel, 7, PollSchedule::default(), HoldPolicy::default()).await;
    assert_eq!(waited.unwrap().status.exitcode, Some(0));

    let (_dir, socket) = scripted_agent(SecondPoll::Forgotten);
    let mut channel = Channel::new(GoBetween(socket));
    assert_eq!(channel.guest_exec(&exec).await.unwrap().pid, 7);
    let waited = wait_for_exit_on(&mut channel, 7, PollSchedule::default(), HoldPolicy::default()).await;
    assert!(matches!(waited, Err(Error::Disconnected)), "{waited:?}");
}
