//! `copy` (one file and `copy -r`, both ways, plain and `--compress`)
//! when the VM is killed or the agent restarted under it: told as a run
//! cut off so is told (`AgentDisconnected`, "the domain … is not
//! running"), with what the copy leaves where, and the destination never
//! half-written. Ctrl-C while the agent opens a guest file: the handle
//! opened after it is closed (a fake agent, which holds the open's reply).

use std::io::Write;
use std::path::Path;
use std::process::{Child, Stdio};

use serde_json::json;

use crate::copy::{outcome, spawn_copy, temporaries};
use crate::support::fake_agent::FakeAgent;
use crate::support::host_agent::HostAgent;
use crate::support::test_vm::{agent_restart_when, TestVm};
use crate::support::{guest_run, spawn_session_sent, virtomate, wait_until, Outcome, StderrLines};

/// What `sh -c SCRIPT` prints in the guest; it must succeed.
fn guest_sh(socket: &Path, script: &str) -> String {
    let out = guest_run(socket, &["sh", "-c", script]);
    assert_eq!(out.json()["exit_code"], 0, "{script}: {out:?}");
    out.json()["stdout"].as_str().unwrap_or_default().to_owned()
}

/// Whether the host's `dir` holds a copy's temporary with data in it (a
/// file, or a directory with a file at any depth).
fn local_copy_writes(dir: &Path) -> bool {
    temporaries(dir).iter().any(|temp| holds_data(temp))
}

/// Whether `path` is a non-empty file, or a directory holding one.
fn holds_data(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => meta.len() > 0,
        Ok(meta) if meta.is_dir() => std::fs::read_dir(path)
            .is_ok_and(|entries| entries.flatten().any(|entry| holds_data(&entry.path()))),
        _ => false,
    }
}

/// Asserts the error of a copy whose VM `vm` was killed under it; its
/// message.
fn assert_vm_gone(out: &Outcome, vm: &TestVm) -> String {
    let message = out.error("AgentDisconnected");
    let said = format!(
        "the domain {} is not running (its QEMU, pid {}, has ended): its agent went with it, and the copy \
         was cut short",
        vm.name,
        vm.qemu_pid()
    );
    assert!(message.starts_with(&said), "{message}");
    assert!(message.contains("the destination was not touched"), "{message}");
    message
}

/// Says `MARK` on the guest's serial console (the VM's `console.log`) once
/// the guest's `SCRIPT` succeeds, from a process of its own: the copy
/// holds the agent's channel, so the test does not ask through it.
fn watch_in_guest(vm: &TestVm, script: &str, mark: &str) {
    let watcher = format!("until {script}; do sleep 0.1; done; echo {mark} >/dev/console");
    let program = format!("setsid sh -c '{watcher}' </dev/null >/dev/null 2>&1 &");
    guest_sh(&vm.socket(), &program);
}

/// Whether the guest said `mark` on its console.
fn console_says(vm: &TestVm, mark: &str) -> bool {
    std::fs::read(vm.dir.path().join("console.log"))
        .is_ok_and(|log| String::from_utf8_lossy(&log).contains(mark))
}

/// A copy under way on a VM of its own, its VM killed: what it printed.
struct Killed {
    vm: TestVm,
    out: Outcome,
}

/// Boots a VM, runs `setup` in it, starts the copy (`start`, given the
/// VM) and, once `under_way`, kills the VM.
fn killed_under(
    setup: &str,
    start: impl FnOnce(&TestVm) -> Child,
    mut under_way: impl FnMut(&TestVm) -> bool,
) -> Killed {
    let vm = TestVm::boot("copy-killed");
    guest_sh(&vm.socket(), setup);
    let child = start(&vm);
    wait_until(120, "the copy to be under way", || under_way(&vm));
    vm.kill();
    Killed {
        out: outcome(child),
        vm,
    }
}

