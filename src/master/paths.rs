//! Where a master of one agent channel lives: its socket, the lock that
//! lets exactly one start, and its log, in a directory only this user may
//! enter. The names carry the agent socket's device and inode, not its
//! path: a path has many spellings, and a VM restarted under the same path
//! has a new socket, which gets a master of its own.

use std::fs::{DirBuilder, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::Flock;
use nix::unistd::geteuid;

use crate::lock_file;

/// The files of the master of one agent socket.
#[derive(Debug, Clone)]
pub struct MasterPaths {
    /// The agent socket it serves, as given.
    pub agent: PathBuf,
    /// The agent socket's device and inode when the paths were made.
    pub key: SocketKey,
    /// The master's own UNIX socket.
    pub socket: PathBuf,
    /// Held (flock) while a master is started or ends, so that one
    /// process at a time looks at the socket and replaces it.
    pub lock: PathBuf,
    /// What the master logs.
    pub log: PathBuf,
}

/// A socket file by device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketKey {
    pub dev: u64,
    pub ino: u64,
}

impl SocketKey {
    /// The key of the file at `path`, following symlinks (the agent socket
    /// may be reached through one); none when it is gone.
    pub fn of(path: &Path) -> io::Result<SocketKey> {
        let meta = std::fs::metadata(path)?;
        Ok(SocketKey {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

impl MasterPaths {
    /// The master's files for the agent socket at `agent`, in this user's
    /// private runtime directory (made if need be).
    pub fn for_agent(agent: &Path) -> io::Result<MasterPaths> {
        let key = SocketKey::of(agent)?;
        let dir = private_dir()?;
        let name = format!("master-{:x}-{}", key.dev, key.ino);
        Ok(MasterPaths {
            agent: agent.to_owned(),
            key,
            socket: dir.join(format!("{name}.sock")),
            lock: dir.join(format!("{name}.lock")),
            log: dir.join(format!("{name}.log")),
        })
    }
}

/// `virtomate` in the per-user runtime directory: `/run/virtomate` for
/// root, `$XDG_RUNTIME_DIR/virtomate` or `/run/user/UID/virtomate`
/// otherwise, and where neither is there, `/tmp/virtomate-UID`. Made with
/// mode 0700, and used only once seen to be a directory (not a symlink)
/// of this user that nobody else may enter.
pub fn private_dir() -> io::Result<PathBuf> {
    let uid = geteuid();
    let parent = if uid.is_root() {
        Some(PathBuf::from("/run"))
    } else {
        std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|dir| dir.is_absolute())
            .or_else(|| Some(PathBuf::from(format!("/run/user/{uid}"))))
            .filter(|dir| trusted_parent(dir))
    };
    let dir = match parent {
        Some(parent) => parent.join("virtomate"),
        None => std::env::temp_dir().join(format!("virtomate-{uid}")),
    };
    match DirBuilder::new().mode(0o700).create(&dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    check_private(&dir)?;
    Ok(dir)
}

/// A directory owned by this user or root that others may not write.
fn trusted_parent(dir: &Path) -> bool {
    std::fs::metadata(dir).is_ok_and(|meta| {
        meta.is_dir() && (meta.uid() == geteuid().as_raw() || meta.uid() == 0) && meta.mode() & 0o022 == 0
    })
}

/// Fails unless `dir` itself (no symlink followed) is a directory of this
/// user closed to everybody else.
pub fn check_private(dir: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() || meta.uid() != geteuid().as_raw() || meta.mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a directory of this user closed to others (mode 0700): no master there",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Holds the lock that lets one process at a time start or end the
/// master of a channel, waiting for it until `deadline` (a deadline past
/// makes one try); see [`lock_file::take`].
pub async fn start_lock(path: &Path, deadline: tokio::time::Instant) -> io::Result<Flock<File>> {
    // A master starts or ends within milliseconds: a waiter looks often.
    lock_file::take(path, deadline, Duration::from_millis(2)).await
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_directory_open_to_others_or_a_symlink_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let open = base.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(check_private(&open).is_err());
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o700)).unwrap();
        check_private(&open).unwrap();
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        assert!(check_private(&link).is_err());
    }

    #[test]
    fn the_names_follow_the_socket_not_its_path() {
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("qga.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let link = base.path().join("alias.sock");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let (Ok(one), Ok(other)) = (MasterPaths::for_agent(&path), MasterPaths::for_agent(&link)) else {
            panic!("no private directory for this user");
        };
        assert_eq!(one.socket, other.socket);
        assert!(one.socket.to_string_lossy().len() < 108, "fits sun_path");
    }
}
