//! guest-run for scripts: `--max-time` stops the program and what it
//! started, `--env`, `--raw` (the program's bytes and exit status) and
//! `--merge-output`; against the real qemu-ga on the host, the test VM,
//! and the fake agent for what the real one will not do here (an agent new
//! enough for merged output).

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::fake_agent::FakeAgent;
use crate::support::host_agent::HostAgent;
use crate::support::test_vm::TestVm;
use crate::support::{guest_run_with, run_bytes, virtomate};

/// Whether a process whose command line starts with `marker` runs on the
/// host (virtomate's own command line holds it too, further on).
fn runs_on_host(marker: &str) -> bool {
    let out = Command::new("pgrep")
        .args(["-f", &format!("^{marker}")])
        .output()
        .unwrap();
    out.status.success()
}

/// `virtomate guest-run ARGS`, bytes in and out.
fn raw_run(args: &[&str], stdin: &[u8]) -> Output {
    let mut line = vec!["guest-run"];
    line.extend(args);
    run_bytes(&line, stdin)
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn max_time_stops_the_program_and_what_it_started_and_keeps_its_output() {
    let agent = HostAgent::start();
    let marker = "sleep 6071";
    let started = Instant::now();
    let out = guest_run_with(
        &["--max-time", "1"],
        &agent.socket(),
        &[
            "sh",
            "-c",
            &format!("echo before; {marker} & {marker} | cat; wait"),
        ],
        None,
    );
    assert_eq!(out.status, 124, "as GNU timeout: {out:?}");
    let result = out.json();
    assert_eq!(result["stdout"], "before\n", "{result}");
    assert_eq!(result["signal"], 15, "{result}");
    assert_eq!(result["exit_code"], json!(null), "{result}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(
        !runs_on_host(marker),
        "nothing the program started is left running"
    );
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_program_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let agent = HostAgent::start();
    let marker = "sleep 6072";
    let out = guest_run_with(
        &["--max-time", "0.5", "--grace", "0.5"],
        &agent.socket(),
        &["sh", "-c", &format!("trap '' TERM; {marker}")],
        None,
    );
    assert_eq!(out.status, 124, "{out:?}");
    assert_eq!(out.json()["signal"], 9, "{out:?}");
    assert!(!runs_on_host(marker));
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_program_that_ends_within_the_limit_is_reported_as_exited() {
    let agent = HostAgent::start();
    let out = guest_run_with(
        &["--max-time", "30"],
        &agent.socket(),
        &["sh", "-c", "exit 3"],
        None,
    );
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(out.json()["exit_code"], 3);
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn ctrl_c_with_a_time_limit_stops_the_program() {
    let agent = HostAgent::start();
    let marker = "sleep 6073";
    let child = virtomate()
        .args([
            "guest-run",
            "--max-time",
            "60",
            agent.socket().to_str().unwrap(),
            "--",
        ])
        .args(["sh", "-c", marker])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    crate::support::wait_until(20, "the program to start", || runs_on_host(marker));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    let error: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(error["type"], "Interrupted", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("was stopped with SIGTERM"),
        "{error}"
    );
    assert!(!runs_on_host(marker), "Ctrl-C stopped it");
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn max_time_bounds_the_wait_whatever_the_program_left_holding_its_output() {
    let agent = HostAgent::start();
    // A daemon the program left (its parent gone) keeps the agent's output
    // pipe open: it is stopped with the program.
    let marker = "sleep 6073";
    let started = Instant::now();
    let out = guest_run_with(
        &["--max-time", "1"],
        &agent.socket(),
        &["sh", "-c", &format!("echo before; ({marker} &); sleep 100")],
        None,
    );
    assert_eq!(out.status, 124, "{out:?}");
    assert_eq!(out.json()["stdout"], "before\n", "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(!runs_on_host(marker), "the daemon holding the output was stopped");

    // The program ended by itself before its limit and left one: nothing
    // knows it then, and the wait ends all the same, saying why.
    let marker = "sleep 6074";
    let started = Instant::now();
    let out = guest_run_with(
        &["--max-time", "1", "--grace", "1"],
        &agent.socket(),
        &["sh", "-c", &format!("({marker} &); exit 0")],
        None,
    );
    let message = out.error("AgentTimeout");
    assert!(message.contains("still holds its output"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    Command::new("pkill")
        .args(["-f", &format!("^{marker}")])
        .status()
        .unwrap();
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn env_sets_variables_over_a_standard_path_and_env_clear_starts_empty() {
    let agent = HostAgent::start();
    let out = guest_run_with(
        &["--env", "A=x=y z", "--env", "B="],
        &agent.socket(),
        &["sh", "-c", "printf '%s|%s|%s' \"$A\" \"$B\" \"$PATH\""],
        None,
    );
    assert_eq!(
        out.json()["stdout"],
        "x=y z||/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    let out = guest_run_with(
        &["--env-clear", "--env", "ONLY=1"],
        &agent.socket(),
        &["/usr/bin/env"],
        None,
    );
    assert_eq!(out.json()["stdout"], "ONLY=1\n");
    let out = guest_run_with(&["--env", "=x"], &agent.socket(), &["true"], None);
    assert_eq!(out.status, 2, "a malformed --env is a usage error: {out:?}");
    assert!(out.stderr.contains("KEY=VALUE"), "{out:?}");
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn raw_gives_the_programs_bytes_and_exit_status() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let socket = socket.to_str().unwrap();
    let out = raw_run(
        &[
            "--raw",
            socket,
            "--",
            "sh",
            "-c",
            "printf 'o\\0ut'; printf err >&2; exit 3",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout, b"o\0ut");
    assert_eq!(out.stderr, b"err");

    let out = raw_run(&["--raw", socket, "--", "sh", "-c", "kill -9 $$"], b"");
    assert_eq!(out.status.code(), Some(128 + 9), "as shells report a signal");

    // 1 MiB of bytes that are anything but text, both ways.
    let input: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let out = raw_run(&["--raw", "--stdin", socket, "--", "cat"], &input);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout == input, "1 MiB round trip through cat differs");

    let out = raw_run(
        &["--raw", "--max-time", "0.5", socket, "--", "sleep", "6074"],
        b"",
    );
    assert_eq!(out.status.code(), Some(124));

    // virtomate's own failure: no stdout, one line on stderr, ssh's 255.
    let out = raw_run(&["--raw", "/nonexistent/qga.sock", "--", "true"], b"");
    assert_eq!(out.status.code(), Some(255));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("virtomate: AgentUnavailable: "), "{stderr}");
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn raw_output_streams_into_a_pipeline() {
    let agent = HostAgent::start();
    let listing = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} guest-run --raw {} -- tar -C /etc -cf - hostname passwd | tar -tf -",
            env!("CARGO_BIN_EXE_virtomate"),
            agent.socket().display()
        ))
        .output()
        .unwrap();
    assert!(listing.status.success(), "{listing:?}");
    assert_eq!(String::from_utf8(listing.stdout).unwrap(), "hostname\npasswd\n");
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn merge_output_is_refused_by_an_older_agent_before_anything_runs() {
    let agent = HostAgent::start();
    let marker = agent.dir.path().join("ran");
    let out = guest_run_with(
        &["--merge-output"],
        &agent.socket(),
        &["touch", marker.to_str().unwrap()],
        None,
    );
    let message = out.error("AgentCommandError");
    assert!(message.contains("needs qemu-ga 8.1 or newer"), "{message}");
    assert!(
        message.contains("the agent is 7."),
        "names the agent's version: {message}"
    );
    assert!(!marker.exists(), "the program must not run at all");
}

#[test]
fn merge_output_asks_a_newer_agent_for_one_stream() {
    let agent = FakeAgent::serve(|mut conn| {
        conn.sync();
        conn.answer(
            "guest-info",
            json!({"version": "8.2.0", "supported_commands": []}),
        );
        let exec = conn.request();
        assert_eq!(exec["execute"], "guest-exec");
        assert_eq!(exec["arguments"]["capture-output"], "merged", "{exec}");
        conn.reply(&json!({"return": {"pid": 7}, "id": exec["id"]}));
        conn.answer(
            "guest-exec-status",
            json!({"exited": true, "exitcode": 0, "out-data": "b3V0CmVycgo="}),
        );
        conn.wait_for_close();
    });
    let out = guest_run_with(
        &["--merge-output"],
        &agent.socket(),
        &["sh", "-c", "echo out; echo err >&2"],
        None,
    );
    let result = out.json();
    assert_eq!(result["stdout"], "out\nerr\n", "{result}");
    assert_eq!(result["stderr"], json!(null), "{result}");
}

#[test]
#[ignore = "needs the test VM"]
fn max_time_leaves_nothing_running_in_the_guest() {
    let vm = TestVm::boot("max-time");
    let marker = "sleep 6075";
    let out = guest_run_with(
        &["--max-time", "2"],
        &vm.socket(),
        &["sh", "-c", &format!("{marker} & {marker} | cat; wait")],
        None,
    );
    assert_eq!(out.status, 124, "{out:?}");
    let listing = guest_run_with(&[], &vm.socket(), &["ps"], None).json();
    let processes = listing["stdout"].as_str().unwrap();
    assert!(processes.contains("ps"), "a real listing: {processes}");
    assert!(
        !processes.contains(marker),
        "left running in the guest: {processes}"
    );

    // The same options by the VM's name, with --env and --raw.
    let by_name = |options: &[&str], program: &[&str]| {
        let mut args = vec!["guest-run"];
        args.extend(options);
        args.extend([vm.name.as_str(), "--"]);
        args.extend(program);
        raw_run(&args[1..], b"")
    };
    let out = by_name(
        &["--max-time", "1", "--raw"],
        &["sh", "-c", "echo started; sleep 6079"],
    );
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    assert_eq!(out.stdout, b"started\n");
    let out = by_name(
        &["--env", "GREETING=a b=c", "--raw"],
        &["sh", "-c", "printf %s \"$GREETING\"; exit 7"],
    );
    assert_eq!(
        (out.status.code(), out.stdout.as_slice()),
        (Some(7), &b"a b=c"[..])
    );
}
