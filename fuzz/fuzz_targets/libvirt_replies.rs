//! Arbitrary bytes as everything an untrusted libvirtd says to
//! `LibvirtClient`, which runs `handshake` (auth-list, connect-open), then
//! `lookup_domain_by_name` and `agent_command`; then, on the same
//! connection, `LibvirtAgent` runs `guest-exec-status` and `wait_for_exit`
//! (agent replies and libvirt's wrapping of agent errors) and
//! `LibvirtMonitor` runs `query-status`; last come `lib_version` and
//! `close`. Whatever arrives, each call must return, never panic or hang.
//!
//! The first input byte picks the mode:
//!
//! * even: the rest of the input is the daemon's whole output, played at
//!   once; the requests are read and dropped. This exercises the length
//!   word and header checks (the client's serials count from 0, so even a
//!   whole conversation can be played this way).
//! * odd: a scripted daemon reads the requests; whenever the client then
//!   waits, it sends it the next chunk of the input as a message built
//!   for the latest call: same program, version, procedure and serial,
//!   type REPLY, so that the client takes it as its reply. This reaches
//!   the XDR decoders of every reply and of `remote_error`.
//!
//! A chunk is `SEL LEN_HI LEN_LO PAYLOAD[LEN]` (a short last chunk takes
//! what is left). SEL's bits 0-1 are the status word (0 OK, 1 ERROR,
//! 2 CONTINUE, 3 unknown); bit 2 (0x04) takes one from the serial (a
//! stale reply, skipped); bit 3 (0x08) makes it a MESSAGE and bit 4 (0x10)
//! moves it to the keepalive program's PING procedure (0x18: a ping the
//! client answers, then keeps waiting; 0x10 alone: a reply for another
//! procedure); bit 5 (0x20) sends PAYLOAD as it is, without length word
//! and header. Bits 6-7 are ignored. `fuzz/seeds/make_libvirt_replies.py`
//! writes the seeds and shows the format.
//!
//! Calls after the handshake run even when an earlier one failed (the
//! domain is then a stand-in), so that what an error leaves behind (an
//! over-long message being dropped, a lost framing) is exercised too.
//!
//! The clock is paused: "the client waits" is "10 ms pass", and a client
//! stuck although it was given everything times out at once instead of
//! hanging the fuzzer. Timeouts are an hour, so that thousands of chunks
//! within one call fit in one deadline.

#![no_main]

use std::path::Path;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf};
use tokio::time::timeout;
use virtomate_protocol::libvirt::packet::{
    self, Header, MessageType, PacketCodec, Status, KEEPALIVE_PROC_PING, KEEPALIVE_PROGRAM, MAX_PACKET_LEN,
    REMOTE_PROC_AUTH_LIST, REMOTE_PROGRAM,
};
use virtomate_protocol::libvirt::{
    LibvirtAgent, LibvirtClient, LibvirtMonitor, RemoteDomain, AGENT_TIMEOUT_DEFAULT,
};
use virtomate_protocol::qga::GuestExecStatus;
use virtomate_protocol::{wait_for_exit, Agent, ClientOptions, Connection, Deadline, Error, PollSchedule};

const IDLE: Duration = Duration::from_millis(10);
const LONG: Duration = Duration::from_secs(3600);
/// Small, so that over-long replies (and dropping them) are cheap to reach.
const MAX_REPLY_LEN: usize = 1024;

const SEL_STATUS: u8 = 0x03;
const SEL_STALE: u8 = 0x04;
const SEL_MESSAGE: u8 = 0x08;
const SEL_KEEPALIVE: u8 = 0x10;
const SEL_RAW: u8 = 0x20;

fn no_timeout<T: std::fmt::Debug>(call: &str, outcome: &Result<T, Error>) {
    // Either daemon ends with a disconnect once the input is used up, so
    // a timeout means the client ignored what it was given.
    assert!(
        !matches!(outcome, Err(Error::Timeout { .. })),
        "{call}: {outcome:?}"
    );
}

