//! `guest-freeze` and `guest-thaw` in the test VM, whose init mounts an
//! ext2 file system on a RAM disk at /mnt/freeze (the agent freezes file
//! systems on block devices only). The freeze limit is proved by breaking
//! things mid-freeze: a SIGKILL of virtomate, a channel somebody else
//! holds, a VM paused past the limit; each ends with the guest thawed by
//! its watchdogs, seen by status and by a write to the frozen file system.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::runtime_sweep::runtime_dir;
use crate::support::fake_agent::{Conn, FakeAgent};
use crate::support::test_vm::TestVm;
use crate::support::{guest_run, run, step, virtomate, virtomate_path, wait_until};

/// The limit the tests freeze with, and the slack they grant on top of it
/// (a status poll on a TCG guest, the agent's restart).
const LIMIT: u64 = 12;
const SLACK: Duration = Duration::from_secs(4);

fn status(socket: &Path) -> String {
    let request = r#"{"execute": "guest-fsfreeze-status"}"#;
    let out = run(
        &["--timeout", "2", "guest-cmd", socket.to_str().unwrap(), request],
        None,
    );
    out.stdout.trim().trim_matches('"').to_owned()
}

/// The freeze files of the channel at `socket` (src/freeze/registry.rs):
/// its watchdog's registry and the turn of a freeze.
fn freeze_files(socket: &Path) -> [PathBuf; 2] {
    let key = Sha256::digest(socket.as_os_str().as_encoded_bytes());
    let key: String = key[..8].iter().map(|b| format!("{b:02x}")).collect();
    ["pid", "lock"].map(|ext| runtime_dir().join(format!("freeze-{key}.{ext}")))
}

/// Polls the status until it is `wanted`; how long that took.
fn wait_for_status(socket: &Path, wanted: &str, seconds: u64) -> Duration {
    let started = Instant::now();
    wait_until(seconds, &format!("status {wanted}"), || status(socket) == wanted);
    started.elapsed()
}

/// The guest pid of the agent (the parent of what it runs).
fn agent_pid(socket: &Path) -> String {
    guest_run(socket, &["sh", "-c", "echo $PPID"]).json()["stdout"]
        .as_str()
        .unwrap()
        .trim()
        .to_owned()
}

/// Runs in the guest, so that the agent answers normally again.
fn writes_to_the_frozen_file_system(socket: &Path) {
    let out = guest_run(
        socket,
        &[
            "sh",
            "-c",
            "echo after > /mnt/freeze/after && cat /mnt/freeze/after",
        ],
    );
    assert_eq!(out.json()["stdout"], "after\n", "{out:?}");
}

/// A guest process that writes a line to /mnt/freeze five times a
/// second, telling the console (the host's console.log) before and after
/// each write: a write the freeze blocks shows as a start without its end.
fn start_writer(socket: &Path) {
    let script = "i=0; while [ $i -lt 1500 ]; do echo \"writer start $i\" >/dev/console; \
                  echo $i >>/mnt/freeze/log; echo \"writer done $i\" >/dev/console; \
                  i=$((i+1)); sleep 0.2; done";
    let background = format!("({script}) </dev/null >/dev/null 2>&1 &");
    let out = guest_run(socket, &["sh", "-c", &background]);
    assert_eq!(out.json()["exit_code"], 0, "{out:?}");
}

/// The write the writer is stuck in, if any: its last start with no end.
fn blocked_write(vm: &TestVm) -> Option<String> {
    let console = std::fs::read_to_string(vm.dir.path().join("console.log")).unwrap_or_default();
    let last = console
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("writer start "))?;
    let done = format!("writer done {last}");
    (!console.lines().any(|l| l.trim() == done)).then(|| last.to_owned())
}

fn console_has(vm: &TestVm, line: &str) -> bool {
    let console = std::fs::read_to_string(vm.dir.path().join("console.log")).unwrap_or_default();
    console.lines().any(|l| l.trim() == line)
}

