//! Ctrl-C while a request whose reply names what the agent keeps is in
//! flight: the private directory `copy` makes beside the destination, the
//! output files a followed run opens. The reply is awaited (a fake agent
//! holds it until the signal has been sent) and what it named undone; a
//! second Ctrl-C stops that wait at once and says what may stay.

use std::io::Write;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

use crate::support::fake_agent::FakeAgent;
use crate::support::{spawn_session_sent, virtomate, wait_until, StderrLines};

/// The first handle and pid the fake agent hands out.
const FIRST_HANDLE: i64 = 1000;
const FIRST_PID: i64 = 5000;

/// What the fake agent was asked, in order: `close N` for each
/// `guest-file-close`, `PROGRAM ARG...` for each `guest-exec` (a script's
/// text left out).
type Asked = Arc<Mutex<Vec<String>>>;

/// An agent that answers what a copy or a followed run asks as a willing
/// guest does: `test` fails, every other program succeeds, the setup of a
/// followed run prints its directory. The reply to the first request
/// `held` picks waits until the test says the signal has been sent (or,
/// with none said, forever). It tells `held` once it holds it.
fn willing_agent(
    held: impl Fn(&Value, Option<&str>) -> bool + Send + 'static,
    signalled: Receiver<()>,
) -> (FakeAgent, Asked) {
    let asked = Asked::default();
    let record = asked.clone();
    let agent = FakeAgent::serve(move |mut conn| {
        let (mut next_pid, mut next_handle) = (FIRST_PID, FIRST_HANDLE);
        // Each program's status once ended, and what its start said.
        let mut statuses = std::collections::HashMap::new();
        let mut programs = std::collections::HashMap::new();
        // The program of a run, until something is killed.
        let mut running = None;
        let mut holding = true;
        while let Some(request) = conn.next_request() {
            let id = request["id"].clone();
            let pid = request["arguments"]["pid"].as_i64();
            let program = pid.and_then(|pid| programs.get(&pid)).map(String::as_str);
            if holding && held(&request, program) {
                holding = false;
                conn.tell("held");
                if signalled.recv().is_err() {
                    // The test is over without a signal sent: no reply.
                    conn.linger();
                    return;
                }
            }
            let ret = match request["execute"].as_str().unwrap_or_default() {
                "guest-sync-delimited" => {
                    conn.send("\u{FFFD}\n".as_bytes());
                    conn.send_sync_reply(request["arguments"]["id"].as_u64().unwrap());
                    continue;
                }
                "guest-info" => json!({"version": "7.2.0", "supported_commands": supported()}),
                "guest-exec" => {
                    let (said, status) = started(&request["arguments"]);
                    let arguments = request["arguments"].to_string();
                    if said.starts_with("kill ") || arguments.contains("kill -s STOP") {
                        running = None;
                    }
                    if arguments.contains(r#"exec \"$@\""#) {
                        running = Some(next_pid);
                    }
                    record.lock().unwrap().push(said.clone());
                    programs.insert(next_pid, said);
                    statuses.insert(next_pid, status);
                    next_pid += 1;
                    json!({"pid": next_pid - 1})
                }
                "guest-exec-status" if pid == running => json!({"exited": false}),
                "guest-exec-status" => match statuses.remove(&pid.unwrap()) {
                    Some(status) => status,
                    None => {
                        // Told ended once, or never started: forgotten.
                        let error = json!({"class": "GenericError", "desc": "Invalid parameter 'pid'"});
                        conn.reply(&json!({"error": error, "id": id}));
                        continue;
                    }
                },
                "guest-file-write" => {
                    let buf = request["arguments"]["buf-b64"].as_str().unwrap();
                    json!({"count": STANDARD.decode(buf).unwrap().len(), "eof": false})
                }
                "guest-file-flush" => json!({}),
                "guest-file-seek" => json!({"position": 0, "eof": false}),
                "guest-file-open" => {
                    next_handle += 1;
                    json!(next_handle - 1)
                }
                "guest-file-close" => {
                    let handle = &request["arguments"]["handle"];
                    record.lock().unwrap().push(format!("close {handle}"));
                    json!({})
                }
                "guest-file-read" => json!({"count": 0, "buf-b64": "", "eof": false}),
                other => panic!("the fake agent does not expect {other}: {request}"),
            };
            conn.reply(&json!({"return": ret, "id": id}));
        }
    });
    (agent, asked)
}

/// The commands the fake agent says it has, all enabled: what following
/// needs, and the handshake's.
fn supported() -> Value {
    virtomate_protocol::follow::REQUIRED_COMMANDS
        .iter()
        .chain(&["guest-info", "guest-ping"])
        .map(|name| json!({"name": name, "enabled": true, "success-response": true}))
        .collect()
}

