//! Every argument where the user put it, every message true (issue 14):
//! what follows PROGRAM is the program's, output as Python's `json.dumps`
//! writes it, output the agent cut in a character, bad durations, empty
//! URIs, and the signals a run takes or leaves alone.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::fake_agent::{Conn, FakeAgent};
use crate::support::host_agent::HostAgent;
use crate::support::{guest_run, run, run_command, virtomate, Outcome};

/// `virtomate BEFORE guest-run SOCKET COMMAND...`, without a `--`.
fn run_on(agent: &HostAgent, before: &[&str], command: &[&str]) -> Outcome {
    let socket = agent.socket();
    let mut args = before.to_vec();
    args.extend(["guest-run", socket.to_str().unwrap()]);
    args.extend(command);
    run(&args, None)
}

/// The program's standard output, from a run that must have succeeded
/// with compact output (no `-p` taken from the program's arguments).
fn stdout_of(out: &Outcome) -> String {
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(out.stdout.lines().count(), 1, "compact: {}", out.stdout);
    let json = out.json();
    assert_eq!(json["exit_code"], 0, "{json}");
    json["stdout"].as_str().unwrap_or_default().to_owned()
}

/// The arguments the program got, one per line, by running
/// `sh -c 'printf "[%s]\n" "$@"' sh ARGUMENTS...` — itself a program with
/// an option, `-c`, right after it.
fn argv_seen(agent: &HostAgent, before: &[&str], arguments: &[&str]) -> Vec<String> {
    let mut command = vec!["/bin/sh", "-c", "printf '[%s]\\n' \"$@\"", "sh"];
    command.extend(arguments);
    let stdout = stdout_of(&run_on(agent, before, &command));
    stdout
        .lines()
        .map(|line| line.trim_matches(['[', ']']).to_owned())
        .collect()
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn options_after_the_program_are_the_programs() {
    let agent = HostAgent::start();
    // -e is echo's (interpret escapes), not --encode.
    let out = run_on(&agent, &[], &["/bin/echo", "-e", "a\\tb"]);
    assert_eq!(stdout_of(&out), "a\tb\n");
    // -p is not --pretty.
    let out = run_on(&agent, &[], &["/bin/echo", "-p", "x"]);
    assert_eq!(stdout_of(&out), "-p x\n");
    // A -- after PROGRAM is kept (GNU echo prints it).
    let out = run_on(&agent, &[], &["/bin/echo", "--", "x"]);
    assert_eq!(stdout_of(&out), "-- x\n");
    // -c is not --connection.
    let out = run_on(&agent, &[], &["/bin/sh", "-c", "echo hi"]);
    assert_eq!(stdout_of(&out), "hi\n");
    // -l is not --log.
    let out = run_on(&agent, &[], &["/bin/ls", "-l", "/"]);
    assert!(stdout_of(&out).starts_with("total "), "{out:?}");

    let arguments = [
        "--help",
        "--stdin",
        "--timeout",
        "0",
        "--reply-timeout=-1",
        "-v",
        "--version",
        "--trace",
        "-e",
        "--encode",
        "-p",
        "--pretty",
        "-c",
        "qemu:///nowhere",
        "--log",
        "x",
        "--",
        "-",
        "",
    ];
    assert_eq!(argv_seen(&agent, &[], &arguments), arguments);
    // With a `--` before PROGRAM, which is virtomate's and consumed.
    let mut command = vec!["--", "/bin/echo"];
    command.extend(["-n", "--", "x"]);
    assert_eq!(stdout_of(&run_on(&agent, &[], &command)), "-- x");
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn stdin_after_the_program_is_not_read() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    // `--stdin` is cat's argument here (a file that does not exist), and
    // virtomate's standard input stays unread.
    let out = run(
        &["guest-run", socket.to_str().unwrap(), "cat", "--stdin"],
        Some(b"not for cat"),
    );
    let json = out.json();
    assert_eq!(json["stdout"], serde_json::Value::Null, "{json}");
    assert_eq!(json["exit_code"], 1, "{json}");
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn virtomates_options_before_the_program_still_count() {
    let agent = HostAgent::start();
    // Before the command.
    let out = run_on(
        &agent,
        &["-p", "--timeout", "5", "-l", "error"],
        &["-e", "/bin/echo", "-p"],
    );
    assert_eq!(out.status, 0, "{out:?}");
    assert!(
        out.stdout.starts_with("{\n  \"exit_code\": 0,\n"),
        "{}",
        out.stdout
    );
    assert_eq!(out.json()["stdout"], "LXAK"); // "-p\n"
                                              // Between DOMAIN and PROGRAM, globals included.
    let socket = agent.socket();
    let line = [
        "guest-run",
        socket.to_str().unwrap(),
        "-p",
        "--timeout",
        "5",
        "--reply-timeout",
        "9",
        "-c",
        "",
        "-e",
        "--",
        "/bin/echo",
        "-p",
    ];
    let out = run(&line, None);
    assert_eq!(out.status, 0, "{out:?}");
    assert!(
        out.stdout.starts_with("{\n  \"exit_code\": 0,\n"),
        "{}",
        out.stdout
    );
    assert_eq!(out.json()["stdout"], "LXAK");
    assert_eq!(argv_seen(&agent, &["--trace"], &["a"]), ["a"]);
}

#[test]
fn durations_refuse_zero_and_negatives_with_one_message() {
    let expected = "expected a number of seconds greater than 0 and at most 1000000000";
    for option in ["--timeout", "--reply-timeout"] {
        for bad in ["0", "-1", "-0.5", "nan", "x"] {
            for line in [
                vec![option, bad, "guest-run", "vm", "true"],
                vec!["guest-run", option, bad, "vm", "true"],
            ] {
                let out = run(&line, None);
                assert_eq!(out.status, 2, "{line:?}: {out:?}");
                assert!(out.stdout.is_empty(), "{line:?}: {out:?}");
                assert!(
                    out.stderr.contains(&format!(
                        "invalid value '{bad}' for '{option} <SECONDS>': {expected}"
                    )),
                    "{line:?}: {}",
                    out.stderr
                );
            }
        }
    }
    let out = run(&["guest-ping", "--wait", "-1", "vm"], None);
    assert_eq!(out.status, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("expected a number of seconds from 0 to 1000000000"),
        "{}",
        out.stderr
    );
}

#[test]
fn guest_ping_wait_0_pings_once() {
    // A healthy agent that takes a moment, as one in a VM does.
    let agent = FakeAgent::serve(|mut conn| {
        // The slowness is the agent's, under test: not a wait of the test.
        std::thread::sleep(Duration::from_millis(50));
        conn.sync();
        conn.answer("guest-ping", json!({}));
        conn.wait_for_close();
    });
    let socket = agent.socket();
    let out = run(&["guest-ping", "--wait", "0", socket.to_str().unwrap()], None);
    assert_eq!((out.status, out.stdout.as_str()), (0, ""), "{out:?}");
    // No agent at all: one attempt, no waiting.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("qga.sock");
    let started = Instant::now();
    let out = run(&["guest-ping", "--wait", "0", missing.to_str().unwrap()], None);
    assert_eq!(out.status, 125, "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn an_empty_connection_uri_is_the_default() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let socket = socket.to_str().unwrap();
    let ran = |out: Outcome| {
        assert_eq!(
            (out.status, out.json()["stdout"].clone()),
            (0, json!("ok")),
            "{out:?}"
        )
    };
    ran(run(
        &["-c", "", "guest-run", socket, "--", "echo", "-n", "ok"],
        None,
    ));
    ran(run(
        &["--connection=", "guest-run", socket, "--", "echo", "-n", "ok"],
        None,
    ));
    let with_env = |value: &str, before: &[&str]| {
        let mut command = virtomate();
        command.env("LIBVIRT_DEFAULT_URI", value).args(before);
        command.args(["guest-run", socket, "--", "echo", "-n", "ok"]);
        run_command(&mut command, None)
    };
    ran(with_env("", &[]));
    ran(with_env("", &["-c", ""]));
    // An empty -c falls back to the environment, as libvirt's does.
    let out = with_env("qemu:///nowhere", &["-c", ""]);
    assert_eq!(out.status, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("unsupported connection URI 'qemu:///nowhere'"),
        "{}",
        out.stderr
    );
}

/// What python3's `json.dumps` makes of a run result whose stdout is
/// `text`, compact (`separators=(",", ":")`, virtomate's default) or
/// `indent=2` (`-p`, the original's layout), keys sorted.
fn python_json(text: &str, pretty: bool) -> String {
    let script = r#"
import json, sys
text = sys.stdin.buffer.read().decode("utf-8")
result = {"exit_code": 0, "signal": None, "stderr": None, "stderr_truncated": False,
          "stdout": text, "stdout_truncated": False}
layout = {"indent": 2} if sys.argv[1] == "pretty" else {"separators": (",", ":")}
sys.stdout.write(json.dumps(result, sort_keys=True, **layout) + "\n")
"#;
    let mut child = Command::new("python3")
        .args(["-c", script, if pretty { "pretty" } else { "compact" }])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/install-deps.sh installs it)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python3: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Every character from U+0000 to U+00FF, and some beyond: the edges of
/// UTF-8's lengths and of the BMP, line separators, noncharacters, and
/// characters that take a surrogate pair.
fn every_kind_of_character() -> String {
    let mut text: String = (0u32..=0xFF).map(|c| char::from_u32(c).unwrap()).collect();
    text.extend([
        '\u{100}',
        '\u{7FF}',
        '\u{800}',
        '\u{2028}',
        '\u{2029}',
        '\u{D7FF}',
        '\u{E000}',
        '\u{FEFF}',
        '\u{FFFD}',
        '\u{FFFF}',
        '\u{10000}',
        '\u{1F600}',
        '\u{10FFFF}',
    ]);
    text
}

#[test]
#[ignore = "needs qemu-ga and python3 on the host"]
fn output_is_byte_for_byte_what_pythons_json_dumps_writes() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let text = every_kind_of_character();
    for pretty in [false, true] {
        let mut line = if pretty { vec!["-p"] } else { vec![] };
        line.extend(["guest-run", "--stdin", socket.to_str().unwrap(), "cat"]);
        let out = run(&line, Some(text.as_bytes()));
        assert_eq!(out.status, 0, "{out:?}");
        let expected = python_json(&text, pretty);
        assert!(expected.contains(r#"\u007f"#) && expected.contains(r#"\ud83d\ude00"#));
        // Compared line by line first, for a readable failure.
        for (ours, python) in out.stdout.lines().zip(expected.lines()) {
            assert_eq!(ours, python, "pretty: {pretty}");
        }
        assert_eq!(out.stdout, expected, "pretty: {pretty}");
    }
}

const MIB: usize = 1 << 20;

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_character_the_agents_cap_cuts_in_two_is_dropped() {
    let agent = HostAgent::start();
    // 16 MiB - 1 bytes, then `é` (2 bytes): the cap falls inside it.
    let script = format!(
        "head -c {} /dev/zero | tr '\\0' a; printf '\\303\\251 more'",
        16 * MIB - 1
    );
    let out = guest_run(&agent.socket(), &["sh", "-c", &script]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    let json = out.json();
    assert_eq!(json["stdout_truncated"], true);
    assert_eq!(json["exit_code"], 0);
    let stdout = json["stdout"].as_str().unwrap();
    assert_eq!(stdout.len(), 16 * MIB - 1);
    assert!(stdout.bytes().all(|b| b == b'a'));
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn output_that_is_not_utf8_says_the_program_ran_and_how_it_ended() {
    let agent = HostAgent::start();
    let out = guest_run(
        &agent.socket(),
        &["sh", "-c", "printf 'ok\\377'; echo fine >&2; exit 3"],
    );
    let message = out.error("EncodingError");
    assert_eq!(
        message,
        "standard output (first invalid byte at offset 2) of the program is not valid UTF-8, \
         so the result cannot be shown as text; the program has run and exited with status 3; \
         running it again with --encode gives its output as Base64, but runs the program a second time"
    );
    let out = guest_run(
        &agent.socket(),
        &["sh", "-c", "printf '\\377' >&2; printf '\\300'; kill -9 $$"],
    );
    let message = out.error("EncodingError");
    assert!(
        message.starts_with(
            "standard output (first invalid byte at offset 0) and \
             standard error (first invalid byte at offset 0) of the program are not valid UTF-8"
        ) && message.contains("was killed by signal 9"),
        "{message}"
    );
}

/// An agent whose program never ends.
/// A program that never ends, on every connection the run opens: it lets
/// go of the channel between polls once the program is no longer young.
fn never_ending(mut conn: Conn, connection: usize) {
    if connection == 0 {
        conn.start_program();
    } else {
        conn.sync();
    }
    while let Some(request) = conn.next_request() {
        let reply = format!(
            "{{\"return\": {{\"exited\": false}}, \"id\": {}}}\n",
            request["id"]
        );
        if !conn.send(reply.as_bytes()) {
            break;
        }
    }
}

/// `guest-run` on `agent`, started with `ignored` signals ignored, as
/// `nohup` or a non-interactive shell's background job start it.
fn spawn_ignoring(agent: &FakeAgent, ignored: &'static [nix::sys::signal::Signal]) -> std::process::Child {
    let mut command = virtomate();
    command
        .args(["guest-run", agent.socket().to_str().unwrap(), "sleep", "infinity"])
        .stdout(Stdio::piped());
    // SAFETY: signal(2) is async-signal-safe; nothing else runs in the child.
    unsafe {
        command.pre_exec(move || {
            for &signal in ignored {
                nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigIgn)?;
            }
            Ok(())
        });
    }
    command.spawn().unwrap()
}

fn send(child: &std::process::Child, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
}

/// The `Interrupted` error of a run that `signal` ends, naming the pid.
fn ended_by(child: std::process::Child, signal: nix::sys::signal::Signal) {
    let sent = Instant::now();
    send(&child, signal);
    let output = child.wait_with_output().unwrap();
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{signal}: took {:?}",
        sent.elapsed()
    );
    assert_eq!(output.status.code(), Some(1), "{signal}: {output:?}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["type"], "Interrupted", "{signal}: {json}");
    assert!(
        json["message"].as_str().unwrap().contains("guest pid 4242"),
        "{json}"
    );
}

#[test]
fn sighup_ends_a_run_as_sigterm_does() {
    let agent = FakeAgent::serve_each(never_ending);
    let child = spawn_ignoring(&agent, &[]);
    agent.wait_for("guest-exec-status");
    ended_by(child, nix::sys::signal::Signal::SIGHUP);
}

#[test]
fn a_signal_ignored_at_start_stays_ignored() {
    use nix::sys::signal::Signal::{SIGHUP, SIGINT, SIGTERM};
    let agent = FakeAgent::serve_each(never_ending);
    let mut child = spawn_ignoring(&agent, &[SIGINT, SIGHUP]);
    agent.wait_for("guest-exec-status");
    send(&child, SIGINT);
    send(&child, SIGHUP);
    // Caught, they would end the run at its next step: it polls on, thrice.
    agent.wait_for_next("guest-exec-status");
    agent.wait_for("guest-exec-status");
    agent.wait_for("guest-exec-status");
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGINT or SIGHUP ended the run"
    );
    // SIGTERM, not ignored, is still caught.
    ended_by(child, SIGTERM);
}
