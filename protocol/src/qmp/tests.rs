//! The client against a scripted QEMU on an in-memory stream: what a real
//! QEMU will not do on demand (garbage, silence, floods of events).

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, Lines, ReadHalf, WriteHalf};

use super::events::EventStore;
use super::*;
use crate::{ClientOptions, Error, Phase};

const GREETING: &str = concat!(
    r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "#,
    r#""package": "Debian 1:7.2+dfsg-7"}, "capabilities": ["oob"]}}"#
);

/// QEMU's side of the connection.
struct FakeQemu {
    requests: Lines<BufReader<ReadHalf<DuplexStream>>>,
    out: WriteHalf<DuplexStream>,
}

impl FakeQemu {
    /// The next request, as JSON.
    async fn request(&mut self) -> Value {
        let line = self.requests.next_line().await.unwrap().expect("a request");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("invalid request ({e}): {line}"))
    }

    /// Sends one line as QEMU does, ending in `\r\n`.
    async fn send(&mut self, line: &str) {
        self.out
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
    }

    async fn reply(&mut self, reply: Value) {
        self.send(&reply.to_string()).await;
    }

    /// Greets and returns the request that follows, `qmp_capabilities`.
    async fn greet(&mut self) -> Value {
        self.send(GREETING).await;
        let request = self.request().await;
        assert_eq!(request["execute"], "qmp_capabilities", "{request}");
        request
    }

    /// Greets and accepts `qmp_capabilities`.
    async fn negotiate(&mut self) {
        let request = self.greet().await;
        self.reply(json!({"return": {}, "id": request["id"]})).await;
    }
}

fn options(timeout_ms: u64) -> ClientOptions {
    ClientOptions {
        handshake_timeout: Duration::from_millis(timeout_ms),
        reply_timeout: Duration::from_millis(timeout_ms),
        ..ClientOptions::default()
    }
}

/// A client stream and the fake QEMU on its other end.
fn pair() -> (DuplexStream, FakeQemu) {
    let (client, server) = tokio::io::duplex(1 << 16);
    let (read, out) = tokio::io::split(server);
    let requests = BufReader::new(read).lines();
    (client, FakeQemu { requests, out })
}

/// A negotiated client and its fake QEMU.
async fn connected() -> (QmpClient<DuplexStream>, FakeQemu) {
    let (stream, mut qemu) = pair();
    let (client, ()) = tokio::join!(QmpClient::handshake(stream, options(5000)), qemu.negotiate());
    (client.unwrap(), qemu)
}

fn stop_event(n: u64) -> Value {
    json!({"timestamp": {"seconds": n, "microseconds": 0}, "event": "STOP"})
}

#[tokio::test]
async fn handshake_reads_the_greeting_and_negotiates() {
    let (stream, mut qemu) = pair();
    let server = async {
        let request = qemu.greet().await;
        assert_eq!(
            request,
            json!({"execute": "qmp_capabilities", "arguments": {}, "id": 1})
        );
        qemu.reply(json!({"return": {}, "id": 1})).await;
    };
    let (client, ()) = tokio::join!(QmpClient::handshake(stream, options(5000)), server);
    let client = client.unwrap();
    let greeting = client.greeting();
    assert_eq!(
        greeting.version,
        QemuVersion {
            major: 7,
            minor: 2,
            micro: 22
        }
    );
    assert_eq!(greeting.package, "Debian 1:7.2+dfsg-7");
    assert_eq!(greeting.capabilities, ["oob"]);
}

#[tokio::test]
async fn events_between_request_and_reply_are_stored_apart() {
    let (mut client, mut qemu) = connected().await;
    let server = async {
        let request = qemu.request().await;
        assert_eq!(request["execute"], "query-status");
        qemu.reply(stop_event(1)).await;
        // A reply to some earlier request is no reply to this one.
        qemu.reply(json!({"return": {"status": "running", "running": true}, "id": 999}))
            .await;
        qemu.reply(json!({"event": "RESUME", "timestamp": {"seconds": 2, "microseconds": 5}}))
            .await;
        let reply = json!({"return": {"status": "paused", "singlestep": false, "running": false}});
        qemu.reply(json!({"return": reply["return"], "id": request["id"]}))
            .await;
    };
    let (status, ()) = tokio::join!(client.execute(&QueryStatus {}), server);
    assert_eq!(
        status.unwrap(),
        QueryStatusReply {
            status: "paused".into(),
            running: false
        }
    );
    let events = client.take_events();
    let names: Vec<_> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["STOP", "RESUME"]);
    assert_eq!(events[0].data, Value::Null);
    assert_eq!(events[1].timestamp["microseconds"], 5);
    assert!(client.take_events().is_empty());
}

#[tokio::test]
async fn execute_json_sends_arguments_only_when_given() {
    let (mut client, mut qemu) = connected().await;
    let server = async {
        let request = qemu.request().await;
        assert_eq!(request, json!({"execute": "query-name", "id": request["id"]}));
        qemu.reply(json!({"return": {"name": "vm"}, "id": request["id"]}))
            .await;
        let request = qemu.request().await;
        assert_eq!(request["arguments"], json!({"command-line": "info name"}));
        qemu.reply(json!({"return": "vm\r\n", "id": request["id"]})).await;
    };
    let arguments = json!({"command-line": "info name"});
    let client_side = async {
        let name = client.execute_json("query-name", None).await.unwrap();
        let text = client
            .execute_json("human-monitor-command", Some(&arguments))
            .await
            .unwrap();
        (name, text)
    };
    let ((name, text), ()) = tokio::join!(client_side, server);
    assert_eq!(name, json!({"name": "vm"}));
    assert_eq!(text, "vm\r\n");
}

