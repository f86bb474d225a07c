//! `virtomate session`: JSON lines in, JSON lines out, over one agent
//! connection, programs side by side, replies as they end.

use serde_json::{json, Value};

use crate::support::fake_agent::FakeAgent;
use crate::support::host_agent::HostAgent;
use crate::support::live_session::Live;
use crate::support::run;
use crate::support::test_vm::{agent_restart_when, TestVm};

fn session(domain: &str, lines: &[&str]) -> (Vec<Value>, i32) {
    let mut input = lines.join("\n");
    input.push('\n');
    let out = run(&["session", domain], Some(input.as_bytes()));
    let replies = out
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    (replies, out.status)
}

fn result(stdout: &str) -> Value {
    json!({"exit_code": 0, "signal": null, "stderr": null, "stderr_truncated": false,
           "stdout": stdout, "stdout_truncated": false})
}

#[test]
#[ignore = "needs the test VM"]
fn pipelined_requests_run_side_by_side_and_are_answered_as_they_end() {
    let vm = TestVm::boot("session");
    let (replies, status) = session(
        &vm.name,
        &[
            r#"{"id": "slow", "run": ["sh", "-c", "sleep 2; echo slow"]}"#,
            r#"{"id": 2, "run": ["sh", "-c", "sleep 1; echo fast"]}"#,
            r#"{"id": [3], "ping": {}}"#,
        ],
    );
    assert_eq!(status, 0, "{replies:?}");
    assert_eq!(
        replies,
        [
            json!({"id": [3], "result": {}}),
            json!({"id": 2, "result": result("fast\n")}),
            json!({"id": "slow", "result": result("slow\n")}),
        ]
    );
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_line_that_is_no_request_gets_an_error_and_the_session_goes_on() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let (replies, status) = session(
        socket.to_str().unwrap(),
        &[
            "garbage",
            r#"{"id": 1, "run": ["echo", "-n", "é"], "stdin": "aGk="}"#,
            r#"{"id": 2, "run": ["x"], "max_time": 3, "timeout": 1}"#,
            "",
            r#"{"id": 3, "run": ["cat"], "stdin": "aGk=", "encode": true}"#,
            r#"{"id": 4, "run": ["/does/not/exist"]}"#,
        ],
    );
    assert_eq!(status, 0, "{replies:?}");
    let by_id = |id: Value| {
        replies
            .iter()
            .find(|reply| reply["id"] == id)
            .unwrap_or_else(|| panic!("no reply {id} in {replies:?}"))
            .clone()
    };
    assert_eq!(by_id(Value::Null)["error"]["type"], "UsageError");
    assert_eq!(by_id(json!(1))["result"], result("é"));
    assert_eq!(
        by_id(json!(2))["error"],
        json!({"message": "unknown key \"timeout\" in a run request", "type": "UsageError"})
    );
    assert_eq!(by_id(json!(3))["result"]["stdout"], "aGk=");
    assert_eq!(by_id(json!(4))["error"]["type"], "AgentCommandError");
    assert_eq!(replies.len(), 5, "{replies:?}");
}

#[test]
#[ignore = "needs the test VM"]
fn an_agent_restarted_mid_session_fails_the_run_in_flight_and_the_next_request_works() {
    let vm = TestVm::boot("session-restart");
    let mut live = Live::start(&["--reply-timeout", "5", "--timeout", "30"], &vm.name);
    let program = format!("{} sleep 20", agent_restart_when("sleep 1"));
    live.send(json!({"id": "doomed", "run": ["sh", "-c", program]}));
    let reply = live.reply();
    assert_eq!(reply["id"], "doomed", "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(
        matches!(
            reply["error"]["type"].as_str(),
            Some("AgentDisconnected" | "AgentTimeout")
        ),
        "{reply}"
    );
    assert!(message.contains("guest pid"), "{reply}");
    live.send(json!({"id": "next", "run": ["echo", "-n", "again"]}));
    assert_eq!(live.reply(), json!({"id": "next", "result": result("again")}));
    assert_eq!(live.finish(), 0);
}

