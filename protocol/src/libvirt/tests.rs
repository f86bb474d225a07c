//! [`LibvirtClient`] against a fake libvirtd on an in-memory stream, with
//! the bytes virsh exchanged with libvirtd 9.0.0 (docs/libvirt-notes.md).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::time::Instant;

use super::packet::*;
use super::xdr::{Decoder, Encoder};
use super::*;
use crate::qmp::QueryStatus;
use crate::{ClientOptions, Connection, Deadline, Direction, Error, Phase, Trace};

use crate::wire::hex::unhex as hex;

/// A captured message with its serial replaced.
fn with_serial(mut message: Vec<u8>, serial: u32) -> Vec<u8> {
    message[20..24].copy_from_slice(&serial.to_be_bytes());
    message
}

// Calls virsh sent and libvirtd's replies, in order (serials 0, 2, 6, 7, 9).
const AUTH_LIST_CALL: &str = "0000001c200080860000000100000042000000000000000000000000";
const AUTH_LIST_REPLY: &str = "000000242000808600000001000000420000000100000000000000000000000100000000";
const OPEN_CALL: &str = concat!(
    "00000038200080860000000100000001000000000000000200000000000000010000000e71656d753a2f2f2f73797374",
    "656d000000000000",
);
const OPEN_REPLY: &str = "0000001c200080860000000100000001000000010000000200000000";
const LOOKUP_CALL: &str =
    "000000302000808600000001000000170000000000000006000000000000000e766972746f6d6174652d746573740000";
const LOOKUP_REPLY: &str = concat!(
    "000000442000808600000001000000170000000100000006000000000000000e766972746f6d6174652d746573740000",
    "ae1fa45e99864911a717236321429e8c00000001",
);
const AGENT_CALL: &str = concat!(
    "000000682000808700000001000000030000000000000007000000000000000e766972746f6d6174652d746573740000",
    "ae1fa45e99864911a717236321429e8c00000001000000187b2265786563757465223a2267756573742d70696e67227d",
    "ffffffff00000000",
);
const AGENT_REPLY: &str = concat!(
    "00000034200080870000000100000003000000010000000700000000000000010000000d7b2272657475726e223a7b7d",
    "7d000000",
);
/// The QEMU_PROC_DOMAIN_MONITOR_COMMAND call for query-status as virsh
/// sent it, with our serial (3) and the domain's id (1): the domain, the
/// command (26 bytes and 2 of padding), flags 0 (QMP).
const MONITOR_CALL: &str = "00000068 20008087 00000001 00000001 00000000 00000003 00000000
    0000000e 766972746f6d6174652d74657374 0000 ae1fa45e99864911a717236321429e8c 00000001
    0000001a 7b2265786563757465223a2271756572792d737461747573227d 0000
    00000000";
/// QEMU's replies as libvirtd 9.0.0 passed them on, libvirt's ids included.
const STATUS_REPLY: &str =
    r#"{"return":{"status":"running","singlestep":false,"running":true},"id":"libvirt-411"}"#;
const NOT_FOUND_REPLY: &str = concat!(
    r#"{"id":"libvirt-412","error":{"class":"CommandNotFound","#,
    r#""desc":"The command no-such-command has not been found"}}"#
);
const CLOSE_CALL: &str = "0000001c200080860000000100000002000000000000000900000000";
const CLOSE_REPLY: &str = "0000001c200080860000000100000002000000010000000900000000";

/// The error reply to DOMAIN_LOOKUP_BY_NAME("nosuch"), serial 3, as
/// described byte by byte in the notes.
fn no_domain_reply(serial: u32) -> Vec<u8> {
    let header = Header {
        kind: MessageType::Reply,
        status: Status::Error,
        ..Header::call(REMOTE_PROGRAM, REMOTE_PROC_DOMAIN_LOOKUP_BY_NAME, serial)
    };
    let bytes = encode(&header, &super::remote::tests::no_domain_error_payload()).unwrap();
    assert_eq!(bytes.len(), 200);
    bytes
}

