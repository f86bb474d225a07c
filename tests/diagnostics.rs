//! The debugging commands: guest-ping, guest-info, --trace and --log,
//! against the real agent on the host, the real VM and a silent fake.

use std::time::{Duration, Instant};

use crate::support::fake_agent::FakeAgent;
use crate::support::host_agent::HostAgent;
use crate::support::test_vm::TestVm;
use crate::support::{self, guest_run_with, run, step, virtomate_path};

#[test]
#[ignore = "needs qemu-ga on the host"]
fn guest_ping_answers_with_exit_0_and_no_output() {
    let agent = HostAgent::start();
    let out = run(&["guest-ping", agent.socket().to_str().unwrap()], None);
    assert_eq!((out.status, out.stdout.as_str()), (0, ""), "{out:?}");
}

#[test]
fn guest_ping_of_a_silent_agent_exits_125_with_no_output() {
    let agent = FakeAgent::serve(|mut conn| conn.wait_for_close());
    let out = run(
        &["--timeout", "0.3", "guest-ping", agent.socket().to_str().unwrap()],
        None,
    );
    assert_eq!((out.status, out.stdout.as_str()), (125, ""), "{out:?}");

    let out = run(&["guest-ping", "/no/such/socket"], None);
    assert_eq!((out.status, out.stdout.as_str()), (125, ""), "{out:?}");
}

