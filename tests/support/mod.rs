//! Shared by the integration tests: running the built binary, real agents
//! on the host, the test VM, and a scripted fake agent.

pub mod data;
pub mod fake_agent;
pub mod host_agent;
pub mod live_session;
pub mod older_master;
pub mod relay;
pub mod spec_examples;
pub mod test_vm;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

/// The result of one `virtomate` process.
#[derive(Debug)]
pub struct Outcome {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// Stdout parsed as the one JSON document it must be.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}, stderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// Asserts an error outcome of the given `type` and returns its message.
    pub fn error(&self, kind: &str) -> String {
        let json = self.json();
        assert_eq!(json["type"], kind, "{json}");
        assert_eq!(self.status, 1, "{self:?}");
        assert_eq!(
            json.as_object().unwrap().len(),
            2,
            "only message and type: {json}"
        );
        json["message"].as_str().unwrap().to_owned()
    }
}

/// What `qmp DOMAIN '{"execute": "no-such-command"}'` prints, whether it
/// reached QEMU's monitor directly or through libvirtd.
pub fn qmp_command_not_found() -> Value {
    serde_json::json!({
        "class": "CommandNotFound",
        "message": "unable to execute QMP command 'no-such-command': \
                    The command no-such-command has not been found",
        "type": "AgentCommandError",
    })
}

/// The step called `name` of a `doctor` report (src/commands/doctor.rs).
pub fn step(report: &Value, name: &str) -> Value {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {report}"))
        .clone()
}

/// The binary under test: cargo's, or `VIRTOMATE_BIN` (the benches run
/// the static build that ships).
pub fn virtomate() -> Command {
    Command::new(virtomate_path())
}

pub fn virtomate_path() -> std::path::PathBuf {
    std::env::var_os("VIRTOMATE_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_virtomate").into())
}

/// `virtomate ARGS` with `stdin` fed from a thread of its own (so that a
/// program writing much before it reads cannot block it), bytes in and
/// out.
pub fn run_bytes(args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut child = virtomate()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    output
}

/// Runs `virtomate ARGS`, feeding `stdin` if given.
pub fn run(args: &[&str], stdin: Option<&[u8]>) -> Outcome {
    run_command(virtomate().args(args), stdin)
}

pub fn run_command(command: &mut Command, stdin: Option<&[u8]>) -> Outcome {
    let mut child = command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the virtomate binary runs");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let output = child.wait_with_output().unwrap();
    Outcome {
        status: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).expect("stdout is ASCII JSON"),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `virtomate guest-run SOCKET -- PROGRAM...`.
pub fn guest_run(socket: &Path, program: &[&str]) -> Outcome {
    guest_run_with(&[], socket, program, None)
}

/// `virtomate guest-run OPTIONS SOCKET -- PROGRAM...`, feeding `stdin` if
/// given. OPTIONS may be guest-run's own (`--stdin`) or global ones (`-p`,
/// `--timeout`), which clap takes after the command too.
pub fn guest_run_with(options: &[&str], socket: &Path, program: &[&str], stdin: Option<&[u8]>) -> Outcome {
    run(&guest_run_args(options, socket, program), stdin)
}

/// The same, started in the background with stdout piped, for tests that
/// disturb a run while it waits.
pub fn spawn_guest_run(socket: &Path, program: &[&str]) -> std::process::Child {
    virtomate()
        .args(guest_run_args(&[], socket, program))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `guest-run --trace SOCKET -- sleep 30` in the background, returned once
/// the program runs in the guest (its start seen in the trace).
pub fn spawn_sleeping_guest_run(socket: &Path) -> std::process::Child {
    let mut child = virtomate()
        .arg("--trace")
        .args(guest_run_args(&[], socket, &["sleep", "30"]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    StderrLines::of(&mut child).wait_for(TRACED_START);
    child
}

fn guest_run_args<'a>(options: &[&'a str], socket: &'a Path, program: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["guest-run"];
    args.extend(options);
    args.extend([socket.to_str().unwrap(), "--"]);
    args.extend(program);
    args
}

/// `PREFIX-PID-N`, a name for a VM or domain that no other test uses: the
/// pid tells this test process from others on the host (libvirtd and the
/// process list are shared), N this test from the others in the process.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Makes a spawned child die with the test process, even on SIGKILL.
pub fn die_with_parent(command: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)
        })
    }
}

