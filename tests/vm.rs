//! `virtomate guest-run` against a real QEMU VM whose guest runs the real
//! qemu-ga: every example of the specification, by socket path and by the
//! VM's `-name`.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::live_session::Live;
use crate::support::spec_examples::check_examples;
use crate::support::test_vm::{agent_restart_when, TestVm};
use crate::support::{self, guest_run_with, run};

#[test]
#[ignore = "needs the test VM"]
fn every_specification_example_by_socket_path_and_by_name() {
    let vm = TestVm::boot("spec-examples");
    check_examples(vm.socket().to_str().unwrap());
    check_examples(&vm.name);
}

#[test]
#[ignore = "needs the test VM"]
fn the_second_agent_port_is_a_channel_of_its_own() {
    let vm = TestVm::boot_with("two-ports", &[("EXTRA_AGENT_PORT", "1")]);
    let second = vm.dir.path().join("qga1.sock");
    let out = guest_run_with(&[], &second, &["echo", "-n", "one"], None);
    assert_eq!(out.json()["stdout"], "one");
}

#[test]
#[ignore = "needs the test VM"]
fn a_vm_killed_during_a_run_gives_a_clear_error_at_once() {
    let vm = TestVm::boot("killed");
    let socket = vm.socket();
    // Once the program runs, during the run.
    let mut session = Live::start(&[], socket.to_str().unwrap());
    let program = "touch /tmp/session-up; sleep 600";
    session.send(json!({"id": "s", "run": ["sh", "-c", program]}));
    support::wait_until(30, "the session's program to start", || {
        guest_run_with(&[], &socket, &["test", "-e", "/tmp/session-up"], None).json()["exit_code"] == 0
    });
    let child = support::spawn_sleeping_guest_run(&socket);
    let qemu = vm.qemu_pid();
    vm.kill();
    let killed = Instant::now();
    let out = child.wait_with_output().unwrap();
    let waited = killed.elapsed();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["type"], json!("AgentDisconnected"), "{json}");
    assert_eq!(out.status.code(), Some(1));
    // Given by its socket, the VM is told apart from an agent restarted:
    // the QEMU that listened on the socket has ended. (Before, it said
    // that the VM may have stopped or its agent restarted.)
    let said = format!(
        "the VM of the agent socket {} is not running (its QEMU, pid {qemu}, has ended): \
         its agent, and the program (guest pid ",
        socket.display()
    );
    assert!(json["message"].as_str().unwrap().starts_with(&said), "{json}");
    // A session's run is told the same.
    let reply = session.reply();
    assert!(
        reply["error"]["message"].as_str().unwrap().starts_with(&said),
        "{reply}"
    );
    assert_eq!(session.finish(), 0);
    // The reply timeout is 30 s: the closed socket was noticed, not waited out.
    assert!(waited < Duration::from_secs(10), "took {waited:?} to notice");
}