/// Waits until the writer is stuck in a write and stays stuck for a
/// second (a write in flight ends within milliseconds); returns it.
fn wait_for_a_blocked_write(vm: &TestVm) -> String {
    let mut seen: Option<(String, Instant)> = None;
    let mut stuck = None;
    wait_until(30, "a write blocked by the freeze", || {
        match (blocked_write(vm), &seen) {
            (Some(now), Some((then, since))) if now == *then => {
                if since.elapsed() > Duration::from_secs(1) {
                    stuck = Some(now);
                    return true;
                }
            }
            (now, _) => seen = now.map(|n| (n, Instant::now())),
        }
        false
    });
    stuck.unwrap()
}

/// The host watchdogs guarding this VM's socket that still run.
fn host_watchdogs(socket: &Path) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("freeze-watchdog") && cmdline.contains(socket.to_str().unwrap()) {
            found.push(pid);
        }
    }
    found
}

fn no_watchdog_is_left(vm: &TestVm) {
    wait_until(10, "the host's watchdog to end", || {
        host_watchdogs(&vm.socket()).is_empty()
    });
    // Its files, and the process (the pattern does not match itself).
    let look = "ls -d /run/virtomate-freeze-* 2>/dev/null; \
                grep -l 'virtomate-freeze-watchdo[g]' /proc/[0-9]*/cmdline 2>/dev/null; true";
    wait_until(10, "the guest's watchdog to end", || {
        guest_run(&vm.socket(), &["sh", "-c", look]).json()["stdout"].is_null()
    });
}

