//! A hostile or broken agent, played by an in-process fake: every case ends
//! with a typed error and exit 1 (or a correct result), within its
//! deadline, with bounded memory.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::fake_agent::{Conn, FakeAgent};
use crate::support::{self, run, run_measured, Outcome};

type Script = Box<dyn FnOnce(Conn) + Send>;

fn guest_run_on(agent: &FakeAgent, options: &[&str]) -> (Outcome, Duration) {
    let socket = agent.socket();
    let mut args = options.to_vec();
    args.extend(["guest-run", socket.to_str().unwrap(), "--", "true"]);
    let started = Instant::now();
    let out = run(&args, None);
    (out, started.elapsed())
}

fn exited(status: serde_json::Value) -> impl FnOnce(Conn) + Send + 'static {
    move |mut conn: Conn| {
        conn.start_program();
        conn.answer("guest-exec-status", status);
        conn.wait_for_close();
    }
}

#[test]
fn stale_bytes_and_garbage_before_the_sentinel_are_skipped() {
    let agent = FakeAgent::serve(|mut conn| {
        let id = conn.expect_sync();
        conn.send(b"garbage\x00\x01 {\"return\": {\"pid\": 1}}\n{\"return\": 77, \"id\": 3}\n{\"half");
        conn.send(b"\xff{\"return\": 12}\n"); // a previous client's sync
        conn.send_sync_reply(id);
        conn.answer("guest-exec", json!({"pid": 5}));
        conn.answer(
            "guest-exec-status",
            json!({"exited": true, "exitcode": 0, "out-data": "b2s="}),
        );
        conn.wait_for_close();
    });
    let (out, _) = guest_run_on(&agent, &[]);
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(out.json()["stdout"], "ok");
}

#[test]
fn replies_to_other_requests_are_skipped() {
    let agent = FakeAgent::serve(|mut conn| {
        conn.sync();
        let request = conn.request();
        conn.reply(&json!({"return": {"pid": 666}, "id": 1}));
        conn.reply(&json!({"return": {"pid": 7}, "id": request["id"]}));
        let status = conn.request();
        assert_eq!(status["arguments"]["pid"], 7);
        conn.reply(&json!({"return": {"exited": true, "exitcode": 4}, "id": status["id"]}));
        conn.wait_for_close();
    });
    let (out, _) = guest_run_on(&agent, &[]);
    assert_eq!(out.json()["exit_code"], 4, "{out:?}");
}

#[test]
fn an_agent_that_never_answers_times_out() {
    let agent = FakeAgent::serve(|mut conn| {
        conn.expect_sync();
        conn.wait_for_close();
    });
    let (out, took) = guest_run_on(&agent, &["--timeout", "0.5"]);
    let message = out.error("AgentTimeout");
    assert!(
        message.contains("another client") || message.contains("other client"),
        "{message}"
    );
    assert!(took < Duration::from_secs(8), "{took:?}");
}

#[test]
fn a_connection_accepted_but_never_read_times_out() {
    let agent = FakeAgent::serve(Conn::linger);
    let (out, took) = guest_run_on(&agent, &["--timeout", "0.5"]);
    out.error("AgentTimeout");
    assert!(took < Duration::from_secs(8), "{took:?}");
}

#[test]
#[ignore = "needs GNU time"]
fn endless_bytes_without_sentinel_time_out_in_bounded_memory() {
    let agent = FakeAgent::serve(|mut conn| {
        conn.expect_sync();
        let junk = vec![b'j'; 1 << 16];
        while conn.send(&junk) {}
    });
    let socket = agent.socket();
    let (out, rss_kib) = run_measured(
        &[
            "--timeout",
            "1",
            "guest-run",
            socket.to_str().unwrap(),
            "--",
            "true",
        ],
        None,
    );
    out.error("AgentTimeout");
    assert!(rss_kib < 16 * 1024, "peak RSS {rss_kib} KiB: {out:?}");
}

#[test]
fn endless_syncs_with_the_wrong_id_time_out() {
    let agent = FakeAgent::serve(|mut conn| {
        let id = conn.expect_sync();
        while conn.send_sync_reply(id + 1) {}
    });
    let (out, took) = guest_run_on(&agent, &["--timeout", "0.5"]);
    out.error("AgentTimeout");
    assert!(took < Duration::from_secs(8), "{took:?}");
}

