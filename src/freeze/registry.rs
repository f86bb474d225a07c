//! The files of one agent channel's freezes, beside its channel lock in
//! this user's runtime directory: `freeze-KEY.pid` names the host
//! watchdog on guard (its pid and its freeze's token), and
//! `freeze-KEY.lock` is the turn of one `guest-freeze`, from its look at
//! the guest until its freeze is made. Each goes once done with; a
//! process killed with SIGKILL leaves them behind, and a VM started again
//! may have a new socket path (libvirt names a domain's channel directory
//! by its id), so new names: [`sweep`] removes what nobody uses.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::Flock;
use nix::unistd::geteuid;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use virtomate_protocol::{ChannelLock, MOST_EXAMINED};

use crate::agent::DomainAgent;
use crate::error::{CliError, ErrorKind};
use crate::lock_file;

/// The file that names the watchdog of one agent channel.
pub struct Registry(PathBuf);

impl Registry {
    /// Keyed by the socket and, through libvirtd, whose one socket serves
    /// every domain, by the domain too. `None` where there is no safe
    /// place for it (no `XDG_RUNTIME_DIR`).
    pub fn of(agent: &DomainAgent, domain: &str) -> Option<Registry> {
        let lock = ChannelLock::for_socket(agent.socket()).ok()?;
        let mut key = Sha256::new();
        key.update(agent.socket().as_os_str().as_encoded_bytes());
        if agent.through_libvirtd() {
            key.update([0]);
            key.update(domain.as_bytes());
        }
        let name = format!("freeze-{}.pid", virtomate_protocol::hex(&key.finalize()[..8]));
        Some(Registry(lock.path().with_file_name(name)))
    }

    /// The directory the registry is in, with the other channels'.
    pub fn dir(&self) -> Option<&Path> {
        self.0.parent()
    }

    /// Registers this process as the watchdog of freeze `token`: mode
    /// 0600, no symlink followed.
    pub fn write(&self, token: &str) {
        let file = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&self.0);
        if let Ok(mut file) = file {
            let _ = writeln!(file, "{} {token}", std::process::id());
        }
    }

    /// The pid and token registered.
    pub fn read(&self) -> Option<(i32, String)> {
        let text = std::fs::read_to_string(&self.0).ok()?;
        let (pid, token) = text.trim().split_once(' ')?;
        Some((pid.parse().ok()?, token.to_owned()))
    }

    pub fn remove_if_ours(&self, token: &str) {
        if self.read().is_some_and(|(_, registered)| registered == token) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn turn(&self) -> PathBuf {
        self.0.with_extension("lock")
    }
}

/// Whether `pid` is the watchdog of freeze `token`. The pid may be
/// another process's by now: only the process whose command line holds
/// the token is the watchdog.
pub fn on_guard(pid: i32, token: &str) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmdline).contains(token)
}

/// Holds the turn of one `guest-freeze` on an agent channel, from its
/// look at the guest's status until its freeze is made: two at once would
/// each stop the other's watchdogs. Released, and its file removed, on
/// drop; released when the process dies.
pub struct FreezeTurn(Option<(PathBuf, Flock<File>)>);

impl Drop for FreezeTurn {
    fn drop(&mut self) {
        if let Some((path, held)) = &self.0 {
            lock_file::remove_held(path, held);
        }
    }
}

/// The pause between two tries for a [`FreezeTurn`].
const TURN_PAUSE: Duration = Duration::from_millis(20);

/// Waits up to `patience` for this agent's [`FreezeTurn`]. Without a
/// place for the lock file (no `XDG_RUNTIME_DIR`), goes on alone.
pub async fn take_turn(
    agent: &DomainAgent,
    domain: &str,
    patience: Duration,
) -> Result<FreezeTurn, CliError> {
    let Some(registry) = Registry::of(agent, domain) else {
        return Ok(FreezeTurn(None));
    };
    let path = registry.turn();
    match lock_file::take(&path, Instant::now() + patience, TURN_PAUSE).await {
        Ok(held) => Ok(FreezeTurn(Some((path, held)))),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(CliError::new(
            ErrorKind::Freeze,
            "another guest-freeze of this agent is under way; nothing was frozen",
        )),
        Err(e) => Err(CliError::io(format!("cannot take {}", path.display()), e)),
    }
}

