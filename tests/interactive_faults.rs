//! `guest-run -i`, `shell` and a session's interactive runs under faults:
//! the guest's `/tmp` full before the start and while the program runs,
//! `--max-time`, Ctrl-C, the agent restarted in the guest, the VM killed.
//! For each: what the user gets (error type, exit status) within a bound,
//! the host's terminal as it was, and what stays in the guest (a listing
//! of its `/tmp` and its processes before and after).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use serde_json::{json, Value};

use crate::shell::{modes, Terminal};
use crate::support::host_agent::HostAgent;
use crate::support::live_session::Live;
use crate::support::test_vm::{agent_restart_when, TestVm};
use crate::support::{guest_run_with, virtomate, wait_until};

/// The longest any faulted run may take to end: far beyond the 5 s reply
/// timeout the tests give, far below a hang.
const BOUND: Duration = Duration::from_secs(60);

/// Restarts the test VM's agent a second from now (see
/// [`agent_restart_when`]): a guest command put in front of the rest.
fn restart_vm_agent() -> String {
    agent_restart_when("sleep 1")
}

/// `guest-run -i` with its standard streams piped, read line by line.
struct Interactive {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Interactive {
    fn spawn(options: &[&str], domain: &str, program: &[&str]) -> Interactive {
        let mut child = virtomate()
            .args(["guest-run", "-i"])
            .args(options)
            .args([domain, "--"])
            .args(program)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Interactive { child, stdin, stdout }
    }

    fn write(&mut self, bytes: &[u8]) {
        self.stdin.as_mut().unwrap().write_all(bytes).unwrap();
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line
    }

    /// Writes to stdin from a thread until it breaks (virtomate ended).
    fn write_endlessly(&mut self) -> std::thread::JoinHandle<()> {
        let mut stdin = self.stdin.take().unwrap();
        std::thread::spawn(move || {
            let block = vec![b'y'; 4096];
            while stdin.write_all(&block).is_ok() {}
        })
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    /// The exit status and stderr, once virtomate has ended (within
    /// [`BOUND`]; its stdin still open).
    fn finish(mut self) -> (i32, String) {
        let status = wait_within(&mut self.child);
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (status, stderr)
    }
}

/// Waits for `child` to end, at most [`BOUND`]; its exit status.
fn wait_within(child: &mut Child) -> i32 {
    let deadline = Instant::now() + BOUND;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().expect("virtomate exits, not killed");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("virtomate did not end within {BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `guest-run --trace -i DOMAIN -- PROGRAM` sent SIGINT as soon as its
/// trace shows a line with `at` (`"pid":` first in the setup's start, on
/// a direct channel and through libvirtd), its stdin open: its exit
/// status and the lines virtomate said itself.
fn interrupted_at(domain: &str, program: &[&str], at: &str) -> (i32, String) {
    let mut child = virtomate()
        .args(["--trace", "guest-run", "-i", domain, "--"])
        .args(program)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (sender, lines) = std::sync::mpsc::channel();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        stderr
            .lines()
            .map_while(Result::ok)
            .try_for_each(|l| sender.send(l))
    });
    let deadline = Instant::now() + BOUND;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(at) => break,
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!("the trace never showed {at:?}");
            }
        }
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = wait_within(&mut child);
    let said: Vec<String> = lines
        .iter()
        .filter(|line| line.starts_with("virtomate: "))
        .collect();
    (status, said.join("\n"))
}

/// `ls -a /tmp` in the guest.
fn guest_tmp(domain: impl AsRef<Path>) -> String {
    guest_sh(domain, "ls -a /tmp")
}

/// The guest's processes, as busybox `ps` lists them (with arguments).
fn guest_ps(domain: impl AsRef<Path>) -> String {
    guest_sh(domain, "ps")
}