#[test]
#[ignore = "needs GNU time"]
fn a_reply_that_never_ends_is_refused_in_bounded_memory() {
    let agent = FakeAgent::serve(|mut conn| {
        conn.start_program();
        conn.request();
        conn.send(b"{\"return\": {\"exited\": true, \"out-data\": \"");
        let endless = vec![b'A'; 1 << 16];
        while conn.send(&endless) {}
    });
    let socket = agent.socket();
    let (out, rss_kib) = run_measured(&["guest-run", socket.to_str().unwrap(), "--", "true"], None);
    let message = out.error("ProtocolError");
    assert!(message.contains("exceeded"), "{message}");
    // The bound is 48 MiB; a reader that grows without one would pass it.
    assert!(rss_kib < 160 * 1024, "peak RSS {rss_kib} KiB");
}

#[test]
fn malformed_replies_are_protocol_errors() {
    let cases: Vec<(&str, Script)> = vec![
        (
            "invalid JSON",
            Box::new(|mut conn: Conn| {
                conn.sync();
                conn.request();
                conn.send(b"{\"return\": {\"pid\": 1\n");
                conn.wait_for_close();
            }),
        ),
        (
            "pid missing",
            Box::new(|mut conn: Conn| {
                conn.sync();
                conn.answer("guest-exec", json!({}));
                conn.wait_for_close();
            }),
        ),
        (
            "return missing",
            Box::new(|mut conn: Conn| {
                conn.sync();
                conn.request();
                conn.reply(&json!({"result": {"pid": 1}}));
                conn.wait_for_close();
            }),
        ),
        ("wrong type", Box::new(exited(json!({"exited": "yes"})))),
        (
            "exit code out of range",
            Box::new(exited(json!({"exited": true, "exitcode": 1u64 << 40}))),
        ),
        (
            "signal out of range",
            Box::new(exited(json!({"exited": true, "signal": -(1i64 << 40)}))),
        ),
        (
            "invalid Base64",
            Box::new(exited(json!({"exited": true, "out-data": "%%%"}))),
        ),
        (
            "a number for data",
            Box::new(exited(json!({"exited": true, "err-data": 12}))),
        ),
    ];
    for (case, script) in cases {
        let agent = FakeAgent::serve(script);
        let (out, _) = guest_run_on(&agent, &[]);
        assert_eq!(out.json()["type"], "ProtocolError", "{case}: {out:?}");
        assert_eq!(out.status, 1, "{case}");
    }
}

#[test]
fn a_disconnect_mid_reply_is_reported() {
    let agent = FakeAgent::serve(|mut conn| {
        conn.start_program();
        conn.request();
        conn.send(b"{\"return\": {\"exited\": tr");
    });
    let (out, _) = guest_run_on(&agent, &[]);
    let message = out.error("AgentDisconnected");
    assert!(message.contains("qga.sock"), "{message}");
}

