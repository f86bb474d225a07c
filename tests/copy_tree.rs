//! `virtomate copy -r`: directory trees into and out of the guest, against
//! the real qemu-ga on the host (whose "guest" is this host, so a fake
//! `tar` first in its PATH plays a hostile guest) and the test VM
//! (busybox tar).

use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde_json::Value;
use tar::{EntryType, Header};

use crate::copy::{outcome, spawn_copy, temporaries};
use crate::support::host_agent::HostAgent;
use crate::support::test_vm::TestVm;
use crate::support::{guest_run, run, Outcome};

fn copy(args: &[&str]) -> Outcome {
    let mut line = vec!["copy"];
    line.extend(args);
    run(&line, None)
}

fn guest(socket: &Path, path: &Path) -> String {
    format!("{}:{}", socket.display(), path.display())
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The tree every honest copy carries: nested directories, an empty file,
/// an empty directory, names with a space and a newline, links, modes
/// 0755 and 0600.
pub fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("a/b/c")).unwrap();
    std::fs::create_dir(root.join("empty dir")).unwrap();
    std::fs::write(root.join("a/b/c/deep.txt"), "deep\n".repeat(1000)).unwrap();
    std::fs::write(root.join("a/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    set_mode(&root.join("a/run.sh"), 0o755);
    std::fs::write(root.join("secret"), "key").unwrap();
    set_mode(&root.join("secret"), 0o600);
    std::fs::write(root.join("empty"), "").unwrap();
    std::fs::write(root.join("with space"), "s").unwrap();
    std::fs::write(root.join("new\nline"), "n").unwrap();
    symlink("a/b", root.join("link")).unwrap();
    symlink("/nonexistent/target", root.join("dangling")).unwrap();
    set_mode(&root.join("a"), 0o755);
}

/// Every entry below `root`: its relative name, type, mode and content
/// (a link's target), links never followed.
pub fn describe(root: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for child in std::fs::read_dir(&dir).unwrap() {
            let path = child.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let name = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let what = if meta.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                pending.push(path.clone());
                format!("dir {:o}", meta.mode() & 0o7777)
            } else {
                let data = std::fs::read(&path).unwrap();
                format!(
                    "file {:o} {} bytes {:?}",
                    meta.mode() & 0o7777,
                    data.len(),
                    &data[..data.len().min(8)]
                )
            };
            found.push((name, what));
        }
    }
    found.sort();
    found
}

fn umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:")).unwrap();
    u32::from_str_radix(line.trim(), 8).unwrap()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A host agent whose temporary directory (where followed output goes) is