/// What `sh -c SCRIPT` prints in the guest of `domain` (a socket, or a
/// name), which must succeed; waits up to 30 s for an agent that is
/// restarting.
fn guest_sh(domain: impl AsRef<Path>, script: &str) -> String {
    let out = guest_run_with(&["--timeout", "30"], domain.as_ref(), &["sh", "-c", script], None);
    let json = out.json();
    assert_eq!(json["exit_code"], 0, "{script}: {out:?}");
    json["stdout"].as_str().unwrap_or_default().to_owned()
}

/// The private directory a message names (`/tmp/virtomate-follow-…`).
fn named_dir(message: &str) -> String {
    let start = message
        .find("/tmp/virtomate-follow-")
        .unwrap_or_else(|| panic!("no directory named: {message}"));
    let name: String = message[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || "/-_".contains(*c))
        .collect();
    name.trim_end_matches("/out").trim_end_matches("/err").to_owned()
}

/// Asserts an error of a restarted agent: which of the two depends on
/// whether the old agent took virtomate's poll with it.
fn assert_restart_error(message: &str) {
    assert!(
        message.contains("AgentDisconnected") || message.contains("AgentTimeout"),
        "not an error of a restarted agent: {message}"
    );
    assert!(message.contains("guest pid"), "{message}");
}