#[test]
#[ignore = "needs the test VM"]
fn a_vm_killed_under_copies_both_ways_says_it_is_not_running_and_what_is_left() {
    let host = tempfile::tempdir().unwrap();
    let on_vm = |vm: &TestVm, path: &str| format!("{}:{path}", vm.name);

    // In, from a source that trickles.
    let writes = "[ -s \"$(ls /root/in/.virtomate-*/data 2>/dev/null | head -n 1)\" ]";
    let killed = killed_under(
        "mkdir /root/in",
        |vm| {
            watch_in_guest(vm, writes, "copy-in-writes");
            let mut child = spawn_copy(&["--chunk-size", "4K", "-", &on_vm(vm, "/root/in/file")]);
            let mut stdin = child.stdin.take().unwrap();
            std::thread::spawn(move || {
                while stdin.write_all(&[7; 4096]).is_ok() {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            });
            child
        },
        |vm| console_says(vm, "copy-in-writes"),
    );
    let message = assert_vm_gone(&killed.out, &killed.vm);
    assert!(
        message.contains("in the guest, should its disk keep it: /root/in/.virtomate-"),
        "{message}"
    );
    assert!(
        message.contains("holding the partial file /root/in/.virtomate-"),
        "{message}"
    );
    assert!(
        message.contains("the next copy of one file or copy -r into /root/in from this host removes it"),
        "{message}"
    );

    // Out, in small reads of a sparse 1 GiB file: minutes under TCG.
    let out_dir = host.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let dest = out_dir.join("file");
    let killed = killed_under(
        "truncate -s 1G /root/sparse",
        |vm| {
            spawn_copy(&[
                "--chunk-size",
                "4K",
                &on_vm(vm, "/root/sparse"),
                dest.to_str().unwrap(),
            ])
        },
        |_| local_copy_writes(&out_dir),
    );
    let message = assert_vm_gone(&killed.out, &killed.vm);
    assert!(message.contains("removed the temporary"), "{message}");
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 0, "{message}");

    // A tree out through gzip: its private directory goes, gzip's
    // directory in the guest is named.
    let tree_out_dir = host.path().join("tree-out");
    std::fs::create_dir(&tree_out_dir).unwrap();
    let tree_out = tree_out_dir.join("tree");
    let killed = killed_under(
        "mkdir /root/tree && truncate -s 1G /root/tree/sparse",
        |vm| {
            spawn_copy(&[
                "-r",
                "--compress",
                &on_vm(vm, "/root/tree"),
                tree_out.to_str().unwrap(),
            ])
        },
        |_| local_copy_writes(&tree_out_dir),
    );
    let message = assert_vm_gone(&killed.out, &killed.vm);
    assert!(message.contains("removed the temporary"), "{message}");
    assert!(message.contains("/tmp/virtomate-follow-"), "{message}");
    assert!(message.contains("from this host sweeps it"), "{message}");
    assert_eq!(std::fs::read_dir(&tree_out_dir).unwrap().count(), 0, "{message}");

    // A tree in, the guest's tar -x stopped once it has written: the
    // copy waits with the pipe full.
    let tree = host.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    let noise: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(tree.join("noise.bin"), &noise).unwrap();
    let unpacks = "find /root/tree-in/.virtomate-*/tree -type f -size +0 2>/dev/null | grep -q .";
    let stop = "for p in $(pidof tar); do tr \"\\0\" \" \" </proc/$p/cmdline | grep -q \" -x \" \
                && kill -STOP $p; done";
    let killed = killed_under(
        "mkdir /root/tree-in",
        |vm| {
            watch_in_guest(vm, &format!("{unpacks} && {stop}"), "tree-in-stopped");
            spawn_copy(&["-r", tree.to_str().unwrap(), &on_vm(vm, "/root/tree-in/tree")])
        },
        |vm| console_says(vm, "tree-in-stopped"),
    );
    let message = assert_vm_gone(&killed.out, &killed.vm);
    assert!(message.contains("/root/tree-in/.virtomate-"), "{message}");
    assert!(
        message.contains("the next copy of one file or copy -r into /root/tree-in from this host"),
        "{message}"
    );
    assert!(message.contains("/tmp/virtomate-follow-"), "{message}");
}

