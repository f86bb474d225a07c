//! Lock files in this user's private runtime directory, each held
//! (`flock`) by one process at a time: a master's start lock, a freeze's
//! turn. Whoever holds one may remove it (its last holder, a sweep), and
//! a waiter that opened the file before would then lock it beside the
//! holder of the one made anew at its path: so a lock counts only on the
//! file its path still names once locked.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::unistd::geteuid;
use tokio::time::Instant;

/// Takes the lock at `path` (making the file, mode 0600, if there is
/// none), looking again every `pause` until `deadline`; a deadline past
/// makes one try. Held by another past it: `WouldBlock`. The file is
/// opened without following a symlink and must be this user's.
pub async fn take(path: &Path, deadline: Instant, pause: Duration) -> io::Result<Flock<File>> {
    let mut file = open(path)?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) if names(path, &lock) => return Ok(lock),
            Ok(_orphan) => file = open(path)?,
            Err((back, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                file = back;
                tokio::time::sleep(pause).await;
            }
            Err((_, errno)) => return Err(errno.into()),
        }
    }
}

/// Removes the lock file at `path` while `held`, the lock on it, is still
/// held (so before letting go of it); whether it went.
pub fn remove_held(path: &Path, held: &File) -> bool {
    names(path, held) && std::fs::remove_file(path).is_ok()
}

fn open(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)?;
    if file.metadata()?.uid() != geteuid().as_raw() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} belongs to another user", path.display()),
        ));
    }
    Ok(file)
}

/// Whether `path` (no symlink followed) is the file `file` is open on.
fn names(path: &Path, file: &File) -> bool {
    match (std::fs::symlink_metadata(path), file.metadata()) {
        (Ok(there), Ok(ours)) => there.dev() == ours.dev() && there.ino() == ours.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAUSE: Duration = Duration::from_millis(1);

    /// How many of our fds are open on `path`.
    fn opened(path: &Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == path))
            .count()
    }

    /// A process waiting for a lock whose file its holder removes takes
    /// the lock on the file made anew, not on the removed one beside the
    /// holder of the new one.
    #[tokio::test]
    async fn a_waiter_on_a_removed_lock_takes_the_new_one() {
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("master-fe00-1.lock");
        let soon = || Instant::now() + Duration::from_secs(5);
        let held = take(&path, soon(), PAUSE).await.unwrap();
        let waiting = take(&path, soon(), PAUSE);
        let removed = async {
            while opened(&path) < 2 {
                tokio::time::sleep(PAUSE).await;
            }
            assert!(remove_held(&path, &held));
            drop(held);
        };
        let (taken, ()) = tokio::join!(waiting, removed);
        let taken = taken.unwrap();
        assert!(names(&path, &taken), "the lock is on the file at the path");
        let second = take(&path, Instant::now(), PAUSE).await;
        assert_eq!(second.err().map(|e| e.kind()), Some(io::ErrorKind::WouldBlock));
    }

    #[test]
    fn a_symlink_is_not_followed() {
        let base = tempfile::tempdir().unwrap();
        let target = base.path().join("target");
        let link = base.path().join("freeze-1.lock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert!(runtime.block_on(take(&link, Instant::now(), PAUSE)).is_err());
        assert!(!target.exists(), "nothing made through the symlink");
    }
}