#[test]
#[ignore = "needs the test VM"]
fn on_the_vm_each_fault_ends_guest_run_i_clearly_and_leaves_no_process_behind() {
    let vm = TestVm::boot("i-faults");
    let socket = vm.socket();
    let socket = socket.to_str().unwrap();
    let before = guest_tmp(socket);

    // --max-time while input keeps coming and the program reads slowly.
    let marker = "sleep 6091";
    let slow = format!("while read -r l; do {marker}; done");
    let mut run = Interactive::spawn(&["--max-time", "2"], socket, &["sh", "-c", &slow]);
    let writer = run.write_endlessly();
    let (status, stderr) = run.finish();
    writer.join().unwrap();
    assert_eq!(status, 124, "{stderr}");
    assert!(!guest_ps(socket).contains(marker), "the program runs on");
    assert_eq!(guest_tmp(socket), before, "--max-time left files");

    // Ctrl-C while the pipe is full: a program that never reads.
    let marker = "sleep 6092";
    let mut run = Interactive::spawn(&[], socket, &["sh", "-c", &format!("echo up; {marker}")]);
    let writer = run.write_endlessly();
    assert_eq!(run.line(), "up\n");
    run.signal(nix::sys::signal::Signal::SIGINT);
    let (status, stderr) = run.finish();
    writer.join().unwrap();
    assert_eq!(status, 255, "{stderr}");
    assert!(stderr.starts_with("virtomate: Interrupted: "), "{stderr}");
    assert!(stderr.contains("was stopped with SIGTERM"), "{stderr}");
    let ps = guest_ps(socket);
    assert!(!ps.contains(marker) && !ps.contains("virtomate-follow-"), "{ps}");
    assert_eq!(guest_tmp(socket), before, "Ctrl-C left files");

    // Ctrl-C while the private directory is made, and while the agent
    // starts the program (whose shell would wait for a writer to open
    // its pipe, for ever): nothing of either stays.
    let marker = "sleep 6090";
    let program = ["sh", "-c", &format!("cat; {marker}")];
    // (A start whose reply comes before the signal is a plain stop.)
    let cases = [
        (
            r#""pid":"#,
            "while preparing the program's start",
            "while preparing the program's start",
        ),
        (
            r#""arg":["-c","d=$1"#,
            "had it started, it was stopped",
            "was stopped with SIGTERM",
        ),
    ];
    for (at, said_then, said_later) in cases {
        let (status, said) = interrupted_at(socket, &program, at);
        assert_eq!(status, 255, "{said}");
        assert!(said.starts_with("virtomate: Interrupted: "), "{said}");
        assert!(said.contains(said_then) || said.contains(said_later), "{said}");
        let ps = guest_ps(socket);
        assert!(
            !ps.contains(marker) && !ps.contains("virtomate-follow-"),
            "{at}: {ps}"
        );
        assert_eq!(guest_tmp(socket), before, "{at}: files left");
    }

    // /tmp full before the start: refused, nothing runs.
    guest_sh(socket, "mount -t tmpfs -o size=64k tmpfs /tmp");
    guest_sh(socket, "dd if=/dev/zero of=/tmp/fill bs=4k 2>/dev/null; :");
    let mut run = Interactive::spawn(&[], socket, &["touch", "/ran"]);
    run.write(b"input");
    let (status, stderr) = run.finish();
    assert_eq!(status, 255, "{stderr}");
    assert!(stderr.starts_with("virtomate: GuestOutputError: "), "{stderr}");
    assert!(
        stderr.contains("/tmp is full") && stderr.contains("nothing was started"),
        "{stderr}"
    );
    assert_eq!(
        guest_sh(socket, "rm /tmp/fill; ls -a /tmp; ls /ran 2>&1; :"),
        ".\n..\nls: /ran: No such file or directory\n"
    );
    // Full while it runs: the input still goes in, the loss is told.
    let mut run = Interactive::spawn(&[], socket, &["sh", "-c", "cat; seq 1 100000"]);
    run.write(b"input\n");
    assert_eq!(run.line(), "input\n");
    drop(run.stdin.take());
    let (status, stderr) = run.finish();
    assert_eq!(status, 255, "{stderr}");
    assert!(stderr.starts_with("virtomate: GuestOutputError: "), "{stderr}");
    assert!(
        stderr.contains("filled up") && stderr.contains("the program was killed by signal 13"),
        "{stderr}"
    );
    assert_eq!(guest_sh(socket, "ls -a /tmp; umount /tmp"), ".\n..\n");
    assert_eq!(guest_tmp(socket), before);

    // The agent restarts while the program waits for input: the agent's
    // end of the pipe goes with it, so the program reads the end of its
    // input and ends; its directory stays, named in the message.
    let marker = "eof 6093";
    let program = format!(
        "{} echo going; while read -r l; do echo \"got $l\"; done; echo {marker}",
        restart_vm_agent()
    );
    let mut run = Interactive::spawn(&["--reply-timeout", "5"], socket, &["sh", "-c", &program]);
    run.write(b"a\n");
    assert_eq!(run.line(), "going\n");
    assert_eq!(run.line(), "got a\n");
    let (status, stderr) = run.finish();
    assert_eq!(status, 255, "{stderr}");
    assert_restart_error(&stderr);
    let dir = named_dir(&stderr);
    // Its rotators copy the rest of its output into chunk files and end.
    wait_until(30, "the program to read the end of its input", || {
        let ps = guest_ps(socket);
        !ps.contains(marker) && !ps.contains("virtomate-follow-")
    });
    let left = guest_sh(socket, &format!("cat {dir}/out.0; ls -a {dir}; rm -r {dir}"));
    let files = concat!(
        ".\n..\nerr.0\nerr.credit\nerr.live\nerr.pipe\nin\nindex\n",
        "out.0\nout.1\nout.credit\nout.live\nout.pipe\nowner\n"
    );
    assert_eq!(left, format!("going\ngot a\n{marker}\n{files}"));
    assert_eq!(guest_tmp(socket), before);

    // The VM killed under `guest-run -i` and `shell` (line mode: the
    // busybox VM makes no terminal), each on a terminal of its own.
    let mut piped = Terminal::run(&["guest-run", "-i", socket, "--", "cat"], 30, 100);
    piped.type_in(b"up\n");
    piped.wait_for("up\r\nup\r\n");
    let mut shell = Terminal::run(&["shell", socket], 30, 100);
    shell.wait_for("no terminal in the guest");
    shell.type_in(b"echo hi $((1 + 2))\n");
    shell.wait_for("hi 3");
    vm.kill();
    for terminal in [&mut piped, &mut shell] {
        assert_eq!(terminal.status(), 255, "{}", terminal.screen());
        terminal.wait_for("virtomate: AgentDisconnected: ");
        assert_eq!(modes(&terminal.settings()), terminal.before);
        assert!(!terminal.file_flags().contains(OFlag::O_NONBLOCK));
    }
}

