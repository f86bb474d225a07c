//! Copies in a `virtomate session`: `copy_to` with the data in the request
//! or in data lines after it, `copy_from` with the file in data lines, on
//! the session's one connection and beside its programs.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

use crate::copy::{noise, sha256_hex, temporaries};
use crate::support::host_agent::HostAgent;
use crate::support::live_session::Live;
use crate::support::test_vm::TestVm;

const KIB: usize = 1 << 10;

/// Sends `data` for the `copy_to` under `id` in lines of `line` bytes,
/// the last with `"end": true`.
fn send_data(live: &mut Live, id: &Value, data: &[u8], line: usize) {
    for piece in data.chunks(line) {
        live.send(json!({"id": id, "data": STANDARD.encode(piece)}));
    }
    live.send(json!({"id": id, "end": true}));
}

/// The reply to `id` that ends it, and the bytes of its data lines.
fn reply_to(live: &mut Live, id: &Value, others: &mut Vec<Value>) -> (Value, Vec<u8>) {
    let mut data = Vec::new();
    loop {
        let reply = live.reply();
        if reply["id"] != *id {
            others.push(reply);
            continue;
        }
        match reply.get("data") {
            Some(Value::String(text)) => data.extend(STANDARD.decode(text).unwrap()),
            _ => return (reply, data),
        }
    }
}