/// the test's, to see that nothing is left there.
fn agent_with(env: &[(&str, &str)]) -> (HostAgent, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let mut env = env.to_vec();
    env.push(("TMPDIR", tmp.path().to_str().unwrap()));
    let agent = HostAgent::start_in_with_env(tempfile::tempdir().unwrap(), &[], &env);
    (agent, tmp)
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_tree_goes_into_the_host_agent_and_comes_back_whole_plain_and_compressed() {
    let (agent, agent_tmp) = agent_with(&[]);
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    make_tree(&source);
    let expected = describe(&source);
    for (n, compress) in [(1, false), (2, true)] {
        let flags: &[&str] = if compress { &["-r", "--compress"] } else { &["-r"] };
        let inside = dir.path().join(format!("in-guest-{n}"));
        let mut args = flags.to_vec();
        let target = guest(&agent.socket(), &inside);
        args.extend([source.to_str().unwrap(), target.as_str()]);
        let out = copy(&args);
        assert_eq!(out.status, 0, "{out:?}");
        let summary = out.json();
        assert_eq!(summary["files"], 6, "{summary}");
        assert_eq!(summary["directories"], 4, "{summary}");
        assert_eq!(summary["symlinks"], 2, "{summary}");
        assert_eq!(
            describe(&inside),
            expected,
            "into the guest, compress: {compress}"
        );

        let back = dir.path().join(format!("back-{n}"));
        let mut args = flags.to_vec();
        args.extend([target.as_str(), back.to_str().unwrap()]);
        let out = copy(&args);
        assert_eq!(out.status, 0, "{out:?}");
        assert_eq!(out.json()["files"], 6, "{out:?}");
        assert_eq!(
            describe(&back),
            expected,
            "out of the guest, compress: {compress}"
        );
    }
    assert!(temporaries(dir.path()).is_empty(), "{:?}", listing(dir.path()));
    assert_eq!(
        listing(agent_tmp.path()),
        Vec::<String>::new(),
        "tar's followed output is removed"
    );

    // Into a directory that exists: the copy goes in it, under its name.
    let into = dir.path().join("into");
    std::fs::create_dir(&into).unwrap();
    let out = copy(&["-r", &guest(&agent.socket(), &source), into.to_str().unwrap()]);
    assert_eq!(
        out.json()["dest"],
        into.join("source").to_str().unwrap(),
        "{out:?}"
    );
    assert_eq!(describe(&into.join("source")), expected);
    // Never merged into one that exists.
    let out = copy(&["-r", &guest(&agent.socket(), &source), into.to_str().unwrap()]);
    let message = out.error("PathError");
    assert!(message.contains("already exists"), "{message}");
    let out = copy(&["-r", source.to_str().unwrap(), &guest(&agent.socket(), &into)]);
    let message = out.error("PathError");
    assert!(message.contains("already exists in the guest"), "{message}");
    assert_eq!(listing(&into), ["source"]);
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn what_is_no_directory_and_a_guest_without_tar_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    // The agent finds only `test` in its PATH: no tar.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let test = ["/usr/bin/test", "/bin/test"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap();
    symlink(test, bin.join("test")).unwrap();
    let (agent, _tmp) = agent_with(&[("PATH", bin.to_str().unwrap())]);
    let socket = agent.socket();

    let out = copy(&[
        "-r",
        file.to_str().unwrap(),
        &guest(&socket, &dir.path().join("x")),
    ]);
    assert!(out
        .error("PathError")
        .contains("is not a directory; copy -r takes a directory"));
    let out = copy(&[
        "-r",
        &guest(&socket, &file),
        dir.path().join("y").to_str().unwrap(),
    ]);
    assert!(out.error("PathError").contains("is not a directory in the guest"));
    let out = copy(&[
        "-r",
        &guest(&socket, &bin),
        dir.path().join("z").to_str().unwrap(),
    ]);
    let message = out.error("AgentCommandError");
    assert!(message.contains("the guest cannot run tar"), "{message}");
    // With tar but no gzip, --compress is refused into the guest too.
    let tar = ["/usr/bin/tar", "/bin/tar"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap();
    symlink(tar, bin.join("tar")).unwrap();
    let source = dir.path().join("source");
    std::fs::create_dir(&source).unwrap();
    let target = guest(&socket, &dir.path().join("v"));
    let out = copy(&["-r", "--compress", source.to_str().unwrap(), &target]);
    let message = out.error("AgentCommandError");
    assert!(message.contains("the guest cannot run gzip"), "{message}");
    std::fs::remove_dir(&source).unwrap();
    std::fs::remove_file(bin.join("tar")).unwrap();
    let out = copy(&["-r", "-", &guest(&socket, &dir.path().join("w"))]);
    assert_eq!(out.status, 2, "{out:?}");
    assert!(out.stderr.contains("- is no directory"), "{out:?}");
    let out = copy(&["-r", "--verify", "a", &guest(&socket, &dir.path().join("w"))]);
    assert_eq!(out.status, 2, "{out:?}");
    assert_eq!(listing(dir.path()), ["bin", "file"]);
}

/// One header block and its data, the fields written raw: the tar crate's
/// setters refuse the names a hostile guest sends.
fn entry(name: &str, kind: EntryType, mode: u32, data: &[u8], link: &str) -> Vec<u8> {
    let mut header = Header::new_gnu();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(data.len() as u64);
    header.set_cksum();
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend_from_slice(data);
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    bytes
}

fn archive(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = entries.concat();
    bytes.extend_from_slice(&[0; 10240 - 512]);
    bytes
}

/// How long the hostile tar sleeps: numbers no other process here uses.
const HANG: &str = "613.25";
const HANG_READING: &str = "613.5";

/// A host agent whose `tar` prints `archive` (a file the test rewrites)
/// whatever it is asked: a guest that sends what it likes.
struct HostileGuest {
    agent: HostAgent,
    tmp: tempfile::TempDir,
    bin: tempfile::TempDir,
    archive: PathBuf,
}

impl HostileGuest {
    fn start() -> HostileGuest {
        let bin = tempfile::tempdir().unwrap();
        let archive = bin.path().join("archive.tar");
        let tar = bin.path().join("tar");
        // It answers `--help` at once; with `hang` beside the archive it
        // then writes no more and sleeps for the seconds `hang` holds;
        // with the named pipe `go` there, it waits for a line on it, then
        // exits 0.
        let script = format!(
            "#!/bin/sh\ncase $1 in --help) exit 0;; esac\ncat '{0}'\n\
             if [ -e '{0}.hang' ]; then exec sleep \"$(cat '{0}.hang')\"; fi\n\
             if [ -p '{0}.go' ]; then read -r line <'{0}.go'; fi\n",
            archive.display()
        );
        std::fs::write(&tar, script).unwrap();
        set_mode(&tar, 0o755);
        let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap());
        let (agent, tmp) = agent_with(&[("PATH", &path)]);
        HostileGuest {
            agent,
            tmp,
            bin,
            archive,
        }
    }

    /// `copy -r` of what the guest's tar sends into `dest` in a new
    /// directory, running: that directory, and the copy.
    fn spawn_copy_out(&self) -> (tempfile::TempDir, std::process::Child) {
        let parent = tempfile::tempdir().unwrap();
        let dest = parent.path().join("dest");
        let source = format!("{}:/", self.agent.socket().display());
        (parent, spawn_copy(&["-r", &source, dest.to_str().unwrap()]))
    }

    /// `copy -r` of what the guest's tar sends into a new, empty
    /// directory: the error's message, once it is sure that nothing is
    /// left there or in the guest's temporary directory.
    fn refused(&self, stream: &[u8], flags: &[&str]) -> String {
        std::fs::write(&self.archive, stream).unwrap();
        let parent = tempfile::tempdir().unwrap();
        let mut args = vec!["-r"];
        args.extend(flags);
        let source = guest(&self.agent.socket(), Path::new("/"));
        let dest = parent.path().join("dest");
        args.extend([source.as_str(), dest.to_str().unwrap()]);
        let out = copy(&args);
        let message = out.error("VerificationError");
        assert_eq!(listing(parent.path()), Vec::<String>::new(), "{message}");
        assert_eq!(listing(self.tmp.path()), Vec::<String>::new(), "{message}");
        message
    }
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_hostile_guest_tar_is_refused_entry_by_name_and_leaves_nothing() {
    let guest = HostileGuest::start();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "untouched").unwrap();
    let outside_name = outside.path().to_str().unwrap();
    let file = |name: &str| entry(name, EntryType::Regular, 0o644, b"owned", "");

    let message = guest.refused(&archive(&[file("./../escape")]), &[]);
    assert!(
        message.contains("\"./../escape\" has a '..' component"),
        "{message}"
    );
    let absolute = format!("{outside_name}/absolute");
    let message = guest.refused(&archive(&[file(&absolute)]), &[]);
    assert!(
        message.contains(&format!("{absolute:?} has an absolute name")),
        "{message}"
    );
    let link = entry("./link", EntryType::Symlink, 0o777, b"", outside_name);
    let message = guest.refused(&archive(&[link, file("./link/victim")]), &[]);
    assert!(
        message.contains("\"./link/victim\" would be written through \"link\""),
        "{message}"
    );
    let hard = entry("./hard", EntryType::Link, 0o644, b"", victim.to_str().unwrap());
    let message = guest.refused(&archive(&[hard]), &[]);
    assert!(message.contains("\"./hard\" is a hard link to"), "{message}");
    let device = entry("./null", EntryType::Char, 0o666, b"", "");
    let message = guest.refused(&archive(&[device]), &[]);
    assert!(message.contains("\"./null\" is a character device"), "{message}");
    let fifo = entry("./fifo", EntryType::Fifo, 0o644, b"", "");
    // Through gzip in the guest and flate2 on the host, the same.
    let message = guest.refused(&archive(&[fifo]), &["--compress"]);
    assert!(message.contains("\"./fifo\" is a FIFO"), "{message}");
    let message = guest.refused(b"not a tar archive at all, just noise from a guest\n", &[]);
    assert!(message.contains("cannot be read"), "{message}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
    assert_eq!(listing(outside.path()), ["victim"]);

    // A set-user-ID bit is dropped, and said; the rest is copied.
    std::fs::write(
        &guest.archive,
        archive(&[entry("./suid", EntryType::Regular, 0o4755, b"x", "")]),
    )
    .unwrap();
    let parent = tempfile::tempdir().unwrap();
    let dest = parent.path().join("dest");
    let out = copy(&[
        "-r",
        &format!("{}:/", guest.agent.socket().display()),
        dest.to_str().unwrap(),
    ]);
    let summary: Value = out.json();
    assert_eq!(summary["stripped"], serde_json::json!(["./suid"]), "{out:?}");
    assert_eq!(
        std::fs::metadata(dest.join("suid")).unwrap().mode() & 0o7777,
        0o755 & !umask()
    );
}

/// What the test VM lists in its `/tmp` (where followed output and the
/// copies' private directories go) and `/root`.
fn guest_listing(socket: &Path) -> Value {
    guest_run(socket, &["sh", "-c", "ls -A /tmp /root"]).json()["stdout"].clone()
}

#[test]
#[ignore = "needs the test VM"]
fn a_tree_goes_into_the_vm_and_back_whole_and_a_full_disk_leaves_nothing() {
    let vm = TestVm::boot("copy-tree");
    let socket = vm.socket();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    make_tree(&source);
    let expected = describe(&source);
    let before = guest_listing(&socket);
    for (n, compress) in [(1, false), (2, true)] {
        let flags: &[&str] = if compress { &["-r", "--compress"] } else { &["-r"] };
        let target = format!("{}:/root/tree-{n}", socket.display());
        let mut args = flags.to_vec();
        args.extend([source.to_str().unwrap(), target.as_str()]);
        let out = copy(&args);
        assert_eq!(out.status, 0, "{out:?}");
        let back = dir.path().join(format!("back-{n}"));
        let mut args = flags.to_vec();
        args.extend([target.as_str(), back.to_str().unwrap()]);
        let out = copy(&args);
        assert_eq!(out.status, 0, "{out:?}");
        assert_eq!(describe(&back), expected, "through the VM, compress: {compress}");
        let out = guest_run(&socket, &["rm", "-rf", &format!("/root/tree-{n}")]);
        assert_eq!(out.json()["exit_code"], 0, "{out:?}");
    }
    assert_eq!(guest_listing(&socket), before, "nothing is left in the guest");
    assert!(temporaries(dir.path()).is_empty());

    // A 1 MiB tmpfs, and 8 MiB to copy into it: the send fails while the
    // packer still has more to give.
    let big = dir.path().join("big");
    std::fs::create_dir(&big).unwrap();
    for n in 0..4 {
        std::fs::write(
            big.join(format!("data{n}")),
            crate::support::data::noise(2 << 20, n),
        )
        .unwrap();
    }
    let script = "mkdir -p /mnt/small && mount -t tmpfs -o size=1m tmpfs /mnt/small";
    let out = guest_run(&socket, &["sh", "-c", script]);
    assert_eq!(out.json()["exit_code"], 0, "{out:?}");
    for flags in [&["-r"][..], &["-r", "--compress"]] {
        let target = format!("{}:/mnt/small/big", socket.display());
        let out = copy(&[flags, &[big.to_str().unwrap(), &target]].concat());
        // tar's own words, from its standard error.
        let message = out.error("PathError");
        assert!(
            message.contains("cannot unpack the directory in the guest"),
            "{message}"
        );
        assert!(
            message.contains("No space left on device"),
            "{flags:?}: {message}"
        );
        let out = guest_run(&socket, &["ls", "-A", "/mnt/small"]);
        assert_eq!(out.json()["stdout"], Value::Null, "nothing is left: {out:?}");
        assert_eq!(guest_listing(&socket), before, "nothing is left in the guest");
    }

    // 640 KiB into that 1 MiB: no archive lands beside the tree (the
    // archive then the tree would need about twice that).
    let fits = dir.path().join("fits");
    std::fs::create_dir(&fits).unwrap();
    for n in 0..5 {
        std::fs::write(
            fits.join(format!("part{n}")),
            crate::support::data::noise(128 << 10, n + 10),
        )
        .unwrap();
    }
    let target = format!("{}:/mnt/small/fits", socket.display());
    let out = copy(&["-r", fits.to_str().unwrap(), &target]);
    assert_eq!(out.status, 0, "{out:?}");
    let back = dir.path().join("fits-back");
    let out = copy(&["-r", &target, back.to_str().unwrap()]);
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(describe(&back), describe(&fits));
}

/// A local tree with a FIFO in it is refused by name; nothing reaches the
/// guest.
#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_local_fifo_is_refused_by_name_and_the_guest_keeps_nothing() {
    let (agent, _tmp) = agent_with(&[]);
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    std::fs::create_dir(&source).unwrap();
    std::fs::write(source.join("a"), "a").unwrap();
    nix::unistd::mkfifo(
        &source.join("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    assert!(std::fs::symlink_metadata(source.join("pipe"))
        .unwrap()
        .file_type()
        .is_fifo());
    let guest_side = tempfile::tempdir().unwrap();
    let out = copy(&[
        "-r",
        source.to_str().unwrap(),
        &guest(&agent.socket(), &guest_side.path().join("t")),
    ]);
    let message = out.error("PathError");
    assert!(message.contains("pipe is a FIFO"), "{message}");
    assert_eq!(listing(guest_side.path()), Vec::<String>::new(), "{message}");
}

/// Whether a process runs `sleep HANG` (the hostile tar, hung for
/// `hang` seconds: each test its own).
fn hung_tar_runs(hang: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().any(|p| {
        let cmdline = std::fs::read(p.unwrap().path().join("cmdline")).unwrap_or_default();
        cmdline == format!("sleep\0{hang}\0").as_bytes()
    })
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn ctrl_c_while_the_guest_tar_writes_stops_it_and_leaves_nothing() {
    let guest = HostileGuest::start();
    // An archive cut short: a directory and half a file, then silence.
    let mut stream = entry("./d/", EntryType::Directory, 0o755, b"", "");
    stream.extend(entry("./d/f", EntryType::Regular, 0o644, &[7; 4096], ""));
    stream.truncate(stream.len() - 2048);
    std::fs::write(&guest.archive, stream).unwrap();
    std::fs::write(guest.archive.with_extension("tar.hang"), HANG).unwrap();
    let (parent, child) = guest.spawn_copy_out();
    crate::support::wait_until(20, "the copy to unpack the first entry", || {
        temporaries(parent.path())
            .first()
            .is_some_and(|temp| temp.join("d").exists())
    });
    // Its archive written, its shell execs `sleep` a moment later.
    crate::support::wait_until(10, "the guest's tar to hang", || hung_tar_runs(HANG));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = outcome(child);
    let message = out.error("Interrupted");
    assert!(message.contains("stopped tar"), "{message}");
    assert!(message.contains("removed the temporary"), "{message}");
    assert_eq!(listing(parent.path()), Vec::<String>::new(), "{message}");
    assert_eq!(listing(guest.tmp.path()), Vec::<String>::new(), "{message}");
    assert!(!hung_tar_runs(HANG), "the guest's tar is stopped");
}

/// The reader of tar's output in the guest killed with the archive in
/// hand, then tar ending well: a plain archive cut at an entry's end would
/// unpack as whole, so the copy fails as output lost and places nothing.
#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_reader_of_the_guest_tars_output_killed_fails_the_copy_and_places_nothing() {
    let guest = HostileGuest::start();
    let stream = archive(&[
        entry("./d/", EntryType::Directory, 0o755, b"", ""),
        entry("./d/f", EntryType::Regular, 0o644, &[7; 4096], ""),
    ]);
    std::fs::write(&guest.archive, stream).unwrap();
    let go = guest.archive.with_extension("tar.go");
    nix::unistd::mkfifo(&go, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let (parent, child) = guest.spawn_copy_out();
    // The rotator is a shell and its `dd`.
    crate::support::wait_until(20, "the reader of tar's output", || {
        out_pipe_readers(guest.tmp.path()).len() >= 2
    });
    crate::support::wait_until(10, "the reader gone", || {
        let left = out_pipe_readers(guest.tmp.path());
        for pid in &left {
            let _ = nix::sys::signal::kill(*pid, nix::sys::signal::Signal::SIGKILL);
        }
        left.is_empty()
    });
    std::fs::write(&go, "go\n").unwrap();
    let out = outcome(child);
    let message = out.error("AgentCommandError");
    assert!(
        message.contains("output lost: the guest-side reader of stdout ended early"),
        "{message}"
    );
    assert_eq!(listing(parent.path()), Vec::<String>::new(), "{message}");
    assert_eq!(listing(guest.tmp.path()), Vec::<String>::new(), "{message}");
}

/// The processes whose standard input is the `out.pipe` of a private
/// directory under `tmp`: the rotator of a followed program's output.
fn out_pipe_readers(tmp: &Path) -> Vec<nix::unistd::Pid> {
    let procs = std::fs::read_dir("/proc").unwrap().flatten();
    procs
        .filter(|p| {
            let stdin = std::fs::read_link(p.path().join("fd/0")).unwrap_or_default();
            stdin.starts_with(tmp) && stdin.ends_with("out.pipe")
        })
        .filter_map(|p| p.file_name().to_str()?.parse().ok())
        .map(nix::unistd::Pid::from_raw)
        .collect()
}

/// Into the guest, a `tar -x` that never reads: the pipe fills, then the
/// queue, and the packer waits (memory stays bounded) until Ctrl-C, which
/// stops tar and removes the private directories on both sides of it.
#[test]
#[ignore = "needs qemu-ga on the host"]
fn ctrl_c_while_the_guest_tar_reads_nothing_stops_it_and_leaves_nothing() {
    let guest = HostileGuest::start();
    std::fs::write(&guest.archive, "").unwrap();
    std::fs::write(guest.archive.with_extension("tar.hang"), HANG_READING).unwrap();
    let source = tempfile::tempdir().unwrap();
    for n in 0..4 {
        std::fs::write(
            source.path().join(format!("f{n}")),
            crate::support::data::noise(1 << 20, n),
        )
        .unwrap();
    }
    let parent = tempfile::tempdir().unwrap();
    let dest =
        guest.agent.socket().display().to_string() + ":" + parent.path().join("dest").to_str().unwrap();
    let child = spawn_copy(&["-r", source.path().to_str().unwrap(), &dest]);
    crate::support::wait_until(20, "the guest's tar to run, beside DEST", || {
        hung_tar_runs(HANG_READING) && !temporaries(parent.path()).is_empty()
    });
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = outcome(child);
    let message = out.error("Interrupted");
    assert!(message.contains("stopped tar"), "{message}");
    assert!(message.contains("removed the temporary"), "{message}");
    assert_eq!(listing(parent.path()), Vec::<String>::new(), "{message}");
    assert_eq!(listing(guest.tmp.path()), Vec::<String>::new(), "{message}");
    assert!(!hung_tar_runs(HANG_READING), "the guest's tar is stopped");
}

/// What the VM's own tar (busybox's) packs that copy -r does not unpack:
/// a device node and a FIFO, refused by name, nothing left on either
/// side; a set-user-ID bit, dropped and named. (Its shell runs its own
/// `tar` applet whatever PATH says, so the made-up streams of
/// [`HostileGuest`] go through the host's agent instead.)
#[test]
#[ignore = "needs the test VM"]
fn a_device_node_or_fifo_in_a_vm_tree_is_refused_by_name_and_a_setuid_bit_dropped() {
    let vm = TestVm::boot("copy-tree-special");
    let socket = vm.socket();
    let before = guest_listing(&socket);
    let script = "mkdir -p /srv/dev /srv/fifo /srv/suid && mknod /srv/dev/null c 1 3 && mkfifo /srv/fifo/p \
                  && echo x > /srv/suid/prog && chmod 4755 /srv/suid/prog";
    let out = guest_run(&socket, &["sh", "-c", script]);
    assert_eq!(out.json()["exit_code"], 0, "{out:?}");
    for (tree, said) in [
        ("/srv/dev", "\"./null\" is a character device"),
        ("/srv/fifo", "\"./p\" is a FIFO"),
    ] {
        let parent = tempfile::tempdir().unwrap();
        let dest = parent.path().join("dest");
        let out = copy(&[
            "-r",
            &format!("{}:{tree}", socket.display()),
            dest.to_str().unwrap(),
        ]);
        let message = out.error("VerificationError");
        assert!(message.contains(said), "{said} not in: {message}");
        assert_eq!(listing(parent.path()), Vec::<String>::new(), "{message}");
        assert_eq!(
            guest_listing(&socket),
            before,
            "nothing is left in the guest: {message}"
        );
    }
    let parent = tempfile::tempdir().unwrap();
    let dest = parent.path().join("dest");
    let out = copy(&[
        "-r",
        &format!("{}:/srv/suid", socket.display()),
        dest.to_str().unwrap(),
    ]);
    assert_eq!(out.json()["stripped"], serde_json::json!(["./prog"]), "{out:?}");
    assert_eq!(
        std::fs::metadata(dest.join("prog")).unwrap().mode() & 0o7777,
        0o755 & !umask()
    );
}

/// The tag a run of the live process `pid` writes into its directory
/// (`owner`): this boot, this pid namespace, the pid and its start time.
fn owner_tag(pid: u32) -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let started = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(19)
        .unwrap();
    format!(
        "virtomate-owner-1 {} {} {pid} {started}",
        boot.trim(),
        ns.display()
    )
}

/// The pipes' directories in the guest's temporary directory `tmp`.
fn pipe_dirs(tmp: &Path) -> Vec<String> {
    let dirs = listing(tmp).into_iter();
    dirs.filter(|name| name.starts_with("virtomate-follow-"))
        .collect()
}

/// Starts `virtomate copy ARGS` and waits until its program hangs in the
/// guest (`sleep HANG`) with its pipes' directory made beside `before`
/// in `tmp`; that directory's name. A copy that ends first fails the test
/// with what it said.
fn hung_copy(args: &[&str], hang: &str, tmp: &Path, before: &[String]) -> (std::process::Child, String) {
    let mut child = crate::support::virtomate()
        .arg("copy")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    crate::support::wait_until(20, "the copy's program to hang in the guest", || {
        if let Ok(Some(status)) = child.try_wait() {
            let mut said = String::new();
            std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut said).unwrap();
            panic!("the copy ended first ({status}): {said}");
        }
        hung_tar_runs(hang) && pipe_dirs(tmp).iter().any(|dir| !before.contains(dir))
    });
    let made = pipe_dirs(tmp).into_iter().find(|dir| !before.contains(dir));
    (child, made.expect("a new directory"))
}

/// A followed run of `echo` on `socket`, which sweeps what dead runs and
/// copies left.
fn run_a_followed_echo(socket: &Path) {
    let socket = socket.display().to_string();
    let out = crate::support::run(&["guest-run", "--follow", &socket, "--", "echo", "swept"], None);
    assert_eq!(out.stdout, "swept\n", "{out:?}");
}

/// Stops the guest's programs that hang for these seconds (`sleep HANG`,
/// found by their whole command line) when dropped: a failed test leaves
/// none to the next.
struct Hangs(&'static [&'static str]);

