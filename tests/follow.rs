//! `guest-run --follow`: the program's output while it runs, byte for byte,
//! with `--raw`'s exit statuses; against the real qemu-ga on the host (its
//! temporary directory one of the test's own, to list it) and in the test
//! VM, by socket and by name.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::host_agent::HostAgent;
use crate::support::test_vm::{agent_restart_when, TestVm};
use crate::support::{
    guest_run_with, run_bytes, stderr_of_own_failure, virtomate, wait_until, writer_when_read,
};

/// `virtomate guest-run --follow OPTIONS DOMAIN -- PROGRAM...`, bytes in
/// and out.
fn follow(options: &[&str], domain: &str, program: &[&str], stdin: &[u8]) -> Output {
    run_bytes(&follow_args(options, domain, program), stdin)
}

/// The arguments of `guest-run --follow OPTIONS DOMAIN -- PROGRAM...`.
fn follow_args<'a>(options: &[&'a str], domain: &'a str, program: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["guest-run", "--follow"];
    args.extend(options);
    args.extend([domain, "--"]);
    args.extend(program);
    args
}

/// A `--follow` run in the background whose stdout lines are read as they
/// come, each with the time it arrived.
struct Followed {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
    stderr: std::thread::JoinHandle<String>,
}

impl Followed {
    fn spawn(options: &[&str], domain: &str, program: &[&str]) -> Followed {
        let mut child = virtomate()
            .args(follow_args(options, domain, program))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if send.send((Instant::now(), line)).is_err() {
                    return;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Followed { child, lines, stderr }
    }

    /// The next line of stdout, within `seconds`.
    fn next_line(&self, seconds: u64) -> (Instant, String) {
        self.lines
            .recv_timeout(Duration::from_secs(seconds))
            .unwrap_or_else(|e| panic!("no line within {seconds} s: {e}"))
    }

    fn interrupt(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
    }

    /// Waits for it to end: its exit status, the time it ended, the rest
    /// of stdout and all of stderr.
    fn finish(mut self) -> (i32, Instant, Vec<String>, String) {
        let status = self.child.wait().unwrap();
        let ended = Instant::now();
        let rest = self.lines.iter().map(|(_, line)| line).collect();
        (
            status.code().unwrap_or(-1),
            ended,
            rest,
            self.stderr.join().unwrap(),
        )
    }
}

/// Whether a process whose command line starts with `marker` runs on the
/// host.
fn runs_on_host(marker: &str) -> bool {
    let out = Command::new("pgrep")
        .args(["-f", &format!("^{marker}")])
        .output()
        .unwrap();
    out.status.success()
}

/// The host's qemu-ga with a temporary directory of the test's own.
fn host_agent() -> (HostAgent, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let agent = HostAgent::start_in_with_env(dir, &[], &[("TMPDIR", tmp.to_str().unwrap())]);
    (agent, tmp)
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every line of `seq 1 N`, in order, once.
fn assert_counter(stdout: &[u8], n: u64) {
    let text = std::str::from_utf8(stdout).unwrap();
    let mut expected = 1;
    for line in text.lines() {
        assert_eq!(line, expected.to_string(), "line {expected} of seq");
        expected += 1;
    }
    assert_eq!(expected - 1, n, "every line of seq 1 {n}");
    assert!(text.ends_with('\n'));
}

/// 1 MiB of bytes that are anything but text.
fn binary() -> Vec<u8> {
    (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn the_output_streams_exit_status_and_signal_pass_through() {
    let (agent, tmp) = host_agent();
    let socket = agent.socket();
    let socket = socket.to_str().unwrap();
    let out = follow(
        &[],
        socket,
        &["sh", "-c", "printf 'o\\0ut'; printf err >&2; exit 3"],
        b"",
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(out.stdout, b"o\0ut");
    assert_eq!(out.stderr, b"err");

    let out = follow(&[], socket, &["sh", "-c", "kill -9 $$"], b"");
    assert_eq!(out.status.code(), Some(128 + 9), "{out:?}");

    // Not found by the shell that starts it: 127, as shells report it.
    let out = follow(&[], socket, &["/does/not/exist"], b"");
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("/does/not/exist"));

    // Arguments pass as they are, none quoted into a script.
    let out = follow(&[], socket, &["printf", "%s|", "a'b", "$(x)", "\"", " "], b"");
    assert_eq!(out.stdout, b"a'b|$(x)|\"| |");

    // Binary, both ways.
    let input = binary();
    let out = follow(&["--stdin"], socket, &["cat"], &input);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout == input, "1 MiB round trip through cat differs");
    assert!(listing(&tmp).is_empty(), "left behind: {:?}", listing(&tmp));
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_counter_and_more_than_16_mib_arrive_whole_and_in_order() {
    let (agent, tmp) = host_agent();
    let socket = agent.socket();
    let out = follow(&[], socket.to_str().unwrap(), &["seq", "1", "200000"], b"");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_counter(&out.stdout, 200000);

    // About 21 MB: beyond the agent's 16 MiB cap, which --follow does not have.
    let out = follow(&[], socket.to_str().unwrap(), &["seq", "1", "3000000"], b"");
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.len() > 16 << 20, "{}", out.stdout.len());
    assert_counter(&out.stdout, 3000000);
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(listing(&tmp).is_empty(), "left behind: {:?}", listing(&tmp));
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn max_time_and_ctrl_c_stop_the_program_deliver_the_rest_and_remove_the_files() {
    let (agent, tmp) = host_agent();
    let socket = agent.socket();
    let socket = socket.to_str().unwrap();
    let marker = "sleep 6081";
    let out = follow(
        &["--max-time", "1"],
        socket,
        &[
            "sh",
            "-c",
            &format!("echo before; {marker} & {marker} | cat; wait"),
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    assert_eq!(out.stdout, b"before\n");
    assert!(
        !runs_on_host(marker),
        "nothing the program started is left running"
    );
    assert!(listing(&tmp).is_empty(), "left behind: {:?}", listing(&tmp));

    let marker = "sleep 6082";
    let run = Followed::spawn(
        &[],
        socket,
        &["sh", "-c", &format!("echo started; {marker} | cat; echo never")],
    );
    assert_eq!(run.next_line(20).1, "started");
    wait_until(20, "the program to start", || runs_on_host(marker));
    run.interrupt();
    let (status, _, rest, stderr) = run.finish();
    assert_eq!(status, 255, "{stderr}");
    assert!(rest.is_empty(), "{rest:?}");
    assert!(stderr.starts_with("virtomate: Interrupted: "), "{stderr}");
    assert!(stderr.contains("was stopped with SIGTERM"), "{stderr}");
    assert!(!runs_on_host(marker), "Ctrl-C stopped it");
    assert!(listing(&tmp).is_empty(), "left behind: {:?}", listing(&tmp));

    // A reader that goes away stops the program at the next write, quietly.
    let marker = "sleep 6083";
    let head = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} guest-run --follow {socket} -- sh -c 'echo 1; sleep 1; echo 2; {marker}' | head -n 1",
            env!("CARGO_BIN_EXE_virtomate"),
        ))
        .output()
        .unwrap();
    assert_eq!(head.stdout, b"1\n");
    assert!(
        head.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&head.stderr)
    );
    assert!(!runs_on_host(marker), "stopped once its reader went away");
    assert!(listing(&tmp).is_empty(), "left behind: {:?}", listing(&tmp));
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn files_removed_behind_its_back_are_an_error_and_the_next_run_works() {
    let (agent, tmp) = host_agent();
    let socket = agent.socket();
    let socket = socket.to_str().unwrap();
    let out = follow(
        &[],
        socket,
        &[
            "sh",
            "-c",
            &format!("echo kept; rm -rf {}/virtomate-follow-*; exit 5", tmp.display()),
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    assert_eq!(out.stdout, b"kept\n", "what was read is delivered");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("virtomate: GuestOutputError: "), "{stderr}");
    assert!(stderr.contains("was removed in the guest"), "{stderr}");
    assert!(stderr.contains("exited with status 5"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let out = follow(&[], socket, &["echo", "again"], b"");
    assert_eq!(
        (out.status.code(), out.stdout.as_slice()),
        (Some(0), &b"again\n"[..])
    );
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_guest_without_a_writable_temporary_directory_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let agent = HostAgent::start_in_with_env(dir, &[], &[("TMPDIR", "/nonexistent/tmp")]);
    let marker = agent.dir.path().join("ran");
    let out = follow(
        &[],
        agent.socket().to_str().unwrap(),
        &["touch", marker.to_str().unwrap()],
        b"",
    );
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("no writable temporary directory"), "{stderr}");
    assert!(stderr.contains("nothing was started"), "{stderr}");
    assert!(!marker.exists(), "the program must not run");

    let agent = HostAgent::start_with(&["--block-rpcs", "guest-file-read"]);
    let out = follow(&[], agent.socket().to_str().unwrap(), &["true"], b"");
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("lacks guest-file-read"), "{stderr}");
}

/// `ls -a /tmp` in the guest.
fn guest_tmp(vm: &TestVm) -> String {
    let out = guest_run_with(&[], &vm.socket(), &["ls", "-a", "/tmp"], None);
    out.json()["stdout"].as_str().unwrap().to_owned()
}

#[test]
#[ignore = "needs the test VM"]
fn on_the_vm_output_comes_while_the_program_runs_and_nothing_is_left_behind() {
    let vm = TestVm::boot("follow");
    let socket = vm.socket();
    let socket = socket.to_str().unwrap();
    let before = guest_tmp(&vm);

    // By name: the first line arrives while the program still sleeps.
    let run = Followed::spawn(&[], &vm.name, &["sh", "-c", "echo first; sleep 3; echo second"]);
    let (first_at, first) = run.next_line(30);
    assert_eq!(first, "first");
    let (status, ended, rest, stderr) = run.finish();
    assert_eq!(
        (status, rest.as_slice()),
        (0, &["second".to_owned()][..]),
        "{stderr}"
    );
    let early = ended.duration_since(first_at);
    assert!(
        early > Duration::from_secs(2),
        "the first line came {early:?} before the end"
    );

    // The counter, by socket and by name.
    for domain in [socket, vm.name.as_str()] {
        let out = follow(&[], domain, &["seq", "1", "200000"], b"");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_counter(&out.stdout, 200000);
    }

    let input = binary();
    let out = follow(&["--stdin"], socket, &["cat"], &input);
    assert!(out.stdout == input, "1 MiB round trip through cat differs");
    let out = follow(&[], socket, &["sh", "-c", "echo e >&2; kill -TERM $$"], b"");
    assert_eq!(
        (out.status.code(), out.stderr.as_slice()),
        (Some(143), &b"e\n"[..])
    );

    // A time limit and Ctrl-C stop it, and remove the files all the same.
    let marker = "sleep 6091";
    let out = follow(
        &["--max-time", "2"],
        socket,
        &["sh", "-c", &format!("echo before; {marker} | cat")],
        b"",
    );
    assert_eq!(
        (out.status.code(), out.stdout.as_slice()),
        (Some(124), &b"before\n"[..])
    );
    let run = Followed::spawn(&[], &vm.name, &["sh", "-c", &format!("echo started; {marker}")]);
    assert_eq!(run.next_line(30).1, "started");
    run.interrupt();
    let (status, _, _, stderr) = run.finish();
    assert_eq!(status, 255, "{stderr}");
    assert!(stderr.contains("was stopped with SIGTERM"), "{stderr}");
    let processes = guest_run_with(&[], &vm.socket(), &["ps"], None).json();
    assert!(
        !processes["stdout"].as_str().unwrap().contains(marker),
        "{processes}"
    );

    assert_eq!(guest_tmp(&vm), before, "the guest's /tmp before and after");
}

#[test]
#[ignore = "needs the test VM"]
fn on_the_vm_a_full_initramfs_root_holding_tmp_is_told_before_and_after_the_program() {
    // The test VM's /tmp is no mount of its own but a directory of the
    // initramfs root, where BusyBox's `df` finds no file system: the space
    // left must be told all the same.
    let vm = TestVm::boot("follow-full-root");
    let socket = vm.socket();
    let socket = socket.to_str().unwrap();
    let guest_sh = |script: &str| {
        let ran = guest_run_with(&[], &vm.socket(), &["sh", "-c", script], None).json();
        assert_eq!(ran["exit_code"], 0, "{script}: {ran}");
    };
    // Full but for 256 KiB, freed at once for the second run.
    guest_sh("head -c 262144 /dev/zero >/room; dd if=/dev/zero of=/fill bs=64k 2>/dev/null; :");
    let out = follow(&[], socket, &["touch", "/ran"], b"");
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/tmp is full") && stderr.contains("nothing was started"),
        "{stderr}"
    );
    guest_sh("rm /room; ! ls /ran");
    // The program fills it: the rotator that cannot write a chunk stops,
    // so the program's next write ends it with SIGPIPE; the end says
    // what happened.
    let out = follow(&[], socket, &["sh", "-c", "seq 1 1000000"], b"");
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("virtomate: GuestOutputError: ") && stderr.contains("filled up"),
        "{stderr}"
    );
    assert!(stderr.contains("the program was killed by signal 13"), "{stderr}");
    guest_sh("rm /fill");
    assert_eq!(guest_tmp(&vm), ".\n..\n");
    let out = follow(&[], socket, &["echo", "room again"], b"");
    assert_eq!(out.stdout, b"room again\n", "{out:?}");
}

#[test]
#[ignore = "needs the test VM"]
fn on_the_vm_a_full_temp_dir_a_restarted_agent_and_a_stopped_vm_are_clear_errors() {
    let vm = TestVm::boot("follow-faults");
    let socket = vm.socket();
    let socket = socket.to_str().unwrap();

    // A /tmp of 64 KiB fills up.
    let mounted = guest_run_with(
        &[],
        &vm.socket(),
        &["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", "/tmp"],
        None,
    );
    assert_eq!(mounted.json()["exit_code"], 0, "{mounted:?}");
    // Full before the program starts: refused, as its output would be lost.
    let fill = ["sh", "-c", "dd if=/dev/zero of=/tmp/fill bs=4k 2>/dev/null; :"];
    assert_eq!(
        guest_run_with(&[], &vm.socket(), &fill, None).json()["exit_code"],
        0
    );
    let out = follow(&[], socket, &["touch", "/ran"], b"");
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/tmp is full") && stderr.contains("nothing was started"),
        "{stderr}"
    );
    let ran = guest_run_with(&[], &vm.socket(), &["sh", "-c", "rm /tmp/fill; ls /ran"], None);
    assert_ne!(ran.json()["exit_code"], 0, "the program ran: {ran:?}");
    assert_eq!(guest_tmp(&vm), ".\n..\n");
    // Full while it runs: said at the end.
    let out = follow(&[], socket, &["seq", "1", "100000"], b"");
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("filled up"), "{stderr}");
    let out = follow(&[], socket, &["echo", "room again"], b"");
    assert_eq!(out.stdout, b"room again\n", "{out:?}");
    assert_eq!(guest_tmp(&vm), ".\n..\n");