/// A whole copy in and back out through one session, beside a program.
fn round_trip(domain: &str, dir: &Path, data: &[u8], line: usize) {
    let mut live = Live::start(&["--timeout", "60"], domain);
    let inside = format!("{}/in-guest.bin", dir.display());
    let put = json!("put");
    live.send(json!({"id": put, "copy_to": inside, "mode": "640", "chunk_size": "64K"}));
    // Pipelined between the copy's request and its data: served after it.
    live.send(json!({"id": "between", "run": ["echo", "beside"]}));
    send_data(&mut live, &put, data, line);
    let mut others = Vec::new();
    let (reply, _) = reply_to(&mut live, &put, &mut others);
    assert_eq!(reply["result"]["bytes"], data.len(), "{reply}");

    let get = json!(["get", 1]);
    live.send(json!({"id": get, "copy_from": inside, "verify": true}));
    let (reply, back) = reply_to(&mut live, &get, &mut others);
    assert_eq!(reply["result"]["sha256"], sha256_hex(data), "{reply}");
    assert_eq!(reply["result"]["bytes"], data.len(), "{reply}");
    assert!(
        back == data,
        "{} bytes came back, not the {} sent",
        back.len(),
        data.len()
    );

    if others.is_empty() {
        others.push(live.reply());
    }
    assert_eq!(others.len(), 1, "{others:?}");
    assert_eq!(others[0]["id"], "between", "{others:?}");
    assert_eq!(others[0]["result"]["stdout"], "beside\n", "{others:?}");
    assert_eq!(live.finish(), 0);
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_session_copies_a_file_in_and_back_out_byte_identical_beside_a_program() {
    let agent = HostAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let data = noise(3 * (1 << 20) + 17, 7);
    round_trip(agent.socket().to_str().unwrap(), dir.path(), &data, 200 * KIB);
    let inside = dir.path().join("in-guest.bin");
    assert_eq!(std::fs::read(&inside).unwrap(), data);
    assert_eq!(
        std::fs::metadata(&inside).unwrap().permissions().mode() & 0o7777,
        0o640
    );
    assert!(temporaries(dir.path()).is_empty());
}

#[test]
#[ignore = "needs the test VM"]
fn a_session_on_the_test_vm_copies_a_file_in_and_back_out() {
    let vm = TestVm::boot("session-copy");
    let data = noise(1 << 20, 8);
    round_trip(&vm.name, Path::new("/tmp"), &data, 64 * KIB);
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn data_in_the_request_makes_a_whole_copy_and_bad_copies_get_errors_while_the_session_goes_on() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let dir = tempfile::tempdir().unwrap();
    let inline = dir.path().join("inline.txt");
    let cut = dir.path().join("cut.txt");
    let mut live = Live::start(&[], socket.to_str().unwrap());
    live.send(json!({"id": 1, "copy_to": inline, "data": STANDARD.encode("hello\n")}));
    let reply = live.reply();
    assert_eq!(
        (&reply["id"], &reply["result"]["bytes"]),
        (&json!(1), &json!(6)),
        "{reply}"
    );
    let errors = [
        (json!({"id": 2, "copy_to": "/x", "copy_from": "/y"}), "either"),
        (
            json!({"id": 3, "copy_from": "/x", "owner": "me"}),
            "unknown key \"owner\" in a copy_from request",
        ),
        (
            json!({"id": 4, "copy_to": "/x", "mode": "999"}),
            "\"mode\": expected an octal mode",
        ),
        (
            json!({"id": 5, "data": "aGk="}),
            "no copy_to with the id 5 waits for data",
        ),
        (
            json!({"id": 6, "copy_to": "/x", "data": "not base64!"}),
            "\"data\" is not Base64",
        ),
    ];
    for (request, says) in errors {
        live.send(request.clone());
        let reply = live.reply();
        assert_eq!(reply["id"], request["id"], "{reply}");
        assert_eq!(reply["error"]["type"], "UsageError", "{reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
    }
    live.send(json!({"id": 7, "copy_from": dir.path().join("missing")}));
    let reply = live.reply();
    assert_eq!(reply["error"]["type"], "PathError", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("No such file"),
        "{reply}"
    );

    // A data line that is not Base64 fails its copy and leaves nothing.
    live.send(json!({"id": 8, "copy_to": cut}));
    live.send(json!({"id": 8, "data": STANDARD.encode("some")}));
    live.send(json!({"id": 8, "data": "%%%"}));
    live.send(json!({"id": 8, "data": STANDARD.encode("more"), "end": true}));
    let reply = live.reply();
    assert_eq!(reply["error"]["type"], "IoError", "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains("a data line is not Base64"), "{message}");
    assert!(message.contains("the destination was not touched"), "{message}");
    assert!(!cut.exists());

    // A client may give a copy up.
    live.send(json!({"id": 11, "copy_to": cut}));
    live.send(json!({"id": 11, "data": STANDARD.encode("some")}));
    live.send(json!({"id": 11, "abort": "the task was cancelled"}));
    let reply = live.reply();
    assert_eq!(reply["error"]["type"], "IoError", "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("the client gave the copy up: the task was cancelled"),
        "{message}"
    );
    assert!(!cut.exists());

    // Input that ends before the copy's end fails it the same way.
    live.send(json!({"id": 9, "copy_to": cut}));
    live.send(json!({"id": 9, "data": STANDARD.encode("partial")}));
    live.send(json!({"id": 10, "ping": {}}));
    live.close_input();
    let mut replies = vec![live.reply(), live.reply()];
    replies.sort_by_key(|r| r["id"].as_i64());
    assert_eq!(replies[0]["error"]["type"], "IoError", "{replies:?}");
    assert!(replies[0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("ended before the copy's data line with \"end\": true"));
    assert_eq!(replies[1], json!({"id": 10, "result": {}}));
    assert_eq!(live.finish(), 0);
    assert!(!cut.exists());
    assert!(
        temporaries(dir.path()).is_empty(),
        "{:?}",
        temporaries(dir.path())
    );
    assert_eq!(std::fs::read_to_string(&inline).unwrap(), "hello\n");
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn sigterm_mid_copy_cleans_up_in_the_guest_and_reports_the_copy_interrupted() {
    let agent = HostAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest.bin");
    let mut live = Live::start(&[], agent.socket().to_str().unwrap());
    live.send(json!({"id": "c", "copy_to": dest, "chunk_size": 16 * KIB}));
    live.send(json!({"id": "c", "data": STANDARD.encode(noise(64 * KIB, 3))}));
    crate::support::wait_until(20, "the copy to write", || {
        temporaries(dir.path())
            .first()
            .is_some_and(|t| std::fs::metadata(t.join("data")).is_ok_and(|m| m.len() > 0))
    });
    live.signal(nix::sys::signal::Signal::SIGTERM);
    let reply = live.reply();
    assert_eq!(reply["id"], "c", "{reply}");
    assert_eq!(reply["error"]["type"], "Interrupted", "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains("removed the temporary"), "{message}");
    assert_eq!(live.finish(), 1);
    assert!(!dest.exists());
    assert!(temporaries(dir.path()).is_empty());
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn requests_that_fill_the_queue_while_a_copy_waits_for_its_data_fail_the_copy_not_the_session() {
    let agent = HostAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest.bin");
    let mut live = Live::start(&[], agent.socket().to_str().unwrap());
    live.send(json!({"id": "c", "copy_to": dest}));
    crate::support::wait_until(20, "the copy to wait for its data", || {
        !temporaries(dir.path()).is_empty()
    });
    for id in 0..24 {
        live.send(json!({"id": id, "ping": {}}));
    }
    live.send(json!({"id": "c", "data": "aGk=", "end": true}));
    let mut replies: Vec<Value> = (0..25).map(|_| live.reply()).collect();
    let copy = replies.remove(replies.iter().position(|r| r["id"] == "c").unwrap());
    let message = copy["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{copy}"));
    assert!(message.contains("filled the session's queue"), "{message}");
    assert!(replies.iter().all(|r| r["result"] == json!({})), "{replies:?}");
    assert_eq!(live.finish(), 0);
    assert!(!dest.exists());
    assert!(temporaries(dir.path()).is_empty());
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_second_copy_to_whose_data_comes_first_waits_buffered_and_both_copies_arrive_whole() {
    let agent = HostAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("sA"), dir.path().join("sB"));
    let (data_a, data_b) = (noise(600, 1), noise(600, 2));
    let mut live = Live::start(&[], agent.socket().to_str().unwrap());
    live.send(json!({"id": "A", "copy_to": a, "verify": true}));
    live.send(json!({"id": "B", "copy_to": b, "verify": true}));
    // B's data first, as two put_file of one host may send it.
    send_data(&mut live, &json!("B"), &data_b, 100);
    send_data(&mut live, &json!("A"), &data_a, 100);
    let mut replies = vec![live.reply(), live.reply()];
    replies.sort_by_key(|r| r["id"].as_str().map(str::to_owned));
    assert_eq!(replies[0]["id"], "A", "{replies:?}");
    assert_eq!(replies[0]["result"]["sha256"], sha256_hex(&data_a), "{replies:?}");
    assert_eq!(replies[1]["result"]["sha256"], sha256_hex(&data_b), "{replies:?}");
    assert_eq!(std::fs::read(&a).unwrap(), data_a);
    assert_eq!(std::fs::read(&b).unwrap(), data_b);
    assert_eq!(live.finish(), 0);
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_recursive_copy_takes_a_tree_of_this_host_in_and_back_out_beside_a_program() {
    let agent = HostAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    crate::copy_tree::make_tree(&source);
    std::fs::write(source.join("a/noise.bin"), noise(300 * KIB + 5, 9)).unwrap();
    let expected = crate::copy_tree::describe(&source);
    let inside = dir.path().join("in-guest");
    let back = dir.path().join("back");
    let mut live = Live::start(&["--timeout", "60"], agent.socket().to_str().unwrap());
    live.send(json!({"id": "in", "copy_to": inside, "recursive": true, "local": source}));
    live.send(json!({"id": "between", "run": ["echo", "beside"]}));
    live.send(json!({
        "id": "out", "copy_from": inside, "recursive": true, "local": back, "compress": true,
    }));
    // Refused as they come, the session going on.
    live.send(json!({"id": "no-local", "copy_to": "/x", "recursive": true}));
    live.send(json!({"id": "local-alone", "copy_from": "/x", "local": "/y"}));
    live.send(json!({"id": "verify", "copy_to": "/x", "recursive": true, "local": "/y", "verify": true}));
    let mut replies: Vec<Value> = (0..6).map(|_| live.reply()).collect();
    replies.sort_by_key(|reply| reply["id"].to_string());
    let by_id = |id: &str| replies.iter().find(|r| r["id"] == id).unwrap().clone();
    let put = by_id("in");
    assert_eq!(put["result"]["files"], 7, "{put}");
    assert_eq!(put["result"]["dest"], inside.to_str().unwrap(), "{put}");
    let got = by_id("out");
    assert_eq!(got["result"]["files"], 7, "{got}");
    assert_eq!(by_id("between")["result"]["stdout"], "beside\n");
    for (id, says) in [
        ("no-local", "a recursive copy needs \"local\""),
        ("local-alone", "\"local\" names a directory of this host"),
        ("verify", "\"verify\" does not go with \"recursive\": true"),
    ] {
        let reply = by_id(id);
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{reply}");
    }
    assert_eq!(live.finish(), 0);
    assert_eq!(crate::copy_tree::describe(&inside), expected);
    assert_eq!(crate::copy_tree::describe(&back), expected);
    assert!(temporaries(dir.path()).is_empty());
}
