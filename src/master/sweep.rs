//! What masters that no longer run left in the runtime directory: the
//! socket of one killed (SIGKILL runs no cleanup), the start lock and log
//! that every master leaves; and the channels' turn-taking files nobody
//! uses ([`ChannelLock::sweep`]). A VM restarted has a new agent socket,
//! so new names: without a sweep the directory only grows. Swept when a
//! master starts, which is rare and keeps it off every client's way.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::unistd::geteuid;
use virtomate_protocol::{files_to_sweep, ChannelLock, MOST_EXAMINED};

use super::paths::start_lock;
use super::start::remove_stale;
use crate::domain::socket_holders;
use crate::lock_file;

/// How long the log of a master that no longer runs is kept, for a look
/// at what it did: a week, past a weekend and a holiday.
const LOG_KEPT: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Sweeps the runtime directory of `own`, the socket of the master that
/// sweeps (whose files are left alone), as a task of the master's own.
pub async fn sweep_runtime_dir(own: PathBuf) {
    // A few syscalls for each of a bounded number of files: milliseconds
    // at worst, in the master's thread.
    let channels = ChannelLock::sweep().ok();
    let own_stem = own.file_stem().and_then(|stem| stem.to_str());
    let (Some(dir), Some(own)) = (own.parent(), own_stem) else {
        return;
    };
    let masters = sweep_masters(dir, own).await;
    tracing::info!(?channels, masters, "swept the files nobody uses");
}

/// Sweeps the files of masters other than `own` that no longer run,
/// looking at [`MOST_EXAMINED`] of them at most; returns how many
/// masters' files went.
async fn sweep_masters(dir: &Path, own: &str) -> usize {
    let mut done: Vec<String> = vec![own.to_owned()];
    let mut swept = 0;
    for (stem, kind) in files_to_sweep(dir, "master", &["sock", "lock", "log"]) {
        if done.len() > MOST_EXAMINED {
            break;
        }
        // A log is kept a while after its master has gone: one look (a
        // syscall) until it is old, not counted. The master's other
        // files, if any, are looked at by their own names.
        if done.contains(&stem) || kind == "log" && !old_log(&dir.join(format!("{stem}.log"))) {
            continue;
        }
        // Clients of this master, just started, go first.
        tokio::task::yield_now().await;
        swept += usize::from(sweep_master(dir, &stem).await);
        done.push(stem);
    }
    swept
}

/// Removes the files of one master if it no longer runs: under its start
/// lock, as a process that starts a master would look, so that none is
/// started or ends meanwhile. Its log goes only once old.
async fn sweep_master(dir: &Path, stem: &str) -> bool {
    let [socket, lock, log] = ["sock", "lock", "log"].map(|kind| dir.join(format!("{stem}.{kind}")));
    // One try: a lock held is a master starting or ending, not ours to sweep.
    let Ok(held) = start_lock(&lock, tokio::time::Instant::now()).await else {
        return false;
    };
    // Looked at, not connected to: a connection would count as a
    // client's in that master, and keep it from ending when its time is up.
    match socket_holders::is_listening(&socket) {
        Ok(false) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        // A master listens, or it cannot be told.
        _ => return false,
    }
    // Anything else there (not a socket of ours) stays: no master runs.
    let _ = remove_stale(&socket);
    if old_log(&log) {
        let _ = std::fs::remove_file(&log);
    }
    // Last and while held: a process that opened it before finds, once it
    // holds it, that the path names another file, and locks that one.
    lock_file::remove_held(&lock, &held)
}

/// Whether `log` is a regular file of this user last written to
/// [`LOG_KEPT`] ago or more.
fn old_log(log: &Path) -> bool {
    std::fs::symlink_metadata(log).is_ok_and(|meta| {
        meta.is_file()
            && meta.uid() == geteuid().as_raw()
            && meta
                .modified()
                .is_ok_and(|at| at.elapsed().is_ok_and(|age| age >= LOG_KEPT))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dead_masters_files_go_and_a_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name);
        drop(std::os::unix::net::UnixListener::bind(at("master-fe00-1.sock")).unwrap());
        let names = [
            "master-fe00-1.lock",
            "master-fe00-1.log",
            "master-fe00-2.log",
            "master-fe00-6.log",
        ];
        for name in names {
            std::fs::write(at(name), b"").unwrap();
        }
        let week_ago = std::time::SystemTime::now() - LOG_KEPT - Duration::from_secs(60);
        let old_log = std::fs::File::options()
            .write(true)
            .open(at("master-fe00-2.log"))
            .unwrap();
        old_log.set_modified(week_ago).unwrap();
        let _live = std::os::unix::net::UnixListener::bind(at("master-fe00-3.sock")).unwrap();
        std::fs::write(at("master-fe00-3.lock"), b"").unwrap();
        let busy = start_lock(&at("master-fe00-4.lock"), tokio::time::Instant::now())
            .await
            .unwrap();
        drop(std::os::unix::net::UnixListener::bind(at("master-fe00-4.sock")).unwrap());
        std::fs::write(at("target"), b"").unwrap();
        for name in ["master-fe00-7.sock", "master-fe00-8.lock", "master-FE00-9.lock"] {
            std::os::unix::fs::symlink(at("target"), at(name)).unwrap();
        }
        let own = at("master-fe00-5.sock");
        drop(std::os::unix::net::UnixListener::bind(&own).unwrap());

        assert_eq!(sweep_masters(dir.path(), "master-fe00-5").await, 3);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let kept = [
            "master-FE00-9.lock",
            "master-fe00-1.log",
            "master-fe00-3.lock",
            "master-fe00-3.sock",
            "master-fe00-4.lock",
            "master-fe00-4.sock",
            "master-fe00-5.sock",
            "master-fe00-6.log",
            "master-fe00-7.sock",
            "master-fe00-8.lock",
            "target",
        ];
        assert_eq!(
            left, kept,
            "young logs, a live master, a busy lock, our own and symlinks stay"
        );
        drop(busy);
    }
}
