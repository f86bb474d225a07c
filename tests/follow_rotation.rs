//! A followed program's output goes through chunk files that are removed
//! as they are read: however much it writes, at most two chunks per stream
//! sit in the guest's temporary directory, and a host that stops reading
//! stops the program instead of filling it. Against the real qemu-ga on
//! the host, its temporary directory a small tmpfs of the test's own, and
//! in the test VM with a small `/tmp`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use virtomate_protocol::follow::CHUNK_MAX;

use crate::support::data::{noise, sha256_hex};
use crate::support::host_agent::HostAgent;
use crate::support::test_vm::TestVm;
use crate::support::{
    guest_run_with, run_bytes, stderr_of_own_failure, virtomate, wait_until, writer_when_read,
};

const CHUNK: usize = CHUNK_MAX as usize;

/// A tmpfs of `size` mounted on a directory of its own, unmounted on drop.
struct SmallTmp {
    dir: tempfile::TempDir,
}

impl SmallTmp {
    fn mount(size: &str) -> SmallTmp {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(mounted.success(), "mount -t tmpfs (needs root): {mounted}");
        SmallTmp { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn listing(&self) -> Vec<String> {
        let names = std::fs::read_dir(self.path()).unwrap();
        names
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }
}

impl Drop for SmallTmp {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// The host's qemu-ga with `tmp` as its temporary directory.
fn host_agent(tmp: &SmallTmp) -> HostAgent {
    let dir = tempfile::tempdir().unwrap();
    HostAgent::start_in_with_env(dir, &[], &[("TMPDIR", tmp.path().to_str().unwrap())])
}

/// Writes `data` to a file in `dir` named `name`; its path.
fn file_of(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

/// `cat`s the first file to stdout and the second to stderr at once.
const BOTH_STREAMS: &str = r#"cat "$1" & cat "$2" >&2; wait"#;

#[test]
#[ignore = "needs qemu-ga on the host"]
fn output_of_any_size_around_the_chunk_size_arrives_whole_through_a_small_tmp() {
    // Two chunks of each stream at most: 16 MiB, and 4 to spare.
    let tmp = SmallTmp::mount("20m");
    let agent = host_agent(&tmp);
    let socket = agent.socket();
    let data = tempfile::tempdir().unwrap();
    let sizes = [
        0,
        1,
        4095,
        4096,
        CHUNK - 4096,
        CHUNK - 1,
        CHUNK,
        CHUNK + 1,
        CHUNK + 4096,
        2 * CHUNK,
        2 * CHUNK + 1,
        3 * CHUNK - 1,
    ];
    for (i, &size) in sizes.iter().enumerate() {
        let out_data = noise(size, i as u64);
        // The other stream in step, a little shorter.
        let err_data = noise(size.saturating_sub(size / 3), 100 + i as u64);
        let out_file = file_of(data.path(), "out", &out_data);
        let err_file = file_of(data.path(), "err", &err_data);
        let program = [
            "sh",
            "-c",
            BOTH_STREAMS,
            "sh",
            out_file.to_str().unwrap(),
            err_file.to_str().unwrap(),
        ];
        let mut args = vec!["guest-run", "--follow", socket.to_str().unwrap(), "--"];
        args.extend(program);
        let out = run_bytes(&args, b"");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{size} bytes: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout == out_data,
            "{size} bytes: stdout differs ({} came)",
            out.stdout.len()
        );
        assert!(
            out.stderr == err_data,
            "{size} bytes: stderr differs ({} came)",
            out.stderr.len()
        );
        assert_eq!(
            tmp.listing(),
            Vec::<String>::new(),
            "left behind after {size} bytes"
        );
    }

    // 300 MiB through cat -i, and 30 MiB of stderr at once, through 20 MiB.
    let input = noise(300 << 20, 7);
    let err_data = noise(30 << 20, 8);
    let err_file = file_of(data.path(), "err", &err_data);
    let script = format!("cat {} >&2 & cat; wait", err_file.display());
    let out = run_bytes(
        &[
            "guest-run",
            "-i",
            socket.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            &script,
        ],
        &input,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        sha256_hex(&out.stdout),
        sha256_hex(&input),
        "{} bytes came",
        out.stdout.len()
    );
    assert_eq!(
        sha256_hex(&out.stderr),
        sha256_hex(&err_data),
        "{} came",
        out.stderr.len()
    );
    assert_eq!(tmp.listing(), Vec::<String>::new());
}

/// Whether the process `pid` is blocked in `read` (`write`: `reading` false)
/// of a file `is`, from `/proc/PID/syscall` (system calls 0 and 1 on
/// x86_64, the descriptor the first argument).
fn blocked_in(pid: &str, reading: bool, is: impl Fn(&Path) -> bool) -> bool {
    let said = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
    let mut words = said.split(' ');
    let call = if reading { "0" } else { "1" };
    let fd = match (words.next(), words.next()) {
        (Some(number), Some(fd)) if number == call => fd.trim_start_matches("0x"),
        _ => return false,
    };
    let fd = u32::from_str_radix(fd, 16).unwrap_or(u32::MAX);
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).is_ok_and(|target| is(&target))
}

/// The pids of the processes one of whose open files satisfies `holds`.
fn holders(holds: impl Fn(&Path) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| holds(&target)))
        {
            found.push(pid);
        }
    }
    found
}

