//! `virtomate guest-run` against the real qemu-ga, run on the host with
//! `-m unix-listen`: fast, and the same agent code as in a guest.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use serde_json::json;

use crate::support::host_agent::HostAgent;
use crate::support::{self, guest_run, guest_run_with, run, run_command, virtomate};

fn result(exit_code: Option<i32>, stdout: Option<&str>, stderr: Option<&str>) -> serde_json::Value {
    json!({
        "exit_code": exit_code,
        "signal": null,
        "stderr": stderr,
        "stderr_truncated": false,
        "stdout": stdout,
        "stdout_truncated": false,
    })
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn echo_prints_the_run_result_pretty_exactly_as_specified() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let out = guest_run_with(&["-p"], &socket, &["echo", "-n", "Hello World"], None);
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(
        out.stdout,
        r#"{
  "exit_code": 0,
  "signal": null,
  "stderr": null,
  "stderr_truncated": false,
  "stdout": "Hello World",
  "stdout_truncated": false
}
"#
    );
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn compact_output_by_default() {
    let agent = HostAgent::start();
    let out = guest_run(&agent.socket(), &["echo", "-n", "Hello World"]);
    assert_eq!(
        out.stdout,
        concat!(
            "{\"exit_code\":0,\"signal\":null,\"stderr\":null,\"stderr_truncated\":false,",
            "\"stdout\":\"Hello World\",\"stdout_truncated\":false}\n"
        )
    );
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn encode_gives_base64() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let out = guest_run_with(&["--encode"], &socket, &["echo", "-n", "Hello World"], None);
    assert_eq!(out.json(), result(Some(0), Some("SGVsbG8gV29ybGQ="), None));
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_failing_program_reports_its_status_and_stderr_with_exit_0() {
    let agent = HostAgent::start();
    let out = guest_run(&agent.socket(), &["cat", "/does/not/exist"]);
    assert_eq!(out.status, 0);
    assert_eq!(
        out.json(),
        result(
            Some(1),
            None,
            Some("cat: /does/not/exist: No such file or directory\n")
        )
    );
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_program_that_cannot_start_is_an_error_with_the_agents_description() {
    let agent = HostAgent::start();
    let out = guest_run(&agent.socket(), &["/does/not/exist"]);
    let message = out.error("AgentCommandError");
    assert_eq!(
        message,
        "unable to execute QEMU agent command 'guest-exec': Guest agent command failed, error was \
         'Failed to execute child process \u{201c}/does/not/exist\u{201d} (No such file or directory)'"
    );
    assert!(
        out.stdout.contains(r"\u201c/does/not/exist\u201d"),
        "ASCII escapes: {}",
        out.stdout
    );
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_shell_must_be_invoked_explicitly() {
    let agent = HostAgent::start();
    let out = guest_run(
        &agent.socket(),
        &["/usr/bin/env", "bash", "-c", "printf \"Hello World\" | wc -m"],
    );
    assert_eq!(out.json(), result(Some(0), Some("11\n"), None));
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn stdin_is_passed_to_the_program() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let out = guest_run_with(&["-p", "--stdin"], &socket, &["wc", "-m"], Some(b"Hello World"));
    assert_eq!(out.json(), result(Some(0), Some("11\n"), None));
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn empty_stdin_is_fine() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let out = guest_run_with(&["--stdin"], &socket, &["wc", "-c"], Some(b""));
    assert_eq!(out.json(), result(Some(0), Some("0\n"), None));
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn exit_status_and_signal_are_reported() {
    let agent = HostAgent::start();
    let out = guest_run(&agent.socket(), &["sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.json(), result(Some(3), Some("out\n"), Some("err\n")));

    let out = guest_run(&agent.socket(), &["sh", "-c", "kill -9 $$"]);
    assert_eq!(out.status, 0);
    let json = out.json();
    assert_eq!(
        (json["exit_code"].clone(), json["signal"].clone()),
        (json!(null), json!(9))
    );
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn output_that_is_not_utf8_needs_encode() {
    let agent = HostAgent::start();
    let out = guest_run(&agent.socket(), &["printf", "ok\\377"]);
    let message = out.error("EncodingError");
    assert!(
        message.contains("standard output") && message.contains("--encode"),
        "{message}"
    );

    let socket = agent.socket();
    let out = guest_run_with(&["-e"], &socket, &["printf", "ok\\377"], None);
    assert_eq!(out.json()["stdout"], "b2v/");
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn non_ascii_output_is_escaped_like_python() {
    let agent = HostAgent::start();
    let out = guest_run(&agent.socket(), &["printf", "caf\u{e9} \u{1f980}"]);
    assert!(out.stdout.is_ascii());
    assert!(
        out.stdout.contains(r#""stdout":"caf\u00e9 \ud83e\udd80""#),
        "{}",
        out.stdout
    );
    assert_eq!(out.json()["stdout"], "caf\u{e9} \u{1f980}");
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn runs_one_after_another_on_the_same_agent() {
    let agent = HostAgent::start();
    for i in 0..5 {
        let text = format!("run {i}");
        let out = guest_run(&agent.socket(), &["echo", "-n", &text]);
        assert_eq!(out.json()["stdout"], text);
    }
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_second_client_waits_for_the_first_and_streams_never_mix() {
    let agent = HostAgent::start();
    let spawn = |word: &str| -> Child {
        virtomate()
            .args(["guest-run", agent.socket().to_str().unwrap(), "--", "sh", "-c"])
            .arg(format!("sleep 0.3; echo {word}"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = spawn("first");
    let second = spawn("second");
    for (child, word) in [(first, "first"), (second, "second")] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["stdout"], format!("{word}\n"));
    }
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn twenty_runs_against_twenty_agents_at_once() {
    let agents: Vec<HostAgent> = (0..20).map(|_| HostAgent::start()).collect();
    let children: Vec<Child> = agents
        .iter()
        .enumerate()
        .map(|(i, agent)| {
            virtomate()
                .args(["guest-run", agent.socket().to_str().unwrap(), "--", "echo", "-n"])
                .arg(i.to_string())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "run {i}: {out:?}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["stdout"], i.to_string());
    }
}

#[test]
fn unknown_domain_is_not_found() {
    let out = run(&["guest-run", "no-such-domain-anywhere", "--", "true"], None);
    let message = out.error("NotFoundError");
    assert!(
        message.starts_with("Domain 'no-such-domain-anywhere' does not exist; looked in "),
        "the original's sentence, then where virtomate looked: {message}"
    );
    assert!(message.contains("among running QEMU processes"), "{message}");
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn bad_socket_paths_are_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let dangling = dir.path().join("dangling");
    std::os::unix::fs::symlink(&missing, &dangling).unwrap();
    let stopped = {
        let mut agent = HostAgent::start();
        agent.kill();
        agent
    };
    for (path, says) in [
        (missing.as_path(), "check the path"),
        (file.as_path(), "is not a UNIX socket"),
        (dir.path(), "is not a UNIX socket"),
        (dangling.as_path(), "check the path"),
        (stopped.socket().as_path(), "nothing listens on it"),
    ] {
        let message = guest_run(path, &["true"]).error("AgentUnavailable");
        assert!(message.contains(path.to_str().unwrap()), "{message}");
        assert!(message.contains(says), "{message}");
    }
}

#[test]
#[ignore = "needs qemu-ga on the host and root"]
fn a_socket_without_permission_is_named_in_the_error() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    // Root may open any socket: run as nobody, who may not enter the agent's directory.
    let mut command = virtomate();
    command
        .args(["guest-run", socket.to_str().unwrap(), "--", "true"])
        .uid(65534);
    let message = run_command(&mut command, None).error("AgentUnavailable");
    assert!(message.contains(socket.to_str().unwrap()), "{message}");
    assert!(message.contains("Permission denied"), "{message}");
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_bare_qemu_process_is_found_by_name() {
    let agent = HostAgent::start();
    let name = support::unique_name("fake-vm");
    // A process that looks like QEMU on /proc/PID/cmdline; the agent socket
    // path is relative to its working directory.
    let mut fake_qemu = support::die_with_parent(
        Command::new("/bin/sh")
            .arg0("qemu-system-x86_64")
            .args(["-c", "sleep 60; :", "-name"])
            .arg(format!("guest={name},debug-threads=on"))
            .arg("-chardev")
            .arg("socket,path=qga.sock,server=on,wait=off,id=qga0")
            .args([
                "-device",
                "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            ])
            .current_dir(agent.dir.path()),
    )
    .spawn()
    .unwrap();
    // Until sh's child has become `sleep`, it is a copy of the fake QEMU,
    // command line and all: a second process of that name.
    let children = format!("/proc/{0}/task/{0}/children", fake_qemu.id());
    support::wait_until(10, "the fake QEMU's sleep", || {
        let children = std::fs::read_to_string(&children).unwrap_or_default();
        children.split_whitespace().any(|child| {
            std::fs::read_to_string(format!("/proc/{child}/comm")).is_ok_and(|comm| comm.trim() == "sleep")
        })
    });
    let out = run(&["guest-run", &name, "--", "echo", "-n", "found"], None);
    let _ = fake_qemu.kill();
    let _ = fake_qemu.wait();
    assert_eq!(out.json()["stdout"], "found", "{out:?}");
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_reader_that_goes_away_early_is_no_error_and_no_panic() {
    let agent = HostAgent::start();
    // 1 MiB of "y\n", about 1.5 MiB of JSON: far more than the pipe holds,
    // so virtomate cannot finish writing before the reader goes away and
    // must see EPIPE. (With a few bytes of output it never would.)
    let output_bytes = 1 << 20;
    let mut child = virtomate()
        .args(["guest-run", agent.socket().to_str().unwrap(), "--", "sh", "-c"])
        .arg(format!("yes | head -c {output_bytes}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let capacity = nix::fcntl::fcntl(&stdout, nix::fcntl::FcntlArg::F_GETPIPE_SZ).unwrap();
    assert!(
        (capacity as usize) < output_bytes,
        "the pipe ({capacity} bytes) must not hold the whole output"
    );
    // Like `| head -c1`: one byte, then the reading end is closed.
    let mut first = [0u8; 1];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    assert_eq!(&first, b"{");
    drop(stdout);

    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    // src/main.rs: a reader that went away is not an error (as in ripgrep),
    // so exit 0, not 1 for an IoError, 101 for a panic, or death by SIGPIPE.
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(stderr.is_empty(), "nothing to tell on stderr: {stderr}");
}

#[test]
fn usage_errors_exit_2_with_usage_on_stderr() {
    let out = run(&["guest-run", "only-a-domain"], None);
    assert_eq!(out.status, 2);
    assert!(out.stdout.is_empty());
    assert!(out.stderr.contains("Usage"), "{}", out.stderr);
}

#[test]
fn version_with_dash_v() {
    let out = run(&["-v"], None);
    assert_eq!(out.status, 0);
    assert_eq!(
        out.stdout.trim(),
        format!("virtomate {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn an_agent_that_dies_during_a_run_gives_a_clear_error_at_once() {
    let mut agent = HostAgent::start();
    // Once the program runs, during the run.
    let child = crate::support::spawn_sleeping_guest_run(&agent.socket());
    agent.kill();
    let killed = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(killed.elapsed() < std::time::Duration::from_secs(8));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["type"], "AgentDisconnected", "{json}");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_session_libvirt_domain_is_found_from_its_status_file() {
    let agent = HostAgent::start();
    // A status file captured from a real libvirtd, its second agent channel
    // pointed at the real agent of this test.
    let captured = include_str!("data/libvirt-status-two-channels.xml");
    let status = captured.replace(
        "/work/main/target/libvirt-test-env/virtomate-test-qga1.sock",
        agent.socket().to_str().unwrap(),
    );
    let runtime = tempfile::tempdir().unwrap();
    let status_dir = runtime.path().join("libvirt/qemu/run");
    std::fs::create_dir_all(&status_dir).unwrap();
    std::fs::write(status_dir.join("virtomate-test.xml"), status).unwrap();

    let session = |args: &[&str]| {
        let mut command = virtomate();
        command
            .args(args)
            .env("XDG_RUNTIME_DIR", runtime.path())
            .env("HOME", runtime.path());
        run_command(&mut command, None)
    };
    // org.qemu.guest_agent.0's socket does not exist here, so the second
    // channel, a real agent, is used.
    let out = session(&[
        "-c",
        "qemu:///session",
        "guest-run",
        "virtomate-test",
        "--",
        "echo",
        "-n",
        "via .1",
    ]);
    assert_eq!(out.json()["stdout"], "via .1", "{out:?}");
    let out = session(&["guest-run", "0766EB29-75B8-4805-AD22-AAD5FCD186C4", "--", "true"]);
    assert_eq!(out.json()["exit_code"], 0, "{out:?}");

    std::fs::create_dir_all(runtime.path().join(".config/libvirt/qemu")).unwrap();
    let listed = session(&["-c", "qemu:///session", "domain-list"]).json();
    assert_eq!(listed[0]["name"], "virtomate-test");
    assert_eq!(listed[0]["uuid"], "0766eb29-75b8-4805-ad22-aad5fcd186c4");
    assert_eq!(
        listed[0]["agent_channels"][1]["path"],
        agent.socket().to_str().unwrap()
    );
}
