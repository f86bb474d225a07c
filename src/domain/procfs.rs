//! Finding running QEMU processes through `/proc`.
//!
//! Read by hand rather than with the `procfs` crate (0.18), on purpose: its
//! `Process::cmdline` reads the file as UTF-8 and fails on any other byte,
//! so a QEMU process with one non-UTF-8 argument (a Latin-1 file name)
//! would vanish from the lookup, where here it is kept (read lossily). With
//! procfs for this and for `/proc/PID/fd` (see `socket_holders/owners.rs`)
//! the stripped release binary grew by 28.9 KB (1,659,176 bytes against
//! 1,630,232) and `doctor` on a held socket took a third longer (see
//! there), to save some twenty lines.

use std::fs;
use std::path::{Path, PathBuf};

use super::qemu_args::QemuArgs;

/// A running QEMU process and what its command line says.
#[derive(Debug)]
pub struct QemuProcess {
    pub pid: u32,
    pub args: QemuArgs,
    /// The process's working directory, against which relative socket
    /// paths on its command line are resolved.
    pub cwd: Option<PathBuf>,
}

/// All processes whose program name contains `qemu`, except those that
/// vanish or hide their command line while we look.
pub fn qemu_processes(proc_root: &Path) -> Vec<QemuProcess> {
    let Ok(entries) = fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut found: Vec<QemuProcess> = entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let argv = read_cmdline(&entry.path())?;
            if !is_qemu(&argv) {
                return None;
            }
            Some(QemuProcess {
                pid,
                args: QemuArgs::parse(&argv),
                cwd: fs::read_link(entry.path().join("cwd")).ok(),
            })
        })
        .collect();
    found.sort_by_key(|p| p.pid);
    found
}

/// Whether the process `pid` runs QEMU (see [`qemu_processes`]).
pub fn runs_qemu(pid: u32) -> bool {
    read_cmdline(&Path::new("/proc").join(pid.to_string())).is_some_and(|argv| is_qemu(&argv))
}

/// A program whose name contains `qemu`, but not the agent's.
fn is_qemu(argv: &[String]) -> bool {
    let program = argv.first().and_then(|first| Path::new(first).file_name());
    let program = program.and_then(|name| name.to_str()).unwrap_or_default();
    program.contains("qemu") && !program.contains("qemu-ga")
}

fn read_cmdline(proc_dir: &Path) -> Option<Vec<String>> {
    let raw = fs::read(proc_dir.join("cmdline")).ok()?;
    let argv: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|part| !part.is_empty())
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect();
    (!argv.is_empty()).then_some(argv)
}