/// `guest-freeze SOCKET --max-time LIMIT -- sleep 600` in the background.
fn spawn_freeze_around_sleep(socket: &Path) -> Child {
    virtomate()
        .args([
            "guest-freeze",
            socket.to_str().unwrap(),
            "--max-time",
            &LIMIT.to_string(),
        ])
        .args(["--", "sleep", "600"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// SIGKILL to `child` and to the command it runs, as `kill -9` of both
/// (or of their process group): not to the watchdog it started, a process
/// of another session, unless `watchdog_too` (then first, so that it does
/// not see `child` die and thaw).
fn kill_with_its_command(child: &mut Child, watchdog_too: bool) {
    let children = format!("/proc/{0}/task/{0}/children", child.id());
    let children = std::fs::read_to_string(children).unwrap_or_default();
    let kill = |wanted: &dyn Fn(&str) -> bool| {
        for pid in children.split_whitespace() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if wanted(&String::from_utf8_lossy(&cmdline)) {
                let pid = nix::unistd::Pid::from_raw(pid.parse().unwrap());
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    };
    if watchdog_too {
        kill(&|cmdline| cmdline.contains("freeze-watchdog"));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    kill(&|cmdline| cmdline.starts_with("sleep"));
}

#[test]
#[ignore = "needs the test VM"]
fn a_freeze_blocks_writes_until_guest_thaw_and_doctor_names_it_meanwhile() {
    let vm = TestVm::boot("freeze-thaw");
    let socket = vm.socket();
    let domain = socket.to_str().unwrap();
    assert_eq!(status(&socket), "thawed");
    start_writer(&socket);
    // What a freeze killed with SIGKILL left, of a channel long gone: the
    // next freeze's watchdog sweeps it.
    let stale = ["lock", "pid"].map(|ext| {
        let path = runtime_dir().join(format!("freeze-ffff{:012x}.{ext}", std::process::id()));
        std::fs::write(&path, "2147483646 a-watchdog-long-gone\n").unwrap();
        path
    });

    let out = run(&["guest-freeze", domain, "--max-time", "120"], None);
    assert_eq!(out.json(), json!({"frozen": 1, "max_time": 120.0}), "{out:?}");
    let [registry, turn] = freeze_files(&socket);
    assert!(registry.exists(), "the watchdog is registered");
    assert!(!turn.exists(), "the freeze let go of its turn and removed it");
    wait_until(10, "the stale freeze files swept", || {
        stale.iter().all(|path| !path.exists())
    });
    assert_eq!(status(&socket), "frozen");
    let write = wait_for_a_blocked_write(&vm);

    let doctor = run(&["doctor", "--json", domain], None);
    assert_eq!(doctor.status, 1, "{doctor:?}");
    let frozen = step(&doctor.json(), "frozen");
    assert_eq!(frozen["outcome"], "fail", "{frozen}");
    let advice = frozen["advice"].as_str().unwrap();
    assert!(
        advice.contains(&format!("virtomate guest-thaw {domain}")),
        "{advice}"
    );
    assert_eq!(step(&doctor.json(), "guest-exec")["outcome"], "skip");
    // A second freeze is refused, the first left as it is.
    let again = run(&["guest-freeze", domain, "--max-time", "60"], None);
    assert!(again.error("FreezeError").contains("frozen already"), "{again:?}");

    let out = run(&["guest-thaw", domain], None);
    assert_eq!(out.json(), json!({"thawed": 1}), "{out:?}");
    wait_until(10, "the blocked write to end", || {
        console_has(&vm, &format!("writer done {write}"))
    });
    assert_eq!(status(&socket), "thawed");
    let doctor = run(&["doctor", "--json", domain], None);
    assert_eq!(step(&doctor.json(), "frozen")["outcome"], "pass", "{doctor:?}");
    writes_to_the_frozen_file_system(&socket);
    no_watchdog_is_left(&vm);
    assert!(!registry.exists(), "the thaw removed the watchdog's registry");
}

#[test]
#[ignore = "needs the test VM"]
fn of_two_freezes_at_once_one_freezes_and_the_other_is_refused_its_guard_intact() {
    let vm = TestVm::boot("freeze-twice");
    let socket = vm.socket();
    let domain = socket.to_str().unwrap();
    let line = ["guest-freeze", domain, "--max-time", &LIMIT.to_string()];
    let started = Instant::now();
    let (first, second) = std::thread::scope(|scope| {
        let first = scope.spawn(|| run(&line, None));
        let second = scope.spawn(|| run(&line, None));
        (first.join().unwrap(), second.join().unwrap())
    });
    let (frozen, refused) = match first.status {
        0 => (first, second),
        _ => (second, first),
    };
    assert_eq!(frozen.json()["frozen"], 1, "{frozen:?}");
    assert!(
        refused.error("FreezeError").contains("frozen already"),
        "{refused:?}"
    );
    // The refused one left the other's watchdogs alone: with the host's
    // killed, the guest's still thaws within the limit.
    let watchdogs = host_watchdogs(&socket);
    assert_eq!(watchdogs.len(), 1, "{watchdogs:?}");
    let pid = nix::unistd::Pid::from_raw(watchdogs[0] as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_for_status(&socket, "thawed", LIMIT + 10);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(LIMIT) + SLACK, "thawed after {took:?}");
    no_watchdog_is_left(&vm);
}

#[test]
#[ignore = "needs the test VM"]
fn a_command_runs_while_frozen_and_its_exit_status_is_passed_through() {
    let vm = TestVm::boot("freeze-command");
    let socket = vm.socket();
    let domain = socket.to_str().unwrap();
    let seen = tempfile::NamedTempFile::new().unwrap();
    // The command asks the agent itself: virtomate lets go of the channel.
    let command = format!(
        "'{}' guest-cmd '{domain}' '{{\"execute\": \"guest-fsfreeze-status\"}}' > '{}'; exit 7",
        virtomate_path().display(),
        seen.path().display()
    );
    let out = run(
        &[
            "guest-freeze",
            domain,
            "--max-time",
            "60",
            "--",
            "sh",
            "-c",
            &command,
        ],
        None,
    );
    assert_eq!((out.status, out.stdout.as_str()), (7, ""), "{out:?}");
    assert_eq!(std::fs::read_to_string(seen.path()).unwrap(), "\"frozen\"\n");
    assert_eq!(status(&socket), "thawed");
    writes_to_the_frozen_file_system(&socket);
    no_watchdog_is_left(&vm);

    let out = run(&["guest-freeze", domain, "--max-time", "60", "--", "true"], None);
    assert_eq!((out.status, out.stdout.as_str()), (0, ""), "{out:?}");
    no_watchdog_is_left(&vm);

    // One file system by its mount point (guest-fsfreeze-freeze-list).
    let line = [
        "guest-freeze",
        "--mountpoint",
        "/mnt/freeze",
        domain,
        "--max-time",
        "60",
    ];
    assert_eq!(run(&line, None).json(), json!({"frozen": 1, "max_time": 60.0}));
    assert_eq!(status(&socket), "frozen");
    assert_eq!(run(&["guest-thaw", domain], None).json(), json!({"thawed": 1}));
    // Thawing a thawed guest is no error.
    assert_eq!(run(&["guest-thaw", domain], None).json(), json!({"thawed": 0}));
    no_watchdog_is_left(&vm);

    // Nothing mounted there: nothing frozen, the agent as it was, and no
    // watchdog left to guard nothing.
    let line = [
        "guest-freeze",
        "--mountpoint",
        "/nowhere",
        domain,
        "--max-time",
        "60",
    ];
    assert_eq!(run(&line, None).json(), json!({"frozen": 0, "max_time": 60.0}));
    assert_eq!(status(&socket), "thawed");
    no_watchdog_is_left(&vm);
}

#[test]
#[ignore = "needs the test VM"]
fn a_command_that_overruns_or_is_interrupted_is_stopped_after_the_thaw() {
    let vm = TestVm::boot("freeze-overrun");
    let socket = vm.socket();
    let domain = socket.to_str().unwrap();
    // The limit comes first: virtomate thaws a second before its host
    // watchdog would, then stops the command, and exits as timeout(1) does.
    let started = Instant::now();
    let out = run(
        &["guest-freeze", domain, "--max-time", "10", "--", "sleep", "600"],
        None,
    );
    let took = started.elapsed();
    assert_eq!(out.status, 124, "{out:?}");
    assert!(out.stderr.contains("ran into the freeze's limit"), "{out:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(status(&socket), "thawed");
    no_watchdog_is_left(&vm);

    // SIGTERM: thawed, the command stopped, virtomate's failure on stderr.
    let freeze = virtomate()
        .args(["guest-freeze", domain, "--max-time", "60", "--", "sleep", "600"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_status(&socket, "frozen", 30);
    let pid = nix::unistd::Pid::from_raw(freeze.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = freeze.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    assert!(
        stderr.contains("virtomate: Interrupted: interrupted: the guest was thawed"),
        "{stderr}"
    );
    assert_eq!(status(&socket), "thawed");
    no_watchdog_is_left(&vm);
}

#[test]
#[ignore = "needs the test VM"]
fn virtomate_killed_mid_freeze_leaves_the_guest_thawed_within_the_limit() {
    let vm = TestVm::boot("freeze-sigkill");
    let socket = vm.socket();
    let agent = agent_pid(&socket);
    let started = Instant::now();
    let mut freeze = spawn_freeze_around_sleep(&socket);
    wait_for_status(&socket, "frozen", 30);
    kill_with_its_command(&mut freeze, false);
    let killed = Instant::now();

    wait_for_status(&socket, "thawed", LIMIT + 10);
    let took = started.elapsed();
    eprintln!(
        "SIGKILL: thawed {:?} after the kill, {took:?} after guest-freeze started, limit {LIMIT} s",
        killed.elapsed()
    );
    assert!(took < Duration::from_secs(LIMIT) + SLACK, "thawed after {took:?}");
    writes_to_the_frozen_file_system(&socket);
    // The host's watchdog thawed, as soon as it saw virtomate gone, long
    // before the guest's would have acted: the agent is the same process.
    assert_eq!(agent_pid(&socket), agent);
    no_watchdog_is_left(&vm);
}

#[test]
#[ignore = "needs the test VM"]
fn with_its_host_watchdog_killed_too_the_guest_thaws_itself_and_its_agent_within_the_limit() {
    let vm = TestVm::boot("freeze-all-killed");
    let socket = vm.socket();
    let agent = agent_pid(&socket);
    let started = Instant::now();
    let mut freeze = spawn_freeze_around_sleep(&socket);
    wait_for_status(&socket, "frozen", 30);
    kill_with_its_command(&mut freeze, true);
    wait_until(5, "the host's watchdog to die", || {
        host_watchdogs(&socket).is_empty()
    });

    wait_for_status(&socket, "thawed", LIMIT + 10);
    let took = started.elapsed();
    eprintln!("all killed: the restarted agent answered thawed {took:?} after guest-freeze started");
    assert!(took < Duration::from_secs(LIMIT) + SLACK, "thawed after {took:?}");
    assert_ne!(agent_pid(&socket), agent);
    writes_to_the_frozen_file_system(&socket);
    no_watchdog_is_left(&vm);
}

#[test]
#[ignore = "needs the test VM"]
fn a_channel_lost_to_another_client_mid_freeze_ends_thawed_within_the_limit() {
    let vm = TestVm::boot("freeze-lost-socket");
    let socket = vm.socket();
    let agent = agent_pid(&socket);
    start_writer(&socket);
    let started = Instant::now();
    let mut freeze = spawn_freeze_around_sleep(&socket);
    wait_for_status(&socket, "frozen", 30);
    // A client that connects and never says a word holds the channel:
    // neither virtomate nor its watchdog on the host can reach the agent.
    let holder = UnixStream::connect(&socket).unwrap();
    kill_with_its_command(&mut freeze, false);
    let write = wait_for_a_blocked_write(&vm);

    wait_until(LIMIT + 10, "the blocked write to end", || {
        console_has(&vm, &format!("writer done {write}"))
    });
    let took = started.elapsed();
    eprintln!("lost socket: the blocked write ended {took:?} after guest-freeze started, limit {LIMIT} s");
    assert!(took < Duration::from_secs(LIMIT) + SLACK, "thawed after {took:?}");
    drop(holder);
    wait_for_status(&socket, "thawed", 10);
    writes_to_the_frozen_file_system(&socket);
    // The guest's watchdog thawed, and restarted the frozen agent.
    assert_ne!(agent_pid(&socket), agent);
    no_watchdog_is_left(&vm);
}

#[test]
#[ignore = "needs the test VM"]
fn a_vm_paused_past_the_limit_is_thawed_as_soon_as_it_runs_again() {
    paused_past_the_limit("freeze-paused", false);
}

/// The guest alone, with the RTC: its own clocks stood still while paused.
#[test]
#[ignore = "needs the test VM"]
fn a_vm_paused_past_the_limit_thaws_itself_when_it_runs_again_with_no_host_watchdog() {
    paused_past_the_limit("freeze-paused-alone", true);
}

fn paused_past_the_limit(name: &str, without_host_watchdog: bool) {
    let vm = TestVm::boot(name);
    let socket = vm.socket();
    let agent = agent_pid(&socket);
    let monitor: PathBuf = vm.dir.path().join("qmp.sock");
    let qmp = |command: &str| {
        let request = format!(r#"{{"execute": "{command}"}}"#);
        let out = run(&["qmp", monitor.to_str().unwrap(), &request], None);
        assert_eq!(out.json(), json!({}), "{command}: {out:?}");
    };
    let started = Instant::now();
    let out = run(
        &[
            "guest-freeze",
            socket.to_str().unwrap(),
            "--max-time",
            &LIMIT.to_string(),
        ],
        None,
    );
    assert_eq!(out.json()["frozen"], 1, "{out:?}");
    qmp("stop");
    if without_host_watchdog {
        let watchdogs = host_watchdogs(&socket);
        assert_eq!(watchdogs.len(), 1, "{watchdogs:?}");
        let pid = nix::unistd::Pid::from_raw(watchdogs[0] as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    }
    // The limit is what this waits for: the VM stays paused past it.
    let past = Duration::from_secs(LIMIT + 3);
    wait_until(LIMIT + 30, "the limit to pass", || started.elapsed() > past);
    qmp("cont");
    let took = wait_for_status(&socket, "thawed", 30);
    eprintln!("paused past the limit ({name}): thawed {took:?} after cont");
    assert!(took < SLACK, "thawed {took:?} after the VM ran again");
    writes_to_the_frozen_file_system(&socket);
    if without_host_watchdog {
        assert_ne!(
            agent_pid(&socket),
            agent,
            "the guest's watchdog restarts the frozen agent"
        );
    }
    no_watchdog_is_left(&vm);
}

/// What `guest-info` lists: the commands the freeze and its guard need,
/// `guest-exec` enabled or not.
fn agent_commands(guest_exec: bool) -> serde_json::Value {
    let names = [
        "guest-fsfreeze-freeze",
        "guest-fsfreeze-thaw",
        "guest-fsfreeze-status",
        "guest-exec",
        "guest-exec-status",
    ];
    let commands: Vec<_> = names
        .iter()
        .map(|name| {
            json!({"name": name, "enabled": *name != "guest-exec" || guest_exec,
                           "success-response": true})
        })
        .collect();
    json!({"version": "7.2.22", "supported_commands": commands})
}

/// The fake agent's first answers to `guest-freeze`: a thawed guest.
fn thawed_agent(conn: &mut Conn, guest_exec: bool) {
    conn.sync();
    conn.answer("guest-fsfreeze-status", json!("thawed"));
    conn.answer("guest-info", agent_commands(guest_exec));
}

#[test]
fn a_disabled_guest_exec_is_refused_before_anything_is_frozen() {
    let agent = FakeAgent::serve(|mut conn| {
        thawed_agent(&mut conn, false);
        let more = conn.next_request();
        assert!(more.is_none(), "sent after the refusal: {more:?}");
    });
    let out = run(
        &[
            "guest-freeze",
            agent.socket().to_str().unwrap(),
            "--max-time",
            "30",
        ],
        None,
    );
    let message = out.error("FreezeError");
    assert!(
        message.contains("guest-exec") && message.contains("nothing was frozen"),
        "{message}"
    );
}

#[test]
fn a_guest_without_fsfreeze_is_refused_before_anything_is_frozen() {
    let agent = FakeAgent::serve(|mut conn| {
        thawed_agent(&mut conn, true);
        // The guest's watchdog, which finds no fsfreeze to thaw with.
        let arm = conn.request();
        assert_eq!(arm["arguments"]["arg"][2], "virtomate-freeze-watchdog", "{arm}");
        conn.reply(&json!({"return": {"pid": 77}, "id": arm["id"]}));
        let missing = json!({"exited": true, "exitcode": 3, "out-data": "bWlzc2luZzogZnNmcmVlemU="});
        conn.answer("guest-exec-status", missing);
        let more = conn.next_request();
        assert!(more.is_none(), "sent after the refusal: {more:?}");
    });
    let out = run(
        &[
            "guest-freeze",
            agent.socket().to_str().unwrap(),
            "--max-time",
            "30",
        ],
        None,
    );
    let message = out.error("FreezeError");
    assert!(
        message.contains("(fsfreeze)") && message.contains("nothing was frozen"),
        "{message}"
    );
    assert!(host_watchdogs(&agent.socket()).is_empty());
}

#[test]
fn a_limit_under_ten_seconds_is_a_usage_error() {
    let out = run(&["guest-freeze", "/nonexistent.sock", "--max-time", "9.5"], None);
    assert_eq!(out.status, 2, "{out:?}");
    assert!(out.stderr.contains("at least 10 seconds"), "{out:?}");
}
