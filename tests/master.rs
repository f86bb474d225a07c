//! The control master (`VIRTOMATE_PERSIST`): fresh virtomate processes
//! reach the agent through one background process that holds its
//! channel, and get what they would get without it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::host_agent::HostAgent;
use crate::support::live_session::Live;
use crate::support::test_vm::TestVm;
use crate::support::{run_command, virtomate, wait_until, Outcome};

/// How long the tests' masters stay after their last request: long
/// enough for a test, short enough not to linger on the machine.
pub(crate) const PERSIST: &str = "30";

/// `virtomate ARGS` with the master setting.
pub(crate) fn through_master(args: &[&str], stdin: Option<&[u8]>) -> Outcome {
    run_command(virtomate().env("VIRTOMATE_PERSIST", PERSIST).args(args), stdin)
}

/// `virtomate control check SOCKET`, once one runs.
pub(crate) fn master_info(socket: &Path) -> Value {
    let out = run_command(
        virtomate().args(["control", "check", socket.to_str().unwrap()]),
        None,
    );
    assert_eq!(out.status, 0, "a master runs: {out:?}");
    out.json()
}

pub(crate) fn end_master(socket: &Path) {
    let _ = run_command(
        virtomate().args(["control", "exit", socket.to_str().unwrap()]),
        None,
    );
}

pub(crate) fn alive(pid: i64) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

pub(crate) fn runs_on_host(marker: &str) -> bool {
    let out = Command::new("pgrep")
        .args(["-f", &format!("^{marker}")])
        .output()
        .unwrap();
    out.status.success()
}