#[test]
#[ignore = "needs the test VM"]
fn on_the_vm_a_fault_fails_one_interactive_run_of_a_session_and_a_restart_ends_a_line_mode_shell() {
    let vm = TestVm::boot("i-faults-session");
    let socket = vm.socket();
    let socket = socket.to_str().unwrap();
    let before = guest_tmp(socket);
    let b64 = |bytes: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let unb64 = |text: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_str().unwrap())
            .unwrap()
    };

    let mut live = Live::start(&["--reply-timeout", "5", "--timeout", "30"], socket);
    let echo = "while read -r l; do echo \"got $l\"; done; echo a ended";
    live.send(json!({"id": "a", "run": ["sh", "-c", echo], "interactive": true}));
    // Its time limit hits "b" alone, while input keeps "a" going.
    live.send(json!({"id": "b", "run": ["sh", "-c", "cat; sleep 6094"], "interactive": true, "max_time": 2}));
    live.send(json!({"id": "b", "stdin": b64(b"for b\n")}));
    live.send(json!({"id": "a", "stdin": b64(b"x\n")}));
    let mut echoed = Vec::new();
    let ended = loop {
        let reply = live.reply();
        match (reply["id"].as_str(), reply.get("stdout")) {
            (Some("a"), Some(chunk)) => echoed.extend(unb64(chunk)),
            (Some("b"), Some(_)) => {}
            (Some("b"), None) => break reply,
            _ => panic!("{reply}"),
        }
    };
    assert_eq!(ended["timed_out"], true, "{ended}");
    live.send(json!({"id": "a", "stdin": b64(b"y\n"), "eof": true}));
    let result = loop {
        let reply = live.reply();
        match reply.get("stdout") {
            Some(chunk) if reply["id"] == "a" => echoed.extend(unb64(chunk)),
            _ => break reply,
        }
    };
    assert_eq!(result["id"], "a", "{result}");
    assert_eq!(result["result"]["exit_code"], 0, "{result}");
    assert_eq!(String::from_utf8_lossy(&echoed), "got x\ngot y\na ended\n");
    assert!(!guest_ps(socket).contains("sleep 6094"));
    assert_eq!(guest_tmp(socket), before);

    // The agent restarts under an interactive run: it fails, naming its
    // pid and directory; the next one works.
    let marker = "eof 6095";
    let program = format!(
        "{} while read -r l; do echo \"got $l\"; done; echo {marker}",
        restart_vm_agent()
    );
    live.send(json!({"id": "r", "run": ["sh", "-c", program], "interactive": true}));
    let failed = loop {
        let reply = live.reply();
        if reply.get("stdout").is_none() {
            break reply;
        }
    };
    assert_eq!(failed["id"], "r", "{failed}");
    let message = format!("{}: {}", failed["error"]["type"], failed["error"]["message"]);
    assert_restart_error(&message);
    let dir = named_dir(&message);
    live.send(json!({"id": "n", "run": ["cat"], "interactive": true}));
    live.send(json!({"id": "n", "stdin": b64(b"again"), "eof": true}));
    let chunk = live.reply();
    assert_eq!(
        (chunk["id"].as_str(), unb64(&chunk["stdout"])),
        (Some("n"), b"again".to_vec())
    );
    assert_eq!(live.reply()["result"]["exit_code"], 0);
    assert_eq!(live.finish(), 0);
    wait_until(30, "the program and its rotators to end", || {
        let ps = guest_ps(socket);
        !ps.contains(marker) && !ps.contains("virtomate-follow-")
    });
    let left = guest_sh(socket, &format!("cat {dir}/out.0; rm -r {dir}"));
    assert_eq!(left, format!("{marker}\n"));
    assert_eq!(guest_tmp(socket), before);

    // A signal to the session: its interactive and followed runs are
    // stopped, their directories removed, each reply says so.
    let mut live = Live::start(&[], socket);
    live.send(json!({"id": "i", "run": ["sh", "-c", "cat; echo 6096"], "interactive": true}));
    live.send(json!({"id": "f", "run": ["sh", "-c", "echo on; sleep 6097"], "follow": true}));
    live.send(json!({"id": "i", "stdin": b64(b"in\n")}));
    let mut ids = Vec::new();
    while ids.len() < 2 {
        let chunk = live.reply();
        ids.push(chunk["id"].as_str().unwrap().to_owned());
    }
    ids.sort();
    assert_eq!(ids, ["f", "i"], "a chunk of each");
    live.signal(nix::sys::signal::Signal::SIGTERM);
    for _ in 0..2 {
        let reply = live.reply();
        assert_eq!(reply["error"]["type"], "Interrupted", "{reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains("was stopped with SIGTERM"), "{reply}");
    }
    assert_eq!(live.finish(), 1);
    let ps = guest_ps(socket);
    assert!(!ps.contains("6096") && !ps.contains("6097"), "{ps}");
    assert_eq!(guest_tmp(socket), before);

    // The agent restarts under a line-mode shell.
    let mut shell = Terminal::run(&["--reply-timeout", "5", "shell", socket], 30, 100);
    shell.wait_for("no terminal in the guest");
    shell.type_in(format!("{} echo restarting $((2 + 2))\n", restart_vm_agent()).as_bytes());
    shell.wait_for("restarting 4");
    assert_eq!(shell.status(), 255, "{}", shell.screen());
    // virtomate has ended, but the terminal's reader may not have read its
    // last line yet: up to the end of the directory's mention.
    shell.wait_for("once this virtomate has ended)");
    let screen = shell.screen();
    assert_restart_error(&screen);
    assert_eq!(modes(&shell.settings()), shell.before);
    assert!(!shell.file_flags().contains(OFlag::O_NONBLOCK));
    let dir = named_dir(&screen);
    wait_until(30, "the shell to read the end of its input", || {
        !guest_ps(socket).contains("sh -i")
    });
    guest_sh(socket, &format!("rm -r {dir}"));
    assert_eq!(guest_tmp(socket), before);
}