/// A child's standard error, line by line, read by a thread of its own
/// that drains it to the end.
pub struct StderrLines(std::sync::mpsc::Receiver<String>);

impl StderrLines {
    /// Takes `child`'s piped stderr.
    pub fn of(child: &mut std::process::Child) -> StderrLines {
        use std::io::BufRead;
        let stderr = child.stderr.take().expect("the child's stderr is piped");
        let (lines, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = lines.send(line);
            }
        });
        StderrLines(receiver)
    }

    /// Blocks until a line containing `text`; fails the test after 60 s,
    /// or when stderr ends without one.
    pub fn wait_for(&self, text: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.0.recv_timeout(left) {
                Ok(line) if line.contains(text) => return,
                Ok(_) => {}
                Err(e) => panic!("no line with {text:?} on the child's stderr: {e}"),
            }
        }
    }

    /// The lines not yet read, to the end of stderr: for a child that has
    /// exited.
    pub fn rest(&self) -> Vec<String> {
        self.0.iter().collect()
    }
}

/// The named pipe `fifo` opened for writing, once a reader has it open.
pub fn writer_when_read(fifo: &Path) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    let mut writer = None;
    wait_until(30, "the program to open its named pipe", || {
        let open = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(fifo);
        writer = open.ok();
        writer.is_some()
    });
    writer.unwrap()
}

/// `virtomate OPTIONS session DOMAIN`, its standard streams piped and its
/// stderr read line by line, sent `request` as its first line: the
/// process, its stderr's lines and its stdin.
pub fn spawn_session_sent(
    options: &[&str],
    domain: &Path,
    request: &Value,
) -> (std::process::Child, StderrLines, std::process::ChildStdin) {
    let mut child = virtomate()
        .args(options)
        .arg("session")
        .arg(domain)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = StderrLines::of(&mut child);
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{request}").unwrap();
    (child, lines, stdin)
}

/// What `--trace` shows when the agent has started the program.
pub const TRACED_START: &str = r#"<< {"return": {"pid": "#;

/// Whether process `pid` holds a lock, as a run holds its turn on an agent
/// channel (`ChannelLock`).
pub fn holds_a_lock(pid: u32) -> bool {
    std::fs::read_to_string("/proc/locks").is_ok_and(|locks| locks.contains(&format!(" {pid} ")))
}

/// The standard error of `child` once it has ended, as it must have: with
/// exit status 255, virtomate's own failure.
pub fn stderr_of_own_failure(child: std::process::Child) -> String {
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    stderr
}

/// Polls `ready` every 10 ms for up to `seconds`.
pub fn wait_until(seconds: u64, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while !ready() {
        assert!(std::time::Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Runs `virtomate ARGS` and also returns its peak resident set size in
/// KiB, as GNU time measures it. (`wait4` on a child of the test process
/// would not do: a child spawned with vfork inherits the test process's
/// own high-water mark.)
pub fn run_measured(args: &[&str], stdin: Option<&[u8]>) -> (Outcome, u64) {
    let time = Path::new("/usr/bin/time");
    assert!(
        time.exists(),
        "{} (GNU time) is missing: run scripts/install-deps.sh",
        time.display()
    );
    let report = tempfile::NamedTempFile::new().unwrap();
    let mut command = Command::new(time);
    command
        .args(["-f", "%M", "-o"])
        .arg(report.path())
        .arg(virtomate_path())
        .args(args);
    let outcome = run_command(&mut command, stdin);
    let text = std::fs::read_to_string(report.path()).unwrap();
    let max_rss_kib = text
        .lines()
        .last()
        .and_then(|line| line.trim().parse().ok())
        .unwrap_or_else(|| panic!("GNU time (scripts/install-deps.sh installs it) reported {text:?}"));
    (outcome, max_rss_kib)
}