/// The processes serving as master for `socket`.
pub(crate) fn masters_of(socket: &Path) -> Vec<u32> {
    let wanted = socket.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            args.windows(2).any(|w| w == [&b"control"[..], &b"serve"[..]])
                && args.contains(&wanted.as_bytes())
        })
        .collect()
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn every_command_of_fresh_processes_goes_through_one_master() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let sock = socket.to_str().unwrap();

    let out = through_master(&["guest-run", sock, "--", "echo", "-n", "first"], None);
    assert_eq!(out.json()["stdout"], "first", "{out:?}");
    let pid = master_info(&socket)["pid"].as_i64().unwrap();

    let out = through_master(
        &[
            "guest-run",
            "--stdin",
            "--env",
            "X=y",
            sock,
            "--",
            "sh",
            "-c",
            "cat; echo $X",
        ],
        Some(b"in "),
    );
    assert_eq!(out.json()["stdout"], "in y\n", "{out:?}");
    let out = through_master(
        &["guest-run", "--raw", sock, "--", "sh", "-c", "echo raw; exit 3"],
        None,
    );
    assert_eq!((out.status, out.stdout.as_str()), (3, "raw\n"), "{out:?}");
    let out = through_master(
        &[
            "guest-run",
            "--follow",
            sock,
            "--",
            "sh",
            "-c",
            "echo a; echo b >&2",
        ],
        None,
    );
    assert_eq!((out.status, out.stdout.as_str()), (0, "a\n"), "{out:?}");
    let out = through_master(&["guest-ping", sock], None);
    assert_eq!(out.status, 0, "{out:?}");
    let out = through_master(&["guest-info", sock], None);
    assert!(out.json()["version"].is_string(), "{out:?}");
    let out = through_master(&["guest-cmd", sock, r#"{"execute": "guest-get-osinfo"}"#], None);
    assert!(out.json()["kernel-release"].is_string(), "{out:?}");
    let out = through_master(
        &[
            "guest-cmd",
            "--unchecked",
            sock,
            r#"{"execute": "guest-no-such-thing"}"#,
        ],
        None,
    );
    assert_eq!(out.json()["type"], "AgentCommandError", "{out:?}");

    let source = agent.dir.path().join("source");
    std::fs::write(&source, b"copied through the master\n").unwrap();
    let target = agent.dir.path().join("target");
    let back = agent.dir.path().join("back");
    let into = format!("{sock}:{}", target.display());
    let out = through_master(&["copy", source.to_str().unwrap(), &into], None);
    assert_eq!(out.status, 0, "{out:?}");
    let out = through_master(&["copy", &into, back.to_str().unwrap()], None);
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(std::fs::read(&back).unwrap(), b"copied through the master\n");

    let mut live = Live::start(&["--persist", PERSIST], sock);
    live.send(json!({"id": 1, "run": ["echo", "-n", "in a session"]}));
    let reply = live.reply();
    assert_eq!(reply["result"]["stdout"], "in a session", "{reply}");
    live.send(json!({"id": 2, "ping": {}}));
    assert_eq!(live.reply()["id"], 2);
    assert_eq!(live.finish(), 0);

    let info = master_info(&socket);
    assert_eq!(info["pid"], pid, "the same master served them all: {info}");
    assert!(info["requests"].as_u64().unwrap() >= 20, "{info}");
    assert_eq!(masters_of(&socket).len(), 1);

    let out = run_command(virtomate().args(["control", "exit", sock]), None);
    assert_eq!(out.json()["exited"], true, "{out:?}");
    assert!(!alive(pid), "the master ended");
    let out = run_command(virtomate().args(["control", "check", sock]), None);
    assert_eq!(out.json()["type"], "NotFoundError", "{out:?}");
    assert!(!master_paths_left(&info), "its socket went with it");
}

pub(crate) fn master_paths_left(info: &Value) -> bool {
    Path::new(info["socket"].as_str().unwrap()).exists()
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn without_the_setting_nothing_goes_through_a_master() {
    let agent = HostAgent::start();
    let out = run_command(
        virtomate()
            .env_remove("VIRTOMATE_PERSIST")
            .args(["guest-ping", agent.socket().to_str().unwrap()]),
        None,
    );
    assert_eq!(out.status, 0, "{out:?}");
    assert!(masters_of(&agent.socket()).is_empty());
}

#[test]
#[ignore = "needs the test VM"]
fn programs_of_several_clients_run_side_by_side_in_the_guest() {
    let vm = TestVm::boot("master-side-by-side");
    let socket = vm.socket();
    let sock = socket.to_str().unwrap().to_owned();
    let children: Vec<_> = (0..4)
        .map(|i| {
            virtomate()
                .env("VIRTOMATE_PERSIST", PERSIST)
                .args(["guest-run", &sock, "--", "sh", "-c"])
                .arg(format!("sleep 8; echo -n {i}"))
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // All four sleep in the guest at once: a fifth client sees them.
    wait_until(60, "four sleeps in the guest", || {
        let out = through_master(
            &["guest-run", &sock, "--", "sh", "-c", "ps | grep -c ' sleep 8$'"],
            None,
        );
        out.json()["stdout"].as_str().is_some_and(|n| n.trim() == "4")
    });
    for (i, child) in children.into_iter().enumerate() {
        let output = child.wait_with_output().unwrap();
        let out: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(out["stdout"], i.to_string(), "{out}");
    }
    assert_eq!(masters_of(&socket).len(), 1);
    end_master(&socket);
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn an_interrupted_client_stops_its_own_program_only() {
    let agent = HostAgent::start();
    let sock = agent.socket().to_str().unwrap().to_owned();
    let spawn = |marker: &str| {
        virtomate()
            .env("VIRTOMATE_PERSIST", PERSIST)
            .args(["guest-run", "--max-time", "60", &sock, "--", "sh", "-c", marker])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (doomed, spared) = ("sleep 6091", "sleep 6092");
    let interrupted = spawn(doomed);
    let other = spawn(&format!("{spared}; echo -n spared"));
    wait_until(20, "both programs to start", || {
        runs_on_host(doomed) && runs_on_host(spared)
    });
    let pid = nix::unistd::Pid::from_raw(interrupted.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let output = interrupted.wait_with_output().unwrap();
    let error: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(error["type"], "Interrupted", "{error}");
    assert!(!runs_on_host(doomed), "Ctrl-C stopped its program");
    assert!(runs_on_host(spared), "and not the other client's");
    // The other is let down by nothing: end its program early.
    Command::new("pkill")
        .args(["-f", &format!("^{spared}")])
        .status()
        .unwrap();
    let output = other.wait_with_output().unwrap();
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(out["stdout"], "spared", "{out}");
    end_master(&agent.socket());
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_master_killed_mid_request_leaves_a_typed_error_and_the_next_call_starts_another() {
    let mut agent = HostAgent::start();
    let socket = agent.socket();
    let sock = socket.to_str().unwrap().to_owned();
    let marker = "sleep 6093";
    let client = virtomate()
        .env("VIRTOMATE_PERSIST", PERSIST)
        .args([
            "--reply-timeout",
            "10",
            "guest-run",
            &sock,
            "--",
            "sh",
            "-c",
            marker,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(20, "the program to start", || runs_on_host(marker));
    let info = master_info(&socket);
    let killed = info["pid"].as_i64().unwrap();
    let started = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(killed as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let output = client.wait_with_output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "within the client's timeouts"
    );
    let error: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(error["type"], "AgentDisconnected", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("guest pid"),
        "it says which program it left: {error}"
    );
    assert!(
        message.contains("the control master"),
        "and that the master went, not the agent: {error}"
    );
    Command::new("pkill")
        .args(["-f", &format!("^{marker}")])
        .status()
        .unwrap();

    // Its socket is still there, refusing: the next call replaces it.
    assert!(master_paths_left(&info));
    if agent.revive_if_exited() {
        eprintln!("the host's qemu-ga exited as its client was killed: started again");
    }
    let out = through_master(&["guest-run", &sock, "--", "echo", "-n", "again"], None);
    assert_eq!(out.json()["stdout"], "again", "{out:?}");
    let new = master_info(&socket)["pid"].as_i64().unwrap();
    assert_ne!(new, killed);
    end_master(&socket);
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_socket_nobody_listens_on_is_replaced() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let sock = socket.to_str().unwrap();
    // A master's path, found through a running one, then left as a
    // killed master leaves it: a socket file without a listener.
    assert_eq!(through_master(&["guest-ping", sock], None).status, 0);
    let info = master_info(&socket);
    end_master(&socket);
    let path = Path::new(info["socket"].as_str().unwrap());
    drop(std::os::unix::net::UnixListener::bind(path).unwrap());
    assert!(path.exists());
    let out = through_master(&["guest-run", sock, "--", "echo", "-n", "fine"], None);
    assert_eq!(out.json()["stdout"], "fine", "{out:?}");
    assert_ne!(master_info(&socket)["pid"], info["pid"]);
    end_master(&socket);
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn processes_starting_a_master_at_once_end_with_one() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let sock = socket.to_str().unwrap().to_owned();
    let children: Vec<_> = (0..8)
        .map(|i| {
            virtomate()
                .env("VIRTOMATE_PERSIST", PERSIST)
                .args(["guest-run", &sock, "--", "echo", "-n"])
                .arg(i.to_string())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let output = child.wait_with_output().unwrap();
        let out: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(out["stdout"], i.to_string(), "{out}");
    }
    assert_eq!(masters_of(&socket).len(), 1, "one master");
    assert!(master_info(&socket)["requests"].as_u64().unwrap() >= 16);
    end_master(&socket);
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn an_agent_restarted_under_the_same_path_gets_a_new_master() {
    let mut agent = HostAgent::start();
    let socket = agent.socket();
    let sock = socket.to_str().unwrap().to_owned();
    assert_eq!(through_master(&["guest-ping", &sock], None).status, 0);
    let first = master_info(&socket)["pid"].as_i64().unwrap();
    agent.kill();
    std::fs::remove_file(&socket).unwrap();
    // Without its agent, a client fails as it would alone.
    let out = through_master(&["guest-ping", &sock], None);
    let alone = run_command(virtomate().args(["guest-ping", &sock]), None);
    assert_eq!(
        (out.status, &out.stdout),
        (alone.status, &alone.stdout),
        "{out:?}"
    );
    wait_until(10, "the master of the gone socket to end", || !alive(first));

    // The same path, a new socket: a new master.
    let state = tempfile::tempdir().unwrap();
    let mut restarted =
        crate::support::die_with_parent(Command::new("/usr/sbin/qemu-ga").args(["-m", "unix-listen", "-p"]))
            .arg(&socket)
            .arg("-t")
            .arg(state.path())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
    wait_until(10, "qemu-ga to create its socket", || socket.exists());
    let out = through_master(&["guest-run", &sock, "--", "echo", "-n", "restarted"], None);
    assert_eq!(out.json()["stdout"], "restarted", "{out:?}");
    assert_ne!(master_info(&socket)["pid"].as_i64().unwrap(), first);
    end_master(&socket);
    let _ = restarted.kill();
    let _ = restarted.wait();
}

#[test]
#[ignore = "needs the test VM"]
fn a_vm_killed_under_the_master_ends_it_and_clients_fail_as_alone() {
    let vm = TestVm::boot("master-vm-killed");
    let socket = vm.socket();
    let sock = socket.to_str().unwrap().to_owned();
    assert_eq!(through_master(&["guest-ping", &sock], None).status, 0);
    let pid = master_info(&socket)["pid"].as_i64().unwrap();
    let client = virtomate()
        .env("VIRTOMATE_PERSIST", PERSIST)
        .args(["--reply-timeout", "10", "guest-run", &sock, "--", "sleep", "30"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(60, "the program to start in the guest", || {
        let out = through_master(
            &["guest-run", &sock, "--", "sh", "-c", "ps | grep -c ' sleep 30$'"],
            None,
        );
        out.json()["stdout"].as_str().is_some_and(|n| n.trim() == "1")
    });
    vm.kill();
    let output = client.wait_with_output().unwrap();
    let error: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(error["type"], "AgentDisconnected", "{error}");
    wait_until(30, "the master to end with its VM", || !alive(pid));
    let out = through_master(&["guest-ping", &sock], None);
    let alone = run_command(virtomate().args(["guest-ping", &sock]), None);
    assert_eq!(
        (out.status, &out.stdout),
        (alone.status, &alone.stdout),
        "{out:?} against {alone:?}"
    );
    let out = through_master(&["guest-run", &sock, "--", "true"], None);
    let alone = run_command(virtomate().args(["guest-run", &sock, "--", "true"]), None);
    assert_eq!(
        out.json()["type"],
        alone.json()["type"],
        "{out:?} against {alone:?}"
    );
}

#[test]
#[ignore = "needs the test VM"]
fn a_raw_client_queued_behind_an_idle_master_gets_its_answer() {
    let vm = TestVm::boot("master-raw-client");
    let socket = vm.socket();
    let sock = socket.to_str().unwrap().to_owned();
    assert_eq!(through_master(&["guest-ping", &sock], None).status, 0);
    assert_eq!(
        master_info(&socket)["connected"],
        true,
        "the master holds the channel"
    );
    // A client that knows nothing of virtomate, as socat would be.
    let started = Instant::now();
    let mut raw = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    raw.write_all(b"\xff{\"execute\": \"guest-sync-delimited\", \"arguments\": {\"id\": 4711}}\n")
        .unwrap();
    let mut reader = BufReader::new(raw);
    let mut seen = Vec::new();
    loop {
        let mut line = Vec::new();
        reader
            .read_until(b'\n', &mut line)
            .expect("an answer within 30 s");
        assert!(!line.is_empty(), "the channel closed");
        seen.extend_from_slice(&line);
        if seen.windows(4).any(|w| w == b"4711") {
            break;
        }
    }
    eprintln!("the raw client's answer came after {:?}", started.elapsed());
    drop(reader);
    // And the master serves on afterwards.
    let out = through_master(&["guest-run", &sock, "--", "echo", "-n", "after"], None);
    assert_eq!(out.json()["stdout"], "after", "{out:?}");
    end_master(&socket);
}

#[test]
#[ignore = "needs qemu-ga on the host and root"]
fn a_client_of_another_user_is_refused() {
    use std::os::unix::process::CommandExt;
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test connects as another user, which needs root"
    );
    let agent = HostAgent::start();
    let socket = agent.socket();
    assert_eq!(
        through_master(&["guest-ping", socket.to_str().unwrap()], None).status,
        0
    );
    let info = master_info(&socket);
    // The master's socket, reachable by the other user through a link in
    // a directory open to it (its own directory is closed to others).
    let open = tempfile::tempdir().unwrap();
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let link = open.path().join("master.sock");
    std::fs::hard_link(info["socket"].as_str().unwrap(), &link).unwrap();
    std::fs::set_permissions(&link, std::fs::Permissions::from_mode(0o777)).unwrap();
    let ping = |uid: Option<u32>| {
        let mut command = virtomate();
        command.env_remove("VIRTOMATE_PERSIST").args([
            "--timeout",
            "3",
            "guest-ping",
            link.to_str().unwrap(),
        ]);
        if let Some(uid) = uid {
            command.uid(uid).gid(uid).env_remove("XDG_RUNTIME_DIR");
        }
        run_command(&mut command, None)
    };
    assert_eq!(ping(None).status, 0, "its own user is served, as by an agent");
    let refused = ping(Some(65534));
    assert_ne!(refused.status, 0, "another user is not: {refused:?}");
    end_master(&socket);
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn an_idle_master_lets_go_for_a_virtomate_that_does_not_use_it() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let sock = socket.to_str().unwrap();
    assert_eq!(through_master(&["guest-ping", sock], None).status, 0);
    assert_eq!(
        master_info(&socket)["connected"],
        true,
        "the master holds the channel"
    );
    // Without the master, it takes its turn on the channel: the master
    // lets go well within the second it may wait.
    let out = run_command(
        virtomate().env_remove("VIRTOMATE_PERSIST").args([
            "--timeout",
            "1",
            "guest-run",
            sock,
            "--",
            "echo",
            "-n",
            "alone",
        ]),
        None,
    );
    assert_eq!(out.json()["stdout"], "alone", "{out:?}");
    let out = through_master(&["guest-run", sock, "--", "echo", "-n", "back"], None);
    assert_eq!(out.json()["stdout"], "back", "{out:?}");
    end_master(&socket);
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_master_ends_its_time_after_the_last_request() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let out = run_command(
        virtomate().args(["--persist", "1", "guest-ping", socket.to_str().unwrap()]),
        None,
    );
    assert_eq!(out.status, 0, "{out:?}");
    let info = master_info(&socket);
    assert_eq!(info["persist_seconds"], 1.0, "{info}");
    let pid = info["pid"].as_i64().unwrap();
    wait_until(10, "the master to end", || !alive(pid));
    assert!(!master_paths_left(&info), "its socket went with it");
}

/// A master waiting for an agent that takes the connection but never
/// answers the handshake still answers `control check` and `control exit`
/// meanwhile, and its waiting client gets the timeout it would get alone.
#[test]
fn a_master_waiting_for_a_silent_agent_still_answers_its_controls() {
    use crate::support::fake_agent::FakeAgent;
    let agent = FakeAgent::serve(|mut conn| {
        conn.wait_for_bytes();
        conn.tell("handshake sent");
        conn.linger();
    });
    let socket = agent.socket();
    let sock = socket.to_str().unwrap().to_owned();
    let started = Instant::now();
    let client = virtomate()
        .env("VIRTOMATE_PERSIST", PERSIST)
        .args(["--timeout", "8", "guest-info", &sock])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    agent.wait_for("handshake sent");
    let asked = Instant::now();
    let info = master_info(&socket);
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "answered while the agent is waited for, not after: {info}"
    );
    assert_eq!(info["connected"], false, "{info}");
    let output = client.wait_with_output().unwrap();
    let error: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(error["type"], "AgentTimeout", "{error}");
    assert!(started.elapsed() < Duration::from_secs(30), "within its timeout");
    let out = run_command(virtomate().args(["control", "exit", &sock]), None);
    assert_eq!(out.status, 0, "{out:?}");
    wait_until(20, "the master to end", || masters_of(&socket).is_empty());
}

/// What a hostile guest's agent sends between and instead of replies —
/// lines that are no JSON, replies with ids nobody used or none, stray
/// `0xFF`s, silence — neither reaches the wrong client nor stalls the
/// master.
#[test]
fn a_hostile_agent_cannot_confuse_or_stall_the_master() {
    use crate::support::fake_agent::FakeAgent;
    let agent = FakeAgent::serve(|mut conn| {
        conn.sync();
        let request = conn.request();
        assert_eq!(request["execute"], "guest-info", "{request}");
        conn.send(b"garbage that is no JSON\n");
        conn.reply(&json!({"return": {"version": "forged", "supported_commands": []}, "id": 999_999_999}));
        conn.reply(&json!({"return": {"version": "no id", "supported_commands": []}}));
        conn.send(b"\xff\xff{\"return\n");
        conn.reply(&json!({"return": {"version": "7.2.0", "supported_commands": []}, "id": request["id"]}));
        // Never answered.
        let silent = conn.request();
        assert_eq!(silent["execute"], "guest-ping", "{silent}");
        // A request after it is answered all the same.
        conn.answer(
            "guest-info",
            json!({"version": "after", "supported_commands": []}),
        );
        conn.linger();
    });
    let socket = agent.socket();
    let sock = socket.to_str().unwrap();
    let out = through_master(&["guest-info", sock], None);
    assert_eq!(out.json()["version"], "7.2.0", "{out:?}");
    let started = Instant::now();
    let out = through_master(&["--reply-timeout", "1", "guest-ping", sock], None);
    assert_eq!(out.status, 125, "no answer: {out:?}");
    assert!(started.elapsed() < Duration::from_secs(20), "within its timeout");
    let out = through_master(&["guest-info", sock], None);
    assert_eq!(
        out.json()["version"],
        "after",
        "the silence blocks nobody: {out:?}"
    );
    assert!(master_info(&socket)["requests"].as_u64().unwrap() >= 3);
    end_master(&socket);
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn one_clients_time_limit_and_death_leave_the_others_programs_alone() {
    let agent = HostAgent::start();
    let sock = agent.socket().to_str().unwrap().to_owned();
    let spawn = |options: &[&str], marker: &str| {
        virtomate()
            .env("VIRTOMATE_PERSIST", PERSIST)
            .arg("guest-run")
            .args(options)
            .args([&sock, "--", "sh", "-c", marker])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (limited, killed, spared) = ("sleep 6094", "sleep 6095", "sleep 6096");
    let limited_run = spawn(&["--max-time", "1"], limited);
    let mut killed_run = spawn(&[], killed);
    let spared_run = spawn(&[], &format!("{spared}; echo -n spared"));
    wait_until(20, "the programs to start", || {
        runs_on_host(killed) && runs_on_host(spared)
    });
    killed_run.kill().unwrap();
    let _ = killed_run.wait();
    let output = limited_run.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(124), "{output:?}");
    assert!(!runs_on_host(limited), "--max-time stopped its program");
    assert!(
        runs_on_host(killed),
        "a client's death leaves its program, as without a master"
    );
    assert!(runs_on_host(spared), "and the others' programs alone");
    Command::new("pkill")
        .args(["-f", &format!("^{spared}")])
        .status()
        .unwrap();
    Command::new("pkill")
        .args(["-f", &format!("^{killed}")])
        .status()
        .unwrap();
    let output = spared_run.wait_with_output().unwrap();
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(out["stdout"], "spared", "{out}");
    end_master(&agent.socket());
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_busy_master_shares_the_channel_with_a_virtomate_that_does_not_use_it() {
    let agent = HostAgent::start();
    let sock = agent.socket().to_str().unwrap().to_owned();
    let marker = "sleep 6097";
    let long = virtomate()
        .env("VIRTOMATE_PERSIST", PERSIST)
        .args(["guest-run", &sock, "--", "sh", "-c", marker])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(20, "the program to start", || runs_on_host(marker));
    // The master polls that program; a virtomate without it gets its
    // turn between two polls, well within its second.
    for _ in 0..3 {
        let out = run_command(
            virtomate().env_remove("VIRTOMATE_PERSIST").args([
                "--timeout",
                "1",
                "guest-run",
                &sock,
                "--",
                "echo",
                "-n",
                "beside",
            ]),
            None,
        );
        assert_eq!(out.json()["stdout"], "beside", "{out:?}");
    }
    Command::new("pkill")
        .args(["-f", &format!("^{marker}")])
        .status()
        .unwrap();
    let output = long.wait_with_output().unwrap();
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();
    // The shell reports its sleep's SIGTERM as 143.
    assert_eq!(
        out["exit_code"], 143,
        "ended by pkill, seen through the master: {out}"
    );
    end_master(&agent.socket());
}

/// Where a big request on its way to the agent of `socket` is noted.
fn request_note(socket: &Path) -> std::path::PathBuf {
    let lock = virtomate_protocol::ChannelLock::for_socket(socket).expect("a safe place for lock files");
    lock.path().with_extension("request")
}

/// A big request passed on by the master is noted, as a lone client notes
/// its own, until its reply comes; and the master's handshake, unanswered
/// under another process's fresh note, fails as a lone client's does:
/// the agent is most likely still busy with that request.
#[test]
fn the_master_notes_the_big_requests_it_passes_on_and_reads_others_notes() {
    use crate::support::fake_agent::FakeAgent;
    let (go_on, reply_now) = std::sync::mpsc::channel::<()>();
    let agent = FakeAgent::serve(move |mut conn| {
        conn.sync();
        conn.answer("guest-ping", json!({}));
        let request = conn.request();
        assert_eq!(request["execute"], "guest-file-write", "{request}");
        reply_now.recv().unwrap();
        conn.reply(&json!({"return": {"count": 3, "eof": false}, "id": request["id"]}));
        conn.linger();
    });
    let socket = agent.socket();
    let note = request_note(&socket);
    // A master, connected, and its socket.
    let out = through_master(&["guest-ping", socket.to_str().unwrap()], None);
    assert_eq!(out.status, 0, "{out:?}");
    let info = master_info(&socket);
    let mut client = std::os::unix::net::UnixStream::connect(info["socket"].as_str().unwrap()).unwrap();
    let mut replies = BufReader::new(client.try_clone().unwrap());
    let big = "A".repeat(3 << 20);
    let request = json!({"execute": "guest-file-write", "arguments": {"handle": 1, "buf-b64": big}, "id": 1});
    writeln!(client, "{request}").unwrap();
    agent.wait_for("guest-file-write");
    assert!(note.exists(), "the master notes the big request it passed on");
    go_on.send(()).unwrap();
    let mut reply = String::new();
    replies.read_line(&mut reply).unwrap();
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply, json!({"return": {"count": 3, "eof": false}, "id": 1}));
    wait_until(10, "the note to go with the reply", || !note.exists());
    drop(client);
    end_master(&socket);

    let silent = FakeAgent::serve(|conn| conn.linger());
    let socket = silent.socket();
    let lock = virtomate_protocol::ChannelLock::for_socket(&socket).unwrap();
    assert!(
        lock.note_request_sent(5 << 20),
        "a note of 5 MiB, by this process"
    );
    let sock = socket.to_str().unwrap();
    let out = through_master(&["--timeout", "1", "guest-info", sock], None);
    let busy = format!(
        "most likely still busy with a request of 5.0 MiB that process {} ",
        std::process::id()
    );
    assert!(out.error("AgentTimeout").contains(&busy), "{out:?}");
    let alone = run_command(virtomate().args(["--timeout", "1", "guest-info", sock]), None);
    assert!(
        alone.error("AgentTimeout").contains(&busy),
        "as a lone client: {alone:?}"
    );
    lock.clear_request_note();
    end_master(&socket);
}

/// `virtomate guest-run ARGS` without the master setting.
pub(crate) fn alone(args: &[&str], stdin: Option<&[u8]>) -> Outcome {
    run_command(virtomate().env_remove("VIRTOMATE_PERSIST").args(args), stdin)
}

/// Each `guest-run SOCK OPTIONS…` (with its standard input) through the
/// master prints what it prints without one, and exits alike.
pub(crate) fn runs_end_as_without_the_master(sock: &str, cases: &[(Vec<&str>, Option<&[u8]>)]) {
    for (options, stdin) in cases {
        let args: Vec<&str> = ["guest-run", sock]
            .into_iter()
            .chain(options.iter().copied())
            .collect();
        let through = through_master(&args, *stdin);
        let without = alone(&args, *stdin);
        assert_eq!(
            (through.status, &through.stdout, &through.stderr),
            (without.status, &without.stdout, &without.stderr),
            "{options:?}"
        );
    }
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_whole_run_through_the_master_ends_as_a_run_without_it() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let sock = socket.to_str().unwrap();
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let cases: Vec<(Vec<&str>, Option<&[u8]>)> = vec![
        (vec!["--", "sh", "-c", "echo out; echo err >&2; exit 3"], None),
        (vec!["--", "/no/such/program"], None),
        (vec!["--", "sh", "-c", "kill -TERM $$"], None),
        (vec!["--max-time", "0.5", "--", "sleep", "30"], None),
        (
            vec!["--", "sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' a"],
            None,
        ),
        (vec!["--stdin", "--encode", "--", "cat"], Some(&binary)),
        (vec!["--raw", "--", "sh", "-c", "printf raw; exit 7"], None),
        (vec!["--env-clear", "--env", "A=b c", "--", "/usr/bin/env"], None),
        (
            vec!["--merge-output", "--", "sh", "-c", "echo a; echo b >&2"],
            None,
        ),
    ];
    runs_end_as_without_the_master(sock, &cases);
    let info = master_info(&socket);
    assert_eq!(info["runs"], cases.len(), "each ran whole in the master: {info}");

    // A reader that goes away: the program is stopped, as without the master.
    let mut statuses = Vec::new();
    for persist in [Some(PERSIST), None] {
        let mut command = virtomate();
        match persist {
            Some(persist) => command.env("VIRTOMATE_PERSIST", persist),
            None => command.env_remove("VIRTOMATE_PERSIST"),
        };
        let mut child = command
            .args(["guest-run", "--follow", sock, "--", "yes"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert_eq!(first, "y\n");
        wait_until(30, "the run to end once its reader has gone", || {
            child.try_wait().unwrap().is_some()
        });
        statuses.push(child.wait().unwrap().code());
    }
    assert_eq!(statuses[0], statuses[1], "through the master, then alone");
    assert!(!runs_on_host("yes$"), "the program was stopped");
    end_master(&socket);
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_client_that_goes_away_has_its_timed_run_given_up_by_the_master() {
    let agent = HostAgent::start();
    let sock = agent.socket().to_str().unwrap().to_owned();
    let marker = "sleep 6097";
    let mut client = virtomate()
        .env("VIRTOMATE_PERSIST", PERSIST)
        .args(["guest-run", "--max-time", "600", &sock, "--", "sh", "-c", marker])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(20, "the program to start", || runs_on_host(marker));
    client.kill().unwrap();
    let _ = client.wait();
    // Its time limit would not be kept by anyone: the master stops it, as
    // the client's own engine does on a signal.
    wait_until(20, "the master to stop the program", || !runs_on_host(marker));
    let out = through_master(&["guest-run", &sock, "--", "echo", "-n", "next"], None);
    assert_eq!(out.json()["stdout"], "next", "{out:?}");
    end_master(&agent.socket());
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn an_agent_killed_under_a_whole_run_fails_it_as_without_the_master() {
    let mut agent = HostAgent::start();
    let sock = agent.socket().to_str().unwrap().to_owned();
    let spawn = |persist: Option<&str>, marker: &str| {
        let mut command = virtomate();
        match persist {
            Some(persist) => command.env("VIRTOMATE_PERSIST", persist),
            None => command.env_remove("VIRTOMATE_PERSIST"),
        };
        command
            .args(["guest-run", &sock, "--", "sh", "-c", marker])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (through, alone) = ("sleep 6098", "sleep 6099");
    let through_run = spawn(Some(PERSIST), through);
    let alone_run = spawn(None, alone);
    wait_until(20, "both programs to start", || {
        runs_on_host(through) && runs_on_host(alone)
    });
    agent.kill();
    let errors: Vec<Value> = [through_run, alone_run]
        .into_iter()
        .map(|run| serde_json::from_slice(&run.wait_with_output().unwrap().stdout).unwrap())
        .collect();
    for marker in [through, alone] {
        let _ = Command::new("pkill").args(["-f", &format!("^{marker}")]).status();
    }
    // The same kind of error, naming the program it left (the words differ
    // as the connection was held or not when the agent went: a lone client
    // lets go between polls while another waits).
    for error in &errors {
        assert_eq!(error["type"], "AgentDisconnected", "{errors:?}");
        assert!(
            error["message"].as_str().unwrap().contains("guest pid"),
            "{errors:?}"
        );
    }
    // Nothing listens any more: the next run through a master fails as alone.
    let next = through_master(&["guest-run", &sock, "--", "true"], None);
    let next_alone = run_command(
        virtomate()
            .env_remove("VIRTOMATE_PERSIST")
            .args(["guest-run", &sock, "--", "true"]),
        None,
    );
    assert_eq!(
        (next.status, &next.stdout),
        (next_alone.status, &next_alone.stdout),
        "{next:?}"
    );
    end_master(&agent.socket());
}

#[test]
fn a_client_interrupted_while_its_run_waits_for_the_agent_is_told_so_as_alone() {
    // An agent that takes connections and never answers.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("qga.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    let sock = socket.to_str().unwrap().to_owned();
    let mut errors = Vec::new();
    let mut held = Vec::new();
    // Alone first: a master would keep its turn on the channel while it
    // waits for the agent, and the lone client would wait for that turn.
    for persist in [None, Some(PERSIST)] {
        let mut command = virtomate();
        match persist {
            Some(persist) => command.env("VIRTOMATE_PERSIST", persist),
            None => command.env_remove("VIRTOMATE_PERSIST"),
        };
        let client = command
            .args(["--timeout", "60", "guest-run", &sock, "--", "true"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        wait_until(20, "the agent's socket to be connected to", || {
            match listener.accept() {
                Ok((stream, _)) => {
                    held.push(stream);
                    true
                }
                Err(_) => false,
            }
        });
        let pid = nix::unistd::Pid::from_raw(client.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let output = client.wait_with_output().unwrap();
        errors.push((output.status.code(), String::from_utf8(output.stdout).unwrap()));
    }
    assert_eq!(errors[0], errors[1], "alone, then through the master");
    assert!(errors[0].1.contains("Interrupted"), "{errors:?}");
    // It waits for the agent still, taking no requests meanwhile.
    for pid in masters_of(&socket) {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    }
}
