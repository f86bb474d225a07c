//! Agent channels that are not a plain absolute socket path: a relative
//! path a daemonized QEMU has left behind, an abstract socket, a pty. The
//! "QEMU" is python3 run under the name `qemu-system-x86_64`, with the
//! command line a real one would have, binding (or not) its socket itself.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

use crate::support::fake_agent::{Conn, FakeAgent};
use crate::support::{die_with_parent, run, step, unique_name, virtomate};

/// Binds `argv[1]` (unless `-`) relative to its working directory, changes
/// to `/` when given `-daemonize` as QEMU does once set up, then accepts
/// and keeps every connection.
const FAKE_QEMU: &str = "import os, socket, sys, time\n\
                         s = None\n\
                         if sys.argv[1] != '-':\n\
                         \x20   s = socket.socket(socket.AF_UNIX)\n\
                         \x20   s.bind(sys.argv[1])\n\
                         \x20   s.listen(1)\n\
                         if '-daemonize' in sys.argv:\n\
                         \x20   os.chdir('/')\n\
                         print('ready', flush=True)\n\
                         kept = []\n\
                         while s:\n\
                         \x20   kept.append(s.accept()[0])\n\
                         \x20   print('accepted', flush=True)\n\
                         time.sleep(60)\n";

/// A process, killed when dropped, and the lines it prints.
struct Process(Child, BufReader<std::process::ChildStdout>);

impl Process {
    fn spawn(command: &mut Command) -> Process {
        let mut child = die_with_parent(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap());
        let mut process = Process(child, lines);
        process.expect("ready");
        process
    }

    fn expect(&mut self, what: &str) {
        let mut line = String::new();
        self.1.read_line(&mut line).unwrap();
        assert_eq!(line.trim_end(), what, "from {:?}", self.0);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// python3 under another name, so that `/proc/PID/cmdline` and `comm`
/// show that name.
fn python_as(dir: &Path, name: &str) -> PathBuf {
    let output = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("these tests need python3");
    let python = PathBuf::from(String::from_utf8(output.stdout).unwrap().trim_end());
    let alias = dir.join(name);
    std::os::unix::fs::symlink(python, &alias).unwrap();
    alias
}

/// A fake QEMU started in `dir`, binding `bind` (or nothing, for `-`),
/// with `args` on its command line; ready once its socket is bound.
fn fake_qemu(dir: &Path, bind: &str, args: &[&str]) -> Process {
    Process::spawn(
        Command::new(python_as(dir, "qemu-system-x86_64"))
            .args(["-c", FAKE_QEMU, bind])
            .args(args)
            .current_dir(dir),
    )
}

/// `-chardev BACKEND,id=qga0 -device virtserialport,...` for `-name name`.
fn agent_args<'a>(name: &'a str, chardev: &'a str) -> Vec<&'a str> {
    vec![
        "-name",
        name,
        "-chardev",
        chardev,
        "-device",
        "virtio-serial",
        "-device",
        "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
    ]
}

/// `domain-list`'s entry for `name`.
fn listed(name: &str) -> Value {
    let out = run(&["domain-list"], None);
    assert_eq!(out.status, 0, "{out:?}");
    let list = out.json();
    let entry = list.as_array().unwrap().iter().find(|d| d["name"] == name);
    entry
        .unwrap_or_else(|| panic!("{name} not listed: {list}"))
        .clone()
}

#[test]
fn a_daemonized_qemus_relative_socket_is_not_guessed() {
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("vt-rel");
    let mut args = agent_args(&name, "socket,path=rel.sock,server=on,wait=off,id=qga0");
    args.push("-daemonize");
    let _qemu = fake_qemu(dir.path(), "rel.sock", &args);

    let channel = &listed(&name)["agent_channels"][0];
    assert_eq!(channel["path"], "rel.sock", "{channel}");
    assert_eq!(channel["held"], false, "{channel}");
    assert_eq!(
        channel["unusable"],
        "the relative path rel.sock cannot be resolved: QEMU was started with -daemonize and has left the \
         directory it was started in"
    );

    let message = run(&["guest-run", &name, "--", "true"], None).error("AgentUnavailable");
    assert!(
        message.contains("is at the relative path rel.sock, which cannot be resolved")
            && message.contains("pass the socket's path as DOMAIN"),
        "{message}"
    );

    let report = run(&["doctor", &name], None).json();
    let socket = step(&report, "socket");
    assert_eq!(socket["outcome"], "fail", "{report}");
    assert!(socket.to_string().contains("relative path rel.sock"), "{socket}");
}

/// `/proc/net/unix` shows the socket as `rel.sock`: a client holding it is
/// found through the socket's file, and named, rather than waited out.
#[test]
fn a_client_holding_a_relatively_bound_socket_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("vt-relheld");
    let mut args = agent_args(&name, "socket,path=rel.sock,server=on,wait=off,id=qga0");
    args.push("-daemonize");
    let mut qemu = fake_qemu(dir.path(), "rel.sock", &args);
    let socket = dir.path().join("rel.sock");
    let script = "import socket, sys, time\n\
                  s = socket.socket(socket.AF_UNIX)\n\
                  s.connect(sys.argv[1])\n\
                  print('ready', flush=True)\n\
                  time.sleep(60)\n";
    let holder = Process::spawn(
        Command::new(python_as(dir.path(), "holder-client"))
            .args(["-c", script])
            .arg(&socket),
    );
    // Accepted, not only waiting in the backlog.
    qemu.expect("accepted");

    let socket_arg = socket.to_str().unwrap();
    let out = run(&["--timeout", "10", "guest-run", socket_arg, "--", "true"], None);
    let message = out.error("AgentUnavailable");
    assert!(
        message.contains(&format!("held by holder-client (pid {})", holder.0.id())),
        "{message}"
    );
}

fn exits_at_once(mut conn: Conn) {
    conn.start_program();
    conn.answer("guest-exec-status", json!({"exited": true, "exitcode": 0}));
    conn.wait_for_close();
}

#[test]
fn an_abstract_socket_is_reached_by_name_and_as_at_name() {
    let abstract_name = unique_name("vt-abstract");
    let agent = FakeAgent::serve_abstract(&abstract_name, exits_at_once);
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("vt-abs");
    let chardev = format!("socket,abstract=on,path={abstract_name},server=on,wait=off,id=qga0");
    let _qemu = fake_qemu(dir.path(), "-", &agent_args(&name, &chardev));

    let channel = &listed(&name)["agent_channels"][0];
    assert_eq!(channel["path"], format!("@{abstract_name}"), "{channel}");
    assert_eq!(channel["unusable"], Value::Null, "{channel}");

    let out = run(&["guest-run", &name, "--", "true"], None);
    assert_eq!(out.status, 0, "{out:?}");
    drop(agent);

    let agent = FakeAgent::serve_abstract(&format!("{abstract_name}-2"), exits_at_once);
    let address = agent.socket();
    let out = run(&["guest-run", address.to_str().unwrap(), "--", "true"], None);
    assert_eq!(out.status, 0, "{out:?}");
}

#[test]
fn a_pty_agent_channel_is_named_for_what_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("vt-pty");
    let _qemu = fake_qemu(dir.path(), "-", &agent_args(&name, "pty,id=qga0"));

