//! rsync over `virtomate guest-run -i`, with the Python VM (which has
//! rsync): rsync runs `virtomate guest-run -i DOMAIN rsync --server …`,
//! whose standard input and output must carry rsync's protocol and nothing
//! else.

use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::support::data::noise;
use crate::support::test_vm::{python_artifacts, TestVm};
use crate::support::{guest_run, run_bytes, virtomate_path};

/// Every entry below `root`: its name, type, mode and whole content (a
/// link's target), links never followed.
fn snapshot(root: &Path) -> Vec<(String, String, Vec<u8>)> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for child in std::fs::read_dir(&dir).unwrap() {
            let path = child.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let name = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let mode = meta.mode() & 0o7777;
            let entry = if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                ("link".to_owned(), target.into_os_string().into_encoded_bytes())
            } else if meta.is_dir() {
                pending.push(path.clone());
                (format!("dir {mode:o}"), Vec::new())
            } else {
                (format!("file {mode:o}"), std::fs::read(&path).unwrap())
            };
            found.push((name, entry.0, entry.1));
        }
    }
    found.sort();
    found
}

/// `rsync -a --stats ARGS…` with virtomate as its remote shell; its
/// statistics.
fn rsync(args: &[&str]) -> String {
    let shell = format!("{} guest-run -i", virtomate_path().display());
    let out = Command::new("rsync")
        .args(["-a", "--stats", "-e", &shell])
        .args(args)
        .output()
        .expect("rsync runs on the host (apt-get install rsync)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "rsync {args:?}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The number rsync's statistics give after `label`, as "Total bytes
/// sent: 1,234".
fn stat(stats: &str, label: &str) -> u64 {
    let line = stats
        .lines()
        .find_map(|line| line.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in {stats}"));
    let digits: String = line.chars().filter(char::is_ascii_digit).collect();
    digits.parse().unwrap_or_else(|_| panic!("{label:?} in {stats}"))
}

#[test]
#[ignore = "needs the Python VM (scripts/build-python-vm.sh) and rsync on the host"]
fn rsync_over_guest_run_interactive_copies_a_binary_tree_both_ways_and_then_only_what_changed() {
    let vm = TestVm::boot_python("rsync");
    let version = guest_run(&vm.socket(), &["rsync", "--version"]);
    assert_eq!(
        version.json()["exit_code"],
        0,
        "the Python VM in {} has no rsync: rebuild it with scripts/build-python-vm.sh (its stamp \
         changed with rsync's addition), or set PYTHON_VM_ARTIFACTS: {version:?}",
        python_artifacts().display()
    );
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    std::fs::create_dir_all(source.join("nested/deeper")).unwrap();
    std::fs::write(source.join("big.bin"), noise(600 << 10, 1)).unwrap();
    std::fs::write(source.join("nested/small.bin"), noise(5000, 2)).unwrap();
    std::fs::write(source.join("nested/deeper/odd.bin"), noise(4097, 3)).unwrap();
    std::fs::write(source.join("empty"), "").unwrap();
    std::fs::write(source.join("secret"), "key").unwrap();
    std::fs::set_permissions(source.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    symlink("nested/deeper", source.join("link")).unwrap();
    let expected = snapshot(&source);
    let src = format!("{}/", source.display());
    let remote = format!("{}:/root/tree/", vm.name);

    let first = rsync(&[&src, &remote]);
    assert_eq!(stat(&first, "Number of regular files transferred:"), 5, "{first}");
    let back = dir.path().join("back");
    let pulled = rsync(&[&remote, back.to_str().unwrap()]);
    assert_eq!(
        stat(&pulled, "Number of regular files transferred:"),
        5,
        "{pulled}"
    );
    assert!(snapshot(&back) == expected, "the tree came back changed");

    // Again: nothing to send but the file list.
    let again = rsync(&[&src, &remote]);
    assert_eq!(stat(&again, "Number of regular files transferred:"), 0, "{again}");
    assert!(stat(&again, "Total bytes sent:") < 2048, "{again}");

    // 100 bytes changed in the big file: rsync's delta, not the file.
    let mut big = std::fs::read(source.join("big.bin")).unwrap();
    big[300_000..300_100].copy_from_slice(&noise(100, 4));
    std::fs::write(source.join("big.bin"), &big).unwrap();
    let delta = rsync(&[&src, &remote]);
    assert_eq!(stat(&delta, "Number of regular files transferred:"), 1, "{delta}");
    assert!(stat(&delta, "Total bytes sent:") < 64 << 10, "{delta}");
    let pulled = rsync(&[&remote, back.to_str().unwrap()]);
    assert_eq!(
        stat(&pulled, "Number of regular files transferred:"),
        1,
        "{pulled}"
    );
    assert!(snapshot(&back) == snapshot(&source), "the change came back");

    // What rsync would read as its peer's bytes stays empty when things
    // fail: the program's status (or virtomate's 255), words on stderr.
    for (domain, program, status) in [
        (vm.name.as_str(), "no-such-rsync", 127),
        ("no-such-domain-for-rsync", "rsync", 255),
    ] {
        let args = [
            "guest-run",
            "-i",
            domain,
            program,
            "--server",
            "-logDtpre.iLsfxCIvu",
            ".",
        ];
        let out = run_bytes(&args, b"");
        assert_eq!(out.status.code(), Some(status), "{out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        assert!(!out.stderr.is_empty(), "{out:?}");
    }
}