/// The host's agent replaced under a copy (its socket never missing, as a
/// guest's agent restarts behind QEMU's): told as a run's restart is, and
/// the new agent cleans up.
#[test]
#[ignore = "needs qemu-ga on the host"]
fn an_agent_restarted_under_copies_both_ways_is_told_and_the_new_one_cleans_up() {
    let mut agent = HostAgent::start();
    let socket = agent.socket();
    let on_agent = |path: &Path| format!("{}:{}", socket.display(), path.display());
    let dir = tempfile::tempdir().unwrap();
    let into = dir.path().join("into");
    std::fs::create_dir(&into).unwrap();
    let source = dir.path().join("source");
    std::fs::File::create(&source).unwrap().set_len(64 << 20).unwrap();

    // In: the copy goes on, or waits for more of its source.
    let mut file_in = spawn_copy(&["--chunk-size", "4K", "-", &on_agent(&into.join("file"))]);
    let mut stdin = file_in.stdin.take().unwrap();
    stdin.write_all(&[7; 8192]).unwrap();
    wait_until(60, "the copy in to be under way", || local_copy_writes(&into));
    agent.replace();
    drop(stdin);
    let out = outcome(file_in);
    let message = out.error("AgentDisconnected");
    // Its connection closed by the old agent, or its handle unknown to
    // the new one, as the agent's end and the copy's next request meet.
    assert!(message.contains("restarted"), "{message}");
    assert!(message.contains("removed the temporary"), "{message}");
    assert!(message.contains("the destination was not touched"), "{message}");
    assert!(!message.contains("to remove by hand"), "{message}");
    assert_eq!(std::fs::read_dir(&into).unwrap().count(), 0, "{message}");

    // Out to a pipe the test reads only once the agent has restarted.
    let mut file_out = spawn_copy(&["--chunk-size", "4K", &on_agent(&source), "-"]);
    let mut data = file_out.stdout.take().unwrap();
    let mut first = vec![0; 4096];
    std::io::Read::read_exact(&mut data, &mut first).unwrap();
    // The copy goes on meanwhile, or waits for its output to be read.
    agent.replace();
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut data, &mut rest).unwrap();
    let status = file_out.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    // The error follows the data (zeros: the file is sparse) on standard
    // output.
    let error_at = rest
        .iter()
        .position(|b| *b != 0)
        .expect("an error after the data");
    let error: serde_json::Value = serde_json::from_slice(&rest[error_at..]).unwrap();
    let message = error["message"].as_str().unwrap();
    assert_eq!(error["type"], "AgentDisconnected", "{error}");
    assert!(message.contains("restarted"), "{message}");
    assert!(!message.contains("to remove by hand"), "{message}");
}

/// A fake agent that holds the reply to the copy's `guest-file-open`
/// until `signalled` says the test has sent its signal, then names handle
/// 1000, and requires it closed before the client goes.
fn holding_the_open(signalled: std::sync::mpsc::Receiver<()>) -> FakeAgent {
    FakeAgent::serve(move |mut conn| {
        conn.sync();
        // `stat`, for the file's type and mode: a guest without guest-exec.
        conn.refuse(
            "guest-exec",
            "GenericError",
            "The command guest-exec has been disabled",
        );
        let open = conn.request();
        assert_eq!(open["execute"], "guest-file-open", "{open}");
        signalled.recv().unwrap();
        conn.reply(&json!({"return": 1000, "id": open["id"]}));
        // The copy may have sent its first read before it gave up.
        loop {
            let request = conn
                .next_request()
                .expect("the handle is closed before the client goes");
            let id = &request["id"];
            match request["execute"].as_str() {
                Some("guest-sync-delimited") => {
                    conn.send("\u{FFFD}\n".as_bytes());
                    conn.send_sync_reply(request["arguments"]["id"].as_u64().unwrap());
                }
                Some("guest-file-read") => {
                    let empty = json!({"count": 0, "buf-b64": "", "eof": true});
                    conn.reply(&json!({"return": empty, "id": id}));
                }
                Some("guest-file-close") => {
                    assert_eq!(request["arguments"]["handle"], 1000, "{request}");
                    conn.reply(&json!({"return": {}, "id": id}));
                    break;
                }
                _ => panic!("unexpected after the signal: {request}"),
            }
        }
        conn.wait_for_close();
    })
}

/// Ctrl-C while the agent opens the file to copy out: the agent opens it
/// whether or not its reply is read, so virtomate awaits the reply and
/// closes the handle it names before it reports the interruption.
#[test]
fn ctrl_c_while_a_guest_file_opens_closes_the_handle_the_agent_gives() {
    let (signalled, wait_for_signal) = std::sync::mpsc::channel::<()>();
    let agent = holding_the_open(wait_for_signal);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out");
    let mut child = virtomate()
        .args(["-l", "info", "copy"])
        .arg(format!("{}:/f", agent.socket().display()))
        .arg(&dest)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = StderrLines::of(&mut child);
    agent.wait_for("guest-file-open");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    stderr.wait_for("being opened: awaiting its handle, to close it");
    signalled.send(()).unwrap();
    let out = outcome(child);
    let message = out.error("Interrupted");
    assert!(message.contains("closed the file in the guest"), "{message}");
    assert!(message.contains("the destination was not touched"), "{message}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{message}");
}

/// Restarts the VM's agent once the guest's `script` succeeds (see
/// [`agent_restart_when`]).
fn restart_agent_when(vm: &TestVm, script: &str) {
    guest_sh(&vm.socket(), &agent_restart_when(script));
}

