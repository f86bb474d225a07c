//! A fake `/proc` for the tests of every part.

use std::fs;

use super::unix_table::{FLAG_ACCEPTCON, STATE_UNCONNECTED};

pub(super) const HEADER: &str = "Num       RefCount Protocol Flags    Type St Inode Path\n";

/// A `/proc` with the given `net/unix` lines and processes, each with
/// its comm, cmdline and the socket inodes it has open.
pub(super) fn fake_proc(unix: &[&str], processes: &[(u32, &str, &str, &[u64])]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    fs::create_dir(root.path().join("net")).unwrap();
    let mut table = HEADER.to_owned();
    for line in unix {
        table.push_str(line);
        table.push('\n');
    }
    fs::write(root.path().join("net/unix"), table).unwrap();
    for (pid, comm, cmdline, sockets) in processes {
        let dir = root.path().join(pid.to_string());
        fs::create_dir_all(dir.join("fd")).unwrap();
        fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
        fs::write(dir.join("cmdline"), cmdline.replace(' ', "\0") + "\0").unwrap();
        // Like the real thing: stdin and a non-socket before the sockets.
        std::os::unix::fs::symlink("/dev/null", dir.join("fd/0")).unwrap();
        std::os::unix::fs::symlink("pipe:[77]", dir.join("fd/1")).unwrap();
        for (fd, inode) in sockets.iter().enumerate() {
            let link = dir.join(format!("fd/{}", fd + 3));
            std::os::unix::fs::symlink(format!("socket:[{inode}]"), link).unwrap();
        }
    }
    root
}

pub(super) fn line(state: u8, inode: u64, path: &str) -> String {
    let flags = if state == STATE_UNCONNECTED {
        FLAG_ACCEPTCON
    } else {
        0
    };
    let refs = if state == STATE_UNCONNECTED { 2 } else { 3 };
    let mut line = format!("0000000012345678: {refs:08X} 00000000 {flags:08X} 0001 {state:02X} {inode:5}");
    if !path.is_empty() {
        line.push(' ');
        line.push_str(path);
    }
    line
}

/// libvirtd (pid 500) connected to /run/qga.sock, as 101 <-> 102; a
/// second client waiting in the backlog; other sockets around.
pub(super) fn libvirt_table() -> Vec<String> {
    vec![
        line(1, 100, "/run/qga.sock"),
        line(3, 101, "/run/qga.sock"),
        line(2, 0, "/run/qga.sock"),
        line(3, 102, ""),
        line(1, 200, "/run/other.sock"),
        line(3, 201, "/run/other.sock"),
        line(3, 202, ""),
        line(1, 300, "@/run/qga.sock"),
    ]
}

pub(super) fn lines(table: &[String]) -> Vec<&str> {
    table.iter().map(String::as_str).collect()
}
