//! `doctor` on a domain with two agent channels: the handshake is tried on
//! the channel the earlier steps examined, not on one chosen anew.
//!
//! The domain is a libvirt one as far as virtomate can tell: a status file
//! in a session daemon's directory (`XDG_RUNTIME_DIR`), whose two channels
//! are real `qemu-ga -m unix-listen` on the host. No libvirtd is involved.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::support::host_agent::HostAgent;
use crate::support::{die_with_parent, run_command, step, virtomate, wait_until};
use serde_json::Value;

/// A client connected to a socket for as long as it lives, running under
/// the program name given, as the holder's `/proc/PID/comm` shows it.
struct Holder(Child);

impl Holder {
    /// Runs python3 through a symlink called `name`, so that the kernel
    /// names the process after it.
    fn connect(name: &str, dir: &Path, socket: &Path) -> Holder {
        let alias = dir.join(name);
        std::os::unix::fs::symlink(python3(), &alias).unwrap();
        let script = "import socket, sys, time\n\
                      s = socket.socket(socket.AF_UNIX)\n\
                      s.connect(sys.argv[1])\n\
                      time.sleep(60)\n";
        let child = die_with_parent(Command::new(&alias).args(["-c", script]).arg(socket))
            .stdin(Stdio::null())
            .spawn()
            .expect("these tests need python3 for a client in another process");
        Holder(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The interpreter itself: `python3` in PATH may be a wrapper (pyenv's
/// shim) that would not run under another name.
fn python3() -> PathBuf {
    let output = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("these tests need python3 for a client in another process");
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim_end())
}

/// A session daemon's directories holding the status file of a running
/// domain `two` with agent channels `.0` and `.1` at the sockets given,
/// each with the guest state libvirt would record (`state='…'`), if any.
fn session_with_domain(root: &Path, channels: [(&Path, &str); 2]) {
    let status_dir = root.join("runtime/libvirt/qemu/run");
    std::fs::create_dir_all(&status_dir).unwrap();
    std::fs::create_dir_all(root.join("config")).unwrap();
    let channel = |port: usize, (socket, state): (&Path, &str)| {
        format!(
            "<channel type='unix'><source mode='bind' path='{}'/>\
             <target type='virtio' name='org.qemu.guest_agent.{port}'{state}/></channel>",
            socket.display()
        )
    };
    let status = format!(
        "<domstatus state='running' pid='1'><domain type='qemu'><name>two</name>\
         <uuid>0766eb29-75b8-4805-ad22-aad5fcd186c4</uuid><devices>{}{}</devices>\
         </domain></domstatus>",
        channel(0, channels[0]),
        channel(1, channels[1])
    );
    std::fs::write(status_dir.join("two.xml"), status).unwrap();
}

/// `virtomate -c qemu:///session --timeout 2 doctor two` in that session.
fn doctor(root: &Path) -> crate::support::Outcome {
    let mut command = virtomate();
    command
        .env("XDG_RUNTIME_DIR", root.join("runtime"))
        .env("XDG_CONFIG_HOME", root.join("config"))
        .args(["-c", "qemu:///session", "--timeout", "2", "doctor", "two"]);
    run_command(&mut command, None)
}

/// Runs doctor until the `socket` step examines the second channel, which
/// it does once the holder of the first shows as connected.
fn doctor_once_the_first_channel_is_held(root: &Path, holder: &mut Holder) -> Value {
    let mut last = None;
    wait_until(20, "the holder to show on the first channel", || {
        if let Some(status) = holder.0.try_wait().unwrap() {
            panic!("the holder exited before connecting: {status}");
        }
        let report = doctor(root).json();
        let examined = step(&report, "socket")["detail"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        last = Some(report);
        examined.starts_with("org.qemu.guest_agent.1 at ")
    });
    last.unwrap()
}

fn outcomes(report: &Value) -> Vec<(String, String)> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn expected(outcomes: [(&str, &str); 11]) -> Vec<(String, String)> {
    outcomes
        .iter()
        .map(|(name, outcome)| (name.to_string(), outcome.to_string()))
        .collect()
}

/// A report whose every step passed on the channel `.1` at `socket`.
fn every_step_passes_on_the_second_channel(report: &Value, socket: &Path) {
    assert_eq!(
        step(report, "socket")["detail"],
        format!("org.qemu.guest_agent.1 at {}", socket.display()),
        "{report}"
    );
    assert_eq!(
        outcomes(report),
        expected([
            ("domain", "pass"),
            ("socket", "pass"),
            ("permission", "pass"),
            ("held", "pass"),
            ("connect", "pass"),
            ("guest-port-open", "skip"),
            ("run-state", "pass"),
            ("handshake", "pass"),
            ("agent-version", "pass"),
            ("frozen", "pass"),
            ("guest-exec", "pass"),
        ]),
        "{report}"
    );
    assert_eq!(report["ok"], true);
}

/// Another virtomate on `.0` counts as free for `guest-run`, which would
/// wait its turn there; doctor examines the free `.1`, and its handshake
/// must go to `.1` too, not queue behind the holder of `.0` and time out.
#[test]
#[ignore = "needs qemu-ga on the host"]
fn doctor_shakes_hands_on_the_channel_it_examined_not_one_another_virtomate_holds() {
    let root = tempfile::tempdir().unwrap();
    let (first, second) = (HostAgent::start(), HostAgent::start());
    let mut other_virtomate = Holder::connect("virtomate", root.path(), &first.socket());
    session_with_domain(root.path(), [(&first.socket(), ""), (&second.socket(), "")]);

    let report = doctor_once_the_first_channel_is_held(root.path(), &mut other_virtomate);
    every_step_passes_on_the_second_channel(&report, &second.socket());
}

/// libvirtd holds `.0`; `.1` is free, but libvirt saw its guest end closed,
/// so `guest-run` would go through libvirtd. doctor examines `.1`: it
/// connects to it and shakes hands on it (here a host agent answers), and
/// does not claim that libvirtd holds it nor try libvirtd's socket.
#[test]
#[ignore = "needs qemu-ga on the host"]
fn doctor_does_not_go_through_libvirtd_for_a_channel_libvirtd_does_not_hold() {
    let root = tempfile::tempdir().unwrap();
    let (first, second) = (HostAgent::start(), HostAgent::start());
    let mut libvirtd = Holder::connect("libvirtd", root.path(), &first.socket());
    session_with_domain(
        root.path(),
        [
            (&first.socket(), " state='connected'"),
            (&second.socket(), " state='disconnected'"),
        ],
    );

    let report = doctor_once_the_first_channel_is_held(root.path(), &mut libvirtd);
    assert_eq!(step(&report, "connect")["detail"], "connected", "{report}");
    assert_eq!(
        outcomes(&report),
        expected([
            ("domain", "pass"),
            ("socket", "pass"),
            ("permission", "pass"),
            ("held", "pass"),
            ("connect", "pass"),
            ("guest-port-open", "fail"),
            ("run-state", "pass"),
            ("handshake", "pass"),
            ("agent-version", "pass"),
            ("frozen", "pass"),
            ("guest-exec", "pass"),
        ]),
        "{report}"
    );
}

/// `.0`'s socket is missing, `.1` answers: `guest-run` goes to `.1`, and
/// so does doctor, which examines the channel `guest-run` would use rather
/// than fail on the first one.
#[test]
#[ignore = "needs qemu-ga on the host"]
fn doctor_examines_the_channel_guest_run_uses_when_the_first_is_missing() {
    let root = tempfile::tempdir().unwrap();
    let second = HostAgent::start();
    let missing = root.path().join("missing-qga0.sock");
    session_with_domain(root.path(), [(&missing, ""), (&second.socket(), "")]);

    let mut command = virtomate();
    command
        .env("XDG_RUNTIME_DIR", root.path().join("runtime"))
        .env("XDG_CONFIG_HOME", root.path().join("config"))
        .args([
            "-c",
            "qemu:///session",
            "guest-run",
            "two",
            "--",
            "echo",
            "-n",
            "via .1",
        ]);
    let out = run_command(&mut command, None);
    assert_eq!(out.json()["stdout"], "via .1", "{out:?}");

    let report = doctor(root.path()).json();
    every_step_passes_on_the_second_channel(&report, &second.socket());
}