async fn client(stream: DuplexStream) {
    let options = ClientOptions {
        handshake_timeout: LONG,
        reply_timeout: LONG,
        max_reply_len: MAX_REPLY_LEN,
        ..ClientOptions::default()
    };
    let socket = Path::new("/run/libvirt/libvirt-sock");
    let opened = LibvirtClient::handshake(stream, socket, "qemu:///system", &options).await;
    no_timeout("handshake", &opened);
    let Ok(mut libvirt) = opened else {
        return;
    };
    let found = libvirt.lookup_domain_by_name("d").await;
    no_timeout("lookup", &found);
    let domain = found.unwrap_or_else(|_| RemoteDomain {
        name: "d".into(),
        uuid: [0; 16],
        id: 1,
    });
    let deadline = Deadline::after(LONG);
    let reply = libvirt
        .agent_command(
            &domain,
            r#"{"execute":"guest-ping"}"#,
            AGENT_TIMEOUT_DEFAULT,
            deadline,
        )
        .await;
    no_timeout("agent command", &reply);

    let mut agent = LibvirtAgent::new(libvirt, domain.clone(), &options);
    no_timeout(
        "guest-exec-status",
        &agent.execute(&GuestExecStatus { pid: 1 }).await,
    );
    let finished = wait_for_exit(&mut agent, 1, PollSchedule::BACK_TO_BACK).await;
    no_timeout("wait for exit", &finished);
    let mut qemu = LibvirtMonitor::new(agent.into_client(), domain, &options);
    no_timeout("query-status", &qemu.execute_json("query-status", None).await);
    let mut libvirt = qemu.into_client();

    no_timeout("lib version", &libvirt.lib_version().await);
    no_timeout("close", &libvirt.close().await);
}

async fn drain(mut requests: ReadHalf<DuplexStream>) {
    let mut sink = [0; 1024];
    while let Ok(1..) = requests.read(&mut sink).await {}
}

/// Plays `output` as the daemon's every byte, whatever was asked.
async fn raw_daemon(stream: DuplexStream, output: &[u8]) {
    let (requests, mut replies) = tokio::io::split(stream);
    let play = async {
        let _ = replies.write_all(output).await;
        let _ = replies.shutdown().await;
    };
    tokio::join!(play, drain(requests));
}

/// Splits `input` into chunks: selector, big-endian 16-bit length, payload.
fn chunks(mut input: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (&sel, rest) = input.split_first()?;
        let (len, rest) = match rest {
            [hi, lo, rest @ ..] => (usize::from(u16::from_be_bytes([*hi, *lo])), rest),
            _ => (0, &[][..]),
        };
        let (payload, rest) = rest.split_at(len.min(rest.len()));
        input = rest;
        Some((sel, payload))
    })
}

/// The message chunk `(sel, payload)` makes for a daemon answering `call`.
fn message(call: &Header, sel: u8, payload: &[u8]) -> Vec<u8> {
    if sel & SEL_RAW != 0 {
        return payload.to_vec();
    }
    let mut header = Header {
        kind: MessageType::Reply,
        status: Status::from_u32(u32::from(sel & SEL_STATUS)),
        ..*call
    };
    if sel & SEL_STALE != 0 {
        header.serial = header.serial.wrapping_sub(1);
    }
    if sel & SEL_MESSAGE != 0 {
        header.kind = MessageType::Message;
    }
    if sel & SEL_KEEPALIVE != 0 {
        header.program = KEEPALIVE_PROGRAM;
        header.procedure = KEEPALIVE_PROC_PING;
    }
    packet::encode(&header, payload).expect("a payload from the input fits a message")
}

/// Reads the client's calls; whenever the client waits, sends it the next
/// chunk of `input` built for the latest call.
async fn scripted_daemon(stream: DuplexStream, input: &[u8]) {
    let (requests, mut replies) = tokio::io::split(stream);
    let mut requests = Connection::new(requests, PacketCodec::new(MAX_PACKET_LEN), None);
    let mut chunks = chunks(input);
    // The client's first call, should it wait before sending anything.
    let mut call = Header::call(REMOTE_PROGRAM, REMOTE_PROC_AUTH_LIST, 0);
    loop {
        // With the clock paused this fires as soon as both sides wait,
        // long before the client's own timeout.
        match timeout(IDLE, requests.read_frame()).await {
            Ok(Ok(request)) => {
                // Calls are answered; pongs need nothing.
                if request.header.kind == MessageType::Call {
                    call = request.header;
                }
            }
            Ok(Err(Error::Disconnected)) => return,
            Ok(Err(e)) => panic!("the client sent a malformed message: {e:?}"),
            Err(_idle) => {
                let Some((sel, payload)) = chunks.next() else {
                    let _ = replies.shutdown().await;
                    let mut requests = requests;
                    while requests.read_frame().await.is_ok() {}
                    return;
                };
                if replies.write_all(&message(&call, sel, payload)).await.is_err() {
                    return;
                }
            }
        }
    }
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
        let daemon = async {
            if mode % 2 == 0 {
                raw_daemon(theirs, data).await
            } else {
                scripted_daemon(theirs, data).await
            }
        };
        tokio::join!(client(ours), daemon);
    });
});