fn reply(call: &Header, payload: &[u8]) -> Vec<u8> {
    let header = Header {
        kind: MessageType::Reply,
        ..*call
    };
    encode(&header, payload).unwrap()
}

/// QEMU's reply to the monitor command in `call`: a status for
/// query-status, an error for anything else.
fn monitor_reply(call: &Packet) -> Vec<u8> {
    let mut args = Decoder::new(call.payload());
    super::remote::RemoteDomain::decode(&mut args).unwrap();
    let command: serde_json::Value = serde_json::from_str(args.string(STRING_MAX).unwrap()).unwrap();
    let result = match command["execute"].as_str() {
        Some("query-status") => STATUS_REPLY,
        _ => NOT_FOUND_REPLY,
    };
    let mut ret = Encoder::new();
    ret.string(result, STRING_MAX).unwrap();
    reply(&call.header, &ret.into_bytes())
}

/// Answers like libvirtd 9.0.0 with one running domain, virtomate-test.
fn libvirtd(call: &Packet) -> Vec<Vec<u8>> {
    let h = &call.header;
    let serial = h.serial;
    let message = match (h.program, h.procedure) {
        (REMOTE_PROGRAM, REMOTE_PROC_AUTH_LIST) => with_serial(hex(AUTH_LIST_REPLY), serial),
        (REMOTE_PROGRAM, REMOTE_PROC_CONNECT_OPEN) => with_serial(hex(OPEN_REPLY), serial),
        (REMOTE_PROGRAM, REMOTE_PROC_DOMAIN_LOOKUP_BY_NAME) if call.payload().ends_with(b"test\0\0") => {
            with_serial(hex(LOOKUP_REPLY), serial)
        }
        (REMOTE_PROGRAM, REMOTE_PROC_DOMAIN_LOOKUP_BY_UUID) => {
            let mut dom = hex(LOOKUP_REPLY);
            dom[12..16].copy_from_slice(&REMOTE_PROC_DOMAIN_LOOKUP_BY_UUID.to_be_bytes());
            with_serial(dom, serial)
        }
        (REMOTE_PROGRAM, REMOTE_PROC_DOMAIN_LOOKUP_BY_NAME) => no_domain_reply(serial),
        (REMOTE_PROGRAM, REMOTE_PROC_CONNECT_GET_LIB_VERSION) => reply(h, &hex("0000000000895440")),
        // Shut off (5), destroyed (2).
        (REMOTE_PROGRAM, REMOTE_PROC_DOMAIN_GET_STATE) => reply(h, &hex("0000000500000002")),
        (QEMU_PROGRAM, QEMU_PROC_DOMAIN_AGENT_COMMAND) => with_serial(hex(AGENT_REPLY), serial),
        (QEMU_PROGRAM, QEMU_PROC_DOMAIN_MONITOR_COMMAND) => monitor_reply(call),
        (REMOTE_PROGRAM, REMOTE_PROC_CONNECT_CLOSE) => with_serial(hex(CLOSE_REPLY), serial),
        _ => return vec![],
    };
    vec![message]
}

/// Serves `handler` on `stream` until the client goes away; returns the
/// messages received.
async fn serve(
    stream: DuplexStream,
    mut handler: impl FnMut(&Packet) -> Vec<Vec<u8>> + Send + 'static,
) -> Vec<Packet> {
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = Connection::new(read, PacketCodec::new(MAX_PACKET_LEN), None);
    let mut received = Vec::new();
    while let Ok(packet) = reader.read_frame().await {
        for message in handler(&packet) {
            if write.write_all(&message).await.is_err() {
                return received;
            }
        }
        received.push(packet);
    }
    received
}

fn fake(
    handler: impl FnMut(&Packet) -> Vec<Vec<u8>> + Send + 'static,
) -> (DuplexStream, tokio::task::JoinHandle<Vec<Packet>>) {
    let (client, server) = tokio::io::duplex(1 << 16);
    (client, tokio::spawn(serve(server, handler)))
}

