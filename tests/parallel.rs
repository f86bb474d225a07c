//! Several `guest-run`s on one VM at once: they hold the agent channel one
//! exchange at a time, so their programs run side by side in the guest,
//! and a long one never keeps a short one waiting.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use virtomate_protocol::{ChannelLock, Deadline};

use crate::support::host_agent::HostAgent;
use crate::support::test_vm::TestVm;
use crate::support::{self, guest_run, guest_run_with, virtomate};

/// `guest-run DOMAIN -- sh -c SCRIPT` in the background.
fn spawn_sh(domain: &str, script: &str) -> Child {
    virtomate()
        .args(["--timeout", "60", "guest-run", domain, "--", "sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn result_of(name: &str, child: Child) -> Value {
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{name}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {out:?}"))
}

/// Each program marks that it started, sleeps, and lists the marks: had
/// they run one after the other, the first would see only its own. (The
/// sleep is long enough for every run to start on a loaded machine.)
pub(crate) fn overlapping_runs(domains: &[&str], marks: &str) {
    let children: Vec<(String, Child)> = domains
        .iter()
        .enumerate()
        .map(|(n, domain)| {
            let script = format!("touch {marks}/run-{n}; sleep 8; ls {marks}");
            (format!("run {n} on {domain}"), spawn_sh(domain, &script))
        })
        .collect();
    let every_mark: String = (0..domains.len()).map(|n| format!("run-{n}\n")).collect();
    for (name, child) in children {
        let json = result_of(&name, child);
        assert_eq!(
            json["stdout"].as_str(),
            Some(every_mark.as_str()),
            "{name}: {json}"
        );
    }
}

#[test]
#[ignore = "needs the test VM"]
fn runs_by_name_and_by_socket_run_side_by_side_in_the_guest() {
    let vm = TestVm::boot("parallel");
    let socket = vm.socket();
    let socket = socket.to_str().unwrap();
    let marks = "/tmp/marks";
    let out = guest_run(&vm.socket(), &["mkdir", marks]);
    assert_eq!(out.json()["exit_code"], 0, "{out:?}");
    overlapping_runs(&[&vm.name, &vm.name, socket, socket], marks);
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn runs_on_the_host_agent_run_side_by_side() {
    let agent = HostAgent::start();
    let marks = tempfile::tempdir().unwrap();
    let socket = agent.socket();
    let socket = socket.to_str().unwrap();
    overlapping_runs(&[socket, socket, socket], marks.path().to_str().unwrap());
}

#[test]
#[ignore = "needs the test VM"]
fn a_quick_run_is_served_while_a_long_one_runs() {
    let vm = TestVm::boot("beside-long");
    let mut long = spawn_sh(&vm.name, "sleep 12; echo long");
    // Past the time a young program keeps the channel: the run has taken
    // its turn, and let go of it between polls.
    let pid = long.id();
    support::wait_until(30, "the long run to take its turn", || support::holds_a_lock(pid));
    support::wait_until(30, "the long run to let go between polls", || {
        !support::holds_a_lock(pid)
    });
    let started = Instant::now();
    let out = guest_run_with(&["--timeout", "5"], &vm.socket(), &["echo", "-n", "quick"], None);
    assert_eq!(out.json()["stdout"], "quick", "{out:?}");
    assert!(
        long.try_wait().unwrap().is_none(),
        "the quick run waited for the long one ({:?})",
        started.elapsed()
    );
    assert_eq!(result_of("long", long)["stdout"], "long\n");
}

// On the VM: QEMU's socket listens again at once, while `qemu-ga -m
// unix-listen` on the host refuses connections for a while (400 ms and
// more were seen) after a client killed mid-exchange.
#[test]
#[ignore = "needs the test VM"]
fn a_run_killed_with_sigkill_holding_the_channel_blocks_nobody() {
    let vm = TestVm::boot("sigkill");
    let socket = vm.socket();
    let lock = ChannelLock::for_socket(&socket).unwrap();
    let mut holder = support::spawn_guest_run(&socket, &["sleep", "30"]);
    // While its program is young, the run keeps its turn on the channel.
    support::wait_until(10, "the run to take its turn", || {
        std::fs::read_to_string("/proc/locks")
            .is_ok_and(|locks| locks.contains(&format!(" {} ", holder.id())))
    });
    let _ = holder.kill(); // SIGKILL
    let _ = holder.wait();
    // A stale turn would make this fail with AgentTimeout after 5 s.
    let out = guest_run_with(&["--timeout", "5"], &socket, &["echo", "-n", "next"], None);
    assert_eq!(out.json()["stdout"], "next", "{out:?}");
    drop(lock);
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_channel_kept_busy_names_its_holder_and_the_time_waited() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let lock = ChannelLock::for_socket(&socket).unwrap();
    let _turn = runtime
        .block_on(lock.acquire(Deadline::after(Duration::from_secs(1))))
        .unwrap();
    let out = guest_run_with(&["--timeout", "0.5"], &socket, &["true"], None);
    let message = out.error("AgentTimeout");
    assert!(message.contains("stayed busy for 0.5 s"), "{message}");
    assert!(
        message.contains(&format!("(pid {})", std::process::id())),
        "{message}"
    );
}

/// virtomate runs of different users take turns through lock files of
/// their own user, so not with each other: a run that waits for another
/// user's says so, naming it with its uid, rather than that a virtomate
/// kept its turn.
#[test]
#[ignore = "needs root, to run one of the runs as another user"]
fn a_run_held_up_by_another_users_run_says_so() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;

    use crate::support::fake_agent::FakeAgent;
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test runs a run as another user, which needs root"
    );
    // Takes the other user's run, starts its program, and answers nothing
    // more: it holds the channel.
    let agent = FakeAgent::serve(|mut conn| {
        conn.start_program();
        conn.linger();
    });
    let socket = agent.socket();
    for (path, mode) in [(socket.parent().unwrap(), 0o755), (socket.as_path(), 0o777)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let mut other = virtomate()
        .args([
            "--timeout",
            "60",
            "guest-run",
            socket.to_str().unwrap(),
            "--",
            "sleep",
            "60",
        ])
        .env_remove("XDG_RUNTIME_DIR")
        .uid(65534)
        .gid(65534)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    agent.wait_for("guest-exec");
    let out = guest_run_with(&["--timeout", "1"], &socket, &["true"], None);
    let _ = other.kill();
    let _ = other.wait();
    let message = out.error("AgentTimeout");
    assert!(
        message.contains(&format!("virtomate (pid {}, uid 65534)", other.id())),
        "{message}"
    );
    assert!(message.contains("another user's"), "{message}");
    assert!(!message.contains("kept its turn"), "{message}");
}
