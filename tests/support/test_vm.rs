//! The test VM: Debian's cloud kernel and a busybox initramfs running the
//! real qemu-ga, booted under TCG by `scripts/run-test-vm.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// A guest command that restarts the VM's agent from a process of its own
/// session (so that it outlives the agent it replaces), in the
/// background, once the guest's `ready` (a shell condition without single
/// quotes: `sleep 1` waits a second) succeeds, as a service manager does:
/// SIGTERM, the new agent started once the old one has exited, and
/// SIGKILL if it has not within 3 s. Both matter. Started while the old
/// one still holds the port, the new agent fails at once ("Device or
/// resource busy"), and the guest has none. And qemu-ga's SIGTERM handler
/// calls GLib (`g_main_loop_quit`), which deadlocks on its main loop's
/// lock when the signal lands while the agent holds it, most often while
/// it reads a long request: that agent neither exits nor answers (seen
/// once in 9 restarts under `copy -r` in). Which of the two happened, and
/// how long the old agent took, goes to the console.
pub fn agent_restart_when(ready: &str) -> String {
    let restart = format!(
        "until {ready}; do sleep 0.1; done; p=$(pidof qemu-ga); kill $p; i=0; \
         while grep -qs \"^State:.[^Z]\" /proc/$p/status; do i=$((i + 1)); \
         if [ $i = 30 ]; then echo \"old agent hung on SIGTERM in $(cat /proc/$p/wchan)\" >/dev/console; \
         kill -KILL $p; fi; sleep 0.1; done; echo \"old agent gone after $i looks\" >/dev/console; \
         exec qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 -t /run/qga-0 \
         2>/dev/console"
    );
    format!("setsid sh -c '{restart}' </dev/null >/dev/null 2>&1 &")
}

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
