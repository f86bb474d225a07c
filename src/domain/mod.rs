//! Turning the DOMAIN argument into the path of an agent socket.
//!
//! In order: a path (anything with a `/`, or an existing socket in the
//! current directory), then the `-name` of a running QEMU process.

mod procfs;
mod qemu_args;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::error::CliError;

/// Where the agent of a domain listens.
#[derive(Debug)]
pub struct AgentSocket {
    pub path: PathBuf,
}

pub fn resolve(domain: &str) -> Result<AgentSocket, CliError> {
    resolve_in(domain, Path::new("/proc"))
}

fn resolve_in(domain: &str, proc_root: &Path) -> Result<AgentSocket, CliError> {
    if looks_like_socket_path(domain) {
        return Ok(AgentSocket { path: domain.into() });
    }
    let mut matches: Vec<_> = procfs::qemu_processes(proc_root)
        .into_iter()
        .filter(|process| process.args.name.as_deref() == Some(domain))
        .collect();
    let process = match matches.len() {
        0 => return Err(CliError::NotFound(domain.to_owned())),
        1 => matches.remove(0),
        _ => {
            let pids: Vec<String> = matches.iter().map(|p| p.pid.to_string()).collect();
            return Err(CliError::Ambiguous {
                name: domain.to_owned(),
                pids: pids.join(", "),
            });
        }
    };
    let Some(channel) = process.args.agent_channels.first() else {
        return Err(CliError::AgentUnavailable(format!(
            "QEMU process {} ('{domain}') has no guest agent channel; start it with -chardev socket,path=PATH,server=on,wait=off,id=qga0 -device virtio-serial -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            process.pid
        )));
    };
    let path = match &process.cwd {
        Some(cwd) if channel.path.is_relative() => cwd.join(&channel.path),
        _ => channel.path.clone(),
    };
    Ok(AgentSocket { path })
}

fn looks_like_socket_path(domain: &str) -> bool {
    domain.contains('/') || std::fs::metadata(domain).is_ok_and(|meta| meta.file_type().is_socket())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn fake_proc(processes: &[(u32, &[&str], &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (pid, argv, cwd) in processes {
            let dir = root.path().join(pid.to_string());
            fs::create_dir(&dir).unwrap();
            let mut cmdline = argv.join("\0");
            cmdline.push('\0');
            fs::write(dir.join("cmdline"), cmdline).unwrap();
            std::os::unix::fs::symlink(cwd, dir.join("cwd")).unwrap();
        }
        fs::create_dir(root.path().join("self")).unwrap();
        root
    }

    const VM: &[&str] = &[
        "/usr/bin/qemu-system-x86_64",
        "-name",
        "web",
        "-chardev",
        "socket,path=vm/qga.sock,server=on,wait=off,id=qga0",
        "-device",
        "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
    ];

    #[test]
    fn name_of_a_qemu_process_gives_its_socket_relative_to_its_cwd() {
        let proc_root = fake_proc(&[(42, VM, "/srv"), (7, &["bash", "-name", "web"], "/")]);
        let socket = resolve_in("web", proc_root.path()).unwrap();
        assert_eq!(socket.path, Path::new("/srv/vm/qga.sock"));
    }

    #[test]
    fn unknown_name_is_not_found() {
        let proc_root = fake_proc(&[(42, VM, "/srv")]);
        let err = resolve_in("db", proc_root.path()).unwrap_err();
        assert_eq!(err.to_string(), "Domain 'db' does not exist");
        assert_eq!(err.kind(), "NotFoundError");
    }

    #[test]
    fn two_processes_with_one_name_are_ambiguous() {
        let proc_root = fake_proc(&[(42, VM, "/a"), (43, VM, "/b")]);
        let err = resolve_in("web", proc_root.path()).unwrap_err();
        assert_eq!(err.kind(), "AmbiguousDomainError");
        assert!(err.to_string().contains("42, 43"), "{err}");
    }

    #[test]
    fn a_vm_without_agent_channel_says_how_to_add_one() {
        let proc_root = fake_proc(&[(42, &["qemu-system-x86_64", "-name", "web"], "/")]);
        let err = resolve_in("web", proc_root.path()).unwrap_err();
        assert_eq!(err.kind(), "AgentUnavailable");
        assert!(err.to_string().contains("org.qemu.guest_agent.0"), "{err}");
    }

    #[test]
    fn anything_with_a_slash_is_a_path() {
        let socket = resolve_in("./web", Path::new("/nonexistent")).unwrap();
        assert_eq!(socket.path, Path::new("./web"));
    }
}
