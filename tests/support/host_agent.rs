//! The real `qemu-ga`, serving a UNIX socket on the host.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use tempfile::TempDir;

use super::{die_with_parent, wait_until};

/// A `qemu-ga -m unix-listen` in a directory of its own, killed on drop.
pub struct HostAgent {
    pub dir: TempDir,
    child: Child,
    /// The options and environment it was started with, to restart it.
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

impl HostAgent {
    pub fn start() -> HostAgent {
        HostAgent::start_with(&[])
    }

    /// Starts the agent with extra options, e.g. `--block-rpcs guest-exec`.
    pub fn start_with(extra: &[&str]) -> HostAgent {
        HostAgent::start_in(tempfile::tempdir().unwrap(), extra)
    }

    /// Starts the agent with its socket at `dir/qga.sock`.
    pub fn start_in(dir: TempDir, extra: &[&str]) -> HostAgent {
        HostAgent::start_in_with_env(dir, extra, &[])
    }

    /// Starts the agent with extra environment, e.g. its own `TMPDIR`.
    pub fn start_in_with_env(dir: TempDir, extra: &[&str], env: &[(&str, &str)]) -> HostAgent {
        std::fs::create_dir(dir.path().join("state")).unwrap();
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let child = spawn(dir.path(), &extra, &env);
        HostAgent {
            dir,
            child,
            extra,
            env,
        }
    }

    /// Kills the agent and starts a new one on the same socket, as a
    /// guest's agent restarts: it knows none of the old one's programs.
    pub fn restart(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(self.socket());
        self.child = spawn(self.dir.path(), &self.extra, &self.env);
    }

    /// Restarts the agent with its socket never missing, as a guest's
    /// agent restarts behind QEMU's socket: the new agent starts on a
    /// socket of its own, which is renamed over the old one's before the
    /// old agent is killed. A client's connection closes with the old
    /// agent; its next one reaches the new agent.
    pub fn replace(&mut self) {
        let next = self.dir.path().join("next");
        std::fs::create_dir_all(next.join("state")).unwrap();
        let child = spawn(&next, &self.extra, &self.env);
        std::fs::rename(next.join("qga.sock"), self.socket()).unwrap();
        self.kill();
        self.child = child;
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("qga.sock")
    }

    /// The agent's process: its open files are the handles it holds.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts the agent again if it has exited, as `qemu-ga -m
    /// unix-listen` sometimes does (status 0, nothing logged) when a
    /// client holding it is SIGKILLed mid-request: seen about once in ten
    /// killed control masters. A VM's QEMU keeps its socket through a
    /// client's death, so a test of what virtomate does next starts the
    /// host's agent again rather than fail on the agent's own exit.
    /// Whether it had to.
    pub fn revive_if_exited(&mut self) -> bool {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            return false;
        }
        self.restart();
        true
    }

    /// Kills `client` (SIGKILL: it cleans nothing up), and waits until the
    /// agent answers a ping again, started anew if it exited, as `qemu-ga
    /// -m unix-listen` sometimes does when a client dies mid-request (see
    /// [`HostAgent::revive_if_exited`]); it also refuses connections for a
    /// while before it listens again. Listening is not enough: an agent
    /// about to exit over the dead client's request may still listen, and
    /// closes the next client's connection as it goes. A VM's agent sits
    /// behind QEMU's socket, which stays.
    pub fn kill_client(&mut self, mut client: Child) {
        client.kill().unwrap();
        client.wait().unwrap();
        wait_until(10, "the host's agent to answer again", || {
            self.revive_if_exited() || (listens(&self.socket()) && answers(&self.socket()))
        });
    }

    /// Stops the agent; its socket stays behind, now refusing connections.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `qemu-ga` serving `dir/qga.sock`, returned once the socket is there.
fn spawn(dir: &Path, extra: &[String], env: &[(String, String)]) -> Child {
    let socket = dir.join("qga.sock");
    let child = die_with_parent(Command::new(qemu_ga()).args(["-m", "unix-listen", "-p"]))
        .arg(&socket)
        .arg("-t")
        .arg(dir.join("state"))
        .args(extra)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .spawn()
        .expect("qemu-ga runs: scripts/install-deps.sh installs it");
    wait_until(10, "qemu-ga to create its socket", || socket.exists());
    child
}

fn qemu_ga() -> &'static Path {
    let installed = Path::new("/usr/sbin/qemu-ga");
    assert!(
        installed.exists(),
        "{} is missing: run scripts/install-deps.sh",
        installed.display()
    );
    installed
}

/// Whether a socket listens at `path`, as `/proc/net/unix` tells (flag
/// `__SO_ACCEPTCON`): looked at without connecting, since the agent stops
/// listening for a while after each client.
/// Whether the agent on `socket` answers a ping within a second.
fn answers(socket: &Path) -> bool {
    let ping = super::run(&["guest-ping", "--timeout", "1", socket.to_str().unwrap()], None);
    ping.status == 0
}

fn listens(path: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    table.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() == 8 && fields[3] == "00010000" && Path::new(fields[7]) == path
    })
}
