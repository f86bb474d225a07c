//! Runs through a go-between that goes away under them while the agent
//! goes on, as libvirtd does when it stops (see
//! `Connector::outlives_disconnect`): the engine, and the wait for a
//! program's exit, against a scripted agent; and a followed run through a
//! go-between that keeps dropping connections, against the real qemu-ga
//! (the agent did some of the requests whose connection dropped and not
//! others, and the output comes whole all the same).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use virtomate_protocol::follow::Stream;
use virtomate_protocol::qga::GuestExec;
use virtomate_protocol::session::{Outcome, Reply, Request, RunRequest, Session, SessionOptions};
use virtomate_protocol::{
    wait_for_exit_on, Channel, ClientOptions, Connector, Error, HoldPolicy, PollSchedule, QgaClient,
};

use crate::host_agent::HostAgent;

/// Connections to an agent through a go-between that may drop them while
/// the agent goes on.
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
async fn run_over(socket: PathBuf) -> Reply {
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
    let (_dir, socket) = scripted_agent(SecondPoll::Exited);
    let mut channel = Channel::new(GoBetween(socket));
    // Started, then polled, as a copy's helper program is.
    let exec = GuestExec::new("/bin/true", Vec::<String>::new());
    assert_eq!(channel.guest_exec(&exec).await.unwrap().pid, 7);
    let waited = wait_for_exit_on(&mut channel, 7, PollSchedule::default(), HoldPolicy::default()).await;
    assert_eq!(waited.unwrap().status.exitcode, Some(0));

    let (_dir, socket) = scripted_agent(SecondPoll::Forgotten);
    let mut channel = Channel::new(GoBetween(socket));
    assert_eq!(channel.guest_exec(&exec).await.unwrap().pid, 7);
    let waited = wait_for_exit_on(&mut channel, 7, PollSchedule::default(), HoldPolicy::default()).await;
    assert!(matches!(waited, Err(Error::Disconnected)), "{waited:?}");
}

/// The requests the go-between may drop once the program runs: the
/// reads of its output, the credits (written, then flushed), the chunks'
/// opens and closes (those of the clean-up too) and the polls.
const DROPPABLE: [&str; 6] = [
    "guest-file-read",
    "guest-file-write",
    "guest-file-flush",
    "guest-file-open",
    "guest-exec-status",
    "guest-file-close",
];

/// What the go-between counts, shared by its connections.
#[derive(Default)]
struct Counts {
    /// `guest-exec`s seen: the second starts the program, the third is
    /// the clean-up's, which is not made again and so is left alone.
    execs: AtomicU32,
    /// Requests of each droppable kind seen while the program runs.
    seen: [AtomicU32; DROPPABLE.len()],
    dropped: AtomicU32,
}

/// A go-between at a socket of its own in `dir`, relaying to `agent`, that
/// drops the connection under some requests of each droppable kind while
/// the program runs: in turn after the agent has answered it (done, the
/// reply lost: a credit then comes twice) and before passing it on (not
/// done).
fn go_between(dir: &Path, agent: PathBuf) -> (PathBuf, Arc<Counts>) {
    let socket = dir.join("go-between.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let counts = Arc::new(Counts::default());
    let shared = counts.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(upstream) = UnixStream::connect(&agent).await else {
                return;
            };
            // One connection at a time, as QEMU's chardev serves them.
            relay(client, upstream, &shared).await;
        }
    });
    (socket, counts)
}

