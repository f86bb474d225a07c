//! Arbitrary bytes as everything an untrusted agent says to `QgaClient`,
//! which runs `guest-exec-status` once and then `wait_for_exit`. Whatever
//! arrives, the client must return, never panic or hang.
//!
//! The first input byte picks the mode:
//!
//! * even: the rest of the input is the agent's whole output, played at
//!   once; the requests are read and dropped. This exercises the
//!   handshake, which can never succeed as the sync id is random.
//! * odd: a scripted agent answers every `guest-sync-delimited` with the
//!   id from the request; whenever the client then waits, it gets the next
//!   line of the input, in which `@ID` stands for the id of the latest
//!   `guest-exec-status` request. This reaches the decoding of
//!   `GuestExecStatusReply` (Base64, integers, shapes).
//!
//! The clock is paused: "the client waits" is "10 ms pass", and a client
//! stuck although it was given everything times out at once instead of
//! hanging the fuzzer.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf};
use tokio::time::timeout;
use virtomate_protocol::qga::GuestExecStatus;
use virtomate_protocol::{ClientOptions, Error, PollSchedule, QgaClient};

const PLACEHOLDER: &[u8] = b"@ID";
const IDLE: Duration = Duration::from_millis(10);

async fn client(stream: DuplexStream) -> Result<(), Error> {
    let options = ClientOptions {
        handshake_timeout: Duration::from_secs(1),
        reply_timeout: Duration::from_secs(1),
        max_reply_len: 4096,
        ..ClientOptions::default()
    };
    let mut agent = QgaClient::new(stream, options);
    let first = agent.execute(&GuestExecStatus { pid: 1 }).await;
    let finished = agent.wait_for_exit(1, PollSchedule::BACK_TO_BACK).await;
    if let Ok(finished) = &finished {
        assert!(finished.status.exited);
        assert!(finished.polls >= 1);
    }
    first.and(finished).map(drop)
}

async fn drain(mut requests: ReadHalf<DuplexStream>) {
    let mut sink = [0; 1024];
    while let Ok(1..) = requests.read(&mut sink).await {}
}

/// Plays `output` as the agent's every byte, whatever was asked.
async fn raw_agent(stream: DuplexStream, output: &[u8]) {
    let (requests, mut replies) = tokio::io::split(stream);
    let play = async {
        let _ = replies.write_all(output).await;
        let _ = replies.shutdown().await;
    };
    tokio::join!(play, drain(requests));
}

/// Answers the handshake properly; whenever the client waits for a reply,
/// sends it the next line of `lines`.
async fn scripted_agent(stream: DuplexStream, lines: &[u8]) {
    let (requests, mut replies) = tokio::io::split(stream);
    let mut requests = BufReader::new(requests);
    let mut lines = lines.split_inclusive(|&b| b == b'\n');
    let mut request = Vec::new();
    let mut status_id = 0;
    loop {
        // With the clock paused this fires as soon as both sides wait,
        // long before the client's own timeout.
        match timeout(IDLE, requests.read_until(b'\n', &mut request)).await {
            Ok(Ok(1..)) => {}
            Ok(_) => return,
            Err(_idle) => {
                let Some(line) = lines.next() else {
                    let _ = replies.shutdown().await;
                    return drain(requests.into_inner()).await;
                };
                if replies.write_all(&replace_id(line, status_id)).await.is_err() {
                    return;
                }
                continue;
            }
        }
        let json = request.strip_prefix(&[0xFF]).unwrap_or(&request);
        let parsed: serde_json::Value = serde_json::from_slice(json).expect("the client sends JSON");
        let id = parsed["id"].as_u64().expect("every request carries an id");
        match parsed["execute"].as_str() {
            Some("guest-sync-delimited") => {
                let reply = [&[0xFF][..], format!("{{\"return\": {id}}}\n").as_bytes()].concat();
                if replies.write_all(&reply).await.is_err() {
                    return;
                }
            }
            Some("guest-exec-status") => status_id = id,
            other => panic!("unexpected request {other:?}"),
        }
        request.clear();
    }
}

fn replace_id(line: &[u8], id: u64) -> Vec<u8> {
    let id = id.to_string();
    let mut out = Vec::with_capacity(line.len());
    let mut rest = line;
    while !rest.is_empty() {
        if rest.starts_with(PLACEHOLDER) {
            out.extend_from_slice(id.as_bytes());
            rest = &rest[PLACEHOLDER.len()..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

fuzz_target!(|input: &[u8]| {
    let [mode, data @ ..] = input else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    let (ours, theirs) = tokio::io::duplex(64 << 10);
    runtime.block_on(async {
        let agent = async {
            if mode % 2 == 0 {
                raw_agent(theirs, data).await
            } else {
                scripted_agent(theirs, data).await
            }
        };
        let (outcome, ()) = tokio::join!(client(ours), agent);
        // Either agent ends with a disconnect once the input is used up,
        // so a timeout means the client ignored what it was given.
        assert!(!matches!(outcome, Err(Error::Timeout { .. })), "{outcome:?}");
    });
});