const SOCKET: &str = "/run/libvirt/libvirt-sock";
const PING: &str = r#"{"execute":"guest-ping"}"#;

async fn open(stream: DuplexStream, options: &ClientOptions) -> Result<LibvirtClient<DuplexStream>, Error> {
    LibvirtClient::handshake(stream, Path::new(SOCKET), "qemu:///system", options).await
}

fn soon() -> Deadline {
    Deadline::after(Duration::from_secs(5))
}

#[tokio::test]
async fn a_session_sends_what_virsh_sends() {
    let (stream, server) = fake(libvirtd);
    let mut client = open(stream, &ClientOptions::default()).await.unwrap();
    let domain = client.lookup_domain_by_name("virtomate-test").await.unwrap();
    assert_eq!(
        domain,
        RemoteDomain {
            name: "virtomate-test".into(),
            uuid: parse_uuid("ae1fa45e-9986-4911-a717-236321429e8c").unwrap(),
            id: 1,
        }
    );
    let answer = client
        .agent_command(&domain, PING, AGENT_TIMEOUT_DEFAULT, soon())
        .await
        .unwrap();
    assert_eq!(answer.as_deref(), Some(r#"{"return":{}}"#));
    client.close().await.unwrap();

    let sent: Vec<Vec<u8>> = server
        .await
        .unwrap()
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    // Our serials count from 0 without virsh's extra calls in between.
    let expected: Vec<Vec<u8>> = [AUTH_LIST_CALL, OPEN_CALL, LOOKUP_CALL, AGENT_CALL, CLOSE_CALL]
        .iter()
        .enumerate()
        .map(|(serial, call)| with_serial(hex(call), serial as u32))
        .collect();
    assert_eq!(sent, expected);
}

#[tokio::test]
async fn a_monitor_command_sends_the_domain_and_the_json() {
    let (stream, server) = fake(libvirtd);
    let mut client = open(stream, &ClientOptions::default()).await.unwrap();
    let domain = client.lookup_domain_by_name("virtomate-test").await.unwrap();
    let reply = client
        .monitor_command(&domain, r#"{"execute":"query-status"}"#, soon())
        .await
        .unwrap();
    assert_eq!(reply, STATUS_REPLY);
    // A QMP error is QEMU's reply like any other, not a failed call.
    let reply = client
        .monitor_command(&domain, r#"{"execute":"no-such-command"}"#, soon())
        .await
        .unwrap();
    assert_eq!(reply, NOT_FOUND_REPLY);
    drop(client);
    let received = server.await.unwrap();
    assert_eq!(received[3].as_bytes(), hex(MONITOR_CALL));
}

#[tokio::test]
async fn an_over_long_monitor_command_is_not_sent() {
    let (stream, server) = fake(libvirtd);
    let mut client = open(stream, &ClientOptions::default()).await.unwrap();
    let domain = client.lookup_domain_by_name("virtomate-test").await.unwrap();
    let command = format!(r#"{{"execute":"x","pad":"{}"}}"#, "x".repeat(STRING_MAX));
    let err = client
        .monitor_command(&domain, &command, soon())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::RequestTooLarge { len, limit: STRING_MAX } if len == command.len()),
        "{err:?}"
    );
    drop(client);
    assert_eq!(server.await.unwrap().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_silent_monitor_command_times_out_under_its_name() {
    let (stream, _server) = fake(|call| match call.header.procedure {
        QEMU_PROC_DOMAIN_MONITOR_COMMAND if call.header.program == QEMU_PROGRAM => vec![],
        _ => libvirtd(call),
    });
    let mut client = open(stream, &ClientOptions::default()).await.unwrap();
    let domain = client.lookup_domain_by_name("virtomate-test").await.unwrap();
    let err = client
        .monitor_command(
            &domain,
            r#"{"execute":"stop"}"#,
            Deadline::after(Duration::from_secs(3)),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no answer within 3 s while waiting for the reply to stop through libvirt"
    );
}

async fn monitor(stream: DuplexStream) -> LibvirtMonitor<DuplexStream> {
    let options = ClientOptions::default();
    let mut client = open(stream, &options).await.unwrap();
    let domain = client.lookup_domain_by_name("virtomate-test").await.unwrap();
    LibvirtMonitor::new(client, domain, &options)
}

#[tokio::test]
async fn the_monitor_gives_the_return_value_as_qmp_client_does() {
    let (stream, server) = fake(libvirtd);
    let mut qemu = monitor(stream).await;
    let ret = qemu.execute_json("query-status", None).await.unwrap();
    assert_eq!(
        ret,
        json!({"status": "running", "singlestep": false, "running": true})
    );
    let status = qemu.execute(&QueryStatus {}).await.unwrap();
    assert!(status.running);
    drop(qemu);
    // Without an id: libvirtd adds its own and refuses a command with one.
    let commands: Vec<String> = server.await.unwrap()[3..]
        .iter()
        .map(|call| {
            let mut args = Decoder::new(call.payload());
            super::remote::RemoteDomain::decode(&mut args).unwrap();
            args.string(STRING_MAX).unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        commands,
        [
            r#"{"execute":"query-status"}"#,
            r#"{"execute":"query-status","arguments":{}}"#
        ]
    );
}

#[tokio::test]
async fn the_monitors_error_reply_is_the_error_qmp_client_gives() {
    let (stream, _server) = fake(libvirtd);
    let mut qemu = monitor(stream).await;
    let err = qemu.execute_json("no-such-command", None).await.unwrap_err();
    match err {
        Error::Agent { command, class, desc } => {
            assert_eq!(command, "no-such-command");
            assert_eq!(class, "CommandNotFound");
            assert_eq!(desc, "The command no-such-command has not been found");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn lookups_by_uuid_and_the_version() {
    let (stream, _server) = fake(libvirtd);
    let mut client = open(stream, &ClientOptions::default()).await.unwrap();
    let uuid = parse_uuid("ae1fa45e99864911a717236321429e8c").unwrap();
    assert_eq!(
        client.lookup_domain_by_uuid(&uuid).await.unwrap().name,
        "virtomate-test"
    );
    assert_eq!(client.lib_version().await.unwrap(), 9_000_000);
}

#[tokio::test]
async fn a_domains_state_is_libvirts_state_and_reason() {
    let (stream, server) = fake(libvirtd);
    let mut client = open(stream, &ClientOptions::default()).await.unwrap();
    let domain = client.lookup_domain_by_name("virtomate-test").await.unwrap();
    assert_eq!(
        client.domain_state(&domain).await.unwrap(),
        (DomainState::ShutOff, 2)
    );
    drop(client);
    let received = server.await.unwrap();
    let call = received.last().unwrap();
    assert_eq!(call.header.procedure, REMOTE_PROC_DOMAIN_GET_STATE);
    // The domain, then flags 0.
    let mut expected = Encoder::new();
    domain.encode(&mut expected).unwrap();
    expected.u32(0);
    assert_eq!(call.payload(), &expected.into_bytes()[..]);
}

#[tokio::test]
async fn an_unknown_domain_is_a_libvirt_error() {
    let (stream, _server) = fake(libvirtd);
    let mut client = open(stream, &ClientOptions::default()).await.unwrap();
    let err = client.lookup_domain_by_name("nosuch").await.unwrap_err();
    match &err {
        Error::Libvirt {
            code,
            domain,
            message,
        } => {
            assert_eq!((*code, *domain), (ERR_NO_DOMAIN, 10));
            assert_eq!(message, "Domain not found: no domain with matching name 'nosuch'");
        }
        other => panic!("{other:?}"),
    }
    // The connection stays usable after an error reply.
    client.lookup_domain_by_name("virtomate-test").await.unwrap();
}

#[tokio::test]
async fn polkit_is_refused_with_advice() {
    let (stream, server) = fake(|call| {
        // As libvirtd answers a user other than root: [REMOTE_AUTH_POLKIT].
        vec![reply(&call.header, &hex("00000001 00000002"))]
    });
    let err = open(stream, &ClientOptions::default()).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(
        text.starts_with(&format!("cannot connect to {SOCKET}: ")),
        "{text}"
    );
    assert!(text.contains("libvirtd asks for polkit authentication"), "{text}");
    assert!(text.contains("run virtomate as root"), "{text}");
    // Nothing after the refusal: no CONNECT_OPEN.
    assert_eq!(server.await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_empty_auth_list_means_no_authentication() {
    let (stream, _server) = fake(|call| match call.header.procedure {
        REMOTE_PROC_AUTH_LIST => vec![reply(&call.header, &[0, 0, 0, 0])],
        _ => libvirtd(call),
    });
    open(stream, &ClientOptions::default()).await.unwrap();
}

#[tokio::test]
async fn an_error_before_open_is_reported() {
    let (stream, _server) = fake(|call| {
        let mut e = Encoder::new();
        e.i32(ERR_RPC);
        e.i32(7);
        e.optional_string(Some("authentication required"), STRING_MAX)
            .unwrap();
        let header = Header {
            kind: MessageType::Reply,
            status: Status::Error,
            ..call.header
        };
        vec![encode(&header, &e.into_bytes()).unwrap()]
    });
    let err = open(stream, &ClientOptions::default()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "libvirt: authentication required (error 39, error domain 7)"
    );
}

#[tokio::test]
async fn pings_events_and_stale_replies_are_skipped() {
    let (stream, server) = fake(|call| {
        let mut messages = Vec::new();
        if call.header.program == QEMU_PROGRAM {
            let ping = Header {
                kind: MessageType::Message,
                ..Header::call(KEEPALIVE_PROGRAM, KEEPALIVE_PROC_PING, 0)
            };
            messages.push(encode(&ping, &[]).unwrap());
            // An event (REMOTE_PROC_DOMAIN_EVENT_LIFECYCLE = 107).
            let event = Header {
                kind: MessageType::Message,
                ..Header::call(REMOTE_PROGRAM, 107, 0)
            };
            messages.push(encode(&event, &[1, 2, 3, 4]).unwrap());
            // A late reply to an earlier call.
            messages.push(with_serial(hex(AGENT_REPLY), call.header.serial.wrapping_sub(1)));
            // A reply of a type we never asked for, with our serial.
            let stream_data = Header {
                kind: MessageType::Stream,
                ..call.header
            };
            messages.push(encode(&stream_data, &[9; 8]).unwrap());
        }
        messages.extend(libvirtd(call));
        messages
    });
    let mut client = open(stream, &ClientOptions::default()).await.unwrap();
    let domain = client.lookup_domain_by_name("virtomate-test").await.unwrap();
    let answer = client
        .agent_command(&domain, PING, AGENT_TIMEOUT_DEFAULT, soon())
        .await
        .unwrap();
    assert_eq!(answer.as_deref(), Some(r#"{"return":{}}"#));
    drop(client);
    let received = server.await.unwrap();
    let pong = received.last().unwrap();
    assert_eq!(
        (pong.header.program, pong.header.procedure, pong.header.kind),
        (KEEPALIVE_PROGRAM, KEEPALIVE_PROC_PONG, MessageType::Message)
    );
}

#[tokio::test(start_paused = true)]
async fn a_late_reply_times_out_and_is_skipped_later() {
    let held = Arc::new(Mutex::new(None));
    let late = held.clone();
    let (stream, _server) = fake(move |call| {
        if call.header.program == QEMU_PROGRAM {
            // Hold back the reply to the first agent command; send it
            // before the reply to the next call.
            let mut late = late.lock().unwrap();
            if call.header.serial == 3 {
                *late = Some(libvirtd(call));
                return vec![];
            }
        }
        let mut messages = late.lock().unwrap().take().unwrap_or_default();
        messages.extend(libvirtd(call));
        messages
    });
    let mut client = open(stream, &ClientOptions::default()).await.unwrap();
    let domain = client.lookup_domain_by_name("virtomate-test").await.unwrap();
    let started = Instant::now();
    let err = client
        .agent_command(&domain, PING, 10, Deadline::after(Duration::from_secs(15)))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Timeout { phase: Phase::Reply(label), after }
            if label == "guest-ping through libvirt" && *after == Duration::from_secs(15)),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "no answer within 15 s while waiting for the reply to guest-ping through libvirt"
    );
    assert_eq!(Instant::now() - started, Duration::from_secs(15));
    // The late reply (serial 3) arrives first and is skipped.
    let answer = client
        .agent_command(&domain, r#"{"execute":"guest-info"}"#, -1, soon())
        .await
        .unwrap();
    assert_eq!(answer.as_deref(), Some(r#"{"return":{}}"#));
    assert!(held.lock().unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn the_handshake_has_one_deadline() {
    let (stream, _server) = fake(|_| vec![]);
    let options = ClientOptions {
        handshake_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    };
    let err = open(stream, &options).await.unwrap_err();
    assert!(
        matches!(&err, Error::Timeout { phase: Phase::Reply(label), after }
            if label == "libvirt auth-list" && *after == Duration::from_secs(2)),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_send_cut_short_makes_the_connection_unusable() {
    // A peer that stops reading after the handshake, with a small pipe.
    let (client_end, server_end) = tokio::io::duplex(256);
    let server = tokio::spawn(async move {
        let (read, mut write) = tokio::io::split(server_end);
        let mut reader = Connection::new(read, PacketCodec::new(MAX_PACKET_LEN), None);
        for _ in 0..3 {
            let call = reader.read_frame().await.unwrap();
            for message in libvirtd(&call) {
                write.write_all(&message).await.unwrap();
            }
        }
        // Keep both ends open, unread.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop((reader, write));
    });
    let mut client = open(client_end, &ClientOptions::default()).await.unwrap();
    let domain = client.lookup_domain_by_name("virtomate-test").await.unwrap();
    let big = format!(
        r#"{{"execute":"guest-file-write","arguments":{{"buf-b64":"{}"}}}}"#,
        "A".repeat(4096)
    );
    let err = client
        .agent_command(&domain, &big, -1, Deadline::after(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Timeout { phase: Phase::Sending(label), .. } if label == "guest-file-write through libvirt"
        ),
        "{err:?}"
    );
    let err = client.lookup_domain_by_name("virtomate-test").await.unwrap_err();
    assert!(err.to_string().contains("cut short"), "{err}");
    server.abort();
}

#[tokio::test]
async fn an_over_long_command_is_not_sent() {
    let (stream, server) = fake(libvirtd);
    let mut client = open(stream, &ClientOptions::default()).await.unwrap();
    let domain = client.lookup_domain_by_name("virtomate-test").await.unwrap();
    let command = format!(r#"{{"execute":"x","pad":"{}"}}"#, "x".repeat(STRING_MAX));
    let err = client
        .agent_command(&domain, &command, -1, soon())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::RequestTooLarge { len, limit: STRING_MAX } if len == command.len()),
        "{err:?}"
    );
    // The connection is still fine, and the command was never sent.
    client.agent_command(&domain, PING, -1, soon()).await.unwrap();
    drop(client);
    assert_eq!(server.await.unwrap().len(), 4);
}

#[tokio::test]
async fn a_reply_over_the_bound_is_refused() {
    let (stream, _server) = fake(|call| {
        if call.header.program == QEMU_PROGRAM {
            // Claims 4 GiB - 1; only the length word and a header arrive.
            let mut huge = reply(&call.header, &[]);
            huge[..4].copy_from_slice(&u32::MAX.to_be_bytes());
            return vec![huge];
        }
        libvirtd(call)
    });
    let mut client = open(stream, &ClientOptions::default()).await.unwrap();
    let domain = client.lookup_domain_by_name("virtomate-test").await.unwrap();
    let err = client.agent_command(&domain, PING, -1, soon()).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::ReplyTooLong {
                limit: MAX_PACKET_LEN
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn max_reply_len_bounds_payloads() {
    let (stream, _server) = fake(libvirtd);
    let options = ClientOptions {
        max_reply_len: 12,
        ..ClientOptions::default()
    };
    // The auth list (8 bytes of payload) fits, the domain (40) does not.
    let mut client = open(stream, &options).await.unwrap();
    let err = client.lookup_domain_by_name("virtomate-test").await.unwrap_err();
    assert!(matches!(err, Error::ReplyTooLong { limit: 40 }), "{err:?}");
}

#[tokio::test]
async fn a_reply_for_another_procedure_is_malformed() {
    let (stream, _server) = fake(|call| {
        if call.header.procedure == REMOTE_PROC_DOMAIN_LOOKUP_BY_NAME {
            let wrong = Header {
                procedure: REMOTE_PROC_CONNECT_CLOSE,
                ..call.header
            };
            return vec![reply(&wrong, &[])];
        }
        libvirtd(call)
    });
    let mut client = open(stream, &ClientOptions::default()).await.unwrap();
    let err = client.lookup_domain_by_name("virtomate-test").await.unwrap_err();
    assert!(
        matches!(&err, Error::Malformed { command, .. } if command == "libvirt domain-lookup-by-name"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_truncated_payload_is_malformed_not_a_panic() {
    let (stream, _server) = fake(|call| {
        if call.header.procedure == REMOTE_PROC_DOMAIN_LOOKUP_BY_NAME {
            let full = hex(LOOKUP_REPLY);
            let mut cut = full[..full.len() - 6].to_vec();
            cut[..4].copy_from_slice(&((full.len() - 6) as u32).to_be_bytes());
            return vec![with_serial(cut, call.header.serial)];
        }
        libvirtd(call)
    });
    let mut client = open(stream, &ClientOptions::default()).await.unwrap();
    let err = client.lookup_domain_by_name("virtomate-test").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "malformed reply to libvirt domain-lookup-by-name: truncated: 16 more bytes needed, 14 left"
    );
}

#[tokio::test]
async fn the_trace_sees_both_directions() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let options = ClientOptions {
        trace: Some(Trace::new(move |d, b| sink.lock().unwrap().push((d, b.to_vec())))),
        ..ClientOptions::default()
    };
    let (stream, _server) = fake(libvirtd);
    open(stream, &options).await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0], (Direction::Sent, hex(AUTH_LIST_CALL)));
    let received: Vec<u8> = seen
        .iter()
        .filter(|(d, _)| *d == Direction::Received)
        .flat_map(|(_, b)| b.clone())
        .collect();
    assert_eq!(
        received,
        [hex(AUTH_LIST_REPLY), with_serial(hex(OPEN_REPLY), 1)].concat()
    );
}

#[tokio::test]
async fn a_peer_that_hangs_up_mid_message_is_a_disconnect() {
    let (client_end, server_end) = tokio::io::duplex(1024);
    let server = tokio::spawn(async move {
        let (read, mut write) = tokio::io::split(server_end);
        let mut reader = Connection::new(read, PacketCodec::new(MAX_PACKET_LEN), None);
        let call = reader.read_frame().await.unwrap();
        write.write_all(&libvirtd(&call)[0][..10]).await.unwrap();
    });
    let err = open(client_end, &ClientOptions::default()).await.unwrap_err();
    assert!(matches!(err, Error::Disconnected), "{err:?}");
    server.await.unwrap();
}