#[test]
fn a_slow_drip_cannot_stretch_the_deadline() {
    let agent = FakeAgent::serve(|mut conn| {
        conn.sync();
        let request = conn.request();
        let reply = format!("{{\"return\": {{\"pid\": 1}}, \"id\": {}}}\n", request["id"]);
        for byte in reply.bytes().chain(std::iter::repeat(b' ')) {
            if !conn.send(&[byte]) {
                break;
            }
            // The slowness is the agent's, under test: not a wait of the test.
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let (out, took) = guest_run_on(&agent, &["--reply-timeout", "1"]);
    let message = out.error("AgentTimeout");
    assert!(message.contains("guest-exec"), "{message}");
    assert!(took < Duration::from_secs(8), "{took:?}");
}

#[test]
fn a_slow_drip_during_the_handshake_is_one_deadline_too() {
    let agent = FakeAgent::serve(|mut conn| {
        conn.expect_sync();
        while conn.send(b"x") {
            // The slowness is the agent's, under test: not a wait of the test.
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let (out, took) = guest_run_on(&agent, &["--timeout", "0.5"]);
    out.error("AgentTimeout");
    assert!(took < Duration::from_secs(8), "{took:?}");
}

#[test]
fn an_agent_error_reply_carries_its_description() {
    let agent = FakeAgent::serve(|mut conn| {
        conn.sync();
        conn.refuse(
            "guest-exec",
            "CommandNotFound",
            "Command guest-exec has been disabled",
        );
        conn.wait_for_close();
    });
    let (out, _) = guest_run_on(&agent, &[]);
    assert_eq!(
        out.error("AgentCommandError"),
        "unable to execute QEMU agent command 'guest-exec': Command guest-exec has been disabled"
    );
}

#[test]
fn a_program_that_never_exits_ends_on_sigterm_and_sigint_naming_the_guest_pid() {
    for signal in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
    ] {
        let agent = FakeAgent::serve(|mut conn| {
            conn.start_program();
            while let Some(request) = conn.next_request() {
                if !conn.send(
                    format!(
                        "{{\"return\": {{\"exited\": false}}, \"id\": {}}}\n",
                        request["id"]
                    )
                    .as_bytes(),
                ) {
                    break;
                }
            }
        });
        let socket = agent.socket();
        let child = support::spawn_guest_run(&socket, &["sleep", "infinity"]);
        // The program runs: the client polls its status.
        agent.wait_for("guest-exec-status");
        let sent = Instant::now();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "{signal}: took {:?}",
            sent.elapsed()
        );
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(json["type"], "Interrupted", "{signal}: {json}");
        assert!(json["message"].as_str().unwrap().contains("4242"), "{json}");
        assert_eq!(output.status.code(), Some(1));
    }
}

/// SIGTERM to a `guest-run` waiting for `script`'s agent, once it waits:
/// once the agent got the request for `waiting_on`, which it never answers.
fn interrupted(waiting_on: &str, script: impl FnOnce(Conn) + Send + 'static) -> serde_json::Value {
    let agent = FakeAgent::serve(script);
    let child = support::spawn_guest_run(&agent.socket(), &["sleep", "infinity"]);
    agent.wait_for(waiting_on);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn an_interruption_before_the_program_started_says_what_may_be_left() {
    // guest-exec sent, never answered: the program may or may not run.
    let json = interrupted("guest-exec", |mut conn| {
        conn.sync();
        conn.request();
        conn.wait_for_close();
    });
    assert_eq!(json["type"], "Interrupted", "{json}");
    assert!(
        json["message"].as_str().unwrap().contains("may have started"),
        "{json}"
    );

    // The handshake never answered: nothing was sent to start anything.
    let json = interrupted("guest-sync-delimited", |mut conn| {
        conn.request();
        conn.wait_for_close();
    });
    assert_eq!(json["type"], "Interrupted", "{json}");
    assert!(
        json["message"].as_str().unwrap().contains("nothing was started"),
        "{json}"
    );
}

#[test]
fn an_agent_that_forgot_the_program_has_restarted() {
    // What a freshly started agent answers for a pid it never ran.
    let agent = FakeAgent::serve(|mut conn| {
        conn.start_program();
        conn.refuse("guest-exec-status", "GenericError", "Invalid parameter 'pid'");
        conn.wait_for_close();
    });
    let (out, _) = guest_run_on(&agent, &[]);
    let message = out.error("AgentDisconnected");
    assert!(
        message.contains("no longer knows the program (guest pid 4242)"),
        "{message}"
    );
    assert!(message.contains("Invalid parameter 'pid'"), "{message}");
}

#[test]
fn a_command_without_reply_that_replies_anyway_succeeds() {
    let agent = FakeAgent::serve(|mut conn| {
        conn.sync();
        conn.answer("guest-shutdown", json!({}));
        conn.wait_for_close();
    });
    let socket = agent.socket();
    let out = run(
        &[
            "guest-cmd",
            socket.to_str().unwrap(),
            r#"{"execute": "guest-shutdown"}"#,
        ],
        None,
    );
    assert_eq!((out.status, out.stdout.trim()), (0, "{}"), "{out:?}");
}

#[test]
fn a_guest_exec_whose_reply_times_out_may_have_started_the_program() {
    let agent = FakeAgent::serve(|mut conn| {
        conn.sync();
        let request = conn.request();
        assert_eq!(request["execute"], "guest-exec");
        // The agent got the whole request and is slow to answer.
        conn.wait_for_close();
    });
    let (out, _) = guest_run_on(&agent, &["--reply-timeout", "0.3"]);
    let message = out.error("AgentTimeout");
    assert!(
        message.contains("did not answer guest-exec within 0.3 s"),
        "{message}"
    );
    assert!(
        message.contains("the program may have started in the guest"),
        "a user who retries would run it twice: {message}"
    );
}

#[test]
fn guest_cmd_refuses_the_sync_commands_virtomate_sends_itself() {
    for name in ["guest-sync-delimited", "guest-sync"] {
        let request = format!(r#"{{"execute": "{name}", "arguments": {{"id": 1}}}}"#);
        // Refused before any connection: the socket need not exist.
        let out = run(&["guest-cmd", "/nonexistent/qga.sock", &request], None);
        assert_eq!(out.status, 2, "{out:?}");
        assert!(
            out.stderr.contains(&format!("guest-cmd does not send {name}")),
            "{out:?}"
        );
    }
}

#[test]
fn a_socket_whose_queue_stays_full_is_busy_not_missing() {
    use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qga.sock");
    // A listener that accepts nothing, with room for one waiting client:
    // what QEMU's chardev looks like with clients queued behind the one it
    // serves.
    let listener = socket(AddressFamily::Unix, SockType::Stream, SockFlag::empty(), None).unwrap();
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&listener),
        &UnixAddr::new(&path).unwrap(),
    )
    .unwrap();
    listen(&listener, Backlog::new(0).unwrap()).unwrap();
    let _waiting = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let started = Instant::now();
    let out = run(
        &[
            "--timeout",
            "0.5",
            "guest-run",
            path.to_str().unwrap(),
            "--",
            "true",
        ],
        None,
    );
    let message = out.error("AgentTimeout");
    assert!(message.contains("busy"), "{message}");
    assert!(!message.contains("check that the VM runs"), "{message}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "it waited for its turn"
    );
}

#[test]
fn an_interruption_while_the_start_request_is_still_being_sent_started_nothing() {
    // The agent reads the handshake, then nothing more: 8 MiB of --stdin
    // cannot all be sent, and the agent acts only on a whole request.
    let agent = FakeAgent::serve(|mut conn| {
        conn.sync();
        conn.wait_for_bytes();
        conn.tell("the start request's first bytes");
        conn.linger();
    });
    let mut child = support::virtomate()
        .args([
            "guest-run",
            "--stdin",
            agent.socket().to_str().unwrap(),
            "--",
            "cat",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, &vec![b'x'; 8 << 20]).unwrap();
    drop(stdin);
    agent.wait_for("the start request's first bytes");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["type"], "Interrupted", "{json}");
    let message = json["message"].as_str().unwrap();
    assert!(message.contains("was being sent"), "{message}");
    assert!(
        message.contains("nothing was started"),
        "not 'may have started': {message}"
    );
}

#[test]
fn an_interruption_as_the_final_status_arrives_says_the_program_ended() {
    // The status that says the program ended is half sent when the signal
    // comes; the agent, having reported the end, forgets the pid.
    let agent = FakeAgent::serve(|mut conn| {
        conn.start_program();
        let poll = conn.request();
        assert_eq!(poll["execute"], "guest-exec-status", "{poll}");
        conn.send(b"{\"return\": {\"exited\": true, \"exitco");
        conn.tell("half the final status");
        conn.sync();
        conn.refuse("guest-exec-status", "GenericError", "Invalid parameter 'pid'");
        conn.wait_for_close();
    });
    let json = {
        let child = support::spawn_guest_run(&agent.socket(), &["true"]);
        agent.wait_for("half the final status");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let output = child.wait_with_output().unwrap();
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    assert_eq!(json["type"], "Interrupted", "{json}");
    let message = json["message"].as_str().unwrap();
    assert!(message.contains("guest pid 4242"), "{message}");
    assert!(
        message.contains("no longer running"),
        "not 'may still be running': {message}"
    );
}
