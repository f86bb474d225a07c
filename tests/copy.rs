//! `virtomate copy`: files into and out of the guest, against the real
//! qemu-ga on the host (whose "guest" is this host's file system, so the
//! test can look at it directly), the test VM, and a fake agent for what
//! the real one will not do on demand.

use std::io::Write;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use serde_json::json;

pub use crate::support::data::{log_lines, noise, sha256_hex};
use crate::support::fake_agent::FakeAgent;
use crate::support::host_agent::HostAgent;
use crate::support::test_vm::{agent_restart_when, TestVm};
use crate::support::{guest_run, guest_run_with, run, run_measured, virtomate, wait_until, Outcome};

const MIB: usize = 1 << 20;

fn copy(args: &[&str]) -> Outcome {
    let mut line = vec!["copy"];
    line.extend(args);
    run(&line, None)
}

/// `SOCKET:PATH`, the guest side of a copy.
fn guest(socket: &Path, path: &Path) -> String {
    format!("{}:{}", socket.display(), path.display())
}

/// The temporary directories a copy into `dir` made and left.
pub fn temporaries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(".virtomate-"))
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:")).unwrap();
    u32::from_str_radix(line.trim(), 8).unwrap()
}

/// `virtomate copy ARGS`, running, its standard streams piped (for a
/// `copy - DEST`, a pipe the test holds, to stop it mid-way).
pub(crate) fn spawn_copy(args: &[&str]) -> Child {
    virtomate()
        .arg("copy")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// What a spawned virtomate printed, and its exit status.
pub(crate) fn outcome(child: Child) -> Outcome {
    let output = child.wait_with_output().unwrap();
    Outcome {
        status: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The file a copy into `dir` is writing, once it holds data.
fn wait_for_data(dir: &Path) -> PathBuf {
    let mut data = PathBuf::new();
    wait_until(20, "the copy to write its first bytes", || {
        match temporaries(dir).first().map(|t| t.join("data")) {
            Some(file) if std::fs::metadata(&file).is_ok_and(|m| m.len() > 0) => {
                data = file;
                true
            }
            _ => false,
        }
    });
    data
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_file_goes_in_and_comes_back_byte_identical_with_its_mode() {
    let agent = HostAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.bin");
    let data = noise(3 * MIB + 17, 1);
    std::fs::write(&source, &data).unwrap();
    std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o640)).unwrap();
    let inside = dir.path().join("in-guest.bin");

    let out = copy(&[
        "--chunk-size",
        "64K",
        source.to_str().unwrap(),
        &guest(&agent.socket(), &inside),
    ]);
    let summary = out.json();
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(summary["bytes"], data.len());
    assert!(summary["seconds"].as_f64().unwrap() > 0.0, "{summary}");
    assert!(summary.get("sha256").is_none(), "{summary}");
    assert_eq!(std::fs::read(&inside).unwrap(), data);
    assert_eq!(mode(&inside), 0o640, "the local file's mode is kept");
    assert!(temporaries(dir.path()).is_empty());

    let back = dir.path().join("back.bin");
    let out = copy(&[&guest(&agent.socket(), &inside), back.to_str().unwrap()]);
    assert_eq!(out.json()["bytes"], data.len(), "{out:?}");
    assert_eq!(std::fs::read(&back).unwrap(), data);
    assert_eq!(
        mode(&back),
        0o640 & !umask(),
        "a new local file honours the umask"
    );

    // Into a directory: the file keeps its name there.
    let into = dir.path().join("sub");
    std::fs::create_dir(&into).unwrap();
    let out = copy(&[source.to_str().unwrap(), &guest(&agent.socket(), &into)]);
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(std::fs::read(into.join("source.bin")).unwrap(), data);
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn verify_compares_sha256_sums_both_ways_and_mode_sets_the_guest_files_mode() {
    let agent = HostAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let data = noise(MIB, 2);
    let inside = dir.path().join("secret");
    let out = run(
        &[
            "copy",
            "--verify",
            "--mode",
            "600",
            "-",
            &guest(&agent.socket(), &inside),
        ],
        Some(&data),
    );
    assert_eq!(out.json()["sha256"], sha256_hex(&data), "{out:?}");
    assert_eq!(mode(&inside), 0o600);
    let back = dir.path().join("back");
    let out = copy(&[
        "--verify",
        &guest(&agent.socket(), &inside),
        back.to_str().unwrap(),
    ]);
    assert_eq!(
        out.json(),
        json!({"bytes": MIB, "seconds": out.json()["seconds"], "sha256": sha256_hex(&data)})
    );
    // From standard input, with no local mode to keep: private.
    let out = run(
        &["copy", "-", &guest(&agent.socket(), &dir.path().join("piped"))],
        Some(b"x"),
    );
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(mode(&dir.path().join("piped")), 0o600);
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_copy_to_standard_output_prints_the_data_alone() {
    let agent = HostAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    let data = noise(200_000, 3);
    std::fs::write(&file, &data).unwrap();
    let output = virtomate()
        .args(["copy", &guest(&agent.socket(), &file), "-"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(output.stdout, data);
    assert!(output.stderr.is_empty(), "no progress when stderr is no terminal");
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn planted_symlinks_in_a_world_writable_directory_leave_their_targets_untouched() {
    let agent = HostAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("tmp");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    // At the destination, and at names a guesser might try.
    let dest = shared.join("upload");
    symlink(&victim, &dest).unwrap();
    for name in [".virtomate", ".virtomate-0", ".upload.virtomate", "upload.tmp"] {
        symlink(&victim, shared.join(name)).unwrap();
    }
    let dangling = shared.join("dangling");
    symlink(dir.path().join("nowhere"), &dangling).unwrap();

    let source = dir.path().join("source");
    std::fs::write(&source, b"new content").unwrap();
    for target in [&dest, &dangling] {
        let out = copy(&[source.to_str().unwrap(), &guest(&agent.socket(), target)]);
        assert_eq!(out.status, 0, "{out:?}");
        let meta = std::fs::symlink_metadata(target).unwrap();
        assert!(meta.is_file(), "the link is replaced by the file, not followed");
        assert_eq!(std::fs::read(target).unwrap(), b"new content");
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(!dir.path().join("nowhere").exists());
    assert!(
        temporaries(&shared).iter().all(|p| p.is_symlink()),
        "only the planted links are left"
    );
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn no_byte_is_written_before_the_file_is_private() {
    let agent = HostAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("tmp");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let dest = shared.join("key");
    let mut child = spawn_copy(&[
        "--mode",
        "600",
        "--chunk-size",
        "8K",
        "-",
        &guest(&agent.socket(), &dest),
    ]);
    let mut stdin = child.stdin.take().unwrap();
    // More than the agent's stdio buffer, so that it reaches the file.
    stdin.write_all(&[b's'; 8192]).unwrap();
    stdin.flush().unwrap();
    // The first chunk is in the file: see who could read it.
    let data = wait_for_data(&shared);
    let temp_dir = data.parent().unwrap();
    assert_eq!(
        mode(temp_dir),
        0o700,
        "only its owner can enter the temporary directory"
    );
    assert_eq!(
        std::fs::metadata(temp_dir).unwrap().uid(),
        std::fs::metadata("/proc/self").unwrap().uid()
    );
    assert_eq!(mode(&data), 0o600, "the file had its mode before its first byte");
    assert!(
        !dest.exists(),
        "nothing at the destination before the copy is complete"
    );
    stdin.write_all(b"ET").unwrap();
    drop(stdin);
    let out = outcome(child);
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(std::fs::read(&dest).unwrap().len(), 8194);
    assert_eq!(mode(&dest), 0o600);
    assert!(temporaries(&shared).is_empty());
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn bad_paths_are_path_errors_that_say_what_is_wrong() {
    let agent = HostAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let sock = agent.socket();
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let here = |p: &str| dir.path().join(p).to_str().unwrap().to_owned();
    let cases: Vec<(Vec<String>, &str)> = vec![
        // The guest path is missing: the agent's own words.
        (
            vec![guest(&sock, &dir.path().join("missing")), here("out")],
            "No such file or directory",
        ),
        // A directory where a file is expected, each side.
        (
            vec![guest(&sock, dir.path()), here("out")],
            "is a directory in the guest",
        ),
        (
            vec![
                dir.path().to_str().unwrap().into(),
                guest(&sock, &dir.path().join("x")),
            ],
            "is a directory",
        ),
        // The destination's directory is missing, each side.
        (
            vec![here("file"), guest(&sock, &dir.path().join("no/such/f"))],
            "does not exist in the guest",
        ),
        (vec![guest(&sock, &file), here("no/such/f")], "does not exist"),
        // The local file is missing, or its directory is a file.
        (
            vec![here("missing"), guest(&sock, &dir.path().join("y"))],
            "cannot open",
        ),
        (vec![guest(&sock, &file), here("file/f")], "Not a directory"),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = copy(&args);
        let message = out.error("PathError");
        assert!(message.contains(expected), "{args:?}: {message}");
    }
    assert!(!dir.path().join("out").exists());
    assert!(
        temporaries(dir.path()).is_empty(),
        "{:?}",
        temporaries(dir.path())
    );
    let out = guest_run(&sock, &["echo", "-n", "next"]);
    assert_eq!(out.json()["stdout"], "next", "the next command works");
}

#[test]
fn a_copy_needs_exactly_one_guest_side() {
    for args in [&["a", "b"][..], &["vm:/a", "vm:/b"], &["f", "vm:relative"]] {
        let out = copy(args);
        assert_eq!(out.status, 2, "{args:?}: {out:?}");
    }
    let out = copy(&["--mode", "999", "f", "vm:/x"]);
    assert_eq!(out.status, 2);
    let out = copy(&["--chunk-size", "1G", "f", "vm:/x"]);
    assert_eq!(out.status, 2);
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn blocked_file_commands_are_named_and_a_copy_out_needs_no_guest_exec() {
    let agent = HostAgent::start_with(&["--block-rpcs", "guest-file-open"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, b"data").unwrap();
    let out = copy(&[
        &guest(&agent.socket(), &file),
        dir.path().join("o").to_str().unwrap(),
    ]);
    let message = out.error("AgentCommandError");
    assert!(message.contains("guest-file-open has been disabled"), "{message}");

    let agent = HostAgent::start_with(&["--block-rpcs", "guest-exec"]);
    let out = copy(&[
        file.to_str().unwrap(),
        &guest(&agent.socket(), &dir.path().join("in")),
    ]);
    let message = out.error("AgentCommandError");
    assert!(message.contains("guest-exec has been disabled"), "{message}");
    assert!(!dir.path().join("in").exists());
    let out = copy(&[
        &guest(&agent.socket(), &file),
        dir.path().join("o").to_str().unwrap(),
    ]);
    assert_eq!(out.json()["bytes"], 4, "{out:?}");
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn ctrl_c_mid_copy_leaves_no_file_and_no_temporary_and_the_next_copy_works() {
    let agent = HostAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    let mut child = spawn_copy(&["--chunk-size", "4K", "-", &guest(&agent.socket(), &dest)]);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&[7; 8192]).unwrap();
    wait_for_data(dir.path());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = outcome(child);
    let message = out.error("Interrupted");
    assert!(message.contains("removed the temporary"), "{message}");
    assert!(message.contains("the destination was not touched"), "{message}");
    assert!(!dest.exists());
    assert!(
        temporaries(dir.path()).is_empty(),
        "{:?}",
        temporaries(dir.path())
    );
    drop(stdin);

    let out = run(&["copy", "-", &guest(&agent.socket(), &dest)], Some(b"after"));
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(std::fs::read(&dest).unwrap(), b"after");
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn an_agent_gone_mid_copy_says_what_it_left_where() {
    let mut agent = HostAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    std::fs::write(&dest, b"old").unwrap();
    let mut child = spawn_copy(&["--chunk-size", "4K", "-", &guest(&agent.socket(), &dest)]);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&[7; 8192]).unwrap();
    let data = wait_for_data(dir.path());
    agent.kill();
    let _ = stdin.write_all(&[7; 8192]);
    drop(stdin);
    let out = outcome(child);
    let message = out.error("AgentDisconnected");
    let temp_dir = data.parent().unwrap().display().to_string();
    assert!(message.contains(&temp_dir), "names what is left: {message}");
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        b"old",
        "the destination is untouched"
    );

    // A new agent: the next copy works.
    let agent = HostAgent::start_in(tempfile::TempDir::new_in(dir.path()).unwrap(), &[]);
    let out = run(&["copy", "-", &guest(&agent.socket(), &dest)], Some(b"new"));
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(std::fs::read(&dest).unwrap(), b"new");
}

#[test]
#[ignore = "needs qemu-ga on the host and GNU time"]
fn sixty_four_mib_each_way_in_bounded_memory() {
    let agent = HostAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("big");
    let data = noise(64 * MIB, 4);
    std::fs::write(&source, &data).unwrap();
    let inside = dir.path().join("inside");
    let (out, rss_in) = run_measured(
        &["copy", source.to_str().unwrap(), &guest(&agent.socket(), &inside)],
        None,
    );
    assert_eq!(out.json()["bytes"], 64 * MIB, "{out:?}");
    let back = dir.path().join("back");
    let (out, rss_out) = run_measured(
        &["copy", &guest(&agent.socket(), &inside), back.to_str().unwrap()],
        None,
    );
    assert_eq!(out.json()["bytes"], 64 * MIB, "{out:?}");
    assert!(std::fs::read(&back).unwrap() == data, "the copy back differs");
    for (way, rss_kib) in [("in", rss_in), ("out", rss_out)] {
        assert!(rss_kib < 64 * 1024, "peak RSS {rss_kib} KiB copying {way}");
    }
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn progress_shows_on_demand_and_not_by_default_off_a_terminal() {
    let agent = HostAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("d").to_str().unwrap().to_owned();
    let data = noise(256 * 1024, 5);
    let quiet = run(
        &["copy", "-", &guest(&agent.socket(), Path::new(&dest))],
        Some(&data),
    );
    assert_eq!((quiet.status, quiet.stderr.as_str()), (0, ""), "{quiet:?}");
    let shown = run(
        &[
            "copy",
            "--progress",
            "-",
            &guest(&agent.socket(), Path::new(&dest)),
        ],
        Some(&data),
    );
    assert_eq!(shown.status, 0, "{shown:?}");
    assert!(
        shown.stderr.contains("KiB") || shown.stderr.contains("B/s"),
        "{shown:?}"
    );
}

/// A reply to `guest-file-read` claiming more than was asked is refused.
#[test]
fn a_read_reply_longer_than_asked_is_a_protocol_error_and_the_handle_is_closed() {
    let agent = FakeAgent::serve(|mut conn| {
        conn.sync();
        // `stat`, for the file's type and mode: a guest without guest-exec.
        conn.refuse(
            "guest-exec",
            "GenericError",
            "The command guest-exec has been disabled",
        );
        conn.answer("guest-file-open", json!(5));
        let request = conn.request();
        assert_eq!(request["arguments"]["count"], 2, "{request}");
        conn.reply(&json!({"return": {"count": 4, "buf-b64": "AAAAAA==", "eof": true}, "id": request["id"]}));
        conn.answer("guest-file-close", json!({}));
        conn.wait_for_close();
    });
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out");
    let out = copy(&[
        "--chunk-size",
        "2",
        &format!("{}:/f", agent.socket().display()),
        dest.to_str().unwrap(),
    ]);
    let message = out.error("ProtocolError");
    assert!(message.contains("at most 2 were asked for"), "{message}");
    assert!(message.contains("closed the file in the guest"), "{message}");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "no local file left"
    );
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn compress_moves_a_compressible_file_both_ways_byte_identical() {
    let agent = HostAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("app.log");
    let data = log_lines(5 * MIB + 11);
    std::fs::write(&source, &data).unwrap();
    std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o640)).unwrap();
    let inside = dir.path().join("in-guest.log");
    let out = copy(&[
        "--compress",
        "--verify",
        "--chunk-size",
        "64K",
        source.to_str().unwrap(),
        &guest(&agent.socket(), &inside),
    ]);
    assert_eq!(out.json()["sha256"], sha256_hex(&data), "{out:?}");
    assert_eq!(out.json()["bytes"], data.len(), "{out:?}");
    assert!(std::fs::read(&inside).unwrap() == data);
    assert_eq!(mode(&inside), 0o640, "the local file's mode is kept");
    assert!(temporaries(dir.path()).is_empty());

    let back = dir.path().join("back.log");
    let out = copy(&[
        "--compress",
        "--verify",
        &guest(&agent.socket(), &inside),
        back.to_str().unwrap(),
    ]);
    assert_eq!(out.json()["sha256"], sha256_hex(&data), "{out:?}");
    assert_eq!(out.json()["bytes"], data.len(), "{out:?}");
    assert!(std::fs::read(&back).unwrap() == data);
    assert!(temporaries(dir.path()).is_empty());

    // Incompressible data and an empty file come through too.
    let noisy = noise(MIB + 5, 9);
    let out = run(
        &[
            "copy",
            "--compress",
            "--verify",
            "-",
            &guest(&agent.socket(), &inside),
        ],
        Some(&noisy),
    );
    assert_eq!(out.json()["sha256"], sha256_hex(&noisy), "{out:?}");
    let out = run(
        &["copy", "--compress", "-", &guest(&agent.socket(), &inside)],
        Some(b""),
    );
    assert_eq!(out.json()["bytes"], 0, "{out:?}");
    let out = copy(&["--compress", &guest(&agent.socket(), &inside), "-"]);
    assert_eq!(out.status, 0, "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

/// `--compress` on a guest that cannot run gzip: said plainly, before
/// anything is written.
#[test]
fn compress_without_gzip_in_the_guest_says_so_and_writes_nothing() {
    let agent = FakeAgent::serve(|mut conn| {
        conn.sync();
        conn.answer("guest-exec", json!({"pid": 1}));
        conn.answer("guest-exec-status", json!({"exited": true, "exitcode": 1})); // test -d
        let probe = conn.request();
        assert_eq!(probe["arguments"]["path"], "gzip", "{probe}");
        conn.reply(&json!({"error": {"class": "GenericError", "desc": concat!(
            "Guest agent command failed, error was 'Failed to execute child process ",
            "“gzip” (No such file or directory)'"
        )}, "id": probe["id"]}));
        conn.wait_for_close();
    });
    let out = run(
        &[
            "copy",
            "--compress",
            "-",
            &format!("{}:/dest", agent.socket().display()),
        ],
        Some(b"hi"),
    );
    let message = out.error("AgentCommandError");
    assert!(message.contains("the guest cannot run gzip"), "{message}");
    assert!(
        message.contains("“gzip” (No such file or directory)"),
        "{message}"
    );
    assert!(message.contains("without --compress"), "{message}");
}

/// A guest without `sha256sum` cannot verify: said plainly, and the file
/// is not put in place.
#[test]
fn verify_without_sha256sum_in_the_guest_says_so_and_leaves_nothing() {
    let agent = FakeAgent::serve(|mut conn| {
        conn.sync();
        let exec = |conn: &mut crate::support::fake_agent::Conn, code: i32| {
            conn.answer("guest-exec", json!({"pid": 1}));
            conn.answer("guest-exec-status", json!({"exited": true, "exitcode": code}));
        };
        exec(&mut conn, 1); // test -d: not a directory
        exec(&mut conn, 0); // mkdir
        conn.answer("guest-file-open", json!(3));
        exec(&mut conn, 0); // chmod
        conn.answer("guest-file-write", json!({"count": 2, "eof": false}));
        conn.answer("guest-file-seek", json!({"position": 2, "eof": false}));
        conn.answer("guest-file-close", json!({}));
        conn.refuse(
            "guest-exec",
            "GenericError",
            concat!(
                "Guest agent command failed, error was 'Failed to execute child process ",
                "“sha256sum” (No such file or directory)'"
            ),
        );
        let rm = conn.request();
        assert_eq!(rm["arguments"]["path"], "rm", "{rm}");
        conn.reply(&json!({"return": {"pid": 2}, "id": rm["id"]}));
        conn.answer("guest-exec-status", json!({"exited": true, "exitcode": 0}));
        conn.wait_for_close();
    });
    let out = run(
        &[
            "copy",
            "--verify",
            "-",
            &format!("{}:/dest", agent.socket().display()),
        ],
        Some(b"hi"),
    );
    let message = out.error("VerificationError");
    assert!(message.contains("cannot compute a SHA-256"), "{message}");
    assert!(
        message.contains("removed the temporary /.virtomate-"),
        "{message}"
    );
}

#[test]
#[ignore = "needs the test VM"]
fn a_file_goes_in_and_out_of_the_vm_verified_and_a_full_disk_leaves_nothing() {
    let vm = TestVm::boot("copy");
    let socket = vm.socket();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    let data = noise(2 * MIB + 3, 6);
    std::fs::write(&source, &data).unwrap();
    let out = copy(&[
        "--verify",
        source.to_str().unwrap(),
        &format!("{}:/tmp/file", socket.display()),
    ]);
    assert_eq!(out.json()["sha256"], sha256_hex(&data), "{out:?}");
    let back = dir.path().join("back");
    let out = copy(&[
        "--verify",
        &format!("{}:/tmp/file", socket.display()),
        back.to_str().unwrap(),
    ]);
    assert_eq!(out.json()["sha256"], sha256_hex(&data), "{out:?}");
    assert!(std::fs::read(&back).unwrap() == data);

    // Compressed, both ways.
    let log = log_lines(3 * MIB + 1);
    std::fs::write(&source, &log).unwrap();
    let out = copy(&[
        "--compress",
        "--verify",
        source.to_str().unwrap(),
        &format!("{}:/tmp/log", socket.display()),
    ]);
    assert_eq!(out.json()["sha256"], sha256_hex(&log), "{out:?}");
    let out = copy(&[
        "--compress",
        "--verify",
        &format!("{}:/tmp/log", socket.display()),
        back.to_str().unwrap(),
    ]);
    assert_eq!(out.json()["sha256"], sha256_hex(&log), "{out:?}");
    assert!(std::fs::read(&back).unwrap() == log);
    let out = guest_run(&socket, &["sh", "-c", "ls -A /tmp | grep -c virtomate"]);
    assert_eq!(
        out.json()["stdout"],
        "0\n",
        "no private directory is left: {out:?}"
    );
    std::fs::write(&source, &data).unwrap();

    // A 1 MiB tmpfs, and 2 MiB to copy into it.
    let out = guest_run(
        &socket,
        &[
            "sh",
            "-c",
            "mkdir -p /mnt/small && mount -t tmpfs -o size=1m tmpfs /mnt/small",
        ],
    );
    assert_eq!(out.json()["exit_code"], 0, "{out:?}");
    let out = copy(&[
        source.to_str().unwrap(),
        &format!("{}:/mnt/small/file", socket.display()),
    ]);
    let message = out.error("AgentCommandError");
    assert!(message.contains("No space left on device"), "{message}");
    assert!(
        message.contains("removed the temporary /mnt/small/.virtomate-"),
        "{message}"
    );
    let out = guest_run(&socket, &["ls", "-A", "/mnt/small"]);
    assert_eq!(out.json()["stdout"], json!(null), "nothing is left: {out:?}");
    let out = run(
        &["copy", "-", &format!("{}:/mnt/small/small", socket.display())],
        Some(b"fits"),
    );
    assert_eq!(out.status, 0, "the next copy works: {out:?}");
}

#[test]
#[ignore = "needs the test VM"]
fn an_agent_restarted_mid_copy_gives_a_clear_error_and_the_next_copy_works() {
    let vm = TestVm::boot("copy-restart");
    let socket = vm.socket();
    // The agent restarted once the copy's data file in its private
    // directory holds data (the copy is writing). (The directory alone
    // would be seen while the copy still waits for its mkdir.)
    let program = agent_restart_when("[ -s \"$(ls /tmp/.virtomate-*/data 2>/dev/null | head -n 1)\" ]");
    let out = guest_run(&socket, &["sh", "-c", &program]);
    assert_eq!(out.json()["exit_code"], 0, "{out:?}");
    let dest = format!("{}:/tmp/dest", socket.display());
    let mut child = spawn_copy(&["--reply-timeout", "5", "--chunk-size", "4K", "-", &dest]);
    let mut stdin = child.stdin.take().unwrap();
    // Data trickles in until the copy gives up (it no longer reads), 60 s at
    // most. The pace is the source's, a slow one that keeps the copy under
    // way across the restart: not a wait of the test.
    for _ in 0..600 {
        if stdin.write_all(&[7; 4096]).is_err() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(stdin);
    let out = outcome(child);
    let json = out.json();
    let message = json["message"].as_str().unwrap_or_default();
    // The new agent does not know the handle, if it got our request (or
    // could not read the rest of one the old agent had begun); if the old
    // one took it along, no reply ever comes.
    let known = [
        "no longer knows the open file",
        "could not read virtomate's request",
    ];
    match json["type"].as_str() {
        Some("AgentDisconnected") => assert!(known.iter().any(|m| message.contains(m)), "{json}"),
        Some("AgentTimeout") => {}
        _ => panic!("not an error of a restarted agent: {out:?}"),
    }
    assert!(message.contains("the destination was not touched"), "{json}");
    let out = guest_run_with(&["--timeout", "30"], &socket, &["sh", "-c", "ls -A /tmp"], None);
    assert_eq!(
        out.json()["stdout"],
        json!(null),
        "no file, no temporary: {out:?}"
    );
    let out = run(&["copy", "--timeout", "30", "-", &dest], Some(b"next"));
    assert_eq!(out.status, 0, "the next copy works: {out:?}");
}

/// The local temporary file a copy out of the guest writes into `dir`,
/// once it holds data.
fn wait_for_local_data(dir: &Path) {
    wait_until(60, "the copy to write its first bytes here", || {
        temporaries(dir)
            .iter()
            .any(|t| std::fs::metadata(t).is_ok_and(|m| m.is_file() && m.len() > 0))
    });
}

/// `--compress` out of the guest reads gzip's output while gzip writes it:
/// a missing file, a signal mid-way and a full `/tmp` in the guest each
/// leave no file, no private directory and no gzip behind.
#[test]
#[ignore = "needs the test VM"]
fn compress_out_of_the_vm_stopped_or_failing_leaves_nothing_behind() {
    let vm = TestVm::boot("copy-compress-out");
    let socket = vm.socket();
    let dir = tempfile::tempdir().unwrap();
    let back = dir.path().join("back.log");
    let in_guest = |path: &str| format!("{}:{path}", socket.display());
    let leftovers = || {
        let script = "ls -A /tmp | grep -c virtomate; ps | grep -c '[g]zip -1'";
        let out = guest_run(&socket, &["sh", "-c", script]);
        out.json()["stdout"].as_str().unwrap().to_owned()
    };

    let out = copy(&["--compress", &in_guest("/nonexistent"), back.to_str().unwrap()]);
    let message = out.error("PathError");
    assert!(
        message.contains("cannot compress /nonexistent in the guest"),
        "{message}"
    );
    assert!(message.to_lowercase().contains("no such file"), "{message}");
    assert!(!back.exists() && temporaries(dir.path()).is_empty());
    assert_eq!(leftovers(), "0\n0\n");

    // 48 MiB of log lines: gzip takes seconds under TCG.
    let make = "yes '2026-12-02T00:00:00Z INFO worker request served' | head -c 50331648 > /root/big.log";
    assert_eq!(guest_run(&socket, &["sh", "-c", make]).json()["exit_code"], 0);
    let child = virtomate()
        .args([
            "copy",
            "--compress",
            &in_guest("/root/big.log"),
            back.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_local_data(dir.path());
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = outcome(child);
    let message = out.error("Interrupted");
    assert!(message.contains("stopped gzip"), "{message}");
    assert!(message.contains("removed the temporary"), "{message}");
    assert!(!back.exists() && temporaries(dir.path()).is_empty());
    assert_eq!(leftovers(), "0\n0\n");

    // gzip's output fills a 1 MiB /tmp.
    let small_tmp = "head -c 3145728 /dev/urandom > /root/noise.bin && mount -t tmpfs -o size=1m tmpfs /tmp";
    assert_eq!(
        guest_run(&socket, &["sh", "-c", small_tmp]).json()["exit_code"],
        0
    );
    let out = copy(&["--compress", &in_guest("/root/noise.bin"), back.to_str().unwrap()]);
    let message = out.error("AgentCommandError");
    assert!(message.contains("no space left on the file system"), "{message}");
    assert!(!back.exists() && temporaries(dir.path()).is_empty());
    assert_eq!(leftovers(), "0\n0\n");
}

/// The local temporary file a copy out of the guest is writing into `dir`,
/// once it holds data.
fn local_temporary(dir: &Path) -> PathBuf {
    wait_for_local_data(dir);
    temporaries(dir).into_iter().find(|t| t.is_file()).unwrap()
}

/// As `cp`: an existing local file keeps its mode, a new one gets the guest
/// file's less the umask, and the temporary is private until then.
#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_file_copied_out_keeps_its_privacy_and_an_existing_destination_its_mode() {
    let agent = HostAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let inside = dir.path().join("guest");
    let local = dir.path().join("local");
    std::fs::create_dir(&inside).unwrap();
    std::fs::create_dir(&local).unwrap();
    let secret = inside.join("secret");
    std::fs::write(&secret, b"private").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let public = inside.join("public");
    std::fs::write(&public, b"public").unwrap();
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644)).unwrap();

    let new = local.join("new");
    let out = copy(&[&guest(&agent.socket(), &secret), new.to_str().unwrap()]);
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(mode(&new), 0o600 & !umask(), "a new file: the guest file's mode");

    let existing = local.join("existing");
    std::fs::write(&existing, b"old").unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = copy(&[&guest(&agent.socket(), &public), existing.to_str().unwrap()]);
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(std::fs::read(&existing).unwrap(), b"public");
    assert_eq!(mode(&existing), 0o600, "an existing file keeps its mode");

    // Mid-way, the temporary is private whatever the file becomes.
    let big = inside.join("big");
    std::fs::write(&big, noise(8 * MIB, 10)).unwrap();
    std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o644)).unwrap();
    let back = local.join("big");
    let child = virtomate()
        .args(["copy", "--chunk-size", "4K", &guest(&agent.socket(), &big)])
        .arg(&back)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let temp = local_temporary(&local);
    assert_eq!(mode(&temp), 0o600, "the temporary is private");
    let out = outcome(child);
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(mode(&back), 0o644 & !umask());
}

/// `copy f VM:/dir/` where `/dir/f` is a directory: refused as a path
/// before a byte is sent, with or without `--compress`.
#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_destination_that_is_a_directory_in_the_target_directory_is_refused_before_sending() {
    let agent = HostAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("f");
    std::fs::write(&source, noise(MIB, 11)).unwrap();
    let into = dir.path().join("into");
    std::fs::create_dir_all(into.join("f")).unwrap();
    let with_slash = format!("{}/", guest(&agent.socket(), &into));
    for dest in [with_slash, guest(&agent.socket(), &into)] {
        for extra in [&[][..], &["--compress"]] {
            let mut args = vec!["--trace", "copy"];
            args.extend(extra);
            args.extend([source.to_str().unwrap(), &dest]);
            let out = run(&args, None);
            let message = out.error("PathError");
            assert!(
                message.contains("is a directory in the guest"),
                "{args:?}: {message}"
            );
            assert!(
                !out.stderr.contains("guest-file-write") && !out.stderr.contains("guest-file-open"),
                "{args:?}: nothing is sent: {}",
                out.stderr
            );
        }
    }
    assert!(into.join("f").is_dir());
    assert!(temporaries(&into).is_empty(), "{:?}", temporaries(&into));
}

/// A FIFO or a device in the guest is no file to copy: refused before a
/// byte is read from it.
#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_guest_fifo_or_device_is_refused_as_not_a_regular_file_before_reading() {
    use std::io::Read;
    let agent = HostAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // Held open for reading and writing: the agent's open does not block.
    let mut held = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    held.write_all(b"queued").unwrap();
    let back = dir.path().join("back");
    let cases = [
        (vec![guest(&agent.socket(), &fifo)], "a FIFO"),
        (
            vec![guest(&agent.socket(), Path::new("/dev/null"))],
            "a character device",
        ),
        (
            vec![
                "--compress".to_owned(),
                guest(&agent.socket(), Path::new("/dev/null")),
            ],
            "a character device",
        ),
    ];
    for (mut args, what) in cases {
        args.insert(0, "copy".to_owned());
        args.push(back.to_str().unwrap().to_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&args, None);
        let message = out.error("PathError");
        assert!(message.contains("is not a regular file"), "{args:?}: {message}");
        assert!(message.contains(what), "{args:?}: {message}");
        assert!(!back.exists() && temporaries(dir.path()).is_empty());
    }
    let mut queued = [0; 6];
    held.read_exact(&mut queued).unwrap();
    assert_eq!(&queued, b"queued", "nothing was read from the FIFO");
}

/// `--progress` off a terminal: plain lines (bytes, rate, time), no bar
/// or spinner glyphs, both ways.
#[test]
#[ignore = "needs qemu-ga on the host"]
fn forced_progress_off_a_terminal_is_plain_lines() {
    let agent = HostAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let inside = dir.path().join("f");
    let data = noise(2 * MIB, 12);
    let pushed = run(
        &[
            "copy",
            "--progress",
            "--chunk-size",
            "64K",
            "-",
            &guest(&agent.socket(), &inside),
        ],
        Some(&data),
    );
    assert_eq!(pushed.status, 0, "{pushed:?}");
    let back = dir.path().join("back");
    let pulled = copy(&[
        "--progress",
        "--chunk-size",
        "64K",
        &guest(&agent.socket(), &inside),
        back.to_str().unwrap(),
    ]);
    assert_eq!(pulled.status, 0, "{pulled:?}");
    for out in [pushed, pulled] {
        assert!(out.stderr.contains("B/s"), "{out:?}");
        for line in out.stderr.lines() {
            assert!(
                line.is_ascii() && !line.contains('[') && !line.trim().is_empty(),
                "a plain line, no bar: {line:?}"
            );
        }
    }
    assert!(std::fs::read(&back).unwrap() == data);
}

/// This process's tag in the names of its private directories in the
/// guest (README: boot id, pid namespace, pid, start time).
fn host_tag(pid: u32, start: &str) -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let ns: String = ns
        .to_string_lossy()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    format!("{}.{ns}.{pid}.{start}", boot.trim().replace('-', ""))
}

/// A private directory of a copy that was killed (its host process is
/// gone) is removed by the next copy into the same directory; a live
/// process's, a foreign one's or one owned by someone else are left.
#[test]
#[ignore = "needs qemu-ga on the host"]
fn the_next_copy_removes_the_temporary_a_killed_copy_left_in_the_guest() {
    let agent = HostAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    let random = "0123456789abcdef0123456789abcdef";
    let make = |name: String, mode: u32| {
        let path = dir.path().join(name);
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("data"), b"half").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    };
    let stale = make(format!(".virtomate-{random}-{}", host_tag(gone_pid, "1")), 0o700);
    let live = make(format!(".virtomate-{random}-{}", own_host_tag()), 0o700);
    let open = make(format!(".virtomate-{random}-{}", host_tag(gone_pid, "2")), 0o755);
    let untagged = make(format!(".virtomate-{random}"), 0o700);
    let foreign = make(
        format!(".virtomate-{random}-{}.1.{gone_pid}.1", "0".repeat(32)),
        0o700,
    );

    let out = run(
        &["copy", "-", &guest(&agent.socket(), &dir.path().join("f"))],
        Some(b"x"),
    );
    assert_eq!(out.status, 0, "{out:?}");
    assert!(!stale.exists(), "the killed copy's temporary is removed");
    assert!(live.join("data").exists(), "a live copy's is left");
    assert!(open.exists(), "a directory not private as copy makes it is left");
    assert!(untagged.exists(), "one whose maker cannot be told is left");
    assert!(foreign.exists(), "another host's (or boot's) is left");
    assert_eq!(temporaries(dir.path()).len(), 4, "{:?}", temporaries(dir.path()));
}

/// A copy out killed (SIGKILL) while it writes its temporary beside the
/// destination leaves it; the next copy out into the same directory
/// removes it, and leaves a live copy's.
#[test]
#[ignore = "needs qemu-ga on the host"]
fn the_next_copy_out_removes_the_temporary_a_killed_copy_left_on_the_host() {
    let mut agent = HostAgent::start();
    let source = tempfile::tempdir().unwrap();
    let big = source.path().join("big");
    std::fs::write(&big, vec![7u8; 32 << 20]).unwrap();
    let small = source.path().join("small");
    std::fs::write(&small, b"small").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let into = format!("{}/", dir.path().display());
    let killed = spawn_copy(&["--chunk-size", "4K", &guest(&agent.socket(), &big), &into]);
    wait_for_local_data(dir.path());
    let left = temporaries(dir.path());
    agent.kill_client(killed);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(temporaries(dir.path()), left, "SIGKILL cleans nothing up");
    // A copy out running meanwhile (this test's own process stands in for
    // it: its tag names a live process) keeps its temporary.
    let own = left[0].file_name().unwrap().to_string_lossy().into_owned();
    let (prefix, _) = own.rsplit_once('-').unwrap();
    let live = dir.path().join(format!("{prefix}-{}", own_host_tag()));
    std::fs::write(&live, b"half").unwrap();
    std::fs::set_permissions(&live, std::fs::Permissions::from_mode(0o600)).unwrap();

    let out = copy(&[&guest(&agent.socket(), &small), &into]);
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(std::fs::read(dir.path().join("small")).unwrap(), b"small");
    assert_eq!(
        temporaries(dir.path()),
        vec![live],
        "the killed copy's temporary is removed"
    );
}

/// This process's tag, as a copy's temporary names its maker.
fn own_host_tag() -> String {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let start = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(19)
        .unwrap()
        .to_owned();
    host_tag(std::process::id(), &start)
}

/// Where a run notes a big request on its way to the agent of `socket`:
/// beside the channel's lock files (README: errors).
fn request_note(socket: &Path) -> PathBuf {
    let lock = virtomate_protocol::ChannelLock::for_socket(socket).expect("a safe place for lock files");
    lock.path().with_extension("request")
}

/// A copy killed while it sends a 16 MiB chunk leaves the agent reading
/// that request for seconds: the next command then either gets its
/// answer, or says that the agent is most likely still busy with it,
/// never that the agent may not run. Its answered handshake removes the
/// killed copy's note.
#[test]
#[ignore = "needs the test VM"]
fn the_command_after_a_copy_killed_mid_request_says_the_agent_is_busy_with_it() {
    use std::io::BufRead;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let vm = TestVm::boot("copy-killed-big");
    let socket = vm.socket();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    std::fs::write(&source, noise(17 * MIB, 11)).unwrap();
    let note = request_note(&socket);
    let dest = guest(&socket, Path::new("/tmp/big"));
    let args = [
        "--trace",
        "copy",
        "--chunk-size",
        "16M",
        source.to_str().unwrap(),
        &dest,
    ];
    let mut child = virtomate()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The trace shows how much of the first chunk's request (about 22 MB
    // of Base64) has gone out. Killed with most of it sent, the copy
    // leaves the agent seconds of reading (here: about 4 s), longer than
    // the next command's --timeout 2.
    let sent = Arc::new(AtomicUsize::new(0));
    let counting = sent.clone();
    let mut trace = std::io::BufReader::new(child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let (mut line, mut writing) = (Vec::new(), false);
        while trace.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let text = String::from_utf8_lossy(&line);
            writing |= text.contains(r#">> {"execute":"guest-file-write""#);
            if writing && text.contains("] >> ") {
                counting.fetch_add(line.len(), Ordering::SeqCst);
            }
            line.clear();
        }
    });
    wait_until(120, "the copy to send most of its first chunk", || {
        sent.load(Ordering::SeqCst) >= 18_000_000
    });
    assert!(note.exists(), "the copy notes its big request");
    let pid = child.id();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    assert!(note.exists(), "a killed copy leaves its note");

    let small = guest(&socket, Path::new("/tmp/small"));
    let out = run(&["--timeout", "2", "copy", "-", &small], Some(b"next"));
    eprintln!("the command after the kill: {out:?}"); // which case this run saw
    if out.status != 0 {
        let message = out.error("AgentTimeout");
        let busy =
            format!("most likely still busy with a request of 21.3 MiB that process {pid} (gone) sent");
        assert!(message.contains(&busy), "{message}");
        assert!(message.contains("try again in a few seconds"), "{message}");
        assert!(
            !message.contains("check that the QEMU Guest Agent runs"),
            "{message}"
        );
        let out = run(&["--timeout", "60", "copy", "-", &small], Some(b"next"));
        assert_eq!(
            out.status, 0,
            "the agent answers once it has read the request: {out:?}"
        );
    }
    assert!(!note.exists(), "an answered handshake removes the note");
}

/// A copy in big chunks notes each chunk's request on its way to the
/// agent and removes the note once the reply came: a run that ends
/// normally leaves none.
#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_copy_in_big_chunks_leaves_no_note_of_its_requests() {
    let agent = HostAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    let data = noise(9 * MIB, 12);
    std::fs::write(&source, &data).unwrap();
    let dest = dir.path().join("dest");
    let out = copy(&[
        "--chunk-size",
        "4M",
        source.to_str().unwrap(),
        &guest(&agent.socket(), &dest),
    ]);
    assert_eq!(out.status, 0, "{out:?}");
    assert!(std::fs::read(&dest).unwrap() == data);
    assert!(!request_note(&agent.socket()).exists());
}