    let channel = &listed(&name)["agent_channels"][0];
    assert_eq!(channel["path"], Value::Null, "{channel}");
    assert_eq!(channel["unusable"], "a pty chardev, not a UNIX socket");

    let message = run(&["guest-run", &name, "--", "true"], None).error("AgentUnavailable");
    assert!(
        message.contains("is a pty chardev, which virtomate cannot use; give it a UNIX socket"),
        "{message}"
    );
}

/// The lock files of a socket (see `ChannelLock`) are removed by the last
/// run to hold its turn: none are left once the socket is gone.
#[test]
fn runs_leave_no_lock_files_behind() {
    // Whatever the connection: runs may let go between their exchanges.
    let agent = FakeAgent::serve_each(|mut conn, _| {
        while let Some(request) = conn.next_request() {
            let id = &request["id"];
            match request["execute"].as_str() {
                Some("guest-sync-delimited") => {
                    conn.send_sync_reply(request["arguments"]["id"].as_u64().unwrap());
                }
                Some("guest-exec") => conn.reply(&json!({"return": {"pid": 42}, "id": id})),
                Some("guest-exec-status") => {
                    conn.reply(&json!({"return": {"exited": true, "exitcode": 0}, "id": id}));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    let socket = agent.socket();
    let Ok(lock) = virtomate_protocol::ChannelLock::for_socket(&socket) else {
        return; // no safe place for lock files here: nothing to leave
    };
    let turn = lock.path().to_owned();
    let (dir, name) = (turn.parent().unwrap(), turn.file_stem().unwrap().to_owned());
    drop(lock);
    for _ in 0..3 {
        let runs: Vec<_> = (0..4)
            .map(|_| {
                virtomate()
                    .args([
                        "--timeout",
                        "20",
                        "guest-run",
                        socket.to_str().unwrap(),
                        "--",
                        "true",
                    ])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for run in runs {
            let out = run.wait_with_output().unwrap();
            assert_eq!(out.status.code(), Some(0), "{out:?}");
        }
    }
    drop(agent);
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name())
        .filter(|file| Path::new(file).file_stem() == Some(&name))
        .collect();
    assert_eq!(left, Vec::<std::ffi::OsString>::new(), "in {}", dir.display());
}
