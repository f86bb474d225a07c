//! The control master's faults at the moments the real agent will not
//! make on demand: a master killed while the agent still owes the start
//! of a program (a fake agent that never answers `guest-exec`), or before
//! it has answered; and a master of an older virtomate, which knows no
//! whole runs.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::master::{
    end_master, master_info, masters_of, runs_end_as_without_the_master, through_master, PERSIST,
};
use crate::support::fake_agent::{Conn, FakeAgent};
use crate::support::host_agent::HostAgent;
use crate::support::older_master::OlderMaster;
use crate::support::{virtomate, wait_until};

/// An agent that leaves the first `times` requests for `unanswered`
/// without an answer (each connection that gets one held until its master
/// goes), and otherwise runs every program as pid 4242, printing `again`.
fn agent_silent_on(unanswered: &'static str, times: usize) -> FakeAgent {
    let mut silences = 0;
    FakeAgent::serve_each(move |mut conn, _| {
        while let Some(request) = conn.next_request() {
            let command = request["execute"].as_str().unwrap_or_default();
            if command == unanswered && silences < times {
                silences += 1;
                conn.wait_for_close();
                return;
            }
            match command {
                "guest-sync-delimited" => {
                    conn.send("\u{FFFD}\n".as_bytes());
                    conn.send_sync_reply(request["arguments"]["id"].as_u64().unwrap());
                }
                "guest-exec" => {
                    conn.tell("started");
                    reply(&mut conn, &request, json!({"pid": 4242}));
                }
                "guest-exec-status" => reply(
                    &mut conn,
                    &request,
                    json!({"exited": true, "exitcode": 0, "out-data": "YWdhaW4="}),
                ),
                _ => reply(&mut conn, &request, json!({})),
            }
        }
    })
}

fn reply(conn: &mut Conn, request: &Value, ret: Value) {
    conn.reply(&json!({"return": ret, "id": request["id"]}));
}