/// Removes the freeze files in `dir` that nobody uses, those of
/// [`MOST_EXAMINED`] channels at most: a registry whose watchdog no
/// longer runs, and a turn nobody holds (taken, then removed while held,
/// as its last holder would). Returns how many went. Only regular files
/// of this user are removed, and no symlink is followed.
pub async fn sweep(dir: &Path) -> usize {
    let mut removed = 0;
    for stem in stems(dir) {
        let [turn, pid] = ["lock", "pid"].map(|kind| dir.join(format!("{stem}.{kind}")));
        let had_turn = std::fs::symlink_metadata(&turn).is_ok();
        // One try: a turn held is a freeze under way, not ours to sweep.
        let Ok(held) = lock_file::take(&turn, Instant::now(), TURN_PAUSE).await else {
            continue;
        };
        let registry = Registry(pid);
        let guarded = registry.read().is_some_and(|(pid, token)| on_guard(pid, &token));
        if !guarded && own_file(&registry.0) && std::fs::remove_file(&registry.0).is_ok() {
            removed += 1;
        }
        removed += usize::from(lock_file::remove_held(&turn, &held) && had_turn);
    }
    removed
}

/// The stems (`freeze-KEY`, KEY 16 lower-case hex digits) of the freeze
/// files in `dir`, [`MOST_EXAMINED`] at most.
fn stems(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut stems = Vec::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some((stem, "lock" | "pid")) = name.rsplit_once('.') else {
            continue;
        };
        let key = stem.strip_prefix("freeze-").unwrap_or_default();
        let hex = key.len() == 16 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if hex && !stems.iter().any(|known| known == stem) {
            stems.push(stem.to_owned());
            if stems.len() == MOST_EXAMINED {
                break;
            }
        }
    }
    stems
}

fn own_file(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|meta| meta.is_file() && meta.uid() == geteuid().as_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sweep_leaves_a_freeze_under_way_and_a_watchdog_on_guard_and_removes_the_rest() {
        let base = tempfile::tempdir().unwrap();
        let at = |name: &str| base.path().join(name);
        // A watchdog on guard: a process whose command line holds the
        // token, this one.
        let ours = std::env::args().next().unwrap();
        std::fs::write(at("freeze-00000000000000a1.lock"), b"").unwrap();
        std::fs::write(at("freeze-00000000000000a2.pid"), b"2147483646 token-a2\n").unwrap();
        std::fs::write(
            at("freeze-00000000000000a3.pid"),
            format!("{} {ours}\n", std::process::id()),
        )
        .unwrap();
        std::fs::write(at("freeze-00000000000000a4.pid"), b"2147483646 token-a4\n").unwrap();
        let held = lock_file::take(&at("freeze-00000000000000a4.lock"), Instant::now(), TURN_PAUSE)
            .await
            .unwrap();
        std::fs::write(at("elsewhere"), b"").unwrap();
        std::os::unix::fs::symlink(at("elsewhere"), at("freeze-00000000000000a5.pid")).unwrap();
        for name in [
            "freeze-0a.lock",
            "freeze-00000000000000A6.pid",
            "freeze-00000000000000a7.log",
        ] {
            std::fs::write(at(name), b"").unwrap();
        }

        assert_eq!(sweep(base.path()).await, 2);
        let mut left: Vec<String> = std::fs::read_dir(base.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "elsewhere",
                "freeze-00000000000000A6.pid",
                "freeze-00000000000000a3.pid",
                "freeze-00000000000000a4.lock",
                "freeze-00000000000000a4.pid",
                "freeze-00000000000000a5.pid",
                "freeze-00000000000000a7.log",
                "freeze-0a.lock",
            ]
        );
        drop(held);
    }

    #[tokio::test]
    async fn a_turn_removes_its_file_when_let_go() {
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("freeze-00000000000000b1.lock");
        let held = lock_file::take(&path, Instant::now(), TURN_PAUSE).await.unwrap();
        drop(FreezeTurn(Some((path.clone(), held))));
        assert!(!path.exists());
    }

    #[test]
    fn a_registry_is_private_and_read_back() {
        let base = tempfile::tempdir().unwrap();
        let registry = Registry(base.path().join("freeze-00000000000000c1.pid"));
        registry.write("token-c1");
        assert_eq!(
            registry.read(),
            Some((std::process::id() as i32, "token-c1".to_owned()))
        );
        let mode = std::fs::metadata(&registry.0).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
        registry.remove_if_ours("token-other");
        assert!(registry.0.exists());
        registry.remove_if_ours("token-c1");
        assert!(!registry.0.exists());
    }
}
