//! `virtomate shell` driven through a pseudo-terminal of the test's own, as
//! a person at a terminal would: the terminal mode against the real qemu-ga
//! on the host (whose guest is this machine, with util-linux `script`), the
//! line mode in the busybox test VM (no `script`, no python). After each,
//! the terminal's settings are what they were before.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::pty::{openpty, Winsize};
use nix::sys::signal::{kill, Signal};
use nix::sys::termios::{tcgetattr, Termios};
use nix::unistd::Pid;

use crate::support::host_agent::HostAgent;
use crate::support::test_vm::TestVm;
use crate::support::{run_bytes, virtomate};

/// `virtomate shell` on the slave end of a pseudo-terminal; what it
/// writes there is collected from the master end.
pub(crate) struct Terminal {
    master: File,
    /// Kept open so that the master never reads the end of the terminal.
    slave: OwnedFd,
    screen: Arc<(Mutex<Vec<u8>>, Condvar)>,
    pub(crate) child: Child,
    /// How much of the screen earlier waits have looked at.
    seen: usize,
    /// The terminal's modes before virtomate started.
    pub(crate) before: String,
}

impl Terminal {
    fn start(args: &[&str], rows: u16, cols: u16) -> Terminal {
        let mut command = vec!["shell"];
        command.extend(args);
        Terminal::run(&command, rows, cols)
    }

    /// `virtomate ARGS` on the slave end of a new pseudo-terminal.
    pub(crate) fn run(args: &[&str], rows: u16, cols: u16) -> Terminal {
        let size = Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = openpty(Some(&size), None).unwrap();
        let before = modes(&tcgetattr(pty.slave.as_fd()).unwrap());
        let slave_end = || Stdio::from(pty.slave.try_clone().unwrap());
        let child = virtomate()
            .args(args)
            .stdin(slave_end())
            .stdout(slave_end())
            .stderr(slave_end())
            .spawn()
            .unwrap();
        let master = File::from(pty.master);
        let screen = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let (mut reader, shared) = (master.try_clone().unwrap(), screen.clone());
        std::thread::spawn(move || {
            let mut buf = [0; 4096];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                shared.0.lock().unwrap().extend_from_slice(&buf[..n]);
                shared.1.notify_all();
            }
        });
        Terminal {
            master,
            slave: pty.slave,
            screen,
            child,
            seen: 0,
            before,
        }
    }

    pub(crate) fn settings(&self) -> Termios {
        tcgetattr(self.slave.as_fd()).unwrap()
    }

    /// The status flags of the terminal's open file, which virtomate
    /// shares as its standard streams: `O_NONBLOCK` left set would break
    /// the shell that gets the terminal back.
    pub(crate) fn file_flags(&self) -> nix::fcntl::OFlag {
        let flags = nix::fcntl::fcntl(self.slave.as_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
        nix::fcntl::OFlag::from_bits_truncate(flags)
    }

    pub(crate) fn type_in(&mut self, keys: &[u8]) {
        self.master.write_all(keys).unwrap();
    }

    /// Waits until `text` shows on the screen after what earlier waits saw.
    pub(crate) fn wait_for(&mut self, text: &str) {
        assert!(
            self.try_wait_for(text, Duration::from_secs(60)),
            "gave up waiting for {text:?}:\n{}",
            self.screen()
        );
    }

    fn try_wait_for(&mut self, text: &str, patience: Duration) -> bool {
        let deadline = Instant::now() + patience;
        let (lock, arrived) = &*self.screen;
        let mut screen = lock.lock().unwrap();
        loop {
            let fresh = &screen[self.seen..];
            if let Some(at) = fresh.windows(text.len()).position(|w| w == text.as_bytes()) {
                self.seen += at + text.len();
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            screen = arrived.wait_timeout(screen, deadline - now).unwrap().0;
        }
    }

    pub(crate) fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen.0.lock().unwrap()).into_owned()
    }

    /// virtomate's exit status, waited for (a minute at most).
    pub(crate) fn status(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().expect("virtomate exits, not killed");
            }
            assert!(
                Instant::now() < deadline,
                "virtomate did not end:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The settings that matter to a user: modes and control characters.
pub(crate) fn modes(termios: &Termios) -> String {
    format!(
        "{:?} {:?} {:?} {:?} {:?}",
        termios.input_flags,
        termios.output_flags,
        termios.control_flags,
        termios.local_flags,
        termios.control_chars
    )
}

/// Starts `virtomate shell SOCKET -- sh` on a 30×100 terminal and waits
/// until the guest's shell answers.
fn shell_on_terminal(agent: &HostAgent) -> (Terminal, String) {
    let socket = agent.socket();
    let mut terminal = Terminal::start(&[socket.to_str().unwrap(), "--", "sh"], 30, 100);
    let before = terminal.before.clone();
    // `echo` of a sum: what comes back is not the typed line's echo.
    terminal.type_in(b"echo ready $((20 + 1))\r");
    terminal.wait_for("ready 21");
    (terminal, before)
}

#[test]
#[ignore = "needs qemu-ga on the host, and util-linux's script"]
fn shell_on_a_terminal_passes_size_keys_and_exit_status() {
    let agent = HostAgent::start();
    let (mut terminal, before) = shell_on_terminal(&agent);
    // Raw on the host: the guest's terminal echoes and edits, not ours.
    assert_ne!(
        modes(&terminal.settings()),
        before,
        "the host terminal is not raw"
    );
    terminal.type_in(b"stty size; tty\r");
    terminal.wait_for("30 100\r\n/dev/pts/");

    // A resize reaches the guest's terminal: asked until it shows.
    let size = rustix::termios::Winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(&terminal.master, size).unwrap();
    kill(Pid::from_raw(terminal.child.id() as i32), Signal::SIGWINCH).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        terminal.type_in(b"stty size\r");
        if terminal.try_wait_for("40 120", Duration::from_secs(1)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the size never changed:\n{}",
            terminal.screen()
        );
    }

    // Ctrl-C is a byte the guest's terminal makes SIGINT of.
    terminal.type_in(b"sleep 100; echo slept $((1 + 1))\r");
    terminal.wait_for("sleep 100");
    terminal.type_in(b"\x03");
    terminal.wait_for("\r\n# ");
    terminal.type_in(b"echo after $((2 + 2))\r");
    terminal.wait_for("after 4");
    assert!(!terminal.screen().contains("slept 2"));

    // Ctrl-Z stops it: the guest shell's job control says so; `fg` and
    // Ctrl-C then end it.
    terminal.type_in(b"sleep 200\r");
    terminal.wait_for("sleep 200");
    terminal.type_in(b"\x1a");
    terminal.wait_for("Stopped");
    // Typed before the prompt, `fg` could be flushed as the shell takes
    // the terminal back.
    terminal.wait_for("\r\n# ");
    terminal.type_in(b"fg\r");
    terminal.wait_for("fg\r\nsleep 200");
    terminal.type_in(b"\x03");
    terminal.wait_for("\r\n# ");
    terminal.type_in(b"echo resumed $((3 + 3))\r");
    terminal.wait_for("resumed 6");

    terminal.type_in(b"exit 3\r");
    assert_eq!(terminal.status(), 3);
    assert_eq!(modes(&terminal.settings()), before);
}

