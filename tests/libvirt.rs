//! libvirt-managed domains, found and reached without libvirt, on a real
//! libvirtd started by `scripts/libvirt-test-env.sh`. If libvirtd cannot
//! start on a machine, the test says so and passes without checking.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::run;
use support::spec_examples::check_examples;

fn env_script(args: &[&str]) -> std::process::Output {
    Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/libvirt-test-env.sh"))
        .args(args)
        .output()
        .unwrap()
}

/// Taken for the whole test: test runs of other checkouts share the one
/// system libvirtd, and a run that started it stops it at the end.
fn host_wide_libvirt_lock() -> nix::fcntl::Flock<std::fs::File> {
    let file = std::fs::File::create("/run/lock/virtomate-libvirt-tests.lock")
        .or_else(|_| std::fs::File::create(std::env::temp_dir().join("virtomate-libvirt-tests.lock")))
        .expect("a lock file for the libvirt tests");
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .expect("the libvirt tests' lock")
}

/// Undefines its domains, and stops libvirtd if this test started it.
struct LibvirtEnv {
    domains: Vec<String>,
    started_here: bool,
    /// Released after the clean-up of `drop`.
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl LibvirtEnv {
    fn start() -> Option<LibvirtEnv> {
        let lock = host_wide_libvirt_lock();
        let status = String::from_utf8_lossy(&env_script(&["status"]).stdout).into_owned();
        let running_before = status
            .lines()
            .any(|l| l.starts_with("libvirtd: ") && !l.contains("not running"));
        let started = env_script(&["start"]);
        if !started.status.success() {
            eprintln!(
                "SKIPPED: libvirtd cannot start here: {}",
                String::from_utf8_lossy(&started.stderr)
            );
            return None;
        }
        Some(LibvirtEnv {
            domains: Vec::new(),
            started_here: !running_before,
            _lock: lock,
        })
    }

    fn define(&mut self, name: &str, options: &[&str]) {
        self.domains.push(name.to_owned());
        let mut args = vec!["define", name];
        args.extend(options);
        let out = env_script(&args);
        assert!(
            out.status.success(),
            "define {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for LibvirtEnv {
    fn drop(&mut self) {
        for name in &self.domains {
            env_script(&["undefine", name]);
        }
        if self.started_here {
            env_script(&["stop"]);
        }
    }
}

fn step(report: &Value, name: &str) -> Value {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {report}"))
        .clone()
}

fn listed(name: &str) -> Value {
    let list = run(&["domain-list"], None).json();
    list.as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {list}"))
        .clone()
}

#[test]
fn libvirt_domains_by_name_and_uuid_through_a_free_agent_channel() {
    let Some(mut env) = LibvirtEnv::start() else {
        return;
    };
    let pid = std::process::id();
    let two = format!("vt-two-{pid}");
    let one = format!("vt-one-{pid}");
    let idle = format!("vt-idle-{pid}");
    let silent = format!("vt-silent-{pid}");
    env.define(&two, &["--second-channel"]);
    env.define(&one, &[]);
    env.define(&idle, &["--defined-only"]);
    env.define(&silent, &["--noagent"]);

    // domain-list sees libvirt's domains, and that libvirtd holds .0.
    let entry = listed(&two);
    assert_eq!(entry["source"], "libvirt", "{entry}");
    assert_eq!(entry["agent_channels"][0]["name"], "org.qemu.guest_agent.0");
    assert_eq!(entry["agent_channels"][0]["held"], true, "{entry}");
    assert_eq!(entry["agent_channels"][1]["held"], false, "{entry}");
    assert_eq!(entry["agent_channels"][0]["guest_connected"], true, "{entry}");
    assert!(entry["pid"].as_u64().is_some());
    // libvirt records that no agent opened the guest's end of the port.
    let no_agent = listed(&silent);
    assert_eq!(
        no_agent["agent_channels"][0]["guest_connected"], false,
        "{no_agent}"
    );

    // Every example of the specification, by name and by UUID, through the
    // channel libvirt leaves alone.
    check_examples(&two);
    let uuid = entry["uuid"].as_str().unwrap().to_owned();
    let out = run(&["guest-run", &uuid, "--", "echo", "-n", "by uuid"], None);
    assert_eq!(out.json()["stdout"], "by uuid");
    let out = run(&["-c", "qemu:///system", "guest-run", &two, "--", "true"], None);
    assert_eq!(out.json()["exit_code"], 0);

    // A domain whose only agent channel libvirtd holds: through libvirtd's
    // own RPC, every example behaves as on a direct channel.
    check_examples(&one);
    let out = run(&["--trace", "guest-run", &one, "--", "true"], None);
    // The trace shows the RPC: the connection to qemu:///system, then the agent command.
    assert!(
        out.stderr.contains("qemu:///system") && out.stderr.contains(r#"{"execute":"guest-exec""#),
        "{}",
        out.stderr
    );

    // The debugging commands work through libvirtd too.
    let out = run(&["guest-ping", &one], None);
    assert_eq!((out.status, out.stdout.as_str()), (0, ""), "{out:?}");
    let out = run(&["guest-info", &one], None);
    assert!(
        out.json()["version"].as_str().unwrap().starts_with("7."),
        "{out:?}"
    );
    let out = run(
        &["guest-cmd", &one, r#"{"execute": "guest-get-host-name"}"#],
        None,
    );
    assert!(out.json()["host-name"].is_string(), "{out:?}");
    // So does qmp, whose socket libvirtd keeps: the same answers as from a
    // bare QEMU's socket, and the trace shows the RPC.
    let out = run(&["--trace", "qmp", &one, r#"{"execute": "query-status"}"#], None);
    let status = out.json();
    assert_eq!(status["running"], true, "{out:?}");
    assert_eq!(status["status"], "running", "{out:?}");
    assert!(
        out.stderr.contains("qemu:///system") && out.stderr.contains(r#"{"execute":"query-status"}"#),
        "{}",
        out.stderr
    );
    let out = run(&["qmp", &one, r#"{"execute": "no-such-command"}"#], None);
    assert_eq!(out.status, 1, "{out:?}");
    assert_eq!(out.json(), support::qmp_command_not_found(), "{out:?}");
    // Events stay with libvirtd.
    let out = run(&["qmp", "--events", &one, r#"{"execute": "query-status"}"#], None);
    let message = out.error("AgentUnavailable");
    assert!(
        message.contains("libvirtd") && message.contains("without --events"),
        "{message}"
    );

    let out = run(&["guest-run", &idle, "--", "true"], None);
    let message = out.error("IllegalStateError");
    assert!(message.contains("not running"), "{message}");

    // The session daemon has no such domain.
    let runtime = tempfile::tempdir().unwrap();
    let mut session = support::virtomate();
    session
        .args(["-c", "qemu:///session", "guest-run", &two, "--", "true"])
        .env("XDG_RUNTIME_DIR", runtime.path());
    support::run_command(&mut session, None).error("NotFoundError");
    let out = run(&["guest-run", "vt-no-such-domain", "--", "true"], None);
    out.error("NotFoundError");

    let report = run(&["doctor", &one], None);
    let json = report.json();
    let held = step(&json, "held");
    assert_eq!(held["outcome"], "pass", "{json}");
    assert_eq!(report.status, 0, "{json}");
    assert!(held["detail"].as_str().unwrap().contains("libvirtd"), "{held}");
    assert_eq!(step(&json, "guest-port-open")["outcome"], "pass", "{json}");

    // libvirtd holds the monitor too, so whether the guest opened its port
    // comes from libvirt's record of it.
    let report = run(&["--timeout", "1", "doctor", &silent], None);
    let json = report.json();
    let port = step(&json, "guest-port-open");
    assert_eq!(port["outcome"], "fail", "{json}");
    assert!(
        port["detail"].as_str().unwrap().contains("libvirt records"),
        "{port}"
    );
    assert!(port["advice"].as_str().unwrap().contains("qemu-ga"), "{port}");
    assert_eq!(report.status, 1, "{json}");

    // libvirt's own limits, reported as such. (Last: an over-long reply
    // leaves the domain's agent unusable through libvirt until it restarts.)
    let big = "yes 0123456789abcdef | head -c 3500000";
    let out = run(&["guest-run", &one, "--", "sh", "-c", big], None);
    let message = out.error("libvirtError");
    assert!(message.contains("second agent channel"), "{message}");
    let big = "yes 0123456789abcdef | head -c 8000000";
    let out = run(&["guest-run", &one, "--", "sh", "-c", big], None);
    let message = out.error("libvirtError");
    assert!(message.contains("10 MiB"), "{message}");
    // The dedicated channel has no such limit.
    let out = run(&["guest-run", &two, "--", "sh", "-c", big], None);
    assert_eq!(out.json()["stdout"].as_str().map(str::len), Some(8000000));
}
