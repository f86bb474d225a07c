//! The test VM: Debian's cloud kernel and a busybox initramfs running the
//! real qemu-ga, booted under TCG by `scripts/run-test-vm.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// A running test VM with its own directory of sockets; stopped on drop.
pub struct TestVm {
    pub dir: TempDir,
    pub name: String,
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where `scripts/build-test-vm.sh` put the kernel and initramfs.
pub fn artifacts() -> PathBuf {
    std::env::var_os("VM_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/test-vm"))
}

/// Where `scripts/build-python-vm.sh` put the Python VM (a Debian root
/// file system with python3, rsync, tar and gzip): `PYTHON_VM_ARTIFACTS`,
/// else as `scripts/test-ansible.sh` builds it (root: the cache shared by
/// checkouts; others: `target/python-vm`).
pub fn python_artifacts() -> PathBuf {
    match std::env::var_os("PYTHON_VM_ARTIFACTS") {
        Some(dir) => PathBuf::from(dir),
        None if nix::unistd::geteuid().is_root() => PathBuf::from("/var/cache/virtomate-test/python-vm"),
        None => repo().join("target/python-vm"),
    }
}

impl TestVm {
    pub fn boot(name: &str) -> TestVm {
        TestVm::boot_with(name, &[])
    }

    /// Boots with extra environment for the run script
    /// (`EXTRA_AGENT_PORT`, `KERNEL_EXTRA_ARGS`).
    pub fn boot_with(name: &str, env: &[(&str, &str)]) -> TestVm {
        assert!(
            artifacts().join("initramfs.gz").exists(),
            "no test VM in {}: run scripts/build-test-vm.sh first",
            artifacts().display()
        );
        let name = super::unique_name(name);
        let dir = tempfile::tempdir().unwrap();
        let vm = TestVm { dir, name };
        let status = Command::new(repo().join("scripts/run-test-vm.sh"))
            .arg(vm.dir.path())
            .env("VM_NAME", &vm.name)
            .env("VM_ARTIFACTS", artifacts())
            .envs(env.iter().copied())
            .status()
            .unwrap();
        assert!(status.success(), "the test VM did not boot: {status}");
        vm
    }

    /// Boots the Python VM (its disk a throw-away copy of the image).
    pub fn boot_python(name: &str) -> TestVm {
        let dir = python_artifacts();
        assert!(
            dir.join("rootfs.img").exists(),
            "no Python VM in {}: run scripts/build-python-vm.sh {0} first (or set PYTHON_VM_ARTIFACTS)",
            dir.display()
        );
        TestVm::boot_with(name, &[("VM_ARTIFACTS", dir.to_str().unwrap())])
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("qga.sock")
    }

    /// The pid of QEMU, from the pid file `scripts/run-test-vm.sh` has it
    /// write.
    pub fn qemu_pid(&self) -> u32 {
        let path = self.dir.path().join("qemu.pid");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{} holds {text:?}: {e}", path.display()))
    }

    /// Kills QEMU at once, as a crash would.
    pub fn kill(&self) {
        let pid = self.qemu_pid();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap_or_else(|e| panic!("QEMU (pid {pid}) cannot be killed: {e}"));
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/stop-test-vm.sh"))
            .arg(self.dir.path())
            .status();
    }
}