/// The processes of the host whose open files are under `dir`.
fn holding(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    for process in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .any(|target| target.starts_with(dir));
        if holds {
            let cmdline = std::fs::read(process.path().join("cmdline")).unwrap_or_default();
            found.push(String::from_utf8_lossy(&cmdline).replace('\0', " "));
        }
    }
    found
}

#[test]
#[ignore = "needs qemu-ga on the host, and util-linux's script"]
fn a_restarted_agent_ends_a_shell_on_a_terminal_with_255_and_the_terminal_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let env = [("TMPDIR", tmp.path().to_str().unwrap())];
    let mut agent = HostAgent::start_in_with_env(tempfile::tempdir().unwrap(), &[], &env);
    let socket = agent.socket();
    let mut terminal = Terminal::run(&["shell", socket.to_str().unwrap(), "--", "sh"], 30, 100);
    terminal.type_in(b"echo ready $((20 + 1))\r");
    terminal.wait_for("ready 21");
    assert_ne!(modes(&terminal.settings()), terminal.before, "not raw");
    agent.restart();
    assert_eq!(terminal.status(), 255, "{}", terminal.screen());
    terminal.wait_for("virtomate: AgentDisconnected: ");
    assert_eq!(modes(&terminal.settings()), terminal.before);
    assert!(!terminal.file_flags().contains(OFlag::O_NONBLOCK));
    // The old agent's end of the pipe went with it: the terminal's maker
    // reads the end of its input, and the shell on the terminal ends.
    wait_until(30, "the guest's shell to end", || holding(tmp.path()).is_empty());
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().collect();
    assert_eq!(left.len(), 1, "the run's directory, named in the message");
    assert!(terminal.screen().contains(&left[0].path().display().to_string()));
}