/// What a `guest-exec` with `arguments` is said as, and its status once
/// ended: `test` fails, the rest succeed; the setup of a followed run
/// prints the directory it made.
fn started(arguments: &Value) -> (String, Value) {
    let path = arguments["path"].as_str().unwrap();
    let args: Vec<&str> = arguments["arg"]
        .as_array()
        .map(|args| args.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let script = args.first() == Some(&"-c");
    let shown: Vec<&str> = match script {
        true => args.iter().skip(2).copied().collect(),
        false => args.clone(),
    };
    let said = format!("{path} {}", shown.join(" "));
    let setup = script && args[1].contains("mkfifo");
    let status = match (path, setup) {
        ("test", _) => json!({"exited": true, "exitcode": 1}),
        (_, true) => {
            let dir = format!("/tmp/virtomate-follow-{}\n", args[3]);
            json!({"exited": true, "exitcode": 0, "out-data": STANDARD.encode(dir)})
        }
        _ => json!({"exited": true, "exitcode": 0}),
    };
    (said, status)
}

fn sigint(child: &Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
}

fn is_mkdir(request: &Value) -> bool {
    request["execute"] == "guest-exec" && request["arguments"]["path"] == "mkdir"
}

fn is_open(request: &Value) -> bool {
    request["execute"] == "guest-file-open"
}

#[test]
fn ctrl_c_while_copy_makes_its_private_directory_awaits_mkdir_and_removes_the_directory() {
    let (signalled, wait_for_signal) = std::sync::mpsc::channel();
    let (agent, asked) = willing_agent(|request, _| is_mkdir(request), wait_for_signal);
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("f");
    std::fs::write(&source, b"data").unwrap();
    let mut child = virtomate()
        .args(["-l", "info", "copy"])
        .arg(&source)
        .arg(format!("{}:/d/f", agent.socket().display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = StderrLines::of(&mut child);
    agent.wait_for("held");
    sigint(&child);
    lines.wait_for("private directory is being made: awaiting mkdir");
    signalled.send(()).unwrap();
    let output = child.wait_with_output().unwrap();
    drop(agent);
    let json: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    assert_eq!(json["type"], "Interrupted", "{json}");
    let message = json["message"].as_str().unwrap_or_default();
    let asked = asked.lock().unwrap().clone();
    let made = asked
        .iter()
        .find(|said| said.starts_with("mkdir -m 700 /d/.virtomate-"));
    let made = made.expect("mkdir was asked").trim_start_matches("mkdir -m 700 ");
    assert_eq!(asked.last(), Some(&format!("rm -rf {made}")), "{asked:?}");
    assert!(
        message.contains(&format!("removed the temporary {made} in the guest")),
        "{message}"
    );
    assert!(message.contains("the destination was not touched"), "{message}");
}

/// `guest-run --follow` of `true` on `agent` through a control master
/// (which runs it whole), with the global `options`.
fn follow_true_through_a_master(agent: &FakeAgent, options: &[&str]) -> Child {
    virtomate()
        .env("VIRTOMATE_PERSIST", "30")
        .args(options)
        .args(["guest-run", "--follow"])
        .arg(agent.socket())
        .args(["--", "true"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn end_master(agent: &FakeAgent) {
    let ended = virtomate()
        .args(["control", "exit"])
        .arg(agent.socket())
        .output()
        .unwrap();
    assert!(ended.status.success(), "{ended:?}");
}

/// `guest-run --follow` of `true` on `agent`, logging at info.
fn follow_true(agent: &FakeAgent) -> Child {
    virtomate()
        .args(["-l", "info", "guest-run", "--follow"])
        .arg(agent.socket())
        .args(["--", "true"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn ctrl_c_while_a_followed_run_opens_its_output_files_closes_every_handle_the_agent_gives() {
    let (signalled, wait_for_signal) = std::sync::mpsc::channel();
    let (agent, asked) = willing_agent(|request, _| is_open(request), wait_for_signal);
    let mut child = follow_true(&agent);
    let lines = StderrLines::of(&mut child);
    agent.wait_for("held");
    sigint(&child);
    lines.wait_for("being opened: awaiting their handles, to close them");
    signalled.send(()).unwrap();
    lines.wait_for("virtomate: Interrupted: interrupted while preparing the program's start");
    let output = child.wait_with_output().unwrap();
    drop(agent);
    assert_eq!(output.status.code(), Some(255), "{output:?}");
    assert_every_output_file_closed_and_nothing_started(&asked);
}

/// The two chunk files, the two credit pipes and the index were closed,
/// and nothing of the program's was started.
fn assert_every_output_file_closed_and_nothing_started(asked: &Asked) {
    let asked = asked.lock().unwrap().clone();
    let mut closed: Vec<&String> = asked.iter().filter(|said| said.starts_with("close ")).collect();
    closed.sort();
    let handles: Vec<String> = (FIRST_HANDLE..FIRST_HANDLE + 5)
        .map(|h| format!("close {h}"))
        .collect();
    assert_eq!(closed, handles.iter().collect::<Vec<_>>(), "{asked:?}");
    assert!(!asked.iter().any(|said| said.contains(" true")), "{asked:?}");
}

#[test]
fn ctrl_c_through_a_master_while_a_followed_run_opens_its_output_files_closes_every_handle() {
    // The master runs the client's run whole, and settles its step on the
    // client's give-up as the client's own engine does.
    let (signalled, wait_for_signal) = std::sync::mpsc::channel();
    let (agent, asked) = willing_agent(|request, _| is_open(request), wait_for_signal);
    let mut child = follow_true_through_a_master(&agent, &[]);
    let lines = StderrLines::of(&mut child);
    agent.wait_for("held");
    sigint(&child);
    signalled.send(()).unwrap();
    lines.wait_for("virtomate: Interrupted: interrupted while preparing the program's start");
    let output = child.wait_with_output().unwrap();
    end_master(&agent);
    drop(agent);
    assert_eq!(output.status.code(), Some(255), "{output:?}");
    assert_every_output_file_closed_and_nothing_started(&asked);
}

#[test]
fn a_second_ctrl_c_through_a_master_stops_the_wait_for_its_give_up() {
    // The open is answered only once the client has stopped waiting.
    let (signalled, wait_for_signal) = std::sync::mpsc::channel();
    let (agent, _) = willing_agent(|request, _| is_open(request), wait_for_signal);
    let child = follow_true_through_a_master(&agent, &["--reply-timeout", "600"]);
    agent.wait_for("held");
    let check = virtomate()
        .args(["control", "check"])
        .arg(agent.socket())
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&check.stdout).unwrap_or_default();
    let log = std::path::PathBuf::from(info["log"].as_str().expect("control check names the log"));
    sigint(&child);
    wait_until(
        30,
        "the master to wait for the open on the client's give-up",
        || std::fs::read_to_string(&log).is_ok_and(|logged| logged.contains("given up while")),
    );
    sigint(&child);
    let output = child.wait_with_output().unwrap();
    signalled.send(()).unwrap();
    end_master(&agent);
    drop(agent);
    assert_eq!(output.status.code(), Some(255), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Interrupted"), "{stderr}");
    assert!(
        stderr.contains(
            "a second signal stopped the wait for the agent's reply while the control master was giving \
             the run up"
        ),
        "{stderr}"
    );
}

#[test]
fn a_second_ctrl_c_stops_the_wait_for_an_open_at_once_and_says_what_may_stay() {
    // The open is answered only once virtomate has stopped waiting for it.
    let (signalled, wait_for_signal) = std::sync::mpsc::channel();
    let (agent, _) = willing_agent(|request, _| is_open(request), wait_for_signal);
    let request = json!({"id": "r", "run": ["true"], "follow": true});
    let options = ["-l", "info", "--reply-timeout", "600"];
    let (child, lines, stdin) = spawn_session_sent(&options, &agent.socket(), &request);
    agent.wait_for("held");
    sigint(&child);
    lines.wait_for("being opened: awaiting their handles, to close them");
    sigint(&child);
    lines.wait_for("no longer waiting for the reply while the output files in the guest are being opened");
    signalled.send(()).unwrap();
    let output = child.wait_with_output().unwrap();
    drop(stdin);
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    let reply: Value = serde_json::from_str(stdout.lines().next().unwrap_or_default()).unwrap_or_default();
    assert_eq!(reply["id"], "r", "{stdout}");
    assert_eq!(reply["error"]["type"], "Interrupted", "{stdout}");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(
            "a second signal stopped the wait for the agent's reply while the output files in the guest \
             are being opened"
        ),
        "{message}"
    );
    drop(agent);
}

#[test]
fn a_helper_whose_end_a_run_cut_short_was_told_does_not_keep_the_runs_directory() {
    // The end of the helper moving the first chunk file into the pipe is
    // told to a look the signal cuts short: the agent then forgets its
    // pid, and the give-up finds it unknown.
    let (signalled, wait_for_signal) = std::sync::mpsc::channel();
    let is_helper_status = |request: &Value, program: Option<&str>| {
        request["execute"] == "guest-exec-status" && program.is_some_and(|p| p.contains("/in.0 "))
    };
    let (agent, asked) = willing_agent(is_helper_status, wait_for_signal);
    let mut child = virtomate()
        .args(["-l", "info", "guest-run", "-i"])
        .arg(agent.socket())
        .args(["--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = StderrLines::of(&mut child);
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let block = vec![b'y'; 64 << 10];
        while stdin.write_all(&block).is_ok() {}
    });
    agent.wait_for("held");
    sigint(&child);
    signalled.send(()).unwrap();
    lines.wait_for("virtomate: Interrupted: interrupted while waiting for the program");
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    drop(agent);
    assert_eq!(output.status.code(), Some(255), "{output:?}");
    let asked = asked.lock().unwrap().clone();
    let moved = asked
        .iter()
        .find_map(|said| Some(said.strip_prefix("/bin/sh sh ")?.split_once("/in.0 ")?.0));
    let dir = moved.expect("a chunk was moved");
    // The clean-up's script, given the directory (and the streams whose
    // end was not read).
    let cleaned = |said: &String| {
        let rest = said.strip_prefix(&format!("/bin/sh sh {dir}"));
        rest.is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
    };
    assert!(asked.iter().any(cleaned), "{asked:?}");
}

/// A followed `true` that never ends on an agent that holds the first
/// request once `armed`: the give-up's, after the first signal.
fn agent_holding_the_give_up() -> (FakeAgent, Asked, Arc<AtomicBool>, std::sync::mpsc::Sender<()>) {
    let armed = Arc::new(AtomicBool::new(false));
    let holds = armed.clone();
    let (signalled, wait_for_signal) = std::sync::mpsc::channel();
    let (agent, asked) = willing_agent(move |_, _| holds.load(Ordering::SeqCst), wait_for_signal);
    (agent, asked, armed, signalled)
}

/// Once the program of `child` has started: Ctrl-C, and again once the
/// give-up waits for the agent to stop it. Its output once it has exited,
/// within 30 seconds (else it is killed).
fn ctrl_c_then_again_while_it_stops_the_program(
    child: Child,
    lines: &StderrLines,
    agent: &FakeAgent,
    asked: &Asked,
    armed: &AtomicBool,
) -> std::process::Output {
    wait_until(30, "the program to start", || {
        asked.lock().unwrap().iter().any(|said| said.ends_with(" true"))
    });
    armed.store(true, Ordering::SeqCst);
    sigint(&child);
    lines.wait_for("stopping the program");
    agent.wait_for("held");
    sigint(&child);
    exit_of(child, "virtomate after a further Ctrl-C")
}

/// Waits for `child` to exit, for 30 seconds at most; then kills it.
fn exit_of(mut child: Child, what: &str) -> std::process::Output {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{what}: still waiting after 30 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_further_ctrl_c_stops_guest_runs_clean_up_on_a_hung_agent_and_says_what_may_stay() {
    let (agent, asked, armed, signalled) = agent_holding_the_give_up();
    let mut child = virtomate()
        .args(["-l", "info", "--reply-timeout", "600", "guest-run", "--follow"])
        .arg(agent.socket())
        .args(["--", "true"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = StderrLines::of(&mut child);
    let output = ctrl_c_then_again_while_it_stops_the_program(child, &lines, &agent, &asked, &armed);
    signalled.send(()).unwrap();
    drop(agent);
    assert_eq!(output.status.code(), Some(255), "{output:?}");
    let pid = FIRST_PID + 1;
    lines.wait_for(&format!(
        "Interrupted: interrupted while waiting for the program (guest pid {pid})"
    ));
    lines.wait_for("a further signal stopped virtomate's clean-up");
}

#[test]
fn a_further_ctrl_c_stops_a_sessions_clean_up_on_a_hung_agent_and_says_what_may_stay() {
    let (agent, asked, armed, signalled) = agent_holding_the_give_up();
    let request = json!({"id": "r", "run": ["true"], "follow": true});
    let options = ["-l", "info", "--reply-timeout", "600"];
    let (child, lines, stdin) = spawn_session_sent(&options, &agent.socket(), &request);
    let output = ctrl_c_then_again_while_it_stops_the_program(child, &lines, &agent, &asked, &armed);
    signalled.send(()).unwrap();
    drop(stdin);
    drop(agent);
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    let reply: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_default();
    assert_eq!(reply["id"], "r", "{stdout}");
    assert_eq!(reply["error"]["type"], "Interrupted", "{stdout}");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("guest pid {}", FIRST_PID + 1)),
        "{message}"
    );
    assert!(
        message.contains("a further signal stopped virtomate's clean-up"),
        "{message}"
    );
}
