//! Removing the turn-taking files nobody uses any more: those of a process
//! killed while it held the turn (SIGKILL runs no `Drop`), and those of
//! agent sockets gone with their VMs, whose names never come back.
//!
//! A file goes only as its last holder would let it go: its turn held and
//! nobody saying that they wait, so that the race handling of the lock
//! (a turn counts only on the file its path names) keeps it safe.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use nix::unistd::geteuid;

use super::in_flight::RequestNote;
use super::lock::{names, open_own_file, remove_unless_waited, runtime_dir, somebody_says_so};
use crate::wire::random::random_bytes;
use crate::ChannelLock;

/// The most agent sockets (or masters) whose files one sweep looks at: a few syscalls
/// each, so that a sweep of a directory of any size stays within
/// milliseconds. It starts at a random place in the listing, so that
/// sweeps one after another reach every file however many are kept.
pub const MOST_EXAMINED: usize = 256;

/// The most names read from the directory by one sweep.
const MOST_LISTED: usize = 16 * 1024;

impl ChannelLock {
    /// Removes the turn-taking files in this user's runtime directory
    /// that nobody uses ([`sweep_in`](Self::sweep_in)); returns how many
    /// went.
    ///
    /// ```no_run
    /// let removed = virtomate_protocol::ChannelLock::sweep()?;
    /// println!("{removed} stale lock files removed");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn sweep() -> io::Result<usize> {
        Ok(ChannelLock::sweep_in(&runtime_dir()?))
    }

    /// Removes the turn-taking files in `dir` that nobody uses, those of
    /// [`MOST_EXAMINED`] agent sockets at most; returns how many went. A
    /// channel's files go when its turn is free and nobody says that they
    /// wait, as its last holder would remove them; a `.poll` or `.wait`
    /// without its `.lock` when nobody holds it; and, with the turn free or
    /// no turn file, a note of a big request (`.request`) that tells
    /// nothing any more (see [`RequestInFlight::may_still_be_read`]: its
    /// writer was killed, and the agent has read it by now). Only regular
    /// files of this user named as the lock names them are touched, and no
    /// symlink is followed.
    ///
    /// [`RequestInFlight::may_still_be_read`]: crate::RequestInFlight::may_still_be_read
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// std::fs::write(dir.path().join("agent-fe00-1234.lock"), b"")?;
    /// assert_eq!(virtomate_protocol::ChannelLock::sweep_in(dir.path()), 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn sweep_in(dir: &Path) -> usize {
        let mut done: Vec<String> = Vec::new();
        let mut removed = 0;
        for (stem, _) in files_to_sweep(dir, "agent", &["lock", "wait", "poll", "request"]) {
            if done.len() == MOST_EXAMINED {
                break;
            }
            if !done.contains(&stem) {
                removed += sweep_channel(dir, &stem);
                done.push(stem);
            }
        }
        removed
    }
}

/// The files in `dir` named `PREFIX-DEV-INO.KIND`, as virtomate names the
/// files of an agent socket (DEV in hex, INO in decimal, KIND one of
/// `kinds`), as stem (`PREFIX-DEV-INO`) and kind, from a random place in
/// the listing onwards and round, so that sweeps that stop early reach
/// every file in turn. 16384 names are read at most.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// for name in ["master-fe00-1.log", "master-fe00-1.txt", "other"] {
///     std::fs::write(dir.path().join(name), b"")?;
/// }
/// let files = virtomate_protocol::files_to_sweep(dir.path(), "master", &["sock", "log"]);
/// assert_eq!(files, [("master-fe00-1".to_owned(), "log")]);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn files_to_sweep(dir: &Path, prefix: &str, kinds: &[&'static str]) -> Vec<(String, &'static str)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(String, &'static str)> = entries
        .take(MOST_LISTED)
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            let (stem, kind) = name.rsplit_once('.')?;
            let kind = kinds.iter().find(|k| **k == kind)?;
            is_stem(stem, prefix).then(|| (stem.to_owned(), *kind))
        })
        .collect();
    if !files.is_empty() {
        let start = random_bytes::<8>().map_or(0, u64::from_ne_bytes) % files.len() as u64;
        files.rotate_left(start as usize);
    }
    files
}

/// Whether `stem` is `PREFIX-DEV-INO`, DEV in lower-case hex and INO in
/// decimal.
fn is_stem(stem: &str, prefix: &str) -> bool {
    let key = stem.strip_prefix(prefix).and_then(|rest| rest.strip_prefix('-'));
    let Some((dev, ino)) = key.and_then(|key| key.split_once('-')) else {
        return false;
    };
    let hex = !dev.is_empty() && dev.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    hex && !ino.is_empty() && ino.bytes().all(|b| b.is_ascii_digit())
}

/// Sweeps the files of one channel; returns how many went.
fn sweep_channel(dir: &Path, stem: &str) -> usize {
    let [turn, wait, poll, note] =
        ["lock", "wait", "poll", "request"].map(|kind| dir.join(format!("{stem}.{kind}")));
    match open_own_file(&turn, false) {
        Ok(file) => match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            // Held as its holder would hold it when it lets go.
            Ok(lock) if names(&turn, &lock) => {
                remove_stale_note(&note) + remove_unless_waited(&turn, &wait, &poll)
            }
            // Held, or removed and made anew since we opened it.
            _ => 0,
        },
        // What a waiter's say-so was left in: gone unless said still.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let said = [wait, poll]
                .iter()
                .filter(|path| {
                    own_file(path) && !somebody_says_so(path) && std::fs::remove_file(path).is_ok()
                })
                .count();
            said + remove_stale_note(&note)
        }
        // A symlink, or a file of another user: not ours to remove.
        Err(_) => 0,
    }
}