#[test]
fn sigterm_reports_each_request_in_flight_as_interrupted_with_its_pid() {
    let agent = FakeAgent::serve_each(|mut conn, n| {
        if n == 0 {
            conn.start_program();
        } else {
            conn.sync();
        }
        while let Some(request) = conn.next_request() {
            let reply = json!({"return": {"exited": false}, "id": request["id"]});
            if !conn.send(format!("{reply}\n").as_bytes()) {
                break;
            }
        }
    });
    let mut live = Live::start(&[], agent.socket().to_str().unwrap());
    live.send(json!({"id": "long", "run": ["sleep", "infinity"]}));
    agent.wait_for("guest-exec-status");
    live.signal(nix::sys::signal::Signal::SIGTERM);
    let reply = live.reply();
    assert_eq!(reply["id"], "long", "{reply}");
    assert_eq!(reply["error"]["type"], "Interrupted", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("guest pid 4242"),
        "{reply}"
    );
    assert_eq!(live.finish(), 1);
}

#[test]
fn a_dropped_connection_fails_the_runs_in_flight_with_their_pids_and_the_next_request_reconnects() {
    let agent = FakeAgent::serve_each(|mut conn, n| match n {
        0 => {
            conn.start_program();
            conn.answer("guest-exec-status", json!({"exited": false}));
            // The agent's end closes: the VM stopped, say.
        }
        _ => {
            conn.sync();
            conn.answer("guest-ping", json!({}));
            conn.wait_for_close();
        }
    });
    let mut live = Live::start(&[], agent.socket().to_str().unwrap());
    live.send(json!({"id": 1, "run": ["sleep", "9"]}));
    let reply = live.reply();
    assert_eq!(reply["error"]["type"], "AgentDisconnected", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("guest pid 4242"),
        "{reply}"
    );
    live.send(json!({"id": 2, "ping": {}}));
    assert_eq!(live.reply(), json!({"id": 2, "result": {}}));
    assert_eq!(live.finish(), 0);
}

