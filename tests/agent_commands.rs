//! The agent's commands beyond running programs: `guest-cmd` checked
//! against QEMU's schema, and the first-class commands built on them.

use serde_json::json;

use crate::support::fake_agent::FakeAgent;
use crate::support::host_agent::HostAgent;
use crate::support::run;
use crate::support::test_vm::TestVm;

/// A usage error's message (exit 2, on stderr).
fn usage_error(args: &[&str]) -> String {
    let out = run(args, None);
    assert_eq!(out.status, 2, "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    out.stderr
}

#[test]
fn guest_cmd_names_the_closest_command_argument_or_value() {
    // Checked before connecting: the socket need not exist.
    let socket = "/nonexistent/qga.sock";
    let unknown = usage_error(&["guest-cmd", socket, "guest-get-osinf"]);
    assert!(unknown.contains("the closest: 'guest-get-osinfo'"), "{unknown}");
    let argument = usage_error(&[
        "guest-cmd",
        socket,
        r#"{"execute": "guest-exec", "arguments": {"pth": "ls"}}"#,
    ]);
    assert!(
        argument.contains("no member 'pth' in the arguments of guest-exec; the closest: 'path'"),
        "{argument}"
    );
    let missing = usage_error(&["guest-cmd", socket, "guest-ssh-get-authorized-keys"]);
    assert!(
        missing
            .contains("'username' (a string) is missing from the arguments of guest-ssh-get-authorized-keys"),
        "{missing}"
    );
    let mistyped = usage_error(&["guest-cmd", socket, "guest-file-close", r#"{"handle": "3"}"#]);
    assert!(
        mistyped.contains("'handle' of the arguments of guest-file-close must be an integer, not the string"),
        "{mistyped}"
    );
    let value = usage_error(&[
        "guest-cmd",
        socket,
        "guest-exec",
        r#"{"path": "ls", "capture-output": "merge"}"#,
    ]);
    assert!(value.contains("must be true or false or one of none"), "{value}");
    let twice = usage_error(&[
        "guest-cmd",
        socket,
        r#"{"execute": "guest-ping", "arguments": {}}"#,
        "{}",
    ]);
    assert!(twice.contains("given twice"), "{twice}");
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn guest_cmd_takes_a_command_name_and_its_arguments_apart() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let out = run(
        &["guest-cmd", socket.to_str().unwrap(), "guest-get-host-name"],
        None,
    );
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(out.json()["host-name"], hostname.trim(), "{out:?}");
    let out = run(
        &[
            "guest-cmd",
            socket.to_str().unwrap(),
            "guest-exec-status",
            r#"{"pid": 1}"#,
        ],
        None,
    );
    assert_eq!(out.json()["class"], "GenericError", "{out:?}");
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_disabled_command_says_how_to_enable_it() {
    let agent = HostAgent::start_with(&["--block-rpcs", "guest-get-osinfo"]);
    let socket = agent.socket();
    let out = run(&["guest-cmd", socket.to_str().unwrap(), "guest-get-osinfo"], None);
    let json = out.json();
    assert_eq!(json["class"], "CommandNotFound", "{json}");
    let message = json["message"].as_str().unwrap();
    assert!(message.contains("has been disabled"), "{message}");
    assert!(
        message.contains("--block-rpcs")
            && message.contains("FILTER_RPC_ARGS")
            && message.contains("/etc/sysconfig/qemu-ga"),
        "{message}"
    );
}

#[test]
fn a_command_the_agent_lacks_says_which_qemu_brought_it() {
    // A 7.2 agent asked for 10.0's guest-get-load.
    let agent = FakeAgent::serve(|mut conn| {
        conn.sync();
        conn.refuse(
            "guest-get-load",
            "CommandNotFound",
            "The command guest-get-load has not been found",
        );
        let commands = json!([{"name": "guest-ping", "enabled": true, "success-response": true}]);
        conn.answer(
            "guest-info",
            json!({"version": "7.2.22", "supported_commands": commands}),
        );
        conn.wait_for_close();
    });
    let out = run(
        &["guest-cmd", agent.socket().to_str().unwrap(), "guest-get-load"],
        None,
    );
    let message = out.json()["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("this agent is qemu-ga 7.2.22; guest-get-load came with QEMU 10.0"),
        "{message}"
    );
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn guest_ping_wait_for_refuses_a_disabled_command_and_passes_an_enabled_one() {
    let agent = HostAgent::start_with(&["--block-rpcs", "guest-exec"]);
    let socket = agent.socket();
    let socket = socket.to_str().unwrap();
    let out = run(&["guest-ping", "--wait-for", "guest-info", socket], None);
    assert_eq!((out.status, out.stdout.as_str()), (0, ""), "{out:?}");
    let out = run(
        &["guest-ping", "--wait", "0.5", "--wait-for", "guest-exec", socket],
        None,
    );
    let message = out.error("CommandUnavailable");
    assert!(message.contains("has guest-exec disabled"), "{message}");
    let out = run(&["guest-ping", "--wait-for", "guest-exe", socket], None);
    assert_eq!(out.status, 2, "{out:?}");
    assert!(out.stderr.contains("guest-exec"), "{out:?}");
}

#[test]
fn completions_offer_the_agents_command_names() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["--generate", dir.path().to_str().unwrap()], None);
    assert_eq!(out.status, 0, "{out:?}");
    for file in ["virtomate.bash", "_virtomate", "virtomate.fish"] {
        let script = std::fs::read_to_string(dir.path().join("completions").join(file)).unwrap();
        assert!(
            script.contains("guest-get-osinfo") && script.contains("guest-network-get-route"),
            "{file}"
        );
    }
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn guest_facts_gives_each_section_the_host_agent_has_and_says_why_of_the_others() {
    let agent = HostAgent::start_with(&["--block-rpcs", "guest-get-osinfo"]);
    let out = run(&["guest-facts", agent.socket().to_str().unwrap()], None);
    assert_eq!(out.status, 0, "{out:?}");
    let facts = out.json();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(facts["hostname"], hostname.trim(), "{facts}");
    assert!(facts["agent"]["version"].is_string(), "{facts}");
    assert!(facts["timezone"]["offset"].is_i64(), "{facts}");
    assert!(
        facts["time"].as_i64().unwrap() > 1_700_000_000_000_000_000,
        "{facts}"
    );
    assert!(facts["users"].is_array(), "{facts}");
    assert!(facts["filesystems"][0]["mountpoint"].is_string(), "{facts}");
    assert!(
        facts["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "lo"),
        "{facts}"
    );
    let online = |v: &serde_json::Value| v["online"].is_boolean();
    assert!(facts["vcpus"].as_array().unwrap().iter().all(online), "{facts}");
    for section in ["disks", "cpu_stats", "disk_stats"] {
        assert!(facts[section].is_array(), "{section}: {facts}");
    }
    // Disabled here, and too new for a 7.2 agent: said in the section.
    assert_eq!(facts["os"]["error"]["type"], "CommandUnavailable", "{facts}");
    assert!(
        facts["os"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("disabled"),
        "{facts}"
    );
    let load = facts["load"]["error"]["message"].as_str().unwrap();
    assert!(load.contains("came with QEMU 10.0"), "{load}");
    let routes = facts["routes"]["error"]["message"].as_str().unwrap();
    assert!(routes.contains("came with QEMU 9.1"), "{routes}");
}

#[test]
fn guest_facts_reads_newer_agents_load_and_routes() {
    // Replies shaped as QEMU's schema documents them (10.0, 9.1).
    let agent = FakeAgent::serve(|mut conn| {
        conn.sync();
        let enabled = |name: &str| json!({"name": name, "enabled": true, "success-response": true});
        let commands = json!([enabled("guest-network-get-route"), enabled("guest-get-load"),
            {"name": "guest-get-host-name", "enabled": false, "success-response": true}]);
        conn.answer(
            "guest-info",
            json!({"version": "10.0.0", "supported_commands": commands}),
        );
        conn.answer(
            "guest-network-get-route",
            json!([
                {"iface": "eth0", "destination": "0.0.0.0", "metric": 100, "gateway": "10.0.2.2",
                 "mask": "0.0.0.0", "irtt": 0, "flags": 3, "refcnt": 0, "use": 0, "window": 0, "mtu": 0,
                 "version": 4},
                {"iface": "eth0", "destination": "fe80::", "metric": 256, "desprefixlen": "64",
                 "source": "::", "srcprefixlen": "0", "nexthop": "::", "version": 6}
            ]),
        );
        conn.answer(
            "guest-get-load",
            json!({"load1m": 0.25, "load5m": 0.5, "load15m": 0.75}),
        );
        conn.wait_for_close();
    });
    let out = run(&["guest-facts", agent.socket().to_str().unwrap()], None);
    let facts = out.json();
    assert_eq!(
        facts["load"],
        json!({"load1m": 0.25, "load5m": 0.5, "load15m": 0.75}),
        "{facts}"
    );
    assert_eq!(facts["routes"][0]["gateway"], "10.0.2.2", "{facts}");
    assert_eq!(facts["routes"][1]["nexthop"], "::", "{facts}");
    let hostname = facts["hostname"]["error"]["message"].as_str().unwrap();
    assert!(hostname.contains("has guest-get-host-name disabled") && hostname.contains("--allow-rpcs"));
    let os = facts["os"]["error"]["message"].as_str().unwrap();
    assert!(
        os.contains("qemu-ga 10.0.0) does not have guest-get-osinfo"),
        "{os}"
    );
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn domain_iface_list_from_the_host_agent_keeps_the_originals_keys() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let out = run(
        &["domain-iface-list", "--source", "agent", socket.to_str().unwrap()],
        None,
    );
    let interfaces = out.json();
    let lo = interfaces
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "lo")
        .unwrap();
    assert_eq!(lo["hwaddr"], "00:00:00:00:00:00", "{lo}");
    assert_eq!(
        lo["addresses"][0],
        json!({"address": "127.0.0.1", "prefix": 8, "type": "IPv4"})
    );
    for interface in interfaces.as_array().unwrap() {
        let mut keys: Vec<&str> = interface
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["addresses", "hwaddr", "name"], "{interface}");
    }
    // Leases and ARP entries are libvirt's: refused for a bare socket.
    let out = run(&["domain-iface-list", socket.to_str().unwrap()], None);
    assert_eq!(out.status, 2, "{out:?}");
    assert!(
        out.stderr.contains("--source lease needs a libvirt domain"),
        "{out:?}"
    );
}

#[test]
fn domain_iface_list_gives_an_interface_without_addresses_an_empty_list() {
    // The original failed with a TypeError on such an interface.
    let agent = FakeAgent::serve(|mut conn| {
        conn.sync();
        let commands =
            json!([{"name": "guest-network-get-interfaces", "enabled": true, "success-response": true}]);
        conn.answer(
            "guest-info",
            json!({"version": "7.2.22", "supported_commands": commands}),
        );
        conn.answer(
            "guest-network-get-interfaces",
            json!([
                {"name": "eth1", "hardware-address": "52:54:00:00:00:02"},
                {"name": "eth0", "hardware-address": "52:54:00:00:00:01", "ip-addresses": [
                    {"ip-address": "fe80::1", "ip-address-type": "ipv6", "prefix": 64},
                    {"ip-address": "10.0.0.5", "ip-address-type": "ipv4", "prefix": 24}]},
                {"name": "tun0"}
            ]),
        );
        conn.wait_for_close();
    });
    let out = run(
        &[
            "domain-iface-list",
            "--source",
            "agent",
            agent.socket().to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(
        out.json(),
        json!([
            {"name": "tun0", "hwaddr": null, "addresses": []},
            {"name": "eth0", "hwaddr": "52:54:00:00:00:01", "addresses": [
                {"address": "10.0.0.5", "prefix": 24, "type": "IPv4"},
                {"address": "fe80::1", "prefix": 64, "type": "IPv6"}]},
            {"name": "eth1", "hwaddr": "52:54:00:00:00:02", "addresses": []}
        ]),
        "{out:?}"
    );
}

/// What the agent runs to set a password; the test VM's busybox has no
/// `chpasswd`: this one hashes with busybox's `mkpasswd` (or takes the
/// hash as given with `-e`) and writes /etc/shadow.
const CHPASSWD: &str = r#"#!/bin/sh
crypted=0; [ "$1" = -e ] && crypted=1
while IFS=: read -r user password; do
  [ $crypted = 1 ] || password=$(mkpasswd -m sha512 "$password")
  sed -i "s|^$user:[^:]*:|$user:$password:|" /etc/shadow
done
"#;

/// Gives the test VM a user with a home, and a `chpasswd`.
fn add_guest_user(vm: &TestVm, user: &str) {
    let script = "cat > /usr/sbin/chpasswd && chmod 755 /usr/sbin/chpasswd";
    let out = run(
        &["guest-run", "--stdin", &vm.name, "--", "sh", "-c", script],
        Some(CHPASSWD.as_bytes()),
    );
    assert_eq!(out.json()["exit_code"], 0, "{out:?}");
    let script = format!(
        "echo 'root:x:0:0::/root:/bin/sh' > /etc/passwd && echo 'root:x:0:' > /etc/group && \
         echo '{user}:x:1000:1000::/home/{user}:/bin/sh' >> /etc/passwd && \
         echo '{user}:x:1000:' >> /etc/group && \
         printf 'root:*:19000::::::\\n{user}:!:19000::::::\\n' > /etc/shadow && \
         mkdir -p /home/{user} && chown 1000:1000 /home/{user}"
    );
    let out = run(&["guest-run", &vm.name, "--", "sh", "-c", &script], None);
    assert_eq!(out.json()["exit_code"], 0, "{out:?}");
}

fn guest_file(vm: &TestVm, path: &str) -> String {
    let out = run(&["guest-run", &vm.name, "--", "cat", path], None);
    out.json()["stdout"].as_str().unwrap_or_default().to_owned()
}

#[test]
#[ignore = "needs the test VM"]
fn password_keys_time_and_fstrim_on_the_test_vm() {
    let vm = TestVm::boot("agent-cmds");
    add_guest_user(&vm, "alice");

    // The password from standard input: the agent runs chpasswd.
    let out = run(&["guest-set-password", &vm.name, "alice"], Some(b"s3cret\n"));
    assert_eq!(out.json(), json!({"user": "alice", "crypted": false}), "{out:?}");
    let shadow = guest_file(&vm, "/etc/shadow");
    let alice = shadow
        .lines()
        .find(|l| l.starts_with("alice:"))
        .unwrap()
        .to_owned();
    assert!(!alice.starts_with("alice:!:"), "{shadow}");
    let crypted =
        "$6$salt$IxDD3jeSOb5eB1CX5LBsqZFVkJdido3OUILO5Ifz5iwMuTS4XMS130MTSuDDl3aCI6WouIL9AjRbLCelDCy.g.";
    let out = run(
        &["guest-set-password", "--crypted", &vm.name, "alice"],
        Some(crypted.as_bytes()),
    );
    assert_eq!(out.status, 0, "{out:?}");
    assert!(
        guest_file(&vm, "/etc/shadow").contains(&format!("alice:{crypted}:")),
        "crypted as given"
    );
    let empty = run(&["guest-set-password", &vm.name, "alice"], Some(b"\n"));
    assert_eq!(empty.status, 2, "{empty:?}");

    // Keys from local files, listed after each change.
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.pub");
    let one = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOne one@host";
    let two = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITwo two@host";
    std::fs::write(&keys, format!("# team keys\n{one}\n\n{two}\n")).unwrap();
    let keys = keys.to_str().unwrap();
    let out = run(&["guest-ssh-keys", &vm.name, "alice", "--add", keys], None);
    // In the agent's order, which is not the file's.
    let mut added: Vec<String> = serde_json::from_value(out.json()["keys"].clone()).unwrap();
    added.sort_unstable();
    assert_eq!(added, [one, two], "{out:?}");
    assert!(guest_file(&vm, "/home/alice/.ssh/authorized_keys").contains(two));
    let only_two = dir.path().join("one.pub");
    std::fs::write(&only_two, format!("{one}\n")).unwrap();
    let out = run(
        &[
            "guest-ssh-keys",
            &vm.name,
            "alice",
            "--remove",
            only_two.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.json()["keys"], json!([two]), "{out:?}");
    let out = run(&["guest-ssh-keys", &vm.name, "alice"], None);
    assert_eq!(out.json(), json!({"user": "alice", "keys": [two]}), "{out:?}");
    let out = run(&["guest-ssh-keys", &vm.name, "alice", "--reset"], None);
    assert_eq!(out.json()["keys"], json!([]), "{out:?}");

    // The guest's clock set to the host's, then read back.
    let out = run(&["guest-set-time", &vm.name], None);
    let set = out.json()["time"].as_i64().unwrap_or_else(|| panic!("{out:?}"));
    let out = run(&["guest-cmd", &vm.name, "guest-get-time"], None);
    let guest_now = out.json().as_i64().unwrap();
    assert!(
        (guest_now - set).abs() < 30_000_000_000,
        "set {set}, read back {guest_now}"
    );

    let out = run(&["guest-fstrim", &vm.name], None);
    let trimmed = out.json();
    assert!(
        trimmed["paths"].is_array() || trimmed["type"] == "AgentCommandError",
        "{out:?}"
    );

    let out = run(&["guest-facts", &vm.name], None);
    assert!(out.json()["hostname"].is_string(), "{out:?}");

    // domain-list's state, as QEMU's monitor tells it for a bare QEMU.
    let state = || {
        let listed = run(&["domain-list"], None).json();
        let entry = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == vm.name.as_str())
            .cloned();
        entry.unwrap_or_else(|| panic!("{} not in {listed}", vm.name))["state"].clone()
    };
    assert_eq!(state(), "running");
    run(&["qmp", &vm.name, r#"{"execute": "stop"}"#], None);
    assert_eq!(state(), "paused");
    run(&["qmp", &vm.name, r#"{"execute": "cont"}"#], None);
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn doctor_lists_disabled_commands_and_those_the_agent_is_too_old_for() {
    let agent = HostAgent::start_with(&["--block-rpcs", "guest-get-osinfo"]);
    let out = run(&["doctor", "--json", agent.socket().to_str().unwrap()], None);
    let report = out.json();
    let version = crate::support::step(&report, "agent-version");
    let detail = version["detail"].as_str().unwrap();
    assert!(
        detail.contains("disabled in the guest: ") && detail.contains("guest-get-osinfo"),
        "{detail}"
    );
    assert!(detail.contains("FILTER_RPC_ARGS"), "{detail}");
    assert!(
        detail.contains("too old for guest-get-load (QEMU 10.0)"),
        "{detail}"
    );
}

#[test]
#[ignore = "needs the test VM"]
fn guest_shutdown_wait_is_confirmed_by_qemus_monitor() {
    let vm = TestVm::boot("shutdown-qmp");
    let out = run(&["guest-shutdown", "--wait", "60", &vm.name], None);
    let seen = out.json()["seen"].as_str().map(str::to_owned);
    assert!(
        matches!(seen.as_deref(), Some("qmp-shutdown-event" | "qemu-exited")),
        "{out:?}"
    );
}

#[test]
#[ignore = "needs the test VM"]
fn guest_shutdown_reboot_is_confirmed_by_qemus_reset_event() {
    // QEMU resets a guest that reboots (no -no-reboot), and lives on.
    let vm = TestVm::boot_with("reboot", &[("VM_REBOOT", "1")]);
    let pid = vm.qemu_pid();
    let out = run(
        &["guest-shutdown", "--mode", "reboot", "--wait", "60", &vm.name],
        None,
    );
    assert_eq!(
        out.json(),
        json!({"mode": "reboot", "seen": "qmp-reset-event"}),
        "{out:?}"
    );
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU went on"
    );
}

#[test]
#[ignore = "needs the test VM"]
fn guest_shutdown_wait_is_confirmed_by_the_agent_going_away_when_the_monitor_is_held() {
    let vm = TestVm::boot("shutdown-agent");
    // This test holds QEMU's monitor: virtomate cannot watch it.
    let _holder = std::os::unix::net::UnixStream::connect(vm.dir.path().join("qmp.sock")).unwrap();
    let socket = vm.socket();
    let out = run(
        &[
            "guest-shutdown",
            "--mode",
            "halt",
            "--wait",
            "60",
            socket.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(
        out.json(),
        json!({"mode": "halt", "seen": "agent-gone"}),
        "{out:?}"
    );
}

#[test]
fn each_first_class_command_refuses_before_sending_what_the_agent_lacks() {
    // An agent with none of the commands: each one is refused after
    // guest-info alone, nothing else is sent (the script asserts it).
    let agent = FakeAgent::serve_each(|mut conn, _| {
        conn.sync();
        conn.answer(
            "guest-info",
            json!({"version": "2.0.0", "supported_commands": []}),
        );
        assert_eq!(conn.next_request(), None, "only guest-info may be sent");
    });
    let socket = agent.socket();
    let socket = socket.to_str().unwrap();
    let keys = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(keys.path(), "ssh-ed25519 AAAA key@host\n").unwrap();
    let cases: [(&[&str], &str); 6] = [
        (&["guest-set-time", socket], "guest-set-time"),
        (&["guest-fstrim", socket], "guest-fstrim"),
        (&["guest-shutdown", socket], "guest-shutdown"),
        (
            &["guest-ssh-keys", socket, "alice"],
            "guest-ssh-get-authorized-keys",
        ),
        (
            &[
                "guest-ssh-keys",
                socket,
                "alice",
                "--add",
                keys.path().to_str().unwrap(),
            ],
            "guest-ssh-get-authorized-keys",
        ),
        (
            &["domain-iface-list", "--source", "agent", socket],
            "guest-network-get-interfaces",
        ),
    ];
    for (args, command) in cases {
        let out = run(args, None);
        let message = out.error("CommandUnavailable");
        assert!(
            message.contains(&format!("(qemu-ga 2.0.0) does not have {command}")),
            "{args:?}: {message}"
        );
    }
    let out = run(&["guest-set-password", socket, "alice"], Some(b"pw\n"));
    assert!(
        out.error("CommandUnavailable").contains("came with QEMU 2.3"),
        "{out:?}"
    );
}