    // The agent restarts while the program runs: the program runs on.
    let program = format!("{} echo going; sleep 20", agent_restart_when("sleep 1"));
    let out = follow(&["--reply-timeout", "5"], socket, &["sh", "-c", &program], b"");
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    assert_eq!(out.stdout, b"going\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("keeps running in the guest as pid"), "{stderr}");
    assert!(
        stderr.contains("/tmp/virtomate-follow-"),
        "names the files: {stderr}"
    );
    let out = follow(&["--timeout", "30"], socket, &["echo", "again"], b"");
    assert_eq!(out.stdout, b"again\n", "{out:?}");

    // The VM stops.
    let run = Followed::spawn(&[], socket, &["sh", "-c", "echo up; sleep 60"]);
    assert_eq!(run.next_line(30).1, "up");
    vm.kill();
    let (status, _, _, stderr) = run.finish();
    assert_eq!(status, 255, "{stderr}");
    assert!(stderr.starts_with("virtomate: AgentDisconnected: "), "{stderr}");
}

/// The guest's processes, as busybox `ps` lists them.
fn guest_ps(vm: &TestVm) -> String {
    let out = guest_run_with(&[], &vm.socket(), &["ps"], None);
    out.json()["stdout"].as_str().unwrap().to_owned()
}

/// The private directories in the guest's `/tmp`.
fn guest_dirs(vm: &TestVm) -> Vec<String> {
    let listing = guest_tmp(vm);
    let dirs = listing
        .lines()
        .filter(|name| name.starts_with("virtomate-follow-"));
    dirs.map(str::to_owned).collect()
}

#[test]
#[ignore = "needs the test VM"]
fn on_the_vm_a_killed_virtomates_directory_and_program_go_with_the_next_run_and_a_live_runs_stay() {
    let vm = TestVm::boot("follow-leftovers");
    let socket = vm.socket();
    let socket = socket.to_str().unwrap();
    let (live_marker, killed_marker) = ("sleep 6141", "sleep 6142");
    let program = |marker: &str| format!("echo up; exec {marker}");
    let live = Followed::spawn(&[], socket, &["sh", "-c", &program(live_marker)]);
    assert_eq!(live.next_line(60).1, "up");
    let live_dir = guest_dirs(&vm);
    assert_eq!(live_dir.len(), 1, "{live_dir:?}");
    let mut killed = Followed::spawn(&[], socket, &["sh", "-c", &program(killed_marker)]);
    assert_eq!(killed.next_line(60).1, "up");
    killed.child.kill().unwrap(); // SIGKILL: virtomate cleans nothing up
    killed.child.wait().unwrap();
    assert!(guest_ps(&vm).contains(killed_marker));
    assert_eq!(guest_dirs(&vm).len(), 2, "the killed run's directory stays");

    let out = follow(&[], socket, &["echo", "again"], b"");
    assert_eq!(out.stdout, b"again\n", "{out:?}");
    assert_eq!(guest_dirs(&vm), live_dir, "only the live run's directory is left");
    let ps = guest_ps(&vm);
    assert!(
        !ps.contains(killed_marker),
        "the killed run's program was stopped: {ps}"
    );
    assert!(ps.contains(live_marker), "the live run's program runs on: {ps}");

    live.interrupt();
    let (status, _, _, stderr) = live.finish();
    assert_eq!(status, 255, "{stderr}");
    assert_eq!(guest_dirs(&vm), Vec::<String>::new());
}

/// The processes (the rotator's shell and its `dd`) that read the
/// standard output pipe of the program running `cmdline` (NUL-separated),
/// and the pipe: their standard input is it.
fn stdout_rotators(cmdline: &[u8]) -> Vec<nix::unistd::Pid> {
    let processes: Vec<_> = std::fs::read_dir("/proc").unwrap().flatten().collect();
    let fd =
        |entry: &std::fs::DirEntry, fd: u32| std::fs::read_link(entry.path().join(format!("fd/{fd}"))).ok();
    let pipe = processes
        .iter()
        .find(|entry| std::fs::read(entry.path().join("cmdline")).is_ok_and(|c| c == cmdline))
        .and_then(|program| fd(program, 1));
    let Some(pipe) = pipe.filter(|pipe| pipe.to_string_lossy().ends_with("/out.pipe")) else {
        return Vec::new();
    };
    processes
        .iter()
        .filter(|entry| fd(entry, 0).as_ref() == Some(&pipe))
        .filter_map(|entry| entry.file_name().to_string_lossy().parse().ok())
        .map(nix::unistd::Pid::from_raw)
        .collect()
}

/// A rotator that ends without its end mark or its failure mark (as on a
/// disk so full that even the mark cannot be written, with room again by
/// the clean-up): the program, killed by SIGPIPE at its next write, is
/// told as output lost, not as its own end.
#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_rotator_gone_without_a_mark_is_told_as_output_lost() {
    let agent = HostAgent::start();
    let child = virtomate()
        .args(["guest-run", "--follow"])
        .arg(agent.socket())
        .args(["--", "seq", "1", "1000000000"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut rotators = Vec::new();
    wait_until(30, "the rotator of the program's standard output", || {
        rotators = stdout_rotators(b"seq\x001\x001000000000\x00");
        rotators.len() >= 2
    });
    for pid in rotators {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    let stderr = stderr_of_own_failure(child);
    // Room on the disk: its reader was killed, which the clean-up tells
    // (before, "filled up" was inferred from the signal).
    assert!(
        stderr.starts_with("virtomate: GuestOutputError: output lost: the guest-side reader of stdout")
            && stderr.contains("killed by signal 13"),
        "{stderr}"
    );
}

/// Kills the rotator (its shell and its `dd`s) reading the standard output
/// of the program running `cmdline` (NUL-separated), once it runs, until
/// none is left.
fn kill_stdout_rotator(cmdline: &[u8]) {
    wait_until(30, "the rotator of the program's standard output", || {
        stdout_rotators(cmdline).len() >= 2
    });
    wait_until(10, "the rotator gone", || {
        let left = stdout_rotators(cmdline);
        for pid in &left {
            let _ = nix::sys::signal::kill(*pid, nix::sys::signal::Signal::SIGKILL);
        }
        left.is_empty()
    });
}

/// `sh -c SCRIPT` followed on the host's agent, stdout dropped.
fn spawn_followed_sh(agent: &HostAgent, script: &str, args: &[&str]) -> Child {
    virtomate()
        .args(["guest-run", "--follow"])
        .arg(agent.socket())
        .args(["--", "sh", "-c", script, "sh"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The command line of `sh -c SCRIPT sh ARGS...`, as `/proc` shows it.
fn sh_cmdline(script: &str, args: &[&str]) -> Vec<u8> {
    let mut cmdline = Vec::new();
    for word in ["sh", "-c", script, "sh"].iter().chain(args) {
        cmdline.extend_from_slice(word.as_bytes());
        cmdline.push(0);
    }
    cmdline
}

/// A rotator killed while the program lives on past its SIGPIPE (it
/// ignores it, gets EPIPE, and ends with a status of its own): the run is
/// told as output lost, with how the program ended, never as that end.
#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_rotator_killed_under_a_program_ignoring_sigpipe_is_told_as_output_lost() {
    let agent = HostAgent::start();
    let script = "trap '' PIPE; seq 1 1000000000; exit 7";
    let child = spawn_followed_sh(&agent, script, &[]);
    kill_stdout_rotator(&sh_cmdline(script, &[]));
    let stderr = stderr_of_own_failure(child);
    // After what the program said (seq's broken pipe), passed on.
    let said = stderr.lines().last().unwrap_or_default();
    assert!(
        said.starts_with("virtomate: GuestOutputError: output lost: the guest-side reader of stdout")
            && said.contains("exited with status 7"),
        "{stderr}"
    );
}

/// A rotator killed while the program writes nothing more, then ends well:
/// what was in its pipe, or in its `dd`, is lost, and so told.
#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_rotator_killed_under_a_program_that_then_exits_0_is_told_as_output_lost() {
    let agent = HostAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    nix::unistd::mkfifo(&go, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let go = go.to_str().unwrap();
    let script = r#"echo going; read -r line <"$1""#;
    let child = spawn_followed_sh(&agent, script, &[go]);
    kill_stdout_rotator(&sh_cmdline(script, &[go]));
    release(go);
    let stderr = stderr_of_own_failure(child);
    assert!(
        stderr.starts_with("virtomate: GuestOutputError: output lost: ")
            && stderr.contains("exited with status 0"),
        "{stderr}"
    );
}

/// Writes a line into the named pipe `fifo` once a reader has it open.
fn release(fifo: &str) {
    use std::io::Write;
    writer_when_read(Path::new(fifo)).write_all(b"go\n").unwrap();
}

/// `sh -c SCRIPT` in the guest, which must succeed: its stdout.
fn vm_sh(vm: &TestVm, script: &str) -> String {
    let out = guest_run_with(&["--timeout", "60"], &vm.socket(), &["sh", "-c", script], None);
    assert_eq!(out.json()["exit_code"], 0, "{script}: {out:?}");
    out.json()["stdout"].as_str().unwrap_or_default().to_owned()
}

/// Kills, in the guest, the processes reading a followed program's
/// standard output (its rotator's shell and `dd`) until none is left;
/// prints how many rounds found some.
const KILL_STDOUT_ROTATORS: &str = r#"n=0
while [ "$n" -lt 20 ]; do
  found=
  for d in /tmp/virtomate-follow-*; do
    for p in /proc/[0-9]*; do
      [ "$p/fd/0" -ef "$d/out.pipe" ] && kill -9 "${p#/proc/}" && found=1
    done 2>/dev/null
  done
  [ -z "$found" ] && break
  n=$((n + 1))
done
echo "$n""#;

/// On the busybox VM: a rotator killed under a program that ignores
/// SIGPIPE, and one failing on a full `/tmp` (its failure mark unwritable,
/// room again by the end) under a program that lives on: each told, exit
/// 255, never the program's own end; nothing left in `/tmp`.
#[test]
#[ignore = "needs the test VM"]
fn on_the_vm_a_rotator_killed_or_failing_unmarked_is_told_under_a_program_ignoring_sigpipe() {
    let vm = TestVm::boot("follow-rotator");
    let socket = vm.socket();
    let socket = socket.to_str().unwrap();
    let before = guest_tmp(&vm);

    vm_sh(&vm, "mkfifo /tmp/go");
    let program = "trap '' PIPE; echo going; read -r l </tmp/go; echo after; exit 7";
    let run = Followed::spawn(&[], socket, &["sh", "-c", program]);
    assert_eq!(run.next_line(60).1, "going");
    let rounds = vm_sh(&vm, KILL_STDOUT_ROTATORS);
    assert_ne!(rounds.trim(), "0", "the rotator was found");
    vm_sh(&vm, "echo go >/tmp/go; rm /tmp/go");
    let (status, _, rest, stderr) = run.finish();
    assert_eq!((status, rest.len()), (255, 0), "{stderr}");
    // After the shell's own word of the broken pipe.
    let said = stderr.lines().last().unwrap_or_default();
    assert!(
        said.starts_with("virtomate: GuestOutputError: output lost: the guest-side reader of stdout")
            && said.contains("exited with status 7"),
        "{stderr}"
    );
    assert_eq!(guest_tmp(&vm), before);

    // A /tmp of 256 KiB, filled once the program runs: no block for the
    // chunk, nor for the index's first line.
    vm_sh(
        &vm,
        "mount -t tmpfs -o size=256k tmpfs /tmp && mkfifo /tmp/go1 /tmp/go2",
    );
    let program = "trap '' PIPE; echo going; read -r l </tmp/go1; head -c 300000 /dev/zero; \
                   read -r l </tmp/go2; exit 0";
    let run = Followed::spawn(&[], socket, &["sh", "-c", program]);
    assert_eq!(run.next_line(60).1, "going");
    vm_sh(
        &vm,
        "dd if=/dev/zero of=/tmp/fill bs=4k 2>/dev/null; echo go >/tmp/go1",
    );
    // Once head has met the broken pipe: room again, then the end.
    vm_sh(&vm, "exec 3>/tmp/go2; rm /tmp/fill; echo go >&3");
    let (status, _, _, stderr) = run.finish();
    assert_eq!(status, 255, "{stderr}");
    let said = stderr.lines().last().unwrap_or_default();
    assert!(
        said.starts_with("virtomate: GuestOutputError: the guest's temporary directory filled up")
            && said.contains("exited with status 0"),
        "{stderr}"
    );
    assert_eq!(
        vm_sh(&vm, "rm /tmp/go1 /tmp/go2; ls -a /tmp; umount /tmp"),
        ".\n..\n"
    );
}
