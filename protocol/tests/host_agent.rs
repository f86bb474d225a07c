//! `qemu-ga -m unix-listen` run on the host, for the tests that need the
//! real agent.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `qemu-ga -m unix-listen` in a directory of its own, which is also its
/// programs' `TMPDIR`; killed on drop.
pub struct HostAgent {
    child: Child,
    dir: tempfile::TempDir,
}

impl HostAgent {
    pub fn start() -> HostAgent {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("qemu-ga")
            .args(["-m", "unix-listen", "-p"])
            .arg(dir.path().join("qga.sock"))
            .arg("-t")
            .arg(dir.path())
            .env("TMPDIR", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("this test needs qemu-ga on the host (the qemu-guest-agent package)");
        let agent = HostAgent { child, dir };
        let started = Instant::now();
        while !agent.socket().exists() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "qemu-ga made no socket"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        agent
    }

    pub fn socket(&self) -> std::path::PathBuf {
        self.dir.path().join("qga.sock")
    }

    /// Its directory, its programs' temporary directory.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
