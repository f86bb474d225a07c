//! Who has a socket open: the processes whose `/proc/PID/fd` links to its
//! inode, and what they are called.
//!
//! Not with the `procfs` crate (0.18): its `Process::fd()` opens every fd
//! link with `O_PATH`, reads it, stats it and closes it, four system calls
//! where one `readlink` does, over every fd of every process. Measured:
//! `virtomate doctor` on a held socket made 6,099 system calls against
//! 2,502 (`strace -f -c`) and took 10.6 ± 1.4 ms against 8.0 ± 1.2 ms
//! (`hyperfine -N -w 10 -r 300`), on a host of 84 processes and 618 open
//! fds; a busy libvirt host has many more.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The pids of the processes having each of `inodes` open, found by reading
/// every `/proc/PID/fd/*` link. Processes we may not look into are skipped.
pub(super) fn socket_owners(proc_root: &Path, inodes: &BTreeSet<u64>) -> HashMap<u64, Vec<u32>> {
    let mut owners: HashMap<u64, Vec<u32>> = HashMap::new();
    if inodes.is_empty() {
        return owners;
    }
    let Ok(processes) = fs::read_dir(proc_root) else {
        return owners;
    };
    for process in processes.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Some(inode) = fs::read_link(fd.path())
                .ok()
                .and_then(|target| socket_inode(&target))
            else {
                continue;
            };
            if inodes.contains(&inode) {
                let pids = owners.entry(inode).or_default();
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
    }
    owners
}

/// The inode in a `socket:[INODE]` fd link.
fn socket_inode(target: &Path) -> Option<u64> {
    let text = target.to_str()?;
    text.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// The program name of a process. `comm` is what `ps` shows, but the kernel
/// cuts it to 15 bytes (`qemu-system-x86_64` becomes `qemu-system-x86`);
/// then the file name of `argv[0]` is used if it starts the same.
pub(super) fn command_of(proc_dir: &Path) -> Option<String> {
    const COMM_MAX: usize = 15;
    let comm = fs::read_to_string(proc_dir.join("comm")).ok();
    let comm = comm
        .as_deref()
        .map(|c| c.trim_end_matches('\n'))
        .filter(|c| !c.is_empty());
    let argv0 = fs::read(proc_dir.join("cmdline")).ok().and_then(|raw| {
        let first = raw.split(|&b| b == 0).next()?;
        let name = Path::new(OsStr::from_bytes(first)).file_name()?;
        Some(name.to_string_lossy().into_owned())
    });
    match (comm, argv0) {
        (Some(comm), Some(argv0)) if comm.len() == COMM_MAX && argv0.starts_with(comm) => Some(argv0),
        (Some(comm), _) => Some(comm.to_owned()),
        (None, argv0) => argv0.filter(|name| !name.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::socket_holders::test_support::fake_proc;

    #[test]
    fn prefers_argv0_when_comm_was_cut_short() {
        let root = fake_proc(
            &[],
            &[
                (1, "qemu-system-x86", "/usr/bin/qemu-system-x86_64 -name vm", &[]),
                (2, "libvirtd", "/usr/sbin/libvirtd --daemon", &[]),
                (3, "worker-thread-1", "/usr/bin/some-other-program", &[]),
            ],
        );
        let command = |pid: u32| command_of(&root.path().join(pid.to_string()));
        assert_eq!(command(1).as_deref(), Some("qemu-system-x86_64"));
        assert_eq!(command(2).as_deref(), Some("libvirtd"));
        assert_eq!(command(3).as_deref(), Some("worker-thread-1"));
        assert_eq!(command(4), None);
    }
}