#[tokio::test]
async fn error_reply_is_an_agent_error() {
    let (mut client, mut qemu) = connected().await;
    let server = async {
        let request = qemu.request().await;
        let error = json!({"class": "CommandNotFound", "desc": "The command nope has not been found"});
        qemu.reply(json!({"id": request["id"], "error": error})).await;
    };
    let (result, ()) = tokio::join!(client.execute_json("nope", None), server);
    match result {
        Err(Error::Agent { command, class, .. }) => {
            assert_eq!(command, "nope");
            assert_eq!(class, "CommandNotFound");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn late_reply_to_a_timed_out_command_is_skipped() {
    let (stream, mut qemu) = pair();
    let (client, ()) = tokio::join!(QmpClient::handshake(stream, options(200)), qemu.negotiate());
    let mut client = client.unwrap();
    let first = client.execute(&QueryVersion {}).await;
    assert!(
        matches!(&first, Err(Error::Timeout { phase: Phase::Reply(c), .. }) if c == "query-version"),
        "{first:?}"
    );
    let server = async {
        let late = qemu.request().await;
        let now = qemu.request().await;
        qemu.reply(json!({"return": {"status": "late", "running": false}, "id": late["id"]}))
            .await;
        qemu.reply(json!({"return": {"status": "running", "running": true}, "id": now["id"]}))
            .await;
    };
    let (status, ()) = tokio::join!(client.execute(&QueryStatus {}), server);
    assert_eq!(status.unwrap().status, "running");
}

#[tokio::test]
async fn garbage_instead_of_a_greeting_is_malformed() {
    for line in ["hello", r#"{"return": {}}"#, r#"{"QMP": {"version": "7.2"}}"#] {
        let (stream, mut qemu) = pair();
        qemu.send(line).await;
        let result = QmpClient::handshake(stream, options(5000)).await;
        assert!(
            matches!(result, Err(Error::Malformed { .. })),
            "{line}: {result:?}"
        );
    }
}

#[tokio::test]
async fn no_greeting_is_a_handshake_timeout() {
    // Keeps QEMU's side open but silent, as a QMP socket busy with another client is.
    let (stream, _qemu) = pair();
    let result = QmpClient::handshake(stream, options(100)).await;
    assert!(
        matches!(
            result,
            Err(Error::Timeout {
                phase: Phase::Handshake,
                ..
            })
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn closed_before_the_greeting_is_disconnected() {
    let (stream, qemu) = pair();
    drop(qemu);
    let result = QmpClient::handshake(stream, options(5000)).await;
    assert!(matches!(result, Err(Error::Disconnected)), "{result:?}");
}

#[tokio::test]
async fn refused_negotiation_is_an_agent_error() {
    let (stream, mut qemu) = pair();
    let server = async {
        let request = qemu.greet().await;
        let error =
            json!({"class": "CommandNotFound", "desc": "Capabilities negotiation is already complete"});
        qemu.reply(json!({"id": request["id"], "error": error})).await;
    };
    let (result, ()) = tokio::join!(QmpClient::handshake(stream, options(5000)), server);
    assert!(
        matches!(&result, Err(Error::Agent { command, .. }) if command == "qmp_capabilities"),
        "{result:?}"
    );
}

#[tokio::test]
async fn malformed_event_is_a_malformed_reply() {
    let (mut client, mut qemu) = connected().await;
    let server = async {
        qemu.request().await;
        qemu.reply(json!({"event": 5, "timestamp": {}})).await;
    };
    let (result, ()) = tokio::join!(client.execute(&QueryStatus {}), server);
    assert!(matches!(result, Err(Error::Malformed { .. })), "{result:?}");
}

#[tokio::test]
async fn a_flood_of_events_keeps_only_the_newest() {
    let (mut client, mut qemu) = connected().await;
    let flood = MAX_STORED_EVENTS as u64 + 500;
    let server = async {
        let request = qemu.request().await;
        for n in 0..flood {
            qemu.reply(stop_event(n)).await;
        }
        qemu.reply(json!({"return": {"status": "paused", "running": false}, "id": request["id"]}))
            .await;
    };
    let (status, ()) = tokio::join!(client.execute(&QueryStatus {}), server);
    assert!(!status.unwrap().running);
    let events = client.take_events();
    assert_eq!(events.len(), MAX_STORED_EVENTS);
    assert_eq!(events[0].timestamp["seconds"], 500);
    assert_eq!(events.last().unwrap().timestamp["seconds"], flood - 1);
    assert_eq!(client.events_dropped(), 500);
}

#[test]
fn event_store_is_bounded_in_bytes_too() {
    let event: Event = serde_json::from_value(stop_event(0)).unwrap();
    let mut store = EventStore::default();
    let size = MAX_STORED_EVENT_BYTES / 4;
    for _ in 0..10 {
        store.push(event.clone(), size);
    }
    assert_eq!(store.take().len(), 4);
    assert_eq!(store.dropped(), 6);
    // Taking frees the room.
    store.push(event.clone(), size);
    assert_eq!(store.take().len(), 1);
    // An event over the whole bound is not kept at all.
    store.push(event, MAX_STORED_EVENT_BYTES + 1);
    assert!(store.take().is_empty());
    assert_eq!(store.dropped(), 7);
}