#[test]
#[ignore = "needs the test VM"]
fn a_guest_without_agent_times_out_with_advice() {
    let vm = TestVm::boot_with("no-agent", &[("KERNEL_EXTRA_ARGS", "virtomate.noagent")]);
    let socket = vm.socket();
    let started = Instant::now();
    let out = guest_run_with(&["--timeout", "1"], &socket, &["true"], None);
    let message = out.error("AgentTimeout");
    assert!(
        message.contains("runs in the guest") && message.contains("--timeout"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
#[ignore = "needs the test VM"]
fn a_held_channel_is_skipped_for_a_free_one_and_fails_fast_alone() {
    let vm = TestVm::boot_with("held", &[("EXTRA_AGENT_PORT", "1")]);
    // This VM's entry: other tests' VMs and domains may be listed too.
    let listed = || {
        let listed = run(&["domain-list"], None).json();
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == vm.name.as_str())
            .unwrap_or_else(|| panic!("{} not in {listed}", vm.name))
            .clone()
    };
    let entry = listed();
    assert_eq!(entry["source"], "qemu");
    assert_eq!(entry["pid"], json!(vm.qemu_pid()));
    assert_eq!(entry["agent_channels"][0]["name"], "org.qemu.guest_agent.0");
    assert_eq!(entry["agent_channels"][1]["held"], false);

    // Someone else (this test process) takes org.qemu.guest_agent.0.
    let _holder = std::os::unix::net::UnixStream::connect(vm.socket()).unwrap();
    support::wait_until(20, "QEMU to accept the holder", || {
        listed()["agent_channels"][0]["held"] == true
    });

    let out = run(&["guest-run", &vm.name, "--", "echo", "-n", "via .1"], None);
    assert_eq!(out.json()["stdout"], "via .1", "{out:?}");

    let started = Instant::now();
    let out = guest_run_with(&["--timeout", "30"], &vm.socket(), &["true"], None);
    let message = out.error("AgentUnavailable");
    assert!(
        message.contains(&format!("pid {}", std::process::id())),
        "{message}"
    );
    // Far from the 30 s handshake timeout: nothing waited on the held channel.
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
#[ignore = "needs the test VM"]
fn an_agent_restarted_during_a_run_gives_a_clear_error_and_the_next_run_works() {
    let vm = TestVm::boot("restart");
    // The agent restarted while the program runs.
    let program = format!("{} sleep 20", agent_restart_when("sleep 1"));
    let out = guest_run_with(
        &["--reply-timeout", "5"],
        &vm.socket(),
        &["sh", "-c", &program],
        None,
    );
    // The new agent has never heard of the program, if it gets our poll;
    // if the old one took the poll with it, no reply ever comes.
    let json = out.json();
    let message = json["message"].as_str().unwrap_or_default();
    match json["type"].as_str() {
        Some("AgentDisconnected") => assert!(message.contains("no longer knows the program"), "{json}"),
        Some("AgentTimeout") => assert!(message.contains("while the program (guest pid"), "{json}"),
        _ => panic!("not an error of a restarted agent: {out:?}"),
    }
    assert!(message.contains("restarted"), "{json}");
    assert_eq!(out.status, 1);

    let out = guest_run_with(&["--timeout", "30"], &vm.socket(), &["echo", "-n", "again"], None);
    assert_eq!(out.json()["stdout"], "again", "{out:?}");
}

#[test]
#[ignore = "needs the test VM"]
fn guest_shutdown_by_name_succeeds_without_a_reply_and_the_vm_goes_down() {
    let vm = TestVm::boot("shutdown");
    let pid = vm.qemu_pid();
    let out = run(&["guest-cmd", &vm.name, r#"{"execute": "guest-shutdown"}"#], None);
    assert_eq!((out.status, out.stdout.trim()), (0, "{}"), "{out:?}");
    support::wait_until(30, "QEMU to exit after the guest powered off", || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| stat.contains(") Z "))
    });
}

#[test]
#[ignore = "needs the test VM"]
fn the_vms_monitor_given_as_domain_is_named_as_such_at_once() {
    let vm = TestVm::boot("qmp-as-domain");
    let monitor = vm.dir.path().join("qmp.sock");
    let started = Instant::now();
    // Far from the timeout, so that waiting it out cannot pass for telling.
    let out = guest_run_with(&["--timeout", "60"], &monitor, &["true"], None);
    let message = out.error("AgentUnavailable");
    assert!(
        message.contains("is QEMU's monitor (QMP), not the guest agent"),
        "{message}"
    );
    let agent = vm.socket().display().to_string();
    assert!(message.contains(&agent), "names the VM's agent socket: {message}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the greeting tells at once, not after --timeout: {:?}",
        started.elapsed()
    );
}

#[test]
#[ignore = "needs the test VM"]
fn libvirt_default_uri_does_not_hide_a_bare_qemu_vm_but_an_explicit_uri_does() {
    let vm = TestVm::boot("default-uri");
    let by_name = |args: &[&str], env: Option<&str>| {
        let mut command = crate::support::virtomate();
        command.args(args).env_remove("LIBVIRT_DEFAULT_URI");
        if let Some(uri) = env {
            command.env("LIBVIRT_DEFAULT_URI", uri);
        }
        crate::support::run_command(&mut command, None)
    };
    let run = ["guest-run", vm.name.as_str(), "--", "echo", "-n", "found"];
    for uri in ["qemu:///system", "qemu:///session"] {
        let out = by_name(&run, Some(uri));
        assert_eq!(
            out.json()["stdout"],
            "found",
            "LIBVIRT_DEFAULT_URI={uri}: {out:?}"
        );
        let listed = by_name(&["domain-list"], Some(uri)).json();
        assert!(
            listed
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["name"] == vm.name.as_str()),
            "LIBVIRT_DEFAULT_URI={uri}: {listed}"
        );
    }
    let mut limited = vec!["-c", "qemu:///system"];
    limited.extend(run);
    let message = by_name(&limited, None).error("NotFoundError");
    assert!(
        message.contains(
            "looked in the libvirt domains of qemu:///system only: -c leaves out bare QEMU processes"
        ),
        "{message}"
    );
}

#[test]
#[ignore = "needs the test VM"]
fn a_paused_vm_is_named_as_paused_by_guest_run_and_doctor() {
    let vm = TestVm::boot("paused");
    let qmp = |command: &str| {
        let request = format!(r#"{{"execute": "{command}"}}"#);
        let out = run(&["qmp", &vm.name, &request], None);
        assert_eq!(out.status, 0, "{out:?}");
    };
    qmp("stop");
    let out = run(&["--timeout", "2", "guest-run", &vm.name, "--", "true"], None);
    let message = out.error("AgentTimeout");
    assert!(message.contains("QEMU reports the VM as paused"), "{message}");
    assert!(
        message.contains(r#"'{"execute": "cont"}'"#),
        "says how to resume: {message}"
    );
    assert!(
        !message.contains("check that the QEMU Guest Agent runs"),
        "{message}"
    );

    let report = run(&["doctor", &vm.name], None);
    assert_eq!(report.status, 1, "{report:?}");
    let json = report.json();
    let state = crate::support::step(&json, "run-state");
    assert_eq!(state["outcome"], "fail", "{json}");
    assert_eq!(state["detail"], "QEMU reports the VM as paused", "{json}");
    assert_eq!(
        crate::support::step(&json, "handshake")["outcome"],
        "skip",
        "{json}"
    );

    qmp("cont");
    let out = guest_run_with(&[], &vm.socket(), &["echo", "-n", "back"], None);
    assert_eq!(out.json()["stdout"], "back");
}