/// Bytes in the files of `dir`.
fn bytes_in(dir: &Path) -> u64 {
    let entries = std::fs::read_dir(dir).unwrap().flatten();
    entries.map(|entry| entry.metadata().map_or(0, |m| m.len())).sum()
}

/// A child process sent SIGINT when dropped still running.
struct Interrupted(std::process::Child);

impl Drop for Interrupted {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(None)) {
            return; // Ended and waited for: its pid may be another's now.
        }
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_host_that_stops_reading_stops_the_program_and_the_guest_keeps_two_chunks() {
    let tmp = SmallTmp::mount("20m");
    let agent = host_agent(&tmp);
    let data = tempfile::tempdir().unwrap();
    let big = noise(64 << 20, 3);
    let file = file_of(data.path(), "big", &big);
    let child = virtomate()
        .args([
            "guest-run",
            "--follow",
            agent.socket().to_str().unwrap(),
            "--",
            "cat",
        ])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupted should the test fail, so that it cleans up in the guest.
    let mut child = Interrupted(child);
    let child = &mut child.0;
    // Nothing read from virtomate: its stdout fills, it stops reading the
    // guest, the rotator waits for a credit, and cat for room in its pipe.
    let ours = |path: &Path, name: &str| path.starts_with(tmp.path()) && path.ends_with(name);
    let is_credit = |path: &Path| ours(path, "out.credit");
    let is_pipe = |path: &Path| ours(path, "out.pipe");
    wait_until(60, "the rotator waiting for a credit and cat for room", || {
        let rotator_waits = holders(is_credit)
            .iter()
            .any(|pid| blocked_in(pid, true, is_credit));
        rotator_waits && holders(is_pipe).iter().any(|pid| blocked_in(pid, false, is_pipe))
    });
    let dir = std::fs::read_dir(tmp.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let held = bytes_in(&dir);
    assert!(
        held <= 2 * CHUNK_MAX + (64 << 10),
        "{held} bytes in {}",
        dir.display()
    );
    assert!(
        held >= CHUNK_MAX,
        "only {held} bytes: not waiting on a full chunk?"
    );

    // Reading again, all of it comes.
    let mut stdout = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut stdout).unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0), "{stderr}");
    assert_eq!(
        sha256_hex(&stdout),
        sha256_hex(&big),
        "{} bytes came",
        stdout.len()
    );
    assert_eq!(tmp.listing(), Vec::<String>::new());
}