#[test]
fn guest_ping_of_an_unknown_domain_is_an_error() {
    let out = run(&["guest-ping", "no-such-vm-for-ping"], None);
    let message = out.error("NotFoundError");
    assert!(
        message.starts_with("Domain 'no-such-vm-for-ping' does not exist; looked in "),
        "{message}"
    );
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn guest_ping_wait_covers_an_agent_that_starts_late() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("qga.sock");
    let mut child = support::virtomate()
        .args([
            "--log",
            "info",
            "guest-ping",
            "--wait",
            "20",
            socket.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once it has tried and found no agent: it waits for one.
    support::StderrLines::of(&mut child).wait_for("no answer yet");
    let _agent = HostAgent::start_in(dir, &[]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
}

#[test]
fn guest_ping_wait_gives_up_when_the_time_is_up() {
    let agent = FakeAgent::serve(|mut conn| conn.wait_for_close());
    let started = Instant::now();
    let out = run(
        &["guest-ping", "--wait", "1", agent.socket().to_str().unwrap()],
        None,
    );
    assert_eq!(out.status, 125);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(8),
        "{took:?}"
    );
}

/// Each try of `--wait` waits on its connection for `--timeout`, not for
/// the whole wait: a connection that sits behind a client that keeps the
/// channel (libvirtd back from a restart, in QEMU's queue first) is given
/// up, and the next try finds the way to the agent again.
#[test]
fn guest_ping_wait_tries_again_after_a_timeout_without_an_answer() {
    let agent = FakeAgent::serve_each(|mut conn, number| match number {
        0 => conn.wait_for_close(),
        _ => {
            conn.sync();
            conn.answer("guest-ping", serde_json::json!({}));
        }
    });
    let out = run(
        &[
            "--timeout",
            "1",
            "guest-ping",
            "--wait",
            "30",
            agent.socket().to_str().unwrap(),
        ],
        None,
    );
    assert_eq!((out.status, out.stdout.as_str()), (0, ""), "{out:?}");
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn guest_info_shows_the_version_and_disabled_commands() {
    let agent = HostAgent::start_with(&["--block-rpcs", "guest-exec"]);
    let out = run(&["guest-info", agent.socket().to_str().unwrap()], None);
    let json = out.json();
    assert!(json["version"].as_str().unwrap().starts_with("7."), "{json}");
    let commands = json["supported_commands"].as_array().unwrap();
    let enabled = |name: &str| {
        commands
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing"))["enabled"]
            .as_bool()
    };
    assert_eq!(enabled("guest-exec"), Some(false));
    assert_eq!(enabled("guest-ping"), Some(true));
    // Keys sorted, as everywhere.
    assert!(
        out.stdout.starts_with(r#"{"supported_commands":[{"enabled":"#),
        "{}",
        &out.stdout[..80]
    );
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn trace_shows_every_byte_both_ways_on_stderr() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let out = guest_run_with(&["--trace"], &socket, &["echo", "-n", "hi"], None);
    assert_eq!(out.json()["stdout"], "hi");
    let sent: Vec<&str> = out.stderr.lines().filter(|l| l.contains("] >> ")).collect();
    let received: Vec<&str> = out.stderr.lines().filter(|l| l.contains("] << ")).collect();
    assert!(
        sent[0].contains(r#">> \xff{"execute":"guest-sync-delimited""#),
        "{}",
        out.stderr
    );
    assert!(
        sent.iter().any(|l| l.contains(r#""execute":"guest-exec""#)),
        "{}",
        out.stderr
    );
    assert!(
        received.iter().any(|l| l.contains(r#"\xff{"return": "#)),
        "{}",
        out.stderr
    );
    assert!(
        received.iter().any(|l| l.contains(r#""out-data": "aGk=""#)),
        "{}",
        out.stderr
    );
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn log_goes_to_stderr_and_leaves_stdout_alone() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let out = guest_run_with(&["-l", "debug"], &socket, &["true"], None);
    assert_eq!(out.json()["exit_code"], 0);
    assert!(
        out.stderr.contains("DEBUG") && out.stderr.contains("started in the guest"),
        "{}",
        out.stderr
    );

    let out = guest_run_with(&["--log", "warning"], &socket, &["true"], None);
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    // A failure is logged at error, so even the quietest level shows it.
    let out = run(&["-l", "critical", "guest-run", "no-such-domain", "true"], None);
    out.error("NotFoundError");
    assert!(
        out.stderr.contains("ERROR") && out.stderr.contains("Domain 'no-such-domain' does not exist"),
        "{}",
        out.stderr
    );
    let out = run(&["--log", "verbose", "guest-ping", "x"], None);
    assert_eq!(out.status, 2);
}

#[test]
#[ignore = "needs the test VM"]
fn guest_ping_wait_follows_a_vm_from_boot_and_gives_up_on_one_without_agent() {
    let booting = TestVm::boot_with("ping-boot", &[("VM_WAIT_READY", "0")]);
    let out = run(&["guest-ping", "--wait", "60", &booting.name], None);
    assert_eq!((out.status, out.stdout.as_str()), (0, ""), "{out:?}");
    let report = run(&["doctor", &booting.name], None);
    assert_eq!(report.status, 0, "{report:?}");
    assert_eq!(outcomes(&report), ["pass"; 11].map(String::from));

    let silent = TestVm::boot_with("ping-silent", &[("KERNEL_EXTRA_ARGS", "virtomate.noagent")]);
    let started = Instant::now();
    let out = run(&["guest-ping", "--wait", "2", &silent.name], None);
    assert_eq!((out.status, out.stdout.as_str()), (125, ""), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(8));

    let report = run(&["--timeout", "1", "doctor", &silent.name], None);
    assert_eq!(report.status, 1);
    // The VM runs (QEMU says so over QMP); its guest has no agent.
    let expected = [
        "pass", "pass", "pass", "pass", "pass", "fail", "pass", "fail", "skip", "skip", "skip",
    ];
    assert_eq!(outcomes(&report), expected.map(String::from), "{}", report.stdout);
    let json = report.json();
    assert!(
        json["steps"][5]["advice"].as_str().unwrap().contains("qemu-ga"),
        "{json}"
    );
}

/// The outcome of each doctor step, in order.
fn outcomes(report: &support::Outcome) -> Vec<String> {
    let json = report.json();
    json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["outcome"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn doctor_names_a_disabled_guest_exec_and_a_holder() {
    let agent = HostAgent::start_with(&["--block-rpcs", "guest-exec"]);
    let socket = agent.socket();
    let report = run(&["doctor", socket.to_str().unwrap()], None);
    assert_eq!(report.status, 1);
    let json = report.json();
    assert_eq!(step(&json, "guest-exec")["outcome"], "fail", "{json}");
    assert!(step(&json, "guest-exec")["advice"]
        .as_str()
        .unwrap()
        .contains("--block-rpcs"));
    assert_eq!(step(&json, "guest-port-open")["outcome"], "skip");
    assert_eq!(
        step(&json, "agent-version")["detail"]
            .as_str()
            .unwrap()
            .split(' ')
            .next(),
        Some("qemu-ga")
    );

    let _holder = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    // Until qemu-ga accepts the holder, doctor's own connection queues
    // behind it and waits out --timeout.
    let this_process = format!("pid {}", std::process::id());
    let mut last = None;
    support::wait_until(20, "qemu-ga to accept the holder", || {
        let report = run(&["--timeout", "1", "doctor", socket.to_str().unwrap()], None);
        let named = report.stdout.contains(&this_process);
        last = Some(report);
        named
    });
    let report = last.unwrap();
    let json = report.json();
    // The holder is named by the `held` step, which fails: a client that is
    // not virtomate keeps the channel, and every later step is skipped.
    let held = step(&json, "held");
    assert_eq!(held["outcome"], "fail", "{json}");
    assert!(held["detail"].as_str().unwrap().contains(&this_process), "{held}");
    assert!(
        held["advice"].as_str().unwrap().contains("stop that client"),
        "{held}"
    );
    assert_eq!(
        outcomes(&report),
        ["pass", "pass", "pass", "fail", "skip", "skip", "skip", "skip", "skip", "skip", "skip"]
            .map(String::from),
        "{json}"
    );
    assert_eq!(report.status, 1, "{report:?}");
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn guest_cmd_prints_the_return_value_or_the_agents_error_with_its_class() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let socket = socket.to_str().unwrap();
    let out = run(
        &["guest-cmd", socket, r#"{"execute": "guest-get-host-name"}"#],
        None,
    );
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(out.json()["host-name"], hostname.trim());

    let out = run(
        &[
            "guest-cmd",
            socket,
            r#"{"execute": "guest-exec-status", "arguments": {"pid": 1}}"#,
        ],
        None,
    );
    let json = out.json();
    assert_eq!(
        (json["type"].as_str(), json["class"].as_str()),
        (Some("AgentCommandError"), Some("GenericError"))
    );
    assert_eq!(out.status, 1);
    // The message carries the agent's own `desc`, not just the class.
    let message = json["message"].as_str().unwrap();
    assert!(
        message.starts_with("unable to execute QEMU agent command 'guest-exec-status': ")
            && message.contains("Invalid parameter 'pid'"),
        "{json}"
    );

    // A command the agent does not know, sent unchecked: its desc, word
    // for word (checked, QEMU's schema refuses it first: see agent_commands).
    let out = run(
        &[
            "guest-cmd",
            "--unchecked",
            socket,
            r#"{"execute": "guest-no-such-command"}"#,
        ],
        None,
    );
    assert_eq!(
        out.json(),
        serde_json::json!({
            "class": "CommandNotFound",
            "message": "unable to execute QEMU agent command 'guest-no-such-command': \
                        The command guest-no-such-command has not been found",
            "type": "AgentCommandError",
        }),
        "{out:?}"
    );
    assert_eq!(out.status, 1);

    let out = run(
        &[
            "guest-cmd",
            socket,
            r#"{"execute": "guest-ping", "arguments": []}"#,
        ],
        None,
    );
    assert_eq!(out.status, 2, "{out:?}");
}

#[test]
fn guest_cmd_counts_silence_or_a_closed_channel_as_success_for_shutdown() {
    let silent = FakeAgent::serve(|mut conn| {
        conn.sync();
        assert_eq!(conn.request()["execute"], "guest-shutdown");
        conn.wait_for_close();
    });
    let closing = FakeAgent::serve(|mut conn| {
        conn.sync();
        conn.request();
    });
    for agent in [silent, closing] {
        let out = run(
            &[
                "guest-cmd",
                agent.socket().to_str().unwrap(),
                r#"{"execute":"guest-shutdown"}"#,
            ],
            None,
        );
        assert_eq!((out.status, out.stdout.as_str()), (0, "{}\n"), "{out:?}");
    }
}

#[test]
#[ignore = "needs the test VM"]
fn qmp_talks_to_qemus_monitor_by_name_or_socket_and_keeps_events_apart() {
    let vm = TestVm::boot("qmp");
    let out = run(
        &["--trace", "qmp", &vm.name, r#"{"execute": "query-status"}"#],
        None,
    );
    assert_eq!(out.json()["status"], "running", "{out:?}");
    // The trace shows QMP both ways: the greeting in, capabilities out.
    assert!(
        out.stderr.contains(r#"<< {"QMP": "#) && out.stderr.contains(r#">> {"execute":"qmp_capabilities""#),
        "{}",
        out.stderr
    );

    let qmp_socket = vm.dir.path().join("qmp.sock");
    let out = run(
        &[
            "qmp",
            "--events",
            qmp_socket.to_str().unwrap(),
            r#"{"execute": "stop"}"#,
        ],
        None,
    );
    let json = out.json();
    assert_eq!(json["return"], serde_json::json!({}));
    assert_eq!(json["events"][0]["event"], "STOP", "{json}");
    let out = run(&["qmp", &vm.name, r#"{"execute": "cont"}"#], None);
    assert_eq!(out.json(), serde_json::json!({}));

    let out = run(&["qmp", &vm.name, r#"{"execute": "no-such-command"}"#], None);
    assert_eq!(out.status, 1, "{out:?}");
    assert_eq!(out.json(), support::qmp_command_not_found(), "{out:?}");

    let _holder = std::os::unix::net::UnixStream::connect(&qmp_socket).unwrap();
    support::wait_until(20, "qmp to name this process as the holder", || {
        virtomate_sees_held_monitor(&vm.name)
    });
}

/// True once `qmp` refuses the monitor because this test process holds it.
/// (Until QEMU accepts the holder, `qmp`'s connection queues behind it and
/// waits out --timeout.)
fn virtomate_sees_held_monitor(name: &str) -> bool {
    let out = run(
        &["--timeout", "1", "qmp", name, r#"{"execute": "query-status"}"#],
        None,
    );
    out.status == 1 && out.stdout.contains(&format!("pid {}", std::process::id()))
}

/// `doctor` run on a real terminal (util-linux `script` gives it one).
fn doctor_on_a_terminal(args: &str) -> String {
    let line = format!("{} doctor {args}", virtomate_path().display());
    let out = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("these tests need util-linux's script for a terminal");
    String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n")
}

#[test]
#[ignore = "needs qemu-ga on the host, and util-linux's script"]
fn doctor_prints_a_checklist_on_a_terminal_and_json_when_asked() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let socket = socket.to_str().unwrap();
    let checklist = doctor_on_a_terminal(socket);
    assert!(
        serde_json::from_str::<serde_json::Value>(&checklist).is_err(),
        "{checklist}"
    );
    assert!(checklist.contains("handshake"), "{checklist}");
    let json = doctor_on_a_terminal(&format!("--json {socket}"));
    let report: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(report["ok"], true, "{report}");
}