/// `virtomate OPTIONS guest-run SOCKET -- true` through a master, in the
/// background.
fn spawn_run(options: &[&str], socket: &str) -> Child {
    virtomate()
        .env("VIRTOMATE_PERSIST", PERSIST)
        .args(["--reply-timeout", "10", "guest-run"])
        .args(options)
        .args([socket, "--", "true"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Kills the one master of `socket` with SIGKILL.
fn kill_master(socket: &std::path::Path) {
    let masters = masters_of(socket);
    assert_eq!(masters.len(), 1, "one master: {masters:?}");
    let pid = nix::unistd::Pid::from_raw(masters[0] as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
}

/// What `client` says once its master is killed while `agent` owes it
/// the reply to `command`: within its timeouts.
fn master_killed_under(client: Child, agent: &FakeAgent, command: &str, socket: &Path) -> Output {
    agent.wait_for_next(command);
    let killed = Instant::now();
    kill_master(socket);
    let output = client.wait_with_output().unwrap();
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "within the client's timeouts"
    );
    output
}

#[test]
fn a_master_killed_before_the_program_started_says_it_may_have_started() {
    let agent = agent_silent_on("guest-exec", 2);
    let socket = agent.socket();
    let sock = socket.to_str().unwrap();
    let mut said = Vec::new();
    for options in [&[][..], &["--raw"][..]] {
        let client = spawn_run(options, sock);
        said.push(master_killed_under(client, &agent, "guest-exec", &socket));
    }
    let (json, raw) = (&said[0], &said[1]);
    assert_eq!(json.status.code(), Some(1), "{json:?}");
    let error: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(error["type"], "AgentDisconnected", "{error}");
    let message = error["message"].as_str().unwrap();
    for honest in ["the control master", "before it said whether the program started"] {
        assert!(message.contains(honest), "it names what went away: {message}");
    }
    assert!(
        message.contains("the program may have started in the guest") && !message.contains("nothing"),
        "it cannot know whether the program started, and says so: {message}"
    );
    assert_eq!(raw.status.code(), Some(255), "{raw:?}");
    assert!(raw.stdout.is_empty(), "{raw:?}");
    assert_eq!(
        String::from_utf8_lossy(&raw.stderr),
        format!("virtomate: AgentDisconnected: {message}\n"),
        "--raw says the same on stderr"
    );
    let out = through_master(&["guest-run", sock, "--", "true"], None);
    assert_eq!(out.json()["stdout"], "again", "a new master: {out:?}");
    end_master(&socket);
}

/// Before its answer to the run, the master has started nothing (it
/// answers once it holds the agent): the client gives the run to a new
/// master, and it runs once.
#[test]
fn a_master_killed_while_it_reaches_the_agent_leaves_the_run_to_a_new_one() {
    let agent = agent_silent_on("guest-sync-delimited", 1);
    let socket = agent.socket();
    let client = spawn_run(&[], socket.to_str().unwrap());
    agent.wait_for("guest-sync-delimited");
    kill_master(&socket);
    let output = client.wait_with_output().unwrap();
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(out["stdout"], "again", "{output:?}");
    assert_eq!(masters_of(&socket).len(), 1, "a new master ran it");
    // Told before it is answered: every start is known by now.
    let starts = agent
        .got_so_far()
        .iter()
        .filter(|event| *event == "started")
        .count();
    assert_eq!(starts, 1, "the program was started once");
    end_master(&socket);
}

/// Masters that go on going away before they answer: the client gives
/// up after a few, with a typed error that says nothing was started and
/// names the master.
#[test]
fn a_run_whose_masters_all_die_before_they_answer_says_nothing_was_started() {
    let agent = agent_silent_on("guest-sync-delimited", usize::MAX);
    let socket = agent.socket();
    let mut client = spawn_run(&[], socket.to_str().unwrap());
    // Each master killed once it has asked the agent for its handshake.
    let mut killed = std::collections::HashSet::new();
    wait_until(30, "the client to give up", || {
        if agent.got_so_far().iter().any(|got| got == "guest-sync-delimited") {
            for pid in masters_of(&socket) {
                let signal = nix::sys::signal::Signal::SIGKILL;
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
                killed.insert(pid);
            }
        }
        client.try_wait().unwrap().is_some()
    });
    let output = client.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let error: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(error["type"], "AgentDisconnected", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("the control master") && message.contains("nothing was started"),
        "{message}"
    );
    assert!(
        (1..=3).contains(&killed.len()),
        "a new master each try: {killed:?}"
    );
    assert!(!agent.got_so_far().contains(&"started".to_owned()));
}

/// A master of an older virtomate, still running after an upgrade, does
/// not know whole runs: the client runs the program through it command by
/// command, and prints what it prints without a master.
#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_run_through_an_older_master_ends_as_a_run_without_it() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let sock = socket.to_str().unwrap();
    // Where this agent's master is looked for: a real one's socket.
    assert_eq!(through_master(&["guest-ping", sock], None).status, 0);
    let path = std::path::PathBuf::from(master_info(&socket)["socket"].as_str().unwrap());
    end_master(&socket);
    wait_until(10, "the real master's socket to go", || !path.exists());
    let older = OlderMaster::serve(&path, &socket);
    let cases: Vec<(Vec<&str>, Option<&[u8]>)> = vec![
        (vec!["--", "sh", "-c", "echo out; echo err >&2; exit 3"], None),
        (vec!["--stdin", "--", "sh", "-c", "cat; echo more"], Some(b"in\n")),
        (vec!["--raw", "--", "sh", "-c", "printf raw; exit 7"], None),
        (
            vec!["--follow", "--", "sh", "-c", "echo a; echo b >&2; exit 2"],
            None,
        ),
    ];
    runs_end_as_without_the_master(sock, &cases);
    let got = older.got();
    let count = |command: &str| got.iter().filter(|c| *c == command).count();
    assert_eq!(
        count("x-virtomate-run"),
        cases.len(),
        "each asked to run whole: {got:?}"
    );
    // --follow starts helpers of its own besides the program.
    assert!(
        count("guest-exec") >= cases.len(),
        "and ran through it command by command: {got:?}"
    );
    assert!(
        masters_of(&socket).is_empty(),
        "no master of this virtomate was started"
    );
}

/// A master killed while a followed program streams: the client says
/// which program it left and where its output stays, as a lone client
/// does when its agent goes.
#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_master_killed_while_a_followed_run_streams_names_its_pid_and_directory() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let marker = "sleep 6101";
    let mut client = virtomate()
        .env("VIRTOMATE_PERSIST", PERSIST)
        .args([
            "guest-run",
            "--follow",
            socket.to_str().unwrap(),
            "--",
            "sh",
            "-c",
        ])
        .arg(format!("echo first; {marker}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(client.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first, "first\n", "it streams");
    kill_master(&socket);
    let output = client.wait_with_output().unwrap();
    Command::new("pkill")
        .args(["-f", &format!("^{marker}")])
        .status()
        .unwrap();
    assert_eq!(output.status.code(), Some(255), "{output:?}");
    let said = String::from_utf8(output.stderr).unwrap();
    let message = said
        .strip_prefix("virtomate: AgentDisconnected: the control master ")
        .unwrap_or_else(|| panic!("{said}"));
    assert!(message.contains("while the program (guest pid "), "{said}");
    // The guest is this host: the directory named is there.
    let dir = message
        .split("remove ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no directory named: {said}"));
    assert!(Path::new(dir).is_dir(), "{dir} is where its output stays: {said}");
    // The next followed run would, once the program has gone.
    let _ = std::fs::remove_dir_all(dir);
}

/// A command passed on command by command (`guest-info`) whose master is
/// killed while the agent owes its reply: the error names the master, not
/// the agent, which still runs.
#[test]
fn a_master_killed_under_a_passed_on_command_is_named_as_what_went_away() {
    let agent = agent_silent_on("guest-info", 1);
    let socket = agent.socket();
    let sock = socket.to_str().unwrap();
    let client = virtomate()
        .env("VIRTOMATE_PERSIST", PERSIST)
        .args(["--reply-timeout", "10", "guest-info", sock])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let output = master_killed_under(client, &agent, "guest-info", &socket);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let error: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(error["type"], "AgentDisconnected", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("the control master"), "{message}");
    assert!(
        !message.contains("VM may have stopped"),
        "the agent is not blamed: {error}"
    );
    let out = through_master(&["guest-ping", sock], None);
    assert_eq!(out.status, 0, "a new master: {out:?}");
    end_master(&socket);
}