/// Removes the note of a big request at `path` (see [`RequestNote`]) if
/// it no longer tells anything: the agent has read its request by now,
/// or it is no note. Its writer was killed before the reply came (a reply
/// removes it), and nobody else removes it on a channel gone with its VM.
/// Called where no writer can be at work: with the channel's turn held, or
/// with no turn file at all. Returns how many went.
fn remove_stale_note(path: &Path) -> usize {
    let stale = own_file(path)
        && RequestNote::at(path.to_owned())
            .read()
            .map_or(true, |note| !note.may_still_be_read());
    usize::from(stale && std::fs::remove_file(path).is_ok())
}

/// Whether `path` itself (not what a symlink names) is a regular file of
/// this user.
fn own_file(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|meta| meta.is_file() && meta.uid() == geteuid().as_raw())
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::path::PathBuf;

    use super::*;

    fn plant(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, b"").unwrap();
        path
    }

    fn flock(path: &Path, arg: FlockArg) -> Flock<File> {
        Flock::lock(File::open(path).unwrap(), arg).unwrap()
    }

    fn left(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_held_turn_is_kept_and_a_free_one_removed() {
        let dir = tempfile::tempdir().unwrap();
        let held = plant(dir.path(), "agent-fe00-1.lock");
        plant(dir.path(), "agent-fe00-1.poll");
        plant(dir.path(), "agent-fe00-2.lock");
        plant(dir.path(), "agent-fe00-2.wait");
        plant(dir.path(), "agent-fe00-2.poll");
        let turn = flock(&held, FlockArg::LockExclusiveNonblock);
        assert_eq!(ChannelLock::sweep_in(dir.path()), 3);
        assert_eq!(left(dir.path()), ["agent-fe00-1.lock", "agent-fe00-1.poll"]);
        drop(turn);
        assert_eq!(ChannelLock::sweep_in(dir.path()), 2);
        assert!(left(dir.path()).is_empty());
    }

    #[test]
    fn a_waiters_say_so_keeps_the_files() {
        let dir = tempfile::tempdir().unwrap();
        plant(dir.path(), "agent-fe00-1.lock");
        let poll = plant(dir.path(), "agent-fe00-1.poll");
        let wait = plant(dir.path(), "agent-fe00-2.wait");
        plant(dir.path(), "agent-fe00-3.poll");
        let _waiting = flock(&poll, FlockArg::LockSharedNonblock);
        let _urgent = flock(&wait, FlockArg::LockSharedNonblock);
        assert_eq!(
            ChannelLock::sweep_in(dir.path()),
            1,
            "the lone .poll nobody holds"
        );
        assert_eq!(
            left(dir.path()),
            ["agent-fe00-1.lock", "agent-fe00-1.poll", "agent-fe00-2.wait"]
        );
    }

    #[test]
    fn other_names_and_symlinks_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let foreign = [
            "agent-fe00-1.lock~",
            "agent-FE00-1.lock",
            "agent-fe00-x.lock",
            "agent-fe00.lock",
            "agent-fe00-1.log",
            "agent-fe00-1-2.lock",
            "agentx-fe00-1.lock",
            "master-fe00-1.lock",
            "freeze-0123.lock",
        ];
        for name in foreign {
            plant(dir.path(), name);
        }
        let target = plant(dir.path(), "target");
        for name in ["agent-fe00-2.lock", "agent-fe00-3.poll"] {
            std::os::unix::fs::symlink(&target, dir.path().join(name)).unwrap();
        }
        assert_eq!(ChannelLock::sweep_in(dir.path()), 0);
        let mut expected: Vec<&str> = foreign.to_vec();
        expected.extend(["agent-fe00-2.lock", "agent-fe00-3.poll", "target"]);
        expected.sort();
        assert_eq!(left(dir.path()), expected);
    }

    /// A note of a big request goes once it tells nothing (a killed
    /// writer's, read by the agent long since, or garbage), with its turn
    /// free or without one; a fresh one stays, and so does any while the
    /// turn is held.
    #[test]
    fn a_stale_note_of_a_big_request_is_removed_and_a_fresh_one_kept() {
        use crate::RequestInFlight;
        let dir = tempfile::tempdir().unwrap();
        let now_ms = |ago: u64| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            now.as_millis() as u64 - ago
        };
        let note = |name: &str, sent_ms: u64| {
            let note = RequestInFlight {
                bytes: 4 << 20,
                pid: 1,
                started: None,
                sent_ms,
            };
            let path = dir.path().join(name);
            std::fs::write(&path, serde_json::to_vec(&note).unwrap()).unwrap();
            path
        };
        note("agent-fe00-1.request", now_ms(3_600_000));
        plant(dir.path(), "agent-fe00-2.request");
        note("agent-fe00-3.request", now_ms(0));
        note("agent-fe00-4.request", now_ms(3_600_000));
        let held = plant(dir.path(), "agent-fe00-4.lock");
        note("agent-fe00-5.request", now_ms(3_600_000));
        plant(dir.path(), "agent-fe00-5.lock");
        let turn = flock(&held, FlockArg::LockExclusiveNonblock);
        // Notes 1, 2 and 5, and 5's free turn.
        assert_eq!(ChannelLock::sweep_in(dir.path()), 4);
        assert_eq!(
            left(dir.path()),
            [
                "agent-fe00-3.request",
                "agent-fe00-4.lock",
                "agent-fe00-4.request"
            ]
        );
        drop(turn);
    }

    #[test]
    fn one_sweep_looks_at_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        for ino in 0..MOST_EXAMINED + 10 {
            plant(dir.path(), &format!("agent-fe00-{ino}.lock"));
        }
        assert_eq!(ChannelLock::sweep_in(dir.path()), MOST_EXAMINED);
        assert_eq!(ChannelLock::sweep_in(dir.path()), 10);
    }
}