#[test]
fn interrupted_while_starting_says_the_program_may_have_started() {
    let agent = FakeAgent::serve_each(|mut conn, n| {
        if n == 0 {
            conn.sync();
            let _ = conn.request(); // guest-exec, never answered
        }
        conn.wait_for_close();
    });
    let mut live = Live::start(&[], agent.socket().to_str().unwrap());
    live.send(json!({"id": "s", "run": ["true"]}));
    agent.wait_for("guest-exec");
    live.signal(nix::sys::signal::Signal::SIGINT);
    let reply = live.reply();
    assert_eq!(reply["error"]["type"], "Interrupted", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("may have started"),
        "{reply}"
    );
    assert_eq!(live.finish(), 1);
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_session_takes_guest_runs_options_env_max_time_and_merge_output() {
    let agent = crate::support::host_agent::HostAgent::start();
    let socket = agent.socket();
    let (replies, status) = session(
        socket.to_str().unwrap(),
        &[
            r#"{"id": "env", "run": ["sh", "-c", "printf '%s|%s' \"$A\" \"$PATH\""], "env": {"A": "x=y z"}}"#,
            concat!(
                r#"{"id": "stop", "run": ["sh", "-c", "echo before; sleep 6078 | cat"], "#,
                r#""max_time": 0.5, "grace": 1}"#
            ),
            r#"{"id": "merge", "run": ["true"], "merge_output": true}"#,
        ],
    );
    assert_eq!(status, 0, "{replies:?}");
    let by_id = |id: &str| replies.iter().find(|r| r["id"] == id).unwrap().clone();
    assert_eq!(
        by_id("env")["result"]["stdout"],
        "x=y z|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    let stopped = by_id("stop");
    assert_eq!(stopped["timed_out"], true, "{stopped}");
    assert_eq!(stopped["result"]["signal"], 15, "{stopped}");
    assert_eq!(stopped["result"]["stdout"], "before\n", "{stopped}");
    let leftover = std::process::Command::new("pgrep")
        .args(["-f", "^sleep 6078"])
        .status()
        .unwrap();
    assert!(!leftover.success(), "what the program started was stopped too");
    // The host's qemu-ga is 7.2: refused before anything runs, the session goes on.
    let merged = by_id("merge");
    assert_eq!(merged["error"]["type"], "AgentCommandError", "{merged}");
    assert!(
        merged["error"]["message"]
            .as_str()
            .unwrap()
            .contains("needs qemu-ga 8.1 or newer"),
        "{merged}"
    );
    // Without max_time, a result has no timed_out key: guest-run's shape.
    assert!(by_id("env").get("timed_out").is_none());
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_followed_run_streams_its_output_as_chunks_before_its_result_beside_another_run() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let (replies, status) = session(
        socket.to_str().unwrap(),
        &[
            concat!(
                r#"{"id": "f", "run": ["sh", "-c", "echo one; sleep 2; echo two >&2; echo three"], "#,
                r#""follow": true}"#
            ),
            r#"{"id": "other", "run": ["sh", "-c", "sleep 1; echo other"]}"#,
        ],
    );
    assert_eq!(status, 0, "{replies:?}");
    let position = |wanted: &dyn Fn(&Value) -> bool| replies.iter().position(wanted).unwrap();
    let f_result = position(&|r| r["id"] == "f" && r.get("result").is_some());
    let other_result = position(&|r| r["id"] == "other" && r.get("result").is_some());
    let first_chunk = position(&|r| r["id"] == "f" && r.get("stdout").is_some());
    assert!(
        first_chunk < other_result && other_result < f_result,
        "{replies:?}"
    );
    assert_eq!(replies[other_result]["result"], result("other\n"));
    let stream = |key: &str| -> Vec<u8> {
        let mut bytes = Vec::new();
        for reply in &replies[..f_result] {
            if reply["id"] == "f" {
                if let Some(chunk) = reply.get(key) {
                    use base64::Engine;
                    let chunk = base64::engine::general_purpose::STANDARD.decode(chunk.as_str().unwrap());
                    bytes.extend(chunk.unwrap());
                }
            }
        }
        bytes
    };
    assert_eq!(stream("stdout"), b"one\nthree\n", "{replies:?}");
    assert_eq!(stream("stderr"), b"two\n", "{replies:?}");
    assert!(
        replies[f_result + 1..].iter().all(|r| r["id"] != "f"),
        "{replies:?}"
    );
    // Streamed, so not in the result.
    let mut expected = result("");
    expected["stdout"] = Value::Null;
    assert_eq!(replies[f_result]["result"], expected);
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn an_id_in_flight_is_refused_for_another_request_and_free_again_once_answered() {
    let agent = HostAgent::start();
    let mut live = Live::start(&[], agent.socket().to_str().unwrap());
    live.send(json!({"id": "d", "run": ["sh", "-c", "read line; echo $line"], "stdin": "aGkK"}));
    live.send(json!({"id": "long", "run": ["sleep", "30"], "max_time": 60}));
    live.send(json!({"id": "long", "ping": {}}));
    let refused = live.reply();
    assert_eq!(refused["id"], "long", "{refused}");
    assert_eq!(refused["error"]["type"], "UsageError", "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("\"long\" is still in flight"), "{message}");
    // A NUL cannot reach the guest's command line: refused before it runs.
    live.send(json!({"id": "nul", "run": ["touch", "/tmp/virtomate-nul\u{0}x"]}));
    // The refusal and d's end, in either order: d may end first.
    let (first, second) = (live.reply(), live.reply());
    let (nul, d) = match first["id"] == "nul" {
        true => (first, second),
        false => (second, first),
    };
    assert_eq!(nul["id"], "nul", "{nul}");
    assert_eq!(nul["error"]["type"], "UsageError", "{nul}");
    assert!(nul["error"]["message"].as_str().unwrap().contains("NUL"), "{nul}");
    assert_eq!(d, json!({"id": "d", "result": result("hi\n")}));
    // Answered: its id is free again.
    live.send(json!({"id": "d", "ping": {}}));
    assert_eq!(live.reply(), json!({"id": "d", "result": {}}));
    live.signal(nix::sys::signal::Signal::SIGTERM);
    let interrupted = live.reply();
    assert_eq!(interrupted["id"], "long", "{interrupted}");
    assert_eq!(live.finish(), 1);
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_followed_run_whose_agent_goes_away_names_the_directory_it_leaves_in_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut agent = HostAgent::start_in_with_env(dir, &[], &[("TMPDIR", tmp.to_str().unwrap())]);
    let mut live = Live::start(&[], agent.socket().to_str().unwrap());
    let program = "echo up; exec sleep 3";
    live.send(json!({"id": "f", "run": ["sh", "-c", program], "follow": true}));
    let chunk = live.reply();
    assert_eq!(chunk["stdout"], "dXAK", "{chunk}");
    agent.kill();
    let reply = live.reply();
    assert_eq!(reply["id"], "f", "{reply}");
    let message = reply["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{reply}"));
    let left: Vec<String> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|entry| entry.unwrap().path().display().to_string())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(message.contains(&format!("remove {}", left[0])), "{message}");
    assert!(message.contains("keeps running in the guest as pid"), "{message}");
    assert_eq!(live.finish(), 0);
}