/// The end of the guest's console (the restart's words, the new agent's
/// errors), for a failure's message.
fn console_end(vm: &TestVm) -> String {
    let log = std::fs::read(vm.dir.path().join("console.log")).unwrap_or_default();
    let log = String::from_utf8_lossy(&log);
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// Asserts the error of a copy whose agent restarted under it (the
/// guest's `console` said how), and that the new agent cleaned up; its
/// message.
fn assert_restarted(out: &Outcome, console: &str) -> String {
    let json = out.json();
    let message = json["message"].as_str().unwrap_or_default().to_owned();
    assert_eq!(out.status, 1, "{out:?}\nconsole: {console}");
    // "no longer knows" the file or program, or "could not read" a request
    // the old agent had begun to read; or no answer at all.
    let kinds = ["AgentDisconnected", "AgentTimeout"];
    assert!(
        kinds.contains(&json["type"].as_str().unwrap_or_default()),
        "{out:?}"
    );
    assert!(
        message.contains("restarted in the guest"),
        "{json}\nconsole: {console}"
    );
    assert!(message.contains("the destination was not touched"), "{json}");
    assert!(
        !message.contains("to remove by hand"),
        "{json}\nconsole: {console}"
    );
    message
}

/// What of the copies' is in the guest: private directories, the pipes'
/// directories, and tar or gzip running.
fn copies_in_guest(vm: &TestVm) -> String {
    let script = "ls -d /root/*/.virtomate-* /tmp/virtomate-follow-* 2>/dev/null; \
                  ps | grep -e '[t]ar -' -e '[g]zip -'; true";
    let out = crate::support::guest_run_with(&["--timeout", "30"], &vm.socket(), &["sh", "-c", script], None);
    out.json()["stdout"].as_str().unwrap_or_default().to_owned()
}

#[test]
#[ignore = "needs the test VM"]
fn the_vms_agent_restarted_under_copy_r_either_way_is_told_and_nothing_is_left() {
    let vm = TestVm::boot("copy-r-restart");
    guest_sh(
        &vm.socket(),
        "mkdir /root/tree /root/into && truncate -s 1G /root/tree/sparse",
    );
    let host = tempfile::tempdir().unwrap();

    // Out through gzip, once its output flows.
    let out_dir = host.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    restart_agent_when(
        &vm,
        "[ -s \"$(ls /tmp/virtomate-follow-*/out.0 2>/dev/null | head -n 1)\" ]",
    );
    let out = outcome(spawn_copy(&[
        "--reply-timeout",
        "5",
        "-r",
        "--compress",
        &format!("{}:/root/tree", vm.name),
        out_dir.join("tree").to_str().unwrap(),
    ]));
    let console = console_end(&vm);
    let message = assert_restarted(&out, &console);
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 0, "{message}");
    assert_eq!(copies_in_guest(&vm), "", "{message}\nconsole: {console}");

    // In, once tar has unpacked some of it: the copy is then most often
    // in the middle of sending a chunk of 1 MiB, which the new agent reads
    // the rest of first (see the host test below).
    let tree = host.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("noise.bin"), crate::support::data::noise(16 << 20, 7)).unwrap();
    restart_agent_when(
        &vm,
        "find /root/into/.virtomate-*/tree -type f -size +0 2>/dev/null | grep -q .",
    );
    let out = outcome(spawn_copy(&[
        "--reply-timeout",
        "5",
        "-r",
        tree.to_str().unwrap(),
        &format!("{}:/root/into/tree", vm.name),
    ]));
    let console = console_end(&vm);
    let message = assert_restarted(&out, &console);
    assert_eq!(copies_in_guest(&vm), "", "{message}\nconsole: {console}");
}
/// What a restarted agent reads first when its predecessor died in the
/// middle of a request: the rest of that request, from any byte on. The
/// clean-up's connection then starts with 0xFF and `guest-sync-delimited`;
/// whatever the rest was (inside a string, an object, a number), the real
/// agent's parser takes the 0xFF as the end of it and answers the sync.
/// Every cut of a staging request (`cat` with its input in Base64), with
/// and without its line end, on one connection to the host's agent.
#[test]
#[ignore = "needs qemu-ga on the host"]
fn any_tail_of_a_request_an_agent_reads_first_leaves_the_next_sync_answered() {
    use std::io::{BufRead, BufReader, Write};
    let agent = HostAgent::start();
    let input: Vec<u8> = (0..768u32).map(|i| i as u8).collect();
    let request = json!({
        "execute": "guest-exec",
        "arguments": {
            "path": "/bin/sh",
            "arg": ["-c", "exec cat >\"$1\"", "sh", "/nonexistent/in.0"],
            "input-data": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &input),
        },
        "id": 7,
    });
    let request = format!("{request}\n").into_bytes();
    let stream = std::os::unix::net::UnixStream::connect(agent.socket()).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut replies = BufReader::new(stream);
    for cut in 1..request.len() - 1 {
        let tail = match cut % 2 {
            0 => &request[cut..],
            _ => &request[cut..request.len() - 1],
        };
        let id = 1_000_000 + cut;
        writer.write_all(tail).unwrap();
        let sync = json!({"execute": "guest-sync-delimited", "arguments": {"id": id}});
        writer
            .write_all(&[&[0xFF][..], format!("{sync}\n").as_bytes()].concat())
            .unwrap();
        let echo = format!("\"return\": {id}}}");
        loop {
            let mut line = Vec::new();
            let read = replies.read_until(b'\n', &mut line);
            assert!(
                read.is_ok_and(|n| n > 0),
                "no answer to the sync after {:?}",
                String::from_utf8_lossy(tail)
            );
            if String::from_utf8_lossy(&line).contains(&echo) {
                break;
            }
        }
    }
}

