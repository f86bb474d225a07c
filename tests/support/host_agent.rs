//! The real `qemu-ga`, serving a UNIX socket on the host.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use tempfile::TempDir;

use super::{die_with_parent, wait_until};

/// A `qemu-ga -m unix-listen` in a directory of its own, killed on drop.
pub struct HostAgent {
    pub dir: TempDir,
    child: Child,
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
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let socket = dir.path().join("qga.sock");
        let child = die_with_parent(Command::new(qemu_ga()).args(["-m", "unix-listen", "-p"]))
            .arg(&socket)
            .arg("-t")
            .arg(&state)
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .spawn()
            .expect("qemu-ga runs: scripts/install-deps.sh installs it");
        wait_until(10, "qemu-ga to create its socket", || socket.exists());
        HostAgent { dir, child }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("qga.sock")
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

fn qemu_ga() -> &'static Path {
    let installed = Path::new("/usr/sbin/qemu-ga");
    assert!(
        installed.exists(),
        "{} is missing: run scripts/install-deps.sh",
        installed.display()
    );
    installed
}