#[test]
#[ignore = "needs the test VM"]
fn on_the_vm_40_mib_of_random_output_pass_through_a_tmp_with_12_mib() {
    let vm = TestVm::boot("follow-rotation");
    let socket = vm.socket();
    let in_guest = |program: &[&str]| guest_run_with(&[], &socket, program, None).json();
    let mounted = in_guest(&["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", "/tmp"]);
    assert_eq!(mounted["exit_code"], 0, "{mounted}");
    // The guest hashes what it writes, on stderr; a pipe takes no room.
    let script = "mkfifo /tmp/h && { sha256sum </tmp/h >&2 & \
                  head -c 41943040 /dev/urandom | tee /tmp/h; wait; rm /tmp/h; }";
    let out = run_bytes(
        &[
            "guest-run",
            "--follow",
            socket.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            script,
        ],
        b"",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(out.stdout.len(), 40 << 20, "{stderr}");
    assert_eq!(
        stderr.split(' ').next(),
        Some(sha256_hex(&out.stdout).as_str()),
        "{stderr}"
    );
    let left = in_guest(&["sh", "-c", "ls -a /tmp; umount /tmp"]);
    assert_eq!(left["stdout"], ".\n..\n", "{left}");
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_process_left_holding_the_output_delays_the_end_by_the_drains_bound_only() {
    let tmp = SmallTmp::mount("20m");
    let agent = host_agent(&tmp);
    let socket = agent.socket();
    let script = "sleep 60 & echo $! >&2; echo out";
    let out = run_bytes(
        &[
            "guest-run",
            "--follow",
            socket.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            script,
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout, b"out\n");
    let pid = String::from_utf8(out.stderr).unwrap();
    // Ended while the sleep still holds both pipes; nothing of virtomate's
    // is left in the guest.
    assert!(Path::new(&format!("/proc/{}", pid.trim())).exists(), "{pid}");
    assert_eq!(tmp.listing(), Vec::<String>::new());
    let killed = Command::new("kill").arg(pid.trim()).status().unwrap();
    assert!(killed.success());
}

/// Fills the file system of `tmp` to its last byte, with the file `filler`.
fn fill(tmp: &SmallTmp) -> PathBuf {
    use std::io::Write;
    let path = tmp.path().join("filler");
    let mut filler = std::fs::File::create(&path).unwrap();
    let block = [0u8; 4096];
    while filler.write_all(&block).is_ok() {}
    path
}

/// Two named pipes, `go1` and `go2`, in a directory of their own, which
/// the test writes to when the program is to go on.
fn go_pipes() -> (tempfile::TempDir, [PathBuf; 2]) {
    let dir = tempfile::tempdir().unwrap();
    let pipes = ["go1", "go2"].map(|name| dir.path().join(name));
    for pipe in &pipes {
        nix::unistd::mkfifo(pipe, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }
    (dir, pipes)
}

/// `sh -c SCRIPT sh GO1 GO2` followed on the agent, stdout dropped.
fn spawn_followed(agent: &HostAgent, script: &str, go: &[PathBuf; 2]) -> std::process::Child {
    virtomate()
        .args(["guest-run", "--follow"])
        .arg(agent.socket())
        .args(["--", "sh", "-c", script, "sh"])
        .args(go)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The temporary directory fills up after the start, so that the rotator
/// can write neither its chunk nor even its failure mark (the index has no
/// block yet), and has room again by the end; the program ignores SIGPIPE
/// and ends well. The failure is told ("filled up"), not the program's end.
#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_rotator_failing_on_a_full_tmp_without_its_mark_is_told_under_a_program_ignoring_sigpipe() {
    use std::io::Write;
    let tmp = SmallTmp::mount("1m");
    let agent = host_agent(&tmp);
    let (_pipes, go) = go_pipes();
    let script = r#"trap '' PIPE; read -r l <"$1"; head -c 300000 /dev/zero; read -r l <"$2"; exit 0"#;
    let child = spawn_followed(&agent, script, &go);
    let mut first = writer_when_read(&go[0]);
    let filler = fill(&tmp);
    first.write_all(b"go\n").unwrap();
    drop(first);
    // Its second read: head has met the broken pipe, the rotator is gone.
    let mut second = writer_when_read(&go[1]);
    std::fs::remove_file(filler).unwrap();
    second.write_all(b"go\n").unwrap();
    drop(second);
    let stderr = stderr_of_own_failure(child);
    assert!(
        stderr.starts_with("virtomate: GuestOutputError: the guest's temporary directory filled up")
            && stderr.contains("exited with status 0"),
        "{stderr}"
    );
    assert_eq!(tmp.listing(), Vec::<String>::new());
}

/// The same with a program that SIGPIPE kills: told as "filled up", by the
/// rotator's own mark (before, by inference from the signal).
#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_rotator_failing_on_a_full_tmp_without_its_mark_is_told_under_a_program_killed_by_sigpipe() {
    use std::io::Write;
    let tmp = SmallTmp::mount("1m");
    let agent = host_agent(&tmp);
    let (_pipes, go) = go_pipes();
    let script = r#"read -r l <"$1"; exec head -c 300000 /dev/zero"#;
    let child = spawn_followed(&agent, script, &go);
    let mut first = writer_when_read(&go[0]);
    let filler = fill(&tmp);
    first.write_all(b"go\n").unwrap();
    drop(first);
    // Room again once the program and the rotator are gone: nothing holds
    // the pipe (the program did, as its stdout, until then).
    let is_pipe = |path: &Path| path.starts_with(tmp.path()) && path.ends_with("out.pipe");
    wait_until(30, "the program and the rotator to end", || {
        holders(is_pipe).is_empty()
    });
    std::fs::remove_file(filler).unwrap();
    let stderr = stderr_of_own_failure(child);
    assert!(
        stderr.starts_with("virtomate: GuestOutputError: the guest's temporary directory filled up")
            && stderr.contains("killed by signal 13"),
        "{stderr}"
    );
    assert_eq!(tmp.listing(), Vec::<String>::new());
}