#[test]
#[ignore = "needs the test VM"]
fn a_paused_vm_is_named_as_paused_in_a_sessions_timeout_replies() {
    let vm = TestVm::boot("session-paused");
    let qmp = |command: &str| {
        let request = format!(r#"{{"execute": "{command}"}}"#);
        let out = run(&["qmp", &vm.name, &request], None);
        assert_eq!(out.status, 0, "{out:?}");
    };
    let mut live = Live::start(&["--timeout", "2", "--reply-timeout", "3"], &vm.name);
    live.send(json!({"id": "up", "ping": {}}));
    assert_eq!(live.reply(), json!({"id": "up", "result": {}}));
    live.send(json!({"id": "r", "run": ["sleep", "60"]}));
    live.send(json!({"id": "before", "ping": {}}));
    assert_eq!(live.reply(), json!({"id": "before", "result": {}}));
    qmp("stop");
    live.send(json!({"id": "p", "ping": {}}));
    for _ in 0..2 {
        let reply = live.reply();
        assert!(reply["id"] == "p" || reply["id"] == "r", "{reply}");
        assert_eq!(reply["error"]["type"], "AgentTimeout", "{reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains("QEMU reports the VM as paused"), "{message}");
        assert!(
            message.contains(r#"'{"execute": "cont"}'"#),
            "says how to resume: {message}"
        );
    }
    qmp("cont");
    live.finish();
}

#[test]
fn a_session_reads_no_more_than_its_queue_holds_in_bytes_while_the_agent_is_busy() {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let agent = FakeAgent::serve_each(|mut conn, n| {
        conn.sync();
        if n == 0 {
            let _ = conn.request(); // the first guest-exec, never answered
        }
        conn.wait_for_close();
    });
    let mut child = crate::support::virtomate()
        .args(["--log", "info", "--reply-timeout", "300", "session"])
        .arg(agent.socket())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = crate::support::StderrLines::of(&mut child);
    let mut stdin = child.stdin.take().unwrap();
    let fd = stdin.as_raw_fd();
    writeln!(stdin, "{}", json!({"id": "first", "run": ["true"]})).unwrap();
    agent.wait_for("guest-exec");
    // Lines of 8 MiB, 16 of which the session once queued whole.
    const LINE: usize = 8 << 20;
    let stdin_b64 = "A".repeat(LINE - 64);
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let written = written.clone();
        std::thread::spawn(move || {
            for id in 0..20 {
                let line = format!("{}\n", json!({"id": id, "run": ["cat"], "stdin": stdin_b64}));
                for piece in line.as_bytes().chunks(64 << 10) {
                    if stdin.write_all(piece).is_err() {
                        return;
                    }
                    written.fetch_add(piece.len(), Ordering::SeqCst);
                }
            }
        })
    };
    stderr.wait_for("reading waits for room");
    let mut in_pipe: nix::libc::c_int = 0;
    // SAFETY: FIONREAD writes one int, the bytes in the pipe.
    assert_eq!(
        unsafe { nix::libc::ioctl(fd, nix::libc::FIONREAD, &mut in_pipe) },
        0
    );
    let read = written.load(Ordering::SeqCst) - in_pipe as usize;
    // 64 MiB queued, the line being read, and the 64 KiB piece being written.
    assert!(
        read <= (64 << 20) + LINE + (1 << 20),
        "the session read {read} bytes"
    );
    let _ = child.kill();
    let _ = child.wait();
    writer.join().unwrap();
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_time_limit_stops_the_program_while_nobody_reads_the_sessions_output() {
    let agent = HostAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let mut live = Live::start(&[], agent.socket().to_str().unwrap());
    let program = format!("echo $$ > {}; exec sleep 60", pid_file.display());
    live.send(json!({"id": "limited", "run": ["sh", "-c", program], "max_time": 2}));
    // A result larger than the pipe to the reader, which reads nothing yet.
    live.send(json!({"id": "big", "run": ["sh", "-c", "head -c 300000 /dev/zero | tr '\\0' a"]}));
    crate::support::wait_until(20, "the program to start", || {
        std::fs::read_to_string(&pid_file).is_ok_and(|pid| pid.ends_with('\n'))
    });
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let proc = format!("/proc/{}", pid.trim());
    crate::support::wait_until(20, "the program to be stopped", || {
        !std::path::Path::new(&proc).exists()
    });
    let mut replies = vec![live.reply(), live.reply()];
    replies.sort_by_key(|r| r["id"].as_str().map(str::to_owned));
    assert_eq!(replies[0]["id"], "big", "{replies:?}");
    assert_eq!(replies[0]["result"]["stdout"].as_str().unwrap().len(), 300_000);
    assert_eq!(replies[1]["timed_out"], true, "{:?}", replies[1]);
    assert_eq!(live.finish(), 0);
}
