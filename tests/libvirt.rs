//! libvirt-managed domains, found and reached without libvirt, on a real
//! libvirtd started by `scripts/libvirt-test-env.sh`. If libvirtd cannot
//! start on a machine, the test fails: it is ignored unless asked for.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use sha2::Digest;

use crate::support::spec_examples::check_examples;
use crate::support::{self, run, step};

pub(crate) fn env_script(args: &[&str]) -> std::process::Output {
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
pub(crate) struct LibvirtEnv {
    domains: Vec<String>,
    started_here: bool,
    /// Released after the clean-up of `drop`.
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl LibvirtEnv {
    pub(crate) fn start() -> LibvirtEnv {
        let lock = host_wide_libvirt_lock();
        let status = String::from_utf8_lossy(&env_script(&["status"]).stdout).into_owned();
        let running_before = status
            .lines()
            .any(|l| l.starts_with("libvirtd: ") && !l.contains("not running"));
        let started = env_script(&["start"]);
        assert!(
            started.status.success(),
            "libvirtd cannot start here, and this test needs it \
             (leave out --include-ignored to run only the tests that need nothing): {}",
            String::from_utf8_lossy(&started.stderr)
        );
        LibvirtEnv {
            domains: Vec::new(),
            started_here: !running_before,
            _lock: lock,
        }
    }

    pub(crate) fn define(&mut self, name: &str, options: &[&str]) {
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

/// `domain-list`'s entries, checked to be sorted by name, then pid (the
/// key of src/commands/domain_list.rs), so that scripts can diff two lists.
fn domain_list() -> Vec<Value> {
    let out = run(&["domain-list"], None);
    assert_eq!(out.status, 0, "{out:?}");
    let list = out
        .json()
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("not a list: {out:?}"));
    let key = |d: &Value| (d["name"].as_str().unwrap().to_owned(), d["pid"].as_u64());
    for pair in list.windows(2) {
        assert!(
            key(&pair[0]) <= key(&pair[1]),
            "not sorted by name and pid: {} before {}",
            pair[0],
            pair[1]
        );
    }
    list
}

fn listed(name: &str) -> Value {
    let list = domain_list();
    list.iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {list:?}"))
        .clone()
}

/// The pid in libvirt's pid file for the domain's QEMU: a second record
/// besides the status file's `<domstatus pid=…>`, which virtomate reads.
pub(crate) fn libvirt_pid_file(name: &str) -> u64 {
    let path = format!("/run/libvirt/qemu/{name}.pid");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{path} holds {text:?}: {e}"))
}

/// A libvirt domain is listed once, with the pid of its QEMU process: that
/// process also carries `-name guest=NAME`, but must not come back as a
/// bare QEMU domain.
fn check_listed_once_with_libvirts_pid(name: &str) {
    let entry = listed(name);
    assert_eq!(entry["source"], "libvirt", "{entry}");
    let pid = entry["pid"].as_u64().unwrap_or_else(|| panic!("no pid: {entry}"));
    assert_eq!(pid, libvirt_pid_file(name), "{entry}");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(exe.ends_with("qemu-system-x86_64"), "pid {pid} runs {exe:?}");
    let list = domain_list();
    let with_pid: Vec<&Value> = list.iter().filter(|d| d["pid"] == pid).collect();
    assert_eq!(with_pid.len(), 1, "pid {pid} listed more than once: {with_pid:?}");
    assert!(
        !list.iter().any(|d| d["name"] == name && d["source"] == "qemu"),
        "{name} listed as bare QEMU too: {list:?}"
    );
}

#[test]
#[ignore = "needs libvirtd and the test VM"]
fn libvirt_domains_by_name_and_uuid_through_a_free_agent_channel() {
    let mut env = LibvirtEnv::start();
    let two = support::unique_name("vt-two");
    let one = support::unique_name("vt-one");
    let idle = support::unique_name("vt-idle");
    let silent = support::unique_name("vt-silent");
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
    check_listed_once_with_libvirts_pid(&two);
    check_listed_once_with_libvirts_pid(&one);
    // -p only changes the layout: the same JSON as the compact line.
    // (Compared on this test's domains: other runs may start or stop VMs
    // between the two listings.)
    let ours = |out: &support::Outcome| -> Vec<Value> {
        let list = out.json();
        let ours = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| env.domains.iter().any(|name| d["name"] == name.as_str()));
        ours.cloned().collect()
    };
    let compact = run(&["domain-list"], None);
    let pretty = run(&["-p", "domain-list"], None);
    assert_eq!(compact.stdout.lines().count(), 1, "{}", compact.stdout);
    assert!(
        pretty.stdout.contains("\n  {\n    \"agent_channels\""),
        "{}",
        pretty.stdout
    );
    assert_eq!(ours(&pretty), ours(&compact));
    assert_eq!(
        ours(&compact).len(),
        3,
        "two, one and silent run: {}",
        compact.stdout
    );
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

    // --max-time stops the program through libvirtd too, and what it started.
    let out = run(
        &[
            "guest-run",
            "--max-time",
            "2",
            &one,
            "--",
            "sh",
            "-c",
            "sleep 6077 | cat",
        ],
        None,
    );
    assert_eq!(out.status, 124, "{out:?}");
    assert_eq!(out.json()["signal"], 15, "{out:?}");
    let listing = run(&["guest-run", &one, "--", "ps"], None).json();
    let processes = listing["stdout"].as_str().unwrap();
    assert!(!processes.contains("sleep 6077"), "left running: {processes}");

    // --follow through libvirtd: the output read as it grows, within
    // libvirt's size limits per read, every line in order, nothing left.
    let guest_tmp = || run(&["guest-run", &one, "--", "ls", "-a", "/tmp"], None).json()["stdout"].clone();
    let before = guest_tmp();
    let out = run(
        &["guest-run", "--follow", &one, "--", "sh", "-c", "seq 1 20000"],
        None,
    );
    assert_eq!(out.status, 0, "{}", out.stderr);
    let mut lines = 0;
    for (expected, line) in (1..).zip(out.stdout.lines()) {
        assert_eq!(line, expected.to_string(), "line {expected}");
        lines += 1;
    }
    assert_eq!(lines, 20000);
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    assert_eq!(guest_tmp(), before, "--follow left its directory in the guest");

    // -i through libvirtd: input fed while the program runs, a full pipe
    // (nothing read for two seconds) told apart through libvirt's errors.
    let input: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let out = support::run_bytes(
        &["guest-run", "-i", &one, "--", "sh", "-c", "sleep 2; cat"],
        &input,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == input,
        "300000 bytes through libvirtd and cat differ"
    );
    assert_eq!(guest_tmp(), before, "-i left its directory in the guest");

    // copy through libvirtd: chunks within its limits, in and out, verified.
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    let data: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&source, &data).unwrap();
    let sum = virtomate_protocol::hex(&sha2::Sha256::digest(&data));
    let inside = format!("{one}:/tmp/copied");
    let out = run(&["copy", "--verify", source.to_str().unwrap(), &inside], None);
    assert_eq!(out.json()["sha256"], sum, "{out:?}");
    let back = work.path().join("back");
    let out = run(&["copy", "--verify", &inside, back.to_str().unwrap()], None);
    assert_eq!(out.json()["sha256"], sum, "{out:?}");
    assert!(std::fs::read(&back).unwrap() == data, "the copy back differs");
    // And gzipped, both ways.
    let out = run(
        &[
            "copy",
            "--compress",
            "--verify",
            source.to_str().unwrap(),
            &inside,
        ],
        None,
    );
    assert_eq!(out.json()["sha256"], sum, "{out:?}");
    let out = run(
        &["copy", "--compress", "--verify", &inside, back.to_str().unwrap()],
        None,
    );
    assert_eq!(out.json()["sha256"], sum, "{out:?}");
    assert!(
        std::fs::read(&back).unwrap() == data,
        "the compressed copy back differs"
    );
    // A tree, both ways, plain and gzipped.
    let tree = work.path().join("tree");
    std::fs::create_dir_all(tree.join("a/b")).unwrap();
    std::fs::write(tree.join("a/b/data"), &data).unwrap();
    std::fs::write(tree.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("a/b/data", tree.join("link")).unwrap();
    for (n, flags) in [(1, &["-r"][..]), (2, &["-r", "--compress"])] {
        let inside = format!("{one}:/tmp/tree-{n}");
        let back = work.path().join(format!("tree-back-{n}"));
        let tree_in = [flags, &[tree.to_str().unwrap(), &inside]].concat();
        assert_eq!(
            run(&[&["copy"][..], &tree_in].concat(), None).status,
            0,
            "{flags:?} in"
        );
        let tree_out = [flags, &[&inside, back.to_str().unwrap()]].concat();
        let out = run(&[&["copy"][..], &tree_out].concat(), None);
        assert_eq!(out.json()["files"], 2, "{out:?}");
        assert!(
            std::fs::read(back.join("a/b/data")).unwrap() == data,
            "{flags:?}: the tree's file differs"
        );
        assert_eq!(
            std::fs::read_link(back.join("link")).unwrap(),
            Path::new("a/b/data")
        );
    }

    // Runs through libvirtd go on side by side too (each agent command is
    // a libvirt call of its own), and a session works through it.
    let marks = "/tmp/marks-libvirt";
    assert_eq!(
        run(&["guest-run", &one, "--", "mkdir", "-p", marks], None).json()["exit_code"],
        0
    );
    crate::parallel::overlapping_runs(&[&one, &one], marks);
    // Its copies too: 3 MiB in data lines of 1 MiB, in chunks within
    // libvirt's limits, and back.
    use base64::Engine;
    let base64 = base64::engine::general_purpose::STANDARD;
    let copied = crate::copy::noise(3 << 20, 11);
    let mut requests = vec![
        serde_json::json!({"id": 1, "run": ["echo", "-n", "through libvirtd"]}),
        serde_json::json!({"id": 2, "ping": {}}),
        serde_json::json!({"id": 3, "copy_to": "/tmp/session-copy", "verify": true}),
    ];
    for piece in copied.chunks(1 << 20) {
        requests.push(serde_json::json!({"id": 3, "data": base64.encode(piece)}));
    }
    requests.push(serde_json::json!({"id": 3, "end": true}));
    requests.push(serde_json::json!({"id": 4, "copy_from": "/tmp/session-copy", "verify": true}));
    let requests: String = requests.iter().map(|r| format!("{r}\n")).collect();
    let out = run(&["session", &one], Some(requests.as_bytes()));
    assert_eq!(out.status, 0, "{out:?}");
    let replies: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let reply = |id: i64| {
        replies
            .iter()
            .find(|r| r["id"] == id && r.get("data").is_none())
            .unwrap_or_else(|| panic!("{replies:?}"))
    };
    assert_eq!(reply(1)["result"]["stdout"], "through libvirtd", "{replies:?}");
    assert_eq!(reply(2)["result"], serde_json::json!({}), "{replies:?}");
    let sum = crate::copy::sha256_hex(&copied);
    assert_eq!(reply(3)["result"]["sha256"], sum, "{:?}", reply(3));
    assert_eq!(reply(4)["result"]["sha256"], sum, "{:?}", reply(4));
    let back: Vec<u8> = replies
        .iter()
        .filter(|r| r["id"] == 4)
        .filter_map(|r| r["data"].as_str())
        .flat_map(|text| base64.decode(text).unwrap())
        .collect();
    assert!(back == copied, "the session's copy back differs");

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
    // Input that libvirt would stall on is refused before it is sent.
    let input = vec![b'i'; 150 << 10];
    let out = run(&["guest-run", "--stdin", &one, "--", "wc", "-c"], Some(&input));
    let message = out.error("InputTooLarge");
    assert!(
        message.contains("through libvirtd") && message.contains("second agent channel"),
        "{message}"
    );
    let input = vec![b'i'; 140 << 10];
    let out = run(&["guest-run", "--stdin", &one, "--", "wc", "-c"], Some(&input));
    assert_eq!(out.json()["stdout"], format!("{}\n", input.len()), "{out:?}");
    let big = "yes 0123456789abcdef | head -c 3500000";
    let out = run(&["guest-run", &one, "--", "sh", "-c", big], None);
    let message = out.error("libvirtError");
    assert!(message.contains("at most 4 MiB"), "{message}");
    assert!(message.contains("second agent channel"), "{message}");
    let big = "yes 0123456789abcdef | head -c 8000000";
    let out = run(&["guest-run", &one, "--", "sh", "-c", big], None);
    let message = out.error("libvirtError");
    assert!(message.contains("over 10 MiB"), "{message}");
    assert!(message.contains("until the domain restarts"), "{message}");
    // libvirt keeps its word: guest-shutdown, which needs a working agent,
    // now fails instead of passing for success.
    let out = run(&["guest-cmd", &one, r#"{"execute": "guest-shutdown"}"#], None);
    assert_eq!(out.status, 1, "{out:?}");
    // The dedicated channel has no such limit.
    let out = run(&["guest-run", &two, "--", "sh", "-c", big], None);
    assert_eq!(out.json()["stdout"].as_str().map(str::len), Some(8000000));

    // With its dedicated channel held by someone else (this test), a domain
    // is reached through libvirtd; guest-shutdown, which never replies on
    // success, succeeds there too, and the domain goes down.
    let dedicated = entry["agent_channels"][1]["path"].as_str().unwrap().to_owned();
    let _holder = std::os::unix::net::UnixStream::connect(&dedicated).unwrap();
    support::wait_until(20, "QEMU to accept the holder", || {
        listed(&two)["agent_channels"][1]["held"] == true
    });
    let out = run(
        &["--trace", "guest-cmd", &two, r#"{"execute": "guest-shutdown"}"#],
        None,
    );
    assert_eq!((out.status, out.stdout.trim()), (0, "{}"), "{out:?}");
    assert!(out.stderr.contains("qemu:///system"), "{}", out.stderr);
    support::wait_until(60, "the domain to shut off", || {
        let state = Command::new("virsh")
            .args(["-c", "qemu:///system", "domstate", &two])
            .output()
            .unwrap();
        String::from_utf8_lossy(&state.stdout).trim() == "shut off"
    });
}

#[test]
#[ignore = "needs libvirtd and the test VM"]
fn domain_list_gives_the_state_and_iface_list_asks_libvirtd_for_leases_and_arp() {
    let mut env = LibvirtEnv::start();
    let name = support::unique_name("vt-iface");
    env.define(&name, &[]);
    assert_eq!(listed(&name)["state"], "running");
    // The test domains have no network card: libvirtd's answer is empty,
    // and a well-formed reply to REMOTE_PROC_DOMAIN_INTERFACE_ADDRESSES.
    let out = run(&["domain-iface-list", "--source", "lease", &name], None);
    assert_eq!((out.status, out.json()), (0, serde_json::json!([])), "{out:?}");
    // libvirtd reads the host's ARP table over netlink, which fails on
    // some hosts (here: "wrong nlmsg len", virsh domifaddr alike): then
    // its error is told as libvirt's.
    let out = run(&["domain-iface-list", "--source", "arp", &name], None);
    let arp = out.json();
    assert!(
        (out.status, &arp) == (0, &serde_json::json!([])) || arp["type"] == "libvirtError",
        "{out:?}"
    );
    // The agent's view, through libvirtd (which holds .0): the loopback,
    // which this guest's init leaves without addresses (the case the
    // original failed on with a TypeError).
    let out = run(&["domain-iface-list", "--source", "agent", &name], None);
    let interfaces = out.json();
    let lo = interfaces.as_array().unwrap().iter().find(|i| i["name"] == "lo");
    let lo = lo.unwrap_or_else(|| panic!("no lo: {interfaces}"));
    assert_eq!(lo["hwaddr"], "00:00:00:00:00:00", "{lo}");
    assert!(lo["addresses"].is_array(), "{lo}");
    let out = run(&["qmp", &name, r#"{"execute": "stop"}"#], None);
    assert_eq!(out.status, 0, "{out:?}");
    support::wait_until(20, "libvirt to record the pause", || {
        listed(&name)["state"] == "paused"
    });
    run(&["qmp", &name, r#"{"execute": "cont"}"#], None);

    // libvirtd holds the monitor: its record confirms the shutdown.
    let out = run(&["guest-shutdown", "--wait", "60", &name], None);
    assert_eq!(
        out.json(),
        serde_json::json!({"mode": "powerdown", "seen": "libvirt-shut-off"}),
        "{out:?}"
    );
}