#[test]
#[ignore = "needs libvirtd and the test VM"]
fn through_libvirtd_a_domain_killed_under_a_copy_out_is_told_not_running() {
    let mut env = crate::libvirt::LibvirtEnv::start();
    let name = crate::support::unique_name("vt-copy-killed");
    env.define(&name, &[]);
    guest_sh(Path::new(&name), "truncate -s 1G /root/sparse");
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("file");
    let child = spawn_copy(&[
        "-l",
        "debug",
        "--chunk-size",
        "4K",
        &format!("{name}:/root/sparse"),
        dest.to_str().unwrap(),
    ]);
    wait_until(60, "the copy out to write here", || local_copy_writes(dir.path()));
    let qemu = crate::libvirt::libvirt_pid_file(&name);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let out = outcome(child);
    // What libvirtd said of the domain, for a failure: in the log.
    assert_eq!(out.json()["type"], "AgentDisconnected", "{}", out.stderr);
    let message = out.error("AgentDisconnected");
    let said = format!("the domain {name} is not running (libvirt ");
    assert!(message.starts_with(&said), "{message}");
    assert!(
        message.contains("its agent went with it, and the copy was cut short"),
        "{message}"
    );
    assert!(message.contains("removed the temporary"), "{message}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{message}");
}

/// A session's copy out cut off by its VM killed: its error reply says
/// the domain is not running, as `virtomate copy` does.
#[test]
#[ignore = "needs the test VM"]
fn a_vm_killed_under_a_sessions_copy_is_told_not_running() {
    let vm = TestVm::boot("session-copy-killed");
    guest_sh(&vm.socket(), "truncate -s 1G /root/sparse");
    let mut live = crate::support::live_session::Live::start(&[], &vm.name);
    live.send(json!({"id": "c", "copy_from": "/root/sparse", "chunk_size": 4096}));
    let first = live.reply();
    assert!(first.get("data").is_some(), "{first}");
    vm.kill();
    let failed = loop {
        let reply = live.reply();
        if reply.get("data").is_none() {
            break reply;
        }
    };
    assert_eq!(failed["id"], "c", "{failed}");
    assert_eq!(failed["error"]["type"], "AgentDisconnected", "{failed}");
    let message = failed["error"]["message"].as_str().unwrap();
    let said = format!(
        "the domain {} is not running (its QEMU, pid {}, has ended)",
        vm.name,
        vm.qemu_pid()
    );
    assert!(message.starts_with(&said), "{message}");
    assert!(message.contains("the copy was cut short"), "{message}");
    live.close_input();
    live.finish();
}

/// The same in a session: its copy's error reply says it closed the file.
#[test]
fn ctrl_c_while_a_sessions_copy_opens_a_guest_file_closes_the_handle() {
    let (signalled, wait_for_signal) = std::sync::mpsc::channel::<()>();
    let agent = holding_the_open(wait_for_signal);
    let request = json!({"id": "c", "copy_from": "/f"});
    let (child, stderr, stdin) = spawn_session_sent(&["-l", "info"], &agent.socket(), &request);
    agent.wait_for("guest-file-open");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    stderr.wait_for("being opened: awaiting its handle, to close it");
    signalled.send(()).unwrap();
    let output = child.wait_with_output().unwrap();
    drop(stdin);
    let stdout = String::from_utf8(output.stdout).unwrap();
    let reply: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(reply["id"], "c", "{stdout}");
    assert_eq!(reply["error"]["type"], "Interrupted", "{stdout}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains("closed the file in the guest"), "{message}");
}