#[test]
#[ignore = "needs libvirtd and the test VM"]
fn through_libvirtd_ctrl_c_max_time_a_restarted_agent_and_a_killed_domain_are_told_and_cleaned_up() {
    let mut env = crate::libvirt::LibvirtEnv::start();
    let name = crate::support::unique_name("vt-i-faults");
    env.define(&name, &[]);
    let domain = name.as_str();
    let before = guest_tmp(domain);

    // Ctrl-C while the directory is made, and while the program runs.
    let marker = "sleep 6090";
    let program = ["sh", "-c", &format!("cat; {marker}")];
    let (status, said) = interrupted_at(domain, &program, r#""pid":"#);
    assert_eq!(status, 255, "{said}");
    assert!(
        said.contains("while preparing the program's start") && said.contains("nothing was started"),
        "{said}"
    );
    let mut run = Interactive::spawn(&[], domain, &program);
    run.write(b"ping\n");
    assert_eq!(run.line(), "ping\n");
    run.signal(nix::sys::signal::Signal::SIGINT);
    let (status, stderr) = run.finish();
    assert_eq!(status, 255, "{stderr}");
    assert!(stderr.contains("was stopped with SIGTERM"), "{stderr}");
    // --max-time while the program waits for input.
    let mut run = Interactive::spawn(&["--max-time", "2"], domain, &program);
    run.write(b"ping\n");
    assert_eq!(run.line(), "ping\n");
    let (status, stderr) = run.finish();
    assert_eq!(status, 124, "{stderr}");
    let ps = guest_ps(domain);
    assert!(!ps.contains(marker) && !ps.contains("virtomate-follow-"), "{ps}");
    assert_eq!(guest_tmp(domain), before);

    // The agent restarts: libvirtd keeps its connection to the port, and
    // its next command gets no answer from the old agent.
    let marker = "eof 6093";
    let program = format!("{} echo going; cat; echo {marker}", restart_vm_agent());
    let mut run = Interactive::spawn(&["--reply-timeout", "5"], domain, &["sh", "-c", &program]);
    assert_eq!(run.line(), "going\n");
    let (status, stderr) = run.finish();
    assert_eq!(status, 255, "{stderr}");
    // libvirt's own words: "QEMU guest agent is not connected".
    assert!(stderr.contains("keeps running in the guest as pid"), "{stderr}");
    let dir = named_dir(&stderr);
    // Until libvirtd has seen the new agent, it refuses at once.
    wait_until(60, "libvirtd to reach the new agent", || {
        guest_run_with(&[], Path::new(domain), &["true"], None).status == 0
    });
    wait_until(60, "the program to read the end of its input", || {
        !guest_ps(domain).contains(marker)
    });
    guest_sh(domain, &format!("rm -r {dir}"));
    assert_eq!(guest_tmp(domain), before);

    // The domain's QEMU killed.
    let mut run = Interactive::spawn(&[], domain, &["cat"]);
    run.write(b"up\n");
    assert_eq!(run.line(), "up\n");
    let qemu = crate::libvirt::libvirt_pid_file(domain);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let (status, stderr) = run.finish();
    assert_eq!(status, 255, "{stderr}");
    assert!(
        stderr.starts_with("virtomate: AgentDisconnected: ") && stderr.contains("is not running"),
        "{stderr}"
    );
    assert!(!stderr.contains("keeps running"), "the domain is gone: {stderr}");
}

#[test]
#[ignore = "needs libvirtd and the test VM"]
fn through_libvirtd_a_sessions_runs_cut_off_by_a_killed_domain_say_it_is_not_running() {
    let mut env = crate::libvirt::LibvirtEnv::start();
    let name = crate::support::unique_name("vt-s-killed");
    env.define(&name, &[]);
    let domain = name.as_str();
    let b64 = |bytes: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };

    // An interactive run, a followed one and a plain one, each under way.
    let mut live = Live::start(&[], domain);
    live.send(json!({"id": "i", "run": ["cat"], "interactive": true}));
    live.send(json!({"id": "i", "stdin": b64(b"up\n")}));
    live.send(json!({"id": "f", "run": ["sh", "-c", "echo f; sleep 6095"], "follow": true}));
    live.send(json!({"id": "p", "run": ["sleep", "6096"]}));
    let mut started = Vec::new();
    while started.len() < 2 {
        let reply = live.reply();
        assert!(reply.get("stdout").is_some(), "{reply}");
        let id = reply["id"].as_str().unwrap().to_owned();
        if !started.contains(&id) {
            started.push(id);
        }
    }
    wait_until(30, "the plain run to start", || {
        guest_ps(domain).contains("sleep 6096")
    });
    let qemu = crate::libvirt::libvirt_pid_file(domain);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut failed = Vec::new();
    while failed.len() < 3 {
        let reply = live.reply();
        if reply.get("stdout").is_some() {
            continue;
        }
        let id = reply["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{reply}"))
            .to_owned();
        let error = &reply["error"];
        assert_eq!(error["type"], "AgentDisconnected", "{id}: {reply}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("the domain {domain} is not running (libvirt ")),
            "{id}: {message}"
        );
        assert!(
            !message.contains("keeps running"),
            "{id}: the domain is gone: {message}"
        );
        failed.push(id);
    }
    failed.sort();
    assert_eq!(failed, ["f", "i", "p"]);
    live.close_input();
    assert_eq!(live.finish(), 0);
}

