//! `guest-run -i`: standard input streamed to the program while it runs,
//! its output streamed back, byte for byte, with `--raw`'s exit statuses;
//! against the real qemu-ga on the host (its temporary directory one of
//! the test's own, to list it) and in the test VM.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::support::data::noise;
use crate::support::host_agent::HostAgent;
use crate::support::test_vm::TestVm;
use crate::support::{guest_run_with, virtomate};

/// The arguments of `guest-run -i OPTIONS DOMAIN -- PROGRAM...`.
fn interactive_args<'a>(options: &[&'a str], domain: &'a str, program: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["guest-run", "-i"];
    args.extend(options);
    args.extend([domain, "--"]);
    args.extend(program);
    args
}

/// `guest-run -i … PROGRAM` with `input` written from a thread of its own
/// while the output is read, then the end of the input.
fn interactive(options: &[&str], domain: &str, program: &[&str], input: &[u8]) -> Output {
    let mut child = spawn(options, domain, program);
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // A program that ends early leaves the rest unread: a broken pipe.
    let writer = std::thread::spawn(move || drop(stdin.write_all(&input)));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    output
}

fn spawn(options: &[&str], domain: &str, program: &[&str]) -> Child {
    virtomate()
        .args(interactive_args(options, domain, program))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Writes to `stdin` until it breaks (virtomate has ended), counting the
/// bytes it took.
fn endless(mut stdin: ChildStdin) -> (Arc<AtomicU64>, std::thread::JoinHandle<()>) {
    let taken = Arc::new(AtomicU64::new(0));
    let count = taken.clone();
    let writer = std::thread::spawn(move || {
        let block = vec![b'y'; 4096];
        while stdin.write_all(&block).is_ok() {
            count.fetch_add(block.len() as u64, Ordering::Relaxed);
        }
    });
    (taken, writer)
}

/// The host's qemu-ga with a temporary directory of the test's own.
fn host_agent() -> (HostAgent, PathBuf) {
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

/// Random bytes of each size pass through `cat` and come back whole.
fn round_trips(domain: &str, sizes: &[usize]) {
    for (seed, &len) in sizes.iter().enumerate() {
        let input = noise(len, seed as u64 + 20);
        let out = interactive(&[], domain, &["cat"], &input);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{len} bytes: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.stdout.len(), len, "{len} bytes through cat");
        assert!(out.stdout == input, "{len} bytes through cat differ");
    }
}

/// Sizes around the pipe's atomic write (4 KiB) and its capacity (64 KiB),
/// which is also where input starts to go as chunk files.
const SIZES: [usize; 8] = [0, 1, 4095, 4096, 4097, 65535, 65536, 65537];

/// Sizes around a chunk file's (1 MiB), and around two of them and one
/// more piece than fits.
const CHUNK_SIZES: [usize; 5] = [MIB - 1, MIB, MIB + 1, 2 * MIB + 4097, 5 * MIB + 12345];

const MIB: usize = 1 << 20;

/// The most of an endless input virtomate may take for a program that
/// never reads: see the never-reading tests.
const NEVER_READ_BOUND: u64 = 4 << 20;

/// Lines of text, `count` of them, numbered.
fn numbered_lines(count: usize) -> Vec<u8> {
    (0..count)
        .flat_map(|i| format!("line {i:06}\n").into_bytes())
        .collect()
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn random_data_of_every_size_around_4_and_64_kib_and_a_chunk_file_comes_back_byte_for_byte() {
    let (agent, tmp) = host_agent();
    let socket = agent.socket();
    let socket = socket.to_str().unwrap();
    round_trips(socket, &SIZES);
    round_trips(socket, &CHUNK_SIZES);
    // Binary the other way too: what the program makes of its input.
    let input = noise(3 * MIB + 1, 7);
    let out = interactive(&[], socket, &["sh", "-c", "cat >&2; printf 'o\\0k'"], &input);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stderr == input, "3 MiB and a byte to stderr differ");
    assert_eq!(out.stdout, b"o\0k");
    assert!(listing(&tmp).is_empty(), "left behind: {:?}", listing(&tmp));
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_slow_reader_and_one_that_starts_late_get_every_byte_once_and_in_order() {
    let (agent, tmp) = host_agent();
    let socket = agent.socket();
    let socket = socket.to_str().unwrap();
    // The shell's `read` takes a byte at a time; the pipe fills meanwhile.
    let lines = numbered_lines(20_000);
    let slow = "while IFS= read -r l; do printf '%s\\n' \"$l\"; done";
    let out = interactive(&[], socket, &["sh", "-c", slow], &lines);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == lines,
        "{} of {} bytes",
        out.stdout.len(),
        lines.len()
    );

    // Nothing read for a second while 1 MiB waits: the pipe stays full.
    let input = noise(1 << 20, 3);
    let out = interactive(
        &[],
        socket,
        &["sh", "-c", "sleep 1; dd bs=512 2>/dev/null"],
        &input,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == input, "1 MiB after a pause differs");
    assert!(listing(&tmp).is_empty(), "left behind: {:?}", listing(&tmp));
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn the_end_of_stdin_closes_the_programs_and_the_run_goes_on_to_its_end() {
    let (agent, tmp) = host_agent();
    let socket = agent.socket();
    let socket = socket.to_str().unwrap();
    let out = interactive(
        &[],
        socket,
        &["sh", "-c", "cat; echo after the end; exit 4"],
        b"x",
    );
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert_eq!(out.stdout, b"xafter the end\n");
    let out = interactive(&[], socket, &["wc", "-c"], b"");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0", "{out:?}");
    // Not found by the shell that starts it: 127, as with --follow.
    let out = interactive(&[], socket, &["/does/not/exist"], b"input");
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert!(listing(&tmp).is_empty(), "left behind: {:?}", listing(&tmp));
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_program_that_ends_early_or_never_reads_ends_the_run_and_stdin_is_not_read_to_its_end() {
    let (agent, tmp) = host_agent();
    let socket = agent.socket();
    let socket = socket.to_str().unwrap();
    // It reads 10 bytes of an endless input and ends.
    let mut child = spawn(&[], socket, &["head", "-c", "10"]);
    let (_, writer) = endless(child.stdin.take().unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert_eq!(
        (out.status.code(), out.stdout.as_slice()),
        (Some(0), &b"yyyyyyyyyy"[..])
    );

    // It never reads: virtomate stops reading its own stdin once the pipe
    // and a bounded queue are full, and ends with the program.
    let mut child = spawn(&[], socket, &["sh", "-c", "sleep 2; exit 7"]);
    let (taken, writer) = endless(child.stdin.take().unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The pipe into virtomate, a read, a queued request, what waits to
    // go in (a chunk and one read over), a chunk file waiting, the one its
    // helper moves and the guest's pipe: about 3.3 MiB.
    let taken = taken.load(Ordering::Relaxed);
    assert!(
        taken <= NEVER_READ_BOUND,
        "virtomate took {taken} bytes a program never read"
    );
    assert!(listing(&tmp).is_empty(), "left behind: {:?}", listing(&tmp));
}

/// The host's processes that name `dir` in their command line or hold a
/// file under it open (a helper moving a chunk file has the pipe open as
/// its stdout; the agent, a handle not closed): their command lines and
/// open files.
fn processes_naming(dir: &Path) -> Vec<String> {
    let name = dir.to_str().unwrap();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let fds = std::fs::read_dir(entry.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten();
        let holds = fds
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .any(|target| target.starts_with(dir));
        if cmdline.contains(name) || holds {
            let fds = std::fs::read_dir(entry.path().join("fd"))
                .into_iter()
                .flatten()
                .flatten();
            let files: Vec<_> = fds.filter_map(|fd| std::fs::read_link(fd.path()).ok()).collect();
            found.push(format!("{cmdline} holding {files:?}"));
        }
    }
    found
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_program_ending_or_stopped_during_bulk_input_has_its_status_reported_and_no_chunk_file_or_helper_stays() {
    let (agent, tmp) = host_agent();
    let socket = agent.socket();
    let socket = socket.to_str().unwrap();
    // It reads 100000 bytes of 8 MiB and ends: a helper is then blocked
    // in a full pipe, a chunk file waits for the next.
    let input = noise(8 * MIB, 12);
    let program = ["sh", "-c", "head -c 100000; exit 5"];
    let out = interactive(&[], socket, &program, &input);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == input[..100_000],
        "{} bytes came back",
        out.stdout.len()
    );
    assert!(listing(&tmp).is_empty(), "left behind: {:?}", listing(&tmp));
    assert_eq!(
        processes_naming(&tmp),
        Vec::<String>::new(),
        "left running or open"
    );

    // The same with the input endless, and ended by --max-time while a
    // program that never reads holds it up.
    let mut child = spawn(&["--max-time", "2"], socket, &["sleep", "60"]);
    let (taken, writer) = endless(child.stdin.take().unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    assert!(taken.load(Ordering::Relaxed) <= NEVER_READ_BOUND);
    assert!(listing(&tmp).is_empty(), "left behind: {:?}", listing(&tmp));
    assert_eq!(
        processes_naming(&tmp),
        Vec::<String>::new(),
        "left running or open"
    );

    // And by Ctrl-C, once more than a chunk has been taken: a helper is
    // blocked in the full pipe by then.
    let mut child = spawn(&[], socket, &["sleep", "60"]);
    let (taken, writer) = endless(child.stdin.take().unwrap());
    while taken.load(Ordering::Relaxed) < 2 * MIB as u64 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    assert!(stderr.contains("was stopped with SIGTERM"), "{stderr}");
    assert!(
        listing(&tmp).is_empty(),
        "left behind: {:?} ({:?} in it), virtomate said: {stderr}",
        listing(&tmp),
        listing(&tmp)
            .iter()
            .map(|dir| std::fs::read_dir(tmp.join(dir))
                .map(|files| files
                    .filter_map(|f| Some(f.ok()?.file_name()))
                    .collect::<Vec<_>>())
                .unwrap_or_default())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        processes_naming(&tmp),
        Vec::<String>::new(),
        "left running or open"
    );
}

/// Waits for `child` to end, its peak resident memory (KiB, VmHWM) as last
/// seen while it ran.
fn peak_rss_until_exit(child: &mut Child) -> u64 {
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        let text = std::fs::read_to_string(&status).unwrap_or_default();
        let hwm = text.lines().find_map(|line| line.strip_prefix("VmHWM:"));
        if let Some(kib) = hwm.and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()) {
            peak = kib;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    peak
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn an_endless_input_to_a_program_that_never_reads_is_not_read_on_and_memory_stays_bounded() {
    let (agent, tmp) = host_agent();
    let socket = agent.socket();
    let socket = socket.to_str().unwrap();
    let mut child = spawn(&[], socket, &["sh", "-c", "sleep 4; exit 3"]);
    let (taken, writer) = endless(child.stdin.take().unwrap());
    let peak = peak_rss_until_exit(&mut child);
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let taken = taken.load(Ordering::Relaxed);
    assert!(taken <= NEVER_READ_BOUND, "virtomate took {taken} bytes");
    // A debug build: a few MiB of input and its Base64 besides the code.
    assert!(peak < 48 << 10, "peak RSS {peak} KiB");
    assert!(listing(&tmp).is_empty(), "left behind: {:?}", listing(&tmp));
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn max_time_and_ctrl_c_stop_a_program_waiting_for_input_and_remove_the_pipe() {
    let (agent, tmp) = host_agent();
    let socket = agent.socket();
    let socket = socket.to_str().unwrap();
    // Standard input stays open: only the time limit ends it.
    let mut child = spawn(&["--max-time", "1"], socket, &["cat"]);
    let stdin = child.stdin.take().unwrap();
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    assert!(listing(&tmp).is_empty(), "left behind: {:?}", listing(&tmp));

    // A line goes through, then Ctrl-C.
    let mut child = spawn(&[], socket, &["cat"]);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"ping\n").unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "ping\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(255), "{stderr}");
    assert!(stderr.starts_with("virtomate: Interrupted: "), "{stderr}");
    assert!(stderr.contains("was stopped with SIGTERM"), "{stderr}");
    drop(stdin);
    assert!(listing(&tmp).is_empty(), "left behind: {:?}", listing(&tmp));
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_session_feeds_an_interactive_run_from_input_lines_beside_other_requests() {
    use base64::Engine;
    let (agent, tmp) = host_agent();
    let input = noise(100_000, 9);
    let encoded = base64::engine::general_purpose::STANDARD.encode(&input);
    let (first, second) = encoded.split_at(40_000);
    let lines = [
        r#"{"id": "c", "run": ["cat"], "interactive": true}"#.to_owned(),
        format!(r#"{{"id": "c", "stdin": "{first}"}}"#),
        r#"{"id": "p", "ping": {}}"#.to_owned(),
        format!(r#"{{"id": "c", "stdin": "{second}", "eof": true}}"#),
        r#"{"id": "x", "stdin": "aGkK"}"#.to_owned(),
    ];
    let mut text = lines.join("\n");
    text.push('\n');
    let out = crate::support::run(
        &["session", agent.socket().to_str().unwrap()],
        Some(text.as_bytes()),
    );
    assert_eq!(out.status, 0, "{out:?}");
    let mut echoed = Vec::new();
    let mut results = Vec::new();
    for line in out.stdout.lines() {
        let reply: serde_json::Value = serde_json::from_str(line).unwrap();
        match reply.get("stdout") {
            Some(chunk) if reply.get("result").is_none() => {
                let chunk = base64::engine::general_purpose::STANDARD.decode(chunk.as_str().unwrap());
                echoed.extend(chunk.unwrap());
            }
            _ => results.push(reply),
        }
    }
    assert!(
        echoed == input,
        "{} of {} bytes came back",
        echoed.len(),
        input.len()
    );
    // Input for no interactive run is dropped, unanswered.
    let ids: Vec<&str> = results.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{results:?}");
    assert!(ids.contains(&"c") && ids.contains(&"p"), "{results:?}");
    let c = results.iter().find(|r| r["id"] == "c").unwrap();
    assert_eq!(c["result"]["exit_code"], 0, "{c}");
    assert!(listing(&tmp).is_empty(), "left behind: {:?}", listing(&tmp));
}

/// `ls -a /tmp` in the guest.
fn guest_tmp(vm: &TestVm) -> String {
    let out = guest_run_with(&[], &vm.socket(), &["ls", "-a", "/tmp"], None);
    out.json()["stdout"].as_str().unwrap().to_owned()
}

#[test]
#[ignore = "needs the test VM"]
fn on_the_vm_data_both_ways_a_slow_reader_a_non_reader_and_ctrl_c_leave_nothing_behind_and_a_stop_is_clear() {
    let vm = TestVm::boot("interactive");
    let socket = vm.socket();
    let socket = socket.to_str().unwrap();
    let before = guest_tmp(&vm);

    round_trips(socket, &SIZES);
    round_trips(&vm.name, &[MIB]);

    let lines = numbered_lines(2_000);
    let slow = "while IFS= read -r l; do printf '%s\\n' \"$l\"; done";
    let out = interactive(&[], socket, &["sh", "-c", slow], &lines);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == lines,
        "{} of {} bytes",
        out.stdout.len(),
        lines.len()
    );
    let input = noise(300_000, 5);
    let out = interactive(
        &[],
        socket,
        &["sh", "-c", "sleep 2; dd bs=512 2>/dev/null"],
        &input,
    );
    assert!(out.stdout == input, "300000 bytes after a pause differ");

    let out = interactive(
        &[],
        socket,
        &["sh", "-c", "cat; echo after the end; exit 4"],
        b"x",
    );
    assert_eq!(
        (out.status.code(), out.stdout.as_slice()),
        (Some(4), &b"xafter the end\n"[..])
    );

    let mut child = spawn(&[], socket, &["sh", "-c", "sleep 3; exit 7"]);
    let (taken, writer) = endless(child.stdin.take().unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let taken = taken.load(Ordering::Relaxed);
    assert!(
        taken <= NEVER_READ_BOUND,
        "virtomate took {taken} bytes a program never read"
    );

    let mut child = spawn(&["--max-time", "2"], socket, &["cat"]);
    let stdin = child.stdin.take().unwrap();
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    assert_eq!(out.status.code(), Some(124), "{out:?}");

    let marker = "sleep 6093";
    let mut child = spawn(&[], socket, &["sh", "-c", &format!("read l; echo $l; {marker}")]);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"ping\n").unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "ping\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(255), "{stderr}");
    assert!(stderr.contains("was stopped with SIGTERM"), "{stderr}");
    drop(stdin);
    let processes = guest_run_with(&[], &vm.socket(), &["ps"], None).json();
    assert!(
        !processes["stdout"].as_str().unwrap().contains(marker),
        "{processes}"
    );
    assert_eq!(guest_tmp(&vm), before, "the guest's /tmp before and after");

    // The VM stops while the program waits for input.
    let mut child = spawn(&[], socket, &["cat"]);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"up\n").unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "up\n");
    vm.kill();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(255), "{stderr}");
    assert!(stderr.starts_with("virtomate: AgentDisconnected: "), "{stderr}");
    drop(stdin);
}

/// The guest's processes, kernel threads and the `ps` asking left out:
/// their command lines, sorted.
fn guest_processes(vm: &TestVm) -> Vec<String> {
    let out = guest_run_with(&[], &vm.socket(), &["ps"], None).json();
    let mut found: Vec<String> = out["stdout"]
        .as_str()
        .unwrap()
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().skip(2).collect::<Vec<_>>().join(" "))
        .filter(|command| !command.starts_with('[') && !command.contains("ps"))
        .collect();
    found.sort();
    found
}

#[test]
#[ignore = "needs the test VM"]
fn on_the_vm_bulk_input_a_program_ending_during_it_and_a_full_tmp_leave_no_file_or_process_behind() {
    let vm = TestVm::boot("interactive-bulk");
    let socket = vm.socket();
    let socket = socket.to_str().unwrap();
    let (tmp, processes) = (guest_tmp(&vm), guest_processes(&vm));

    round_trips(socket, &[MIB - 1, MIB + 1, 2 * MIB + 4097]);
    let input = noise(3 * MIB, 13);
    let out = interactive(&[], socket, &["sh", "-c", "head -c 100000; exit 5"], &input);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == input[..100_000],
        "{} bytes came back",
        out.stdout.len()
    );
    assert_eq!(guest_tmp(&vm), tmp, "the guest's /tmp before and after");
    assert_eq!(
        guest_processes(&vm),
        processes,
        "the guest's processes before and after"
    );

    // A /tmp of 512 KiB: room for the directory, none for a chunk file
    // of 1 MiB, which waits while the program sleeps.
    let mount = ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", "/tmp"];
    let mounted = guest_run_with(&[], &vm.socket(), &mount, None);
    assert_eq!(mounted.json()["exit_code"], 0, "{mounted:?}");
    let input = noise(3 * MIB, 14);
    let out = interactive(&[], socket, &["sh", "-c", "sleep 3; cat >/dev/null"], &input);
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot feed the program's input: no space left in the guest"),
        "{stderr}"
    );
    assert_eq!(guest_tmp(&vm), ".\n..\n", "the small /tmp after");
    let unmounted = guest_run_with(&[], &vm.socket(), &["umount", "/tmp"], None);
    assert_eq!(unmounted.json()["exit_code"], 0, "{unmounted:?}");
    assert_eq!(
        guest_processes(&vm),
        processes,
        "the guest's processes before and after"
    );
}

/// `rsync -a --stats -e 'virtomate guest-run -i' FROM TO` in `dir`; its
/// statistics.
fn rsync(dir: &Path, from: &str, to: &str) -> String {
    let shell = format!("{} guest-run -i", crate::support::virtomate_path().display());
    let out = std::process::Command::new("rsync")
        .args(["-a", "--stats", "-e", &shell, from, to])
        .current_dir(dir)
        .output()
        .expect("rsync runs: scripts/install-deps.sh installs it");
    let stats = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stats}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stats
}

/// The bytes rsync's statistics say it sent and received.
fn rsync_traffic(stats: &str) -> u64 {
    stats
        .lines()
        .filter(|line| line.starts_with("Total bytes sent:") || line.starts_with("Total bytes received:"))
        .map(|line| {
            line.rsplit(' ')
                .next()
                .unwrap()
                .replace(',', "")
                .parse::<u64>()
                .unwrap()
        })
        .sum()
}

#[test]
#[ignore = "needs qemu-ga and rsync on the host"]
fn rsync_runs_over_it_both_ways_and_a_second_run_moves_almost_nothing() {
    let (agent, tmp) = host_agent();
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("big"), noise(300_000, 4)).unwrap();
    std::fs::write(tree.join("sub/empty"), b"").unwrap();
    std::os::unix::fs::symlink("sub/empty", tree.join("link")).unwrap();
    let inside = work.path().join("inside");
    // rsync takes HOST:PATH for remote only without a slash before the
    // colon: the agent's socket by its name in its own directory.
    let dir = agent.dir.path();
    let (from, to) = (
        format!("{}/", tree.display()),
        format!("qga.sock:{}/", inside.display()),
    );
    let first = rsync(dir, &from, &to);
    assert!(rsync_traffic(&first) > 300_000, "{first}");
    let same = |a: &Path, b: &Path| {
        let out = std::process::Command::new("diff")
            .arg("-r")
            .arg(a)
            .arg(b)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    };
    same(&tree, &inside);
    assert!(std::fs::symlink_metadata(inside.join("link"))
        .unwrap()
        .is_symlink());
    let second = rsync(dir, &from, &to);
    assert!(rsync_traffic(&second) < 2_000, "{second}");

    let back = work.path().join("back");
    let (from, to) = (
        format!("qga.sock:{}/", inside.display()),
        format!("{}/", back.display()),
    );
    rsync(dir, &from, &to);
    same(&tree, &back);
    let again = rsync(dir, &from, &to);
    assert!(rsync_traffic(&again) < 2_000, "{again}");
    assert!(listing(&tmp).is_empty(), "left behind: {:?}", listing(&tmp));
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn an_agent_without_guest_file_flush_is_refused_before_anything_runs() {
    let agent = HostAgent::start_with(&["--block-rpcs", "guest-file-flush"]);
    let marker = agent.dir.path().join("ran");
    let out = interactive(
        &[],
        agent.socket().to_str().unwrap(),
        &["touch", marker.to_str().unwrap()],
        b"input",
    );
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("lacks guest-file-flush"), "{stderr}");
    assert!(stderr.contains("nothing was started"), "{stderr}");
    assert!(!marker.exists(), "the program must not run");
}
