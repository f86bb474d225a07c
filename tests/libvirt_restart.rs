//! A libvirt domain whose agent channel changes hands under a run: reached
//! straight over its socket while libvirtd is down, and taken back by
//! libvirtd when it starts again (it connects to the agents of the domains
//! it finds running). QEMU's chardev serves one client, so from then on the
//! agent answers only through libvirtd.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::libvirt::{env_script, LibvirtEnv};
use crate::support::{unique_name, virtomate, wait_until, StderrLines};

/// libvirtd and virtlogd stopped, their domains running on; started again
/// when dropped, so that a failing test leaves no domain libvirtd has lost.
struct DaemonsStopped {
    restarted: bool,
}

impl DaemonsStopped {
    fn now() -> DaemonsStopped {
        let out = env_script(&["stop-daemons"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            !libvirtd_answers(),
            "libvirtd still answers: not one the script started"
        );
        DaemonsStopped { restarted: false }
    }

    fn start_again(&mut self) {
        self.restarted = true;
        let out = env_script(&["start"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for DaemonsStopped {
    fn drop(&mut self) {
        if !self.restarted {
            env_script(&["start"]);
        }
    }
}

fn libvirtd_answers() -> bool {
    virsh(&["list"]).status.success()
}

fn virsh(args: &[&str]) -> std::process::Output {
    Command::new("virsh")
        .args(["-q", "-c", "qemu:///system"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

const PING: &str = r#"{"execute":"guest-ping"}"#;

/// The agent command that makes the file `path` in the guest.
fn touch_command(path: &str) -> String {
    format!(r#"{{"execute":"guest-exec","arguments":{{"path":"/bin/touch","arg":["{path}"]}}}}"#)
}

/// Sends `command` to the agent of `name` through libvirtd until it
/// passes: once libvirtd holds the channel and the runs on it let go of
/// it (at least once a second, their programs no longer young); until
/// then libvirtd's command waits, or fails at once while it reconnects.
fn until_libvirtd_passes_on(name: &str, command: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = virsh(&["qemu-agent-command", name, "--timeout", "10", command]);
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "libvirtd never reached the agent: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The run `run` (of `spawn_run`) ended well, its program having printed
/// `stdout`; what it said.
fn plain_run_ended(run: std::process::Child, said: &StderrLines, stdout: &str) -> String {
    let out = run.wait_with_output().unwrap();
    let said = said.rest().join("\n");
    assert_eq!(out.status.code(), Some(0), "{said}");
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["exit_code"], 0, "{result}");
    assert_eq!(result["stdout"], stdout, "{result}");
    said
}

/// `virtomate --log info guest-run OPTIONS NAME -- sh -c PROGRAM`, returned
/// once the program runs in the guest, with its stderr's lines.
fn spawn_run(options: &[&str], name: &str, program: &str) -> (std::process::Child, StderrLines) {
    let mut run = virtomate()
        .args(["--log", "info", "guest-run"])
        .args(options)
        .args([name, "--", "sh", "-c", program])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let said = StderrLines::of(&mut run);
    said.wait_for("started in the guest");
    (run, said)
}

/// `virtomate --log info session NAME` running `sh -c PROGRAM` as its
/// request `s`, returned once the program runs in the guest, with its
/// standard input, output and error's lines.
fn spawn_session(name: &str, program: &str) -> Session {
    let mut child = virtomate()
        .args(["--log", "info", "session", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let said = StderrLines::of(&mut child);
    let mut session = Session {
        input: child.stdin.take(),
        output: BufReader::new(child.stdout.take().unwrap()),
        child,
        said,
    };
    session.send(serde_json::json!({"id": "s", "run": ["sh", "-c", program]}));
    session
}

struct Session {
    child: std::process::Child,
    input: Option<std::process::ChildStdin>,
    output: BufReader<std::process::ChildStdout>,
    said: StderrLines,
}

impl Session {
    /// Sends `request`, and waits until its program runs.
    fn send(&mut self, request: serde_json::Value) {
        writeln!(self.input.as_mut().unwrap(), "{request}").unwrap();
        self.said.wait_for("started in the guest");
    }

    fn reply(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.output.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    /// Its exit status and what it said, once its input is closed.
    fn finish(mut self) -> (Option<i32>, String) {
        drop(self.input.take());
        let status = self.child.wait().unwrap();
        (status.code(), self.said.rest().join("\n"))
    }
}

/// Before: the run's next poll sat in QEMU's queue behind libvirtd, and
/// the run failed after --timeout with an AgentTimeout ("may have stopped
/// or restarted in the guest") while the program ran on. Two runs take
/// turns on the channel meanwhile, one of them followed (its output read
/// through libvirtd from then on), and a session's.
#[test]
#[ignore = "needs libvirtd and the test VM"]
fn runs_begun_while_libvirtd_was_down_end_through_libvirtd_once_it_takes_the_channel_back() {
    let mut env = LibvirtEnv::start();
    let name = unique_name("vt-handback");
    env.define(&name, &["--transient"]);
    let mut daemons = DaemonsStopped::now();

    // They run until told to end, through libvirtd once it is back.
    let go = format!("/tmp/{name}-go");
    let program = |said: &str| format!("while [ ! -e {go} ]; do sleep 0.1; done; echo {said}");
    let (plain, plain_said) = spawn_run(&[], &name, &program("finished"));
    let (followed, followed_said) = spawn_run(&["--follow"], &name, &program("followed"));
    let mut session = spawn_session(&name, &program("in a session"));
    daemons.start_again();

    until_libvirtd_passes_on(&name, &touch_command(&go));

    let said = plain_run_ended(plain, &plain_said, "finished\n");
    assert!(said.contains("going through libvirtd"), "{said}");
    let out = followed.wait_with_output().unwrap();
    let said = followed_said.rest().join("\n");
    assert_eq!(
        (out.status.code(), out.stdout.as_slice()),
        (Some(0), &b"followed\n"[..]),
        "{said}"
    );
    assert!(said.contains("going through libvirtd"), "{said}");
    let reply = session.reply();
    assert_eq!(reply["result"]["stdout"], "in a session\n", "{reply}");

    // The session's errors are libvirtd's from then on: the domain killed
    // under its next run is told as not running (libvirt's word on it).
    session.send(serde_json::json!({"id": "k", "run": ["sleep", "600"]}));
    let qemu = crate::libvirt::libvirt_pid_file(&name) as i32;
    let killed = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu),
        nix::sys::signal::Signal::SIGKILL,
    );
    killed.unwrap();
    let reply = session.reply();
    let (status, said) = session.finish();
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(&format!("the domain {name} is not running (libvirt ")),
        "{reply}\n{said}"
    );
    assert_eq!(status, Some(0), "{said}");
}

/// A control master started on the channel while libvirtd was down holds
/// it until libvirtd, back, queues for it and the idle master lets go.
/// From then on a run with `VIRTOMATE_PERSIST` goes through libvirtd.
/// Before: through the master, whose new connection queued behind
/// libvirtd's, filling QEMU's backlog: "cannot connect to the agent socket
/// …: Resource temporarily unavailable" (soak seed 275209).
#[test]
#[ignore = "needs libvirtd and the test VM"]
fn a_master_started_while_libvirtd_was_down_is_passed_by_once_libvirtd_holds_the_channel() {
    let mut env = LibvirtEnv::start();
    let name = unique_name("vt-master-lv");
    env.define(&name, &["--transient"]);
    let persisting = || {
        let mut command = virtomate();
        command.env("VIRTOMATE_PERSIST", "60").stdin(Stdio::null());
        command
    };
    let mut daemons = DaemonsStopped::now();
    let out = persisting()
        .args(["guest-run", &name, "--", "true"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let check = persisting().args(["control", "check", &name]).output().unwrap();
    assert!(check.status.success(), "a master runs: {check:?}");
    daemons.start_again();

    until_libvirtd_passes_on(&name, PING);
    for _ in 0..3 {
        let out = persisting()
            .args(["--log", "info", "guest-run", &name, "--", "echo", "through"])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}\n{said}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(said.contains("going through libvirtd"), "{said}");
    }
    let _ = persisting().args(["control", "exit", &name]).output();
}

/// libvirtd stopped under runs that go through it (as an upgrade restarts
/// it): the agent and its programs go on, so the runs go on polling them
/// straight over the channel libvirtd let go of, and through libvirtd
/// again once it is back and has taken the channel. Before: each failed at
/// once with an AgentDisconnected ("libvirtd closed the connection") while
/// its program ran on.
#[test]
#[ignore = "needs libvirtd and the test VM"]
fn runs_through_libvirtd_go_on_over_its_channel_while_it_is_down_and_through_it_once_back() {
    let mut env = LibvirtEnv::start();
    let name = unique_name("vt-around");
    env.define(&name, &["--transient"]);

    let go = format!("/tmp/{name}-go");
    let program = |said: &str| format!("while [ ! -e {go} ]; do sleep 0.1; done; echo {said}");
    let (plain, plain_said) = spawn_run(&[], &name, &program("finished"));
    let mut session = spawn_session(&name, &program("in a session"));
    let mut daemons = DaemonsStopped::now();
    plain_said.wait_for("libvirtd is gone: going straight to the agent channel it kept");
    session
        .said
        .wait_for("libvirtd is gone: going straight to the agent channel it kept");
    daemons.start_again();
    plain_said.wait_for("libvirtd has taken the agent channel back: going through libvirtd");
    session
        .said
        .wait_for("libvirtd has taken the agent channel back: going through libvirtd");

    // Through libvirtd, as they are now.
    until_libvirtd_passes_on(&name, &touch_command(&go));

    plain_run_ended(plain, &plain_said, "finished\n");
    let reply = session.reply();
    assert_eq!(reply["result"]["stdout"], "in a session\n", "{reply}");
    let (status, said) = session.finish();
    assert_eq!(status, Some(0), "{said}");
}

/// libvirtd stopped, then started again, twice, under a followed run
/// through it whose program writes all the while: the reads of its output,
/// and the credits and opens of its chunk files, whose connection libvirtd
/// dropped are made again on a new one, and every line comes once, in
/// order. Before: the run failed with an AgentDisconnected ("libvirtd
/// closed the connection") where a read was in flight as libvirtd stopped
/// (most of a followed run's requests; the library's `go_between` test
/// drops them every time).
#[test]
#[ignore = "needs libvirtd and the test VM"]
fn a_followed_run_through_libvirtd_goes_on_whole_when_it_stops_and_starts_under_it() {
    let mut env = LibvirtEnv::start();
    let name = unique_name("vt-follow-around");
    env.define(&name, &["--transient"]);

    let go = format!("/tmp/{name}-go");
    let program = format!(
        "i=0; until [ -e {go} ]; do seq $((i * 1000)) $((i * 1000 + 999)); i=$((i + 1)); done; echo end"
    );
    let (mut run, said) = spawn_run(&["--follow"], &name, &program);
    let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        let (mut stdout, output) = (run.stdout.take().unwrap(), output.clone());
        std::thread::spawn(move || {
            let mut buf = [0; 4096];
            while let Ok(n @ 1..) = std::io::Read::read(&mut stdout, &mut buf) {
                output.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    for _ in 0..2 {
        let before = output.lock().unwrap().len();
        wait_until(60, "more output", || {
            output.lock().unwrap().len() > before + 10_000
        });
        let mut daemons = DaemonsStopped::now();
        said.wait_for("libvirtd is gone: going straight to the agent channel it kept");
        daemons.start_again();
        said.wait_for("libvirtd has taken the agent channel back: going through libvirtd");
    }
    until_libvirtd_passes_on(&name, &touch_command(&go));

    let status = run.wait().unwrap();
    reader.join().unwrap();
    let said = said.rest().join("\n");
    assert_eq!(status.code(), Some(0), "{said}");
    let output = String::from_utf8(std::mem::take(&mut *output.lock().unwrap())).unwrap();
    let mut lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.pop(), Some("end"), "{said}");
    for (expected, line) in lines.iter().enumerate() {
        assert_eq!(
            line.parse::<usize>().ok(),
            Some(expected),
            "line {expected}\n{said}"
        );
    }
}

/// libvirtd stopped under a copy in, then (started again, holding the
/// channel) under a copy out, both through libvirtd: the write or read
/// whose connection it dropped is made again from the same place, straight
/// over the channel, and both copies end whole. Before: each failed with an
/// AgentDisconnected ("libvirtd closed the connection").
#[test]
#[ignore = "needs libvirtd and the test VM"]
fn copies_through_libvirtd_go_on_over_its_channel_when_it_stops_under_them() {
    let mut env = LibvirtEnv::start();
    let name = unique_name("vt-copy-around");
    env.define(&name, &["--transient"]);
    let data = crate::support::data::noise(48 << 20, 7);
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("in");
    std::fs::write(&local, &data).unwrap();
    let guest = format!("{name}:/root/big");

    let copy_in = copy_until_a_mebibyte(&[local.to_str().unwrap(), &guest]);
    let mut daemons = DaemonsStopped::now();
    assert_eq!(assert_copied(copy_in)["bytes"], 48 << 20);

    daemons.start_again();
    until_libvirtd_passes_on(&name, PING);
    let out = dir.path().join("out");
    let copy_out = copy_until_a_mebibyte(&[&guest, out.to_str().unwrap()]);
    let _daemons = DaemonsStopped::now();
    assert_eq!(assert_copied(copy_out)["bytes"], 48 << 20);
    assert!(std::fs::read(&out).unwrap() == data, "the copy out is whole");
}

/// libvirtd stopped under a `copy -r` out through it: the reads of tar's
/// output whose connection libvirtd dropped are made again on a new one,
/// as are its polls, and the tree comes whole. Before: an AgentDisconnected
/// ("libvirtd closed the connection").
#[test]
#[ignore = "needs libvirtd and the test VM"]
fn a_tree_copied_out_through_libvirtd_comes_whole_when_it_stops_under_the_copy() {
    let mut env = LibvirtEnv::start();
    let name = unique_name("vt-tree-around");
    env.define(&name, &["--transient"]);
    let data = crate::support::data::noise(32 << 20, 11);
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("big"), &data).unwrap();
    std::fs::write(tree.join("small"), "small\n").unwrap();
    let guest = format!("{name}:/root/tree");
    let copy_in = virtomate()
        .args(["copy", "-r", tree.to_str().unwrap(), &guest])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(copy_in.status.success(), "{copy_in:?}");

    let out = dir.path().join("out");
    let copy_out = copy_until_a_mebibyte(&["-r", &guest, out.to_str().unwrap()]);
    let _daemons = DaemonsStopped::now();
    let summary = assert_copied(copy_out);
    assert_eq!(
        (summary["files"].as_u64(), summary["bytes"].as_u64()),
        (Some(2), Some((32 << 20) + 6))
    );
    assert!(
        std::fs::read(out.join("big")).unwrap() == data,
        "the copy out is whole"
    );
    assert_eq!(std::fs::read_to_string(out.join("small")).unwrap(), "small\n");
}

/// `virtomate --log info copy --progress ARGS`, through libvirtd, returned
/// once a mebibyte has gone (the progress counts in MiB from then on).
fn copy_until_a_mebibyte(args: &[&str]) -> (std::process::Child, StderrLines) {
    let mut copy = virtomate()
        .args(["--log", "info", "copy", "--progress"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let said = StderrLines::of(&mut copy);
    said.wait_for("libvirtd holds the agent channel: going through libvirtd");
    said.wait_for(" MiB/");
    (copy, said)
}

/// The copy ended well, after a request made again straight over the
/// channel; its summary.
fn assert_copied((copy, said): (std::process::Child, StderrLines)) -> serde_json::Value {
    let out = copy.wait_with_output().unwrap();
    let said = said.rest().join("\n");
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("libvirtd is gone: going straight to the agent channel it kept"),
        "{said}"
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