/// The host's agent with a temporary directory of the test's own, where
/// the runs' private directories go: to see that none stays behind.
fn agent_with_own_tmp() -> (HostAgent, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let env = [("TMPDIR", tmp.path().to_str().unwrap())];
    let agent = HostAgent::start_in_with_env(tempfile::tempdir().unwrap(), &[], &env);
    (agent, tmp)
}

fn entries(dir: &tempfile::TempDir) -> usize {
    std::fs::read_dir(dir.path()).unwrap().count()
}

#[test]
#[ignore = "needs qemu-ga on the host, util-linux's script, and bash"]
fn with_no_program_the_guests_bash_runs_on_the_terminal() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let mut terminal = Terminal::start(&[socket.to_str().unwrap()], 30, 100);
    terminal.type_in(b"echo on $((6 * 7)) ${BASH_VERSION:+bash}; [ -t 0 ] && echo tty\r");
    terminal.wait_for("on 42 bash\r\ntty");
    terminal.type_in(b"exit 5\r");
    assert_eq!(terminal.status(), 5);
    assert_eq!(modes(&terminal.settings()), terminal.before);
}

#[test]
#[ignore = "needs qemu-ga on the host, and python3"]
fn python3s_pty_module_makes_the_terminal_where_script_is_missing() {
    // The agent's PATH: a directory with what the shell needs, but no `script`.
    let bin = tempfile::tempdir().unwrap();
    for program in [
        "sh", "python3", "stty", "tty", "readlink", "cat", "sleep", "mkdir", "mkfifo", "rm", "df", "dd",
    ] {
        let path = which(program);
        std::os::unix::fs::symlink(&path, bin.path().join(program)).unwrap();
    }
    let path = bin.path().to_str().unwrap();
    let agent = HostAgent::start_in_with_env(tempfile::tempdir().unwrap(), &[], &[("PATH", path)]);
    let (mut terminal, before) = shell_on_terminal(&agent);
    terminal.type_in(b"stty size; tty\r");
    terminal.wait_for("30 100\r\n/dev/pts/");
    terminal.type_in(b"sleep 100; echo slept $((1 + 1))\r");
    terminal.wait_for("sleep 100");
    terminal.type_in(b"\x03");
    terminal.wait_for("\r\n# ");
    terminal.type_in(b"echo after $((2 + 2))\r");
    terminal.wait_for("after 4");
    // Ctrl-D at the prompt ends the guest's shell, with status 0.
    terminal.type_in(b"\x04");
    assert_eq!(terminal.status(), 0);
    assert!(!terminal.screen().contains("slept 2"));
    assert_eq!(modes(&terminal.settings()), before);
}

/// Where the system has `program` (not a shim of a version manager, which
/// would need more on the PATH).
fn which(program: &str) -> std::path::PathBuf {
    ["/usr/bin", "/bin"]
        .into_iter()
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|path| path.exists())
        .unwrap_or_else(|| panic!("{program} is not installed"))
}