/// Relays request lines and their replies, one after the other, until
/// either side closes or a request is dropped.
async fn relay(client: UnixStream, upstream: UnixStream, counts: &Counts) {
    let (client_read, mut client_write) = client.into_split();
    let (agent_read, mut agent_write) = upstream.into_split();
    let (mut requests, mut replies) = (BufReader::new(client_read), BufReader::new(agent_read));
    let mut line = Vec::new();
    loop {
        line.clear();
        if requests.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let start = line.iter().position(|&b| b != 0xFF).unwrap_or(line.len());
        let execute = serde_json::from_slice::<Value>(&line[start..])
            .ok()
            .and_then(|request| request["execute"].as_str().map(str::to_owned));
        let Some(execute) = execute else {
            // No request (a lone delimiter): nothing comes back.
            if agent_write.write_all(&line).await.is_err() {
                return;
            }
            continue;
        };
        if execute == "guest-exec" {
            counts.execs.fetch_add(1, Ordering::SeqCst);
        }
        let kind = DROPPABLE.iter().position(|kind| *kind == execute);
        let seen = match kind {
            Some(kind) if counts.execs.load(Ordering::SeqCst) == 2 => {
                counts.seen[kind].fetch_add(1, Ordering::SeqCst) + 1
            }
            _ => 1,
        };
        // Of the credits and opens (a few) the 3rd, 9th, 15th... once the
        // agent did it, the 6th, 12th... before; of the reads and polls
        // (hundreds) so every 20th. A poll only before: the end it tells
        // once is lost with its reply, and the run with it.
        let every = if matches!(kind, Some(0 | 4)) { 20 } else { 3 };
        let poll = execute == "guest-exec-status";
        let (drop_here, done_first) = (seen % every == 0, seen % (2 * every) == every && !poll);
        if drop_here && !done_first {
            counts.dropped.fetch_add(1, Ordering::SeqCst);
            return;
        }
        if agent_write.write_all(&line).await.is_err() {
            return;
        }
        // After a leading delimiter (the handshake's), the agent may first
        // answer a parse error: its reply is the line with the delimiter.
        let mut reply = Vec::new();
        loop {
            let at = reply.len();
            if replies.read_until(b'\n', &mut reply).await.unwrap_or(0) == 0 {
                return;
            }
            if start == 0 || reply[at..].contains(&0xFF) {
                break;
            }
        }
        if drop_here {
            counts.dropped.fetch_add(1, Ordering::SeqCst);
            return;
        }
        if client_write.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// Before: the run failed with `Error::Disconnected` at the first dropped
/// read. The program writes several chunk files' worth, so that credits
/// and opens are dropped too, and each chunk's credit is needed.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs qemu-ga on the host"]
async fn a_followed_run_whose_connections_keep_dropping_comes_whole_in_order_and_leaves_nothing() {
    let agent = HostAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let (socket, counts) = go_between(dir.path(), agent.socket());
    let lines = 4_000_000;

    let mut session = Session::new(GoBetween(socket), SessionOptions::default());
    let (requests, mut incoming) = tokio::sync::mpsc::channel(1);
    let mut run = RunRequest::new("seq", ["1".to_owned(), lines.to_string()]);
    run.follow = true;
    requests.send(Request::run(1.into(), run)).await.unwrap();
    drop(requests);
    let (mut stdout, mut end) = (Vec::new(), None);
    session
        .serve(&mut incoming, |reply| {
            match reply.outcome {
                Ok(Outcome::Chunk {
                    stream: Stream::Stdout,
                    bytes,
                }) => stdout.extend_from_slice(&bytes),
                other => end = Some(other),
            }
            Ok(())
        })
        .await;
    session.close().await;

    match end {
        Some(Ok(Outcome::Exited { status, .. })) => assert_eq!(status.exitcode, Some(0), "{status:?}"),
        other => panic!("the run ends well: {other:?}"),
    }
    let expected: String = (1..=lines).map(|n| format!("{n}\n")).collect();
    assert!(
        stdout == expected.as_bytes(),
        "every line once, in order: {} bytes of {}",
        stdout.len(),
        expected.len()
    );
    let dropped = counts.dropped.load(Ordering::SeqCst);
    let credits = counts.seen[1].load(Ordering::SeqCst);
    assert!(
        dropped >= 10 && credits >= 4,
        "connections dropped under the run: {dropped}, credits: {credits}"
    );
    let left: Vec<_> = std::fs::read_dir(agent.dir())
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("virtomate-"))
        .collect();
    assert!(
        left.is_empty(),
        "left in the agent's temporary directory: {left:?}"
    );
}