/// Processes whose command line holds `text`.
fn running_with(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for process in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(process.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(text) {
            found.push(cmdline);
        }
    }
    found
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn ctrl_c_while_the_helper_of_a_chunk_starts_leaves_no_process_file_or_handle_behind() {
    use crate::support::relay::Relay;
    // The reply to the start of the helper moving a chunk file into the
    // pipe, dropped on the way: virtomate waits for it, not knowing the
    // pid, when SIGINT comes. (A reply dropped for good to the opening of
    // a chunk file would leave the agent holding it, as for any file the
    // run opens: a handle is learnt only from its reply.)
    let (moment, request_holding) = ("the helper's start", "exec dd if=");
    let tmp = tempfile::tempdir().unwrap();
    let env = [("TMPDIR", tmp.path().to_str().unwrap())];
    let agent = HostAgent::start_in_with_env(tempfile::tempdir().unwrap(), &[], &env);
    let relay = Relay::start(&agent.socket(), request_holding);
    let socket = relay.socket();
    let program = ["sh", "-c", "cat >/dev/null; echo read 6097"];
    let mut run = Interactive::spawn(&[], socket.to_str().unwrap(), &program);
    let writer = run.write_endlessly();
    relay.wait_until_dropped();
    run.signal(nix::sys::signal::Signal::SIGINT);
    let (status, stderr) = run.finish();
    assert_eq!(status, 255, "{moment}: {stderr}");
    writer.join().unwrap();
    let tmp_path = tmp.path().to_str().unwrap();
    wait_until(10, "no process of the run", || running_with(tmp_path).is_empty());
    assert_eq!(holding(tmp.path()), Vec::<String>::new(), "{moment}: {stderr}");
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "{moment}: {left:?}\n{stderr}");
    let agent_fds = std::fs::read_dir(format!("/proc/{}/fd", agent.pid()))
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|target| target.to_string_lossy().contains(tmp_path))
        .collect::<Vec<_>>();
    assert!(agent_fds.is_empty(), "{moment}: the agent holds {agent_fds:?}");
}
