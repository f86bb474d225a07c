//! `QmpClient` against a real QEMU: the test VM of `scripts/run-test-vm.sh`
//! (build it once with `scripts/build-test-vm.sh`).
//!
//! One test function and one boot: a boot takes seconds under TCG, and a
//! QMP socket serves one client at a time, so tests could not share a VM.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use tempfile::TempDir;
use virtomate_protocol::qmp::{ChardevInfo, QueryChardev, QueryStatus, QueryVersion};
use virtomate_protocol::{ClientOptions, Error, Phase, QmpClient};

/// A booted test VM in a directory of its own, stopped when dropped (also
/// when an assertion fails).
struct Vm {
    dir: TempDir,
    name: String,
}

impl Vm {
    fn boot() -> Vm {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let artifacts = std::env::var_os("VM_ARTIFACTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target/test-vm"));
        assert!(
            artifacts.join("initramfs.gz").exists(),
            "no test VM in {}: run scripts/build-test-vm.sh first",
            artifacts.display()
        );
        let vm = Vm {
            dir: tempfile::tempdir().unwrap(),
            name: format!("virtomate-qmp-{}", std::process::id()),
        };
        let status = Command::new(workspace.join("scripts/run-test-vm.sh"))
            .arg(vm.dir.path())
            .env("VM_NAME", &vm.name)
            .env("VM_ARTIFACTS", &artifacts)
            .status()
            .unwrap();
        assert!(status.success(), "the test VM did not boot: {status}");
        vm
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/stop-test-vm.sh");
        let _ = Command::new(script).arg(self.dir.path()).status();
    }
}

/// The guest agent's port once `qemu-ga` in the guest has opened it: the
/// VM reports ready right after starting `qemu-ga`, which opens it a moment
/// later.
async fn agent_port(qemu: &mut QmpClient) -> ChardevInfo {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let devices = qemu.execute(&QueryChardev {}).await.unwrap();
        let qga = devices
            .into_iter()
            .find(|d| d.label == "qga0")
            .expect("a chardev qga0");
        if qga.frontend_open || Instant::now() > deadline {
            return qga;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
#[ignore = "needs the test VM"]
fn qmp_against_a_real_qemu() {
    let boot = Instant::now();
    let vm = Vm::boot();
    eprintln!("booted in {:.1} s", boot.elapsed().as_secs_f64());
    let session = Instant::now();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let socket = vm.path("qmp.sock");
        let mut qemu = QmpClient::connect(&socket, ClientOptions::default())
            .await
            .unwrap();

        let greeting = qemu.greeting().clone();
        assert_eq!(greeting.version.major, 7, "{greeting:?}");
        let version = qemu.execute(&QueryVersion {}).await.unwrap();
        assert_eq!(
            (version.qemu, &version.package),
            (greeting.version, &greeting.package)
        );

        let status = qemu.execute(&QueryStatus {}).await.unwrap();
        assert!(status.running, "{status:?}");
        assert_eq!(status.status, "running");

        let qga = agent_port(&mut qemu).await;
        assert!(qga.frontend_open, "qemu-ga never opened its port: {qga:?}");
        let qga_socket = vm.path("qga.sock");
        assert!(qga.filename.contains(qga_socket.to_str().unwrap()), "{qga:?}");

        let name = qemu.execute_json("query-name", None).await.unwrap();
        assert_eq!(name, json!({"name": vm.name}));
        let info = json!({"command-line": "info version"});
        let text = qemu
            .execute_json("human-monitor-command", Some(&info))
            .await
            .unwrap();
        assert!(
            text.as_str().unwrap().starts_with(&greeting.version.to_string()),
            "{text}"
        );

        match qemu.execute_json("no-such-command", None).await {
            Err(Error::Agent { command, class, .. }) => {
                assert_eq!(command, "no-such-command");
                assert_eq!(class, "CommandNotFound");
            }
            other => panic!("unexpected {other:?}"),
        }

        // QEMU sends STOP and RESUME right before the replies to `stop` and
        // `cont`: they must be stored, not taken for the replies.
        qemu.take_events();
        assert_eq!(qemu.execute_json("stop", None).await.unwrap(), json!({}));
        let paused = qemu.execute(&QueryStatus {}).await.unwrap();
        assert_eq!((paused.status.as_str(), paused.running), ("paused", false));
        assert_eq!(qemu.execute_json("cont", None).await.unwrap(), json!({}));
        assert!(qemu.execute(&QueryStatus {}).await.unwrap().running);
        let events = qemu.take_events();
        let names: Vec<_> = events.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(names, ["STOP", "RESUME"], "{events:?}");
        assert!(events[0].timestamp["seconds"].as_u64().unwrap() > 0, "{events:?}");
        assert_eq!(qemu.events_dropped(), 0);

        // One client at a time: a second one gets no greeting until the
        // first has gone.
        let short = ClientOptions {
            handshake_timeout: Duration::from_millis(500),
            ..ClientOptions::default()
        };
        let busy = QmpClient::connect(&socket, short).await;
        assert!(
            matches!(
                busy,
                Err(Error::Timeout {
                    phase: Phase::Handshake,
                    ..
                })
            ),
            "{busy:?}"
        );
        drop(qemu);
        let mut again = QmpClient::connect(&socket, ClientOptions::default())
            .await
            .unwrap();
        assert!(again.execute(&QueryStatus {}).await.unwrap().running);
    });
    eprintln!("QMP session took {:.1} s", session.elapsed().as_secs_f64());
}