impl Drop for Hangs {
    fn drop(&mut self) {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let hung = self
                .0
                .iter()
                .any(|hang| cmdline == format!("sleep\0{hang}\0").as_bytes());
            let pid = entry.file_name().to_string_lossy().parse::<i32>();
            if let (true, Ok(pid)) = (hung, pid) {
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// A copy killed with SIGKILL (`copy -r` out and in, `--compress` out)
/// leaves its pipes' directory and its program in the guest; the next
/// copy or followed run from this host sweeps both, as its directory,
/// tagged with its owner, says that owner is gone. A live owner's
/// directory and one without a tag stay.
#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_killed_copys_pipes_directory_and_program_go_with_the_next_copy_or_run_and_others_stay() {
    let mut guest = HostileGuest::start();
    let socket = guest.agent.socket();
    let tmp = guest.tmp.path().to_owned();
    let tmp = tmp.as_path();
    let (live, untagged) = (
        "virtomate-follow-0123456789abcdef0123456789abcdef",
        "virtomate-follow-fedcba9876543210fedcba9876543210",
    );
    std::fs::create_dir(tmp.join(live)).unwrap();
    std::fs::write(tmp.join(live).join("owner"), owner_tag(std::process::id()) + "\n").unwrap();
    std::fs::create_dir(tmp.join(untagged)).unwrap();
    let others = pipe_dirs(tmp);
    let (out_hang, in_hang, gzip_hang) = ("613.625", "613.75", "613.875");
    let _hangs = Hangs(&["613.625", "613.75", "613.875"]);
    let local = tempfile::tempdir().unwrap();

    // Out: tar writes part of its archive, then hangs.
    let mut stream = entry("./d/", EntryType::Directory, 0o755, b"", "");
    stream.extend(entry("./d/f", EntryType::Regular, 0o644, &[7; 4096], ""));
    std::fs::write(&guest.archive, stream).unwrap();
    std::fs::write(guest.archive.with_extension("tar.hang"), out_hang).unwrap();
    let source = format!("{}:/", socket.display());
    let dest = local.path().join("out");
    let (out, out_dir) = hung_copy(&["-r", &source, dest.to_str().unwrap()], out_hang, tmp, &others);
    guest.agent.kill_client(out);
    assert!(hung_tar_runs(out_hang), "a copy killed stops nothing");
    assert!(pipe_dirs(tmp).contains(&out_dir), "nor removes its directory");

    // In, its tar reading nothing: its setup sweeps the copy out's.
    std::fs::write(&guest.archive, "").unwrap();
    std::fs::write(guest.archive.with_extension("tar.hang"), in_hang).unwrap();
    let tree = local.path().join("tree");
    make_tree(&tree);
    let guest_side = tempfile::tempdir().unwrap();
    let into = format!("{}:{}", socket.display(), guest_side.path().join("t").display());
    let with_out = [others.clone(), vec![out_dir.clone()]].concat();
    let (into_copy, in_dir) = hung_copy(&["-r", tree.to_str().unwrap(), &into], in_hang, tmp, &with_out);
    crate::support::wait_until(20, "the copy out's directory to be swept", || {
        !pipe_dirs(tmp).contains(&out_dir)
    });
    assert!(!hung_tar_runs(out_hang), "its tar was stopped");
    guest.agent.kill_client(into_copy);
    assert!(hung_tar_runs(in_hang));

    // --compress out, its gzip hung: its setup sweeps the copy in's.
    let gzip = guest.bin.path().join("gzip");
    let script = format!("#!/bin/sh\ncase $1 in -h) exit 0;; esac\nexec sleep {gzip_hang}\n");
    std::fs::write(&gzip, script).unwrap();
    set_mode(&gzip, 0o755);
    let file = format!("{}:{}", socket.display(), guest.archive.display());
    let dest = local.path().join("file");
    let with_in = [others.clone(), vec![in_dir.clone()]].concat();
    let args = ["--compress", &file, dest.to_str().unwrap()];
    let (compressed, gzip_dir) = hung_copy(&args, gzip_hang, tmp, &with_in);
    crate::support::wait_until(20, "the copy in's directory to be swept", || {
        !pipe_dirs(tmp).contains(&in_dir)
    });
    assert!(!hung_tar_runs(in_hang), "its tar was stopped");
    guest.agent.kill_client(compressed);

    // A followed run sweeps the last.
    run_a_followed_echo(&socket);
    assert!(!hung_tar_runs(gzip_hang), "its gzip was stopped");
    assert_eq!(
        pipe_dirs(tmp),
        others,
        "the live owner's and the untagged directories stay"
    );
    assert!(!pipe_dirs(tmp).contains(&gzip_dir));

    // The killed copy in's private directory beside its DEST, tagged in
    // its name: the next copy into that directory removes it once its own
    // tree is in place (this guest's tar unpacks nothing).
    std::fs::remove_file(guest.archive.with_extension("tar.hang")).unwrap();
    assert_eq!(temporaries(guest_side.path()).len(), 1);
    let into = format!("{}:{}", socket.display(), guest_side.path().join("t2").display());
    let out = copy(&["-r", tree.to_str().unwrap(), &into]);
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(listing(guest_side.path()), ["t2"]);
}

/// On the VM: a `copy -r --compress` out killed with SIGKILL while its
/// `tar` and `gzip` run leaves their pipes' directory and the programs in
/// the guest; the next followed run sweeps both, and the guest's `/tmp`
/// and `/root` are as they were.
#[test]
#[ignore = "needs the test VM"]
fn on_the_vm_a_killed_copy_rs_directory_and_programs_go_with_the_next_run() {
    let vm = TestVm::boot("copy-tree-killed");
    let socket = vm.socket();
    let script = "mkdir /root/big && truncate -s 1G /root/big/sparse";
    let out = guest_run(&socket, &["sh", "-c", script]);
    assert_eq!(out.json()["exit_code"], 0, "{out:?}");
    let before = guest_listing(&socket);
    let local = tempfile::tempdir().unwrap();
    let mut child = crate::support::virtomate()
        .args(["copy", "-r", "--compress"])
        .arg(format!("{}:/root/big", socket.display()))
        .arg(local.path().join("big"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let unpacked = || {
        let temps = temporaries(local.path());
        temps
            .iter()
            .any(|temp| std::fs::metadata(temp.join("sparse")).is_ok_and(|m| m.len() > 0))
    };
    crate::support::wait_until(120, "the copy to unpack its first bytes", unpacked);
    child.kill().unwrap();
    child.wait().unwrap();
    let running = || {
        guest_run(&socket, &["ps"]).json()["stdout"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(running().contains("tar -c"), "the killed copy's tar runs on");
    assert_ne!(guest_listing(&socket), before, "its directory stays");

    run_a_followed_echo(&socket);
    assert_eq!(guest_listing(&socket), before, "nothing of the copy's is left");
    let ps = running();
    assert!(!ps.contains("tar -c") && !ps.contains("gzip -1"), "{ps}");
}
