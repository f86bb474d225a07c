//! Property tests: the agent is untrusted, so the framing and the handshake
//! must cope with whatever bytes arrive, however the reads split them.

use std::future::Future;
use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};
use virtomate_protocol::framing::{LineCodec, SENTINEL};
use virtomate_protocol::qga::{Empty, GuestPing};
use virtomate_protocol::{ClientOptions, Connection, Error, QgaClient};

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// A stream that hands out `bytes` in pieces of the given sizes (cycled),
/// one piece per read; all at once when `sizes` is empty.
fn chunked(bytes: &[u8], sizes: &[usize]) -> tokio_test::io::Mock {
    let mut builder = tokio_test::io::Builder::new();
    let mut rest = bytes;
    for i in 0.. {
        if rest.is_empty() {
            break;
        }
        let size = if sizes.is_empty() {
            rest.len()
        } else {
            sizes[i % sizes.len()]
        };
        let (piece, tail) = rest.split_at(size.clamp(1, rest.len()));
        builder.read(piece);
        rest = tail;
    }
    builder.build()
}

/// Read sizes: byte by byte, typical, and larger than any line.
fn read_sizes() -> impl Strategy<Value = Vec<usize>> {
    vec(prop_oneof![1usize..4, 1usize..300, 1usize..20_000], 0..8)
}

/// Bytes without `\n`, of a length drawn from `len`, often ending in `\r`.
fn line(len: impl Strategy<Value = usize>) -> impl Strategy<Value = Vec<u8>> {
    (len.prop_flat_map(|n| vec(any::<u8>(), n)), 0usize..3).prop_map(|(mut bytes, crs)| {
        for b in &mut bytes {
            if *b == b'\n' {
                *b = b' ';
            }
        }
        bytes.resize(bytes.len() + crs, b'\r');
        bytes
    })
}

/// Lines of a few bytes or a few KiB.
fn any_line() -> impl Strategy<Value = Vec<u8>> {
    line(prop_oneof![0usize..16, 0usize..4096])
}

/// What the reader returns for a line: without one trailing `\r`.
fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn terminated(lines: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for line in lines {
        bytes.extend_from_slice(line);
        bytes.push(b'\n');
    }
    bytes
}

#[derive(Debug, PartialEq)]
enum Event {
    Line(Vec<u8>),
    TooLong,
}

