//! `virtomate guest-run` against a real QEMU VM whose guest runs the real
//! qemu-ga: every example of the specification, by socket path and by the
//! VM's `-name`.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::spec_examples::check_examples;
use support::test_vm::TestVm;
use support::{guest_run_with, run};

#[test]
fn every_specification_example_by_socket_path_and_by_name() {
    let vm = TestVm::boot("spec-examples");
    check_examples(vm.socket().to_str().unwrap());
    check_examples(&vm.name);
}

#[test]
fn the_second_agent_port_is_a_channel_of_its_own() {
    let vm = TestVm::boot_with("two-ports", &[("EXTRA_AGENT_PORT", "1")]);
    let second = vm.dir.path().join("qga1.sock");
    let out = guest_run_with(&[], &second, &["echo", "-n", "one"], None);
    assert_eq!(out.json()["stdout"], "one");
}

#[test]
fn a_vm_killed_during_a_run_gives_a_clear_error_at_once() {
    let vm = TestVm::boot("killed");
    let socket = vm.socket();
    let child = support::spawn_guest_run(&socket, &["sleep", "30"]);
    std::thread::sleep(Duration::from_millis(1500));
    vm.kill();
    let killed = Instant::now();
    let out = child.wait_with_output().unwrap();
    let waited = killed.elapsed();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["type"], json!("AgentDisconnected"), "{json}");
    assert_eq!(out.status.code(), Some(1));
    // The reply timeout is 30 s: the closed socket was noticed, not waited out.
    assert!(waited < Duration::from_secs(10), "took {waited:?} to notice");
}

#[test]
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
fn a_held_channel_is_skipped_for_a_free_one_and_fails_fast_alone() {
    let vm = TestVm::boot_with("held", &[("EXTRA_AGENT_PORT", "1")]);
    let listed = run(&["domain-list"], None).json();
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == vm.name.as_str())
        .unwrap_or_else(|| panic!("{} not in {listed}", vm.name))
        .clone();
    assert_eq!(entry["source"], "qemu");
    assert_eq!(entry["pid"], json!(vm.qemu_pid()));
    assert_eq!(entry["agent_channels"][0]["name"], "org.qemu.guest_agent.0");
    assert_eq!(entry["agent_channels"][1]["held"], false);

    // Someone else (this test process) takes org.qemu.guest_agent.0.
    let _holder = std::os::unix::net::UnixStream::connect(vm.socket()).unwrap();
    support::wait_until(20, "QEMU to accept the holder", || {
        run(&["domain-list"], None).stdout.contains(r#""held":true"#)
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