#[test]
#[ignore = "needs qemu-ga on the host, and util-linux's script"]
fn tilde_dot_leaves_the_shell_and_restores_the_terminal() {
    let (agent, tmp) = agent_with_own_tmp();
    let (mut terminal, before) = shell_on_terminal(&agent);
    // `~~` at the start of a line (a continued one here) sends one `~`;
    // a `~` elsewhere is sent as typed.
    terminal.type_in(b"echo a~~ \\\r~~x\r");
    terminal.wait_for("a~~ ~x\r\n");
    terminal.type_in(b"~.");
    assert_eq!(terminal.status(), 255);
    terminal.wait_for("virtomate: left the shell with ~.");
    assert_eq!(modes(&terminal.settings()), before);
    assert_eq!(entries(&tmp), 0, "the run's directory stayed in the guest");
}

#[test]
#[ignore = "needs qemu-ga on the host, and util-linux's script"]
fn the_terminal_is_restored_when_the_agent_goes_away() {
    // The run's directory stays behind (nobody is left to remove it): in
    // a temporary directory of the test's own.
    let (mut agent, _tmp) = agent_with_own_tmp();
    let (mut terminal, before) = shell_on_terminal(&agent);
    agent.kill();
    assert_eq!(terminal.status(), 255);
    terminal.wait_for("virtomate: ");
    assert_eq!(modes(&terminal.settings()), before);
}

#[test]
#[ignore = "needs qemu-ga on the host, and util-linux's script"]
fn the_terminal_is_restored_on_sigterm_and_sighup() {
    let (agent, tmp) = agent_with_own_tmp();
    for signal in [Signal::SIGTERM, Signal::SIGHUP] {
        let (mut terminal, before) = shell_on_terminal(&agent);
        kill(Pid::from_raw(terminal.child.id() as i32), signal).unwrap();
        assert_eq!(terminal.status(), 255, "{signal}");
        terminal.wait_for("virtomate: Interrupted: ");
        assert_eq!(modes(&terminal.settings()), before, "{signal}");
        assert_eq!(
            entries(&tmp),
            0,
            "{signal}: the run's directory stayed in the guest"
        );
    }
}

#[test]
#[ignore = "needs the test VM (scripts/build-test-vm.sh)"]
fn without_a_terminal_in_the_guest_a_line_mode_shell_says_so_once() {
    let vm = TestVm::boot("shell");
    let socket = vm.socket();
    let mut terminal = Terminal::start(&[socket.to_str().unwrap()], 30, 100);
    let before = terminal.before.clone();
    terminal.wait_for("virtomate: no terminal in the guest (it has neither util-linux script nor python3");
    assert_eq!(
        modes(&terminal.settings()),
        before,
        "the host terminal is not left cooked"
    );
    terminal.type_in(b"echo hi $((1 + 2)); exit 3\n");
    terminal.wait_for("hi 3");
    assert_eq!(terminal.status(), 3);
    // Cooked all along: the host terminal itself echoed the typed line.
    assert_eq!(modes(&terminal.settings()), before);
    assert_eq!(terminal.screen().matches("no terminal in the guest").count(), 1);
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn standard_input_that_is_no_terminal_gets_a_line_mode_shell() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let output = run_bytes(&["shell", socket.to_str().unwrap()], b"echo hi; exit 3\n");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert_eq!(output.stdout, b"hi\n");
    assert_eq!(
        stderr
            .matches("virtomate: standard input is not a terminal: a line-mode shell")
            .count(),
        1,
        "{stderr}"
    );
}

#[test]
#[ignore = "needs the Python VM (scripts/build-python-vm.sh)"]
fn the_terminal_is_restored_when_the_vm_is_killed_under_the_shell() {
    // The Python VM has util-linux's script: the terminal mode.
    // Named, not by its socket: virtomate knows its QEMU, and can tell
    // that process's end from an agent that went away alone.
    let vm = TestVm::boot_python("shell-killed");
    let mut terminal = Terminal::start(&[&vm.name, "--", "sh"], 30, 100);
    let before = terminal.before.clone();
    terminal.type_in(b"echo ready $((20 + 1))\r");
    terminal.wait_for("ready 21");
    assert_ne!(
        modes(&terminal.settings()),
        before,
        "the host terminal is not raw"
    );
    vm.kill();
    assert_eq!(terminal.status(), 255, "{}", terminal.screen());
    terminal.wait_for(&format!(
        "AgentDisconnected: the domain {} is not running (its QEMU, pid ",
        vm.name
    ));
    terminal.wait_for("has ended): its agent, and the program (guest pid ");
    assert!(
        !terminal.screen().contains("keeps running"),
        "{}",
        terminal.screen()
    );
    assert_eq!(modes(&terminal.settings()), before);
    assert!(
        !terminal.file_flags().contains(nix::fcntl::OFlag::O_NONBLOCK),
        "the terminal was left non-blocking"
    );
}