/// Reads until the stream ends, which must be reported as a disconnect
/// (twice, to check that it stays so).
async fn read_all<R: tokio::io::AsyncRead + Unpin>(reader: &mut Connection<R, LineCodec>) -> Vec<Event> {
    let mut events = Vec::new();
    loop {
        match reader.read_reply().await {
            Ok(line) => {
                assert!(line.len() <= reader.codec().max_len());
                events.push(Event::Line(line));
            }
            Err(Error::ReplyTooLong { limit }) => {
                assert_eq!(limit, reader.codec().max_len());
                events.push(Event::TooLong);
            }
            Err(Error::Disconnected) => break,
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert!(matches!(reader.read_reply().await, Err(Error::Disconnected)));
    events
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn lines_come_back_whatever_the_read_sizes(
        lines in vec(any_line(), 0..12),
        tail in line(0usize..64),
        sizes in read_sizes(),
    ) {
        // An unterminated last line is not a reply: it is dropped.
        let mut bytes = terminated(&lines);
        bytes.extend_from_slice(&tail);
        let mut reader = Connection::new(chunked(&bytes, &sizes), LineCodec::new(1 << 16), None);
        let got = block_on(read_all(&mut reader));
        let want: Vec<Event> = lines.iter().map(|l| Event::Line(strip_cr(l).to_vec())).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn each_over_long_line_is_refused_once_and_the_rest_still_read(
        (bound, lines) in (1usize..300).prop_flat_map(|bound| {
            let len = prop_oneof![0..3 * bound, bound.saturating_sub(2)..bound + 3];
            (Just(bound), vec(line(len), 0..12))
        }),
        sizes in read_sizes(),
    ) {
        let bytes = terminated(&lines);
        let mut reader = Connection::new(chunked(&bytes, &sizes), LineCodec::new(bound), None);
        let got = block_on(read_all(&mut reader));
        let want: Vec<Event> = lines
            .iter()
            .map(|l| strip_cr(l))
            .map(|l| if l.len() > bound { Event::TooLong } else { Event::Line(l.to_vec()) })
            .collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn what_follows_the_first_sentinel_is_read(
        prefix in vec(any::<u8>().prop_map(|b| if b == SENTINEL { 0 } else { b }), 0..4096),
        lines in vec(any_line(), 0..6),
        sizes in read_sizes(),
    ) {
        // A stream that opens with QEMU's QMP greeting is no agent's (a
        // case of its own, tested in framing.rs): not this property.
        prop_assume!(!prefix.starts_with(b"{\"QMP\":"));
        // The lines after the sentinel may hold 0xFF bytes themselves.
        let mut bytes = prefix.clone();
        bytes.push(SENTINEL);
        bytes.extend(terminated(&lines));
        let mut reader = Connection::new(chunked(&bytes, &sizes), LineCodec::new(1 << 16), None);
        let got = block_on(async {
            reader.skip_past_sentinel().await.expect("there is a sentinel");
            read_all(&mut reader).await
        });
        let want: Vec<Event> = lines.iter().map(|l| Event::Line(strip_cr(l).to_vec())).collect();
        prop_assert_eq!(got, want);

        // Without the sentinel, everything is skipped until the end.
        let mut reader = Connection::new(chunked(&prefix, &sizes), LineCodec::new(1 << 16), None);
        prop_assert!(matches!(block_on(reader.skip_past_sentinel()), Err(Error::Disconnected)));
    }
}

/// The `id` member of a stale reply.
#[derive(Debug, Clone)]
enum StaleId {
    Number(u64),
    Negative(i64),
    Text(String),
}

impl StaleId {
    /// As JSON, never equal to `ours`.
    fn json(&self, ours: u64) -> String {
        match self {
            StaleId::Number(n) if *n == ours => (n.wrapping_add(1)).to_string(),
            StaleId::Number(n) => n.to_string(),
            StaleId::Negative(n) => n.to_string(),
            StaleId::Text(s) => format!("{s:?}"),
        }
    }
}

fn stale_id() -> impl Strategy<Value = StaleId> {
    prop_oneof![
        any::<u64>().prop_map(StaleId::Number),
        (0u64..4).prop_map(StaleId::Number),
        (i64::MIN..0).prop_map(StaleId::Negative),
        "[a-z0-9]{0,8}".prop_map(StaleId::Text),
    ]
}

fn stale_body() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just(r#""return": {}"#),
        Just(r#""return": 12345"#),
        Just(r#""return": {"exited": false}"#),
        Just(r#""error": {"class": "GenericError", "desc": "JSON parse error, invalid keyword"}"#),
    ]
}

/// A stale reply to some other request, with an `id` that is not `ours`.
fn stale_reply((body, id): &(&str, StaleId), ours: u64) -> Vec<u8> {
    format!("{{{body}, \"id\": {}}}\n", id.json(ours)).into_bytes()
}

/// Something the agent may send between the sentinel and the reply to
/// `guest-sync-delimited`; none of them is that reply.
#[derive(Debug, Clone)]
enum BeforeSync {
    Stale((&'static str, StaleId)),
    /// An echo of some earlier sync, without an `id` member.
    OldSync(u64),
    Garbage(Vec<u8>),
    /// More than the client's bound on one reply.
    OverLong(usize),
}

fn before_sync() -> impl Strategy<Value = BeforeSync> {
    prop_oneof![
        (stale_body(), stale_id()).prop_map(BeforeSync::Stale),
        any::<u64>().prop_map(BeforeSync::OldSync),
        line(0usize..200).prop_map(BeforeSync::Garbage),
        (MAX_REPLY_LEN + 1..3 * MAX_REPLY_LEN).prop_map(BeforeSync::OverLong),
    ]
}

impl BeforeSync {
    fn bytes(&self, ours: u64) -> Vec<u8> {
        match self {
            BeforeSync::Stale(stale) => stale_reply(stale, ours),
            BeforeSync::OldSync(n) if *n == ours => format!("{{\"return\": {}}}\n", n.wrapping_add(1)).into(),
            BeforeSync::OldSync(n) => format!("{{\"return\": {n}}}\n").into(),
            BeforeSync::Garbage(bytes) => [&bytes[..], b"\n"].concat(),
            BeforeSync::OverLong(len) => [&vec![b'x'; *len][..], b"\n"].concat(),
        }
    }
}

const MAX_REPLY_LEN: usize = 4096;

/// What the scripted agent sends, around the replies it must compute.
#[derive(Debug, Clone)]
struct Script {
    junk: Vec<u8>,
    before_sync: Vec<BeforeSync>,
    before_ping: Vec<(&'static str, StaleId)>,
    ping_reply_has_id: bool,
}

fn script() -> impl Strategy<Value = Script> {
    (
        vec(
            any::<u8>().prop_map(|b| if b == SENTINEL { b'{' } else { b }),
            0..2048,
        ),
        vec(before_sync(), 0..6),
        vec((stale_body(), stale_id()), 0..6),
        any::<bool>(),
    )
        .prop_map(|(junk, before_sync, before_ping, ping_reply_has_id)| Script {
            junk,
            before_sync,
            before_ping,
            ping_reply_has_id,
        })
}

/// Reads one request and returns its `execute` and `id` members; `None`
/// once the client hung up.
async fn read_request(requests: &mut BufReader<DuplexStream>) -> Option<(String, u64)> {
    let mut line = Vec::new();
    if requests.read_until(b'\n', &mut line).await.ok()? == 0 {
        return None;
    }
    // The client may start with a 0xFF to reset the agent's parser.
    let json = line.strip_prefix(&[SENTINEL]).unwrap_or(&line);
    let request: serde_json::Value = serde_json::from_slice(json).expect("a JSON request");
    let execute = request["execute"].as_str().expect("execute").to_owned();
    let id = request["id"].as_u64().expect("id");
    Some((execute, id))
}

/// Plays the agent: junk, the sentinel, stale lines, then the right replies.
/// Stops early when the client gives up.
async fn scripted_agent(stream: DuplexStream, script: &Script) {
    let mut agent = BufReader::new(stream);

    let Some((execute, sync_id)) = read_request(&mut agent).await else {
        return;
    };
    assert_eq!(execute, "guest-sync-delimited");
    let mut out = script.junk.clone();
    out.push(SENTINEL);
    for item in &script.before_sync {
        out.extend(item.bytes(sync_id));
    }
    out.extend(format!("{{\"return\": {sync_id}}}\n").into_bytes());
    if agent.get_mut().write_all(&out).await.is_err() {
        return;
    }

    let Some((execute, ping_id)) = read_request(&mut agent).await else {
        return;
    };
    assert_eq!(execute, "guest-ping");
    let mut out = Vec::new();
    for stale in &script.before_ping {
        out.extend(stale_reply(stale, ping_id));
    }
    if script.ping_reply_has_id {
        out.extend(format!("{{\"return\": {{}}, \"id\": {ping_id}}}\n").into_bytes());
    } else {
        out.extend(b"{\"return\": {}}\n");
    }
    let _ = agent.get_mut().write_all(&out).await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn client_gets_through_junk_and_stale_replies(script in script(), capacity in 1usize..4096) {
        let (ours, theirs) = tokio::io::duplex(capacity);
        let options = ClientOptions {
            handshake_timeout: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(10),
            max_reply_len: MAX_REPLY_LEN,
            ..ClientOptions::default()
        };
        // The client is dropped as soon as it returns, so that a failure
        // hangs up on the agent instead of leaving it waiting.
        let ping = async move { QgaClient::new(ours, options).execute(&GuestPing {}).await };
        let (got, ()) = block_on(async { tokio::join!(ping, scripted_agent(theirs, &script)) });
        prop_assert_eq!(got.expect("the ping succeeds"), Empty {});
    }
}
