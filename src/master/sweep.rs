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
use tokio::net::UnixStream;
use virtomate_protocol::{names_to_sweep, ChannelLock};

use super::paths::start_lock;
use super::start::{absent, remove_stale};

/// How long the log of a master that no longer runs is kept, for a look
/// at what it did: a week, past a weekend and a holiday.
const LOG_KEPT: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Sweeps the runtime directory of `own`, the socket of the master that
/// sweeps (whose files are left alone), as a task of the master's own.
pub async fn sweep_runtime_dir(own: PathBuf) {
    let channels = tokio::task::spawn_blocking(ChannelLock::sweep).await;
    let (Some(dir), Some(own)) = (own.parent(), master_stem(&own)) else {
        return;
    };
    let masters = sweep_masters(dir, own).await;
    tracing::info!(?channels, masters, "swept the files nobody uses");
}

/// Sweeps the files of masters other than `own` that no longer run,
/// [`virtomate_protocol::MOST_EXAMINED`] files looked at most; returns
/// how many masters' files went.
async fn sweep_masters(dir: &Path, own: &str) -> usize {
    let mut done: Vec<String> = vec![own.to_owned()];
    let mut swept = 0;
    for name in names_to_sweep(dir, "master-") {
        let Some(stem) = master_stem(Path::new(&name)) else {
            continue;
        };
        if !done.iter().any(|d| d == stem) {
            swept += usize::from(sweep_master(dir, stem).await);
            done.push(stem.to_owned());
        }
        // Clients of this master, just started, go first.
        tokio::task::yield_now().await;
    }
    swept
}

/// Removes the files of one master if it no longer runs: under its start
/// lock, as a process that starts a master would look, so that none is
/// started or ends meanwhile. Its log goes only once old.
async fn sweep_master(dir: &Path, stem: &str) -> bool {
    let [socket, lock, log] = ["sock", "lock", "log"].map(|kind| dir.join(format!("{stem}.{kind}")));
    // One try: a lock held is a master starting or ending, not ours to sweep.
    let Ok(_held) = start_lock(&lock, tokio::time::Instant::now()).await else {
        return false;
    };
    match UnixStream::connect(&socket).await {
        Err(e) if absent(&e) => {}
        // A master listens (or may: its backlog is full).
        _ => return false,
    }
    if remove_stale(&socket).is_err() {
        return false;
    }
    let old = std::fs::symlink_metadata(&log).is_ok_and(|meta| {
        meta.is_file()
            && meta.uid() == geteuid().as_raw()
            && meta
                .modified()
                .is_ok_and(|at| at.elapsed().is_ok_and(|age| age >= LOG_KEPT))
    });
    if old {
        let _ = std::fs::remove_file(&log);
    }
    // Last and while held: a process that opened it before finds, once it
    // holds it, that the path names another file, and locks that one.
    std::fs::remove_file(&lock).is_ok()
}

/// `master-DEV-INO` of a master's file named as [`super::MasterPaths`]
/// names them (DEV in hex, INO in decimal).
fn master_stem(path: &Path) -> Option<&str> {
    let (stem, kind) = path.file_name()?.to_str()?.rsplit_once('.')?;
    let (dev, ino) = stem.strip_prefix("master-")?.split_once('-')?;
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let decimal = !ino.is_empty() && ino.bytes().all(|b| b.is_ascii_digit());
    (matches!(kind, "sock" | "lock" | "log") && hex(dev) && decimal).then_some(stem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_masters_own_names_are_taken() {
        assert_eq!(
            master_stem(Path::new("/run/v/master-fe00-12.sock")),
            Some("master-fe00-12")
        );
        assert_eq!(
            master_stem(Path::new("master-fe00-12.log")),
            Some("master-fe00-12")
        );
        for name in [
            "master-fe00-12.sock~",
            "master-FE00-12.lock",
            "master-fe00-1x.lock",
            "master-fe00.lock",
            "agent-fe00-12.lock",
            "freeze-0123.lock",
        ] {
            assert_eq!(master_stem(Path::new(name)), None, "{name}");
        }
    }

    #[tokio::test]
    async fn a_dead_masters_files_go_and_a_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name);
        drop(std::os::unix::net::UnixListener::bind(at("master-fe00-1.sock")).unwrap());
        for name in ["master-fe00-1.lock", "master-fe00-1.log", "master-fe00-2.log"] {
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
        let own = at("master-fe00-5.sock");
        drop(std::os::unix::net::UnixListener::bind(&own).unwrap());

        assert_eq!(sweep_masters(dir.path(), "master-fe00-5").await, 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let kept = [
            "master-fe00-1.log",
            "master-fe00-3.lock",
            "master-fe00-3.sock",
            "master-fe00-4.lock",
            "master-fe00-4.sock",
            "master-fe00-5.sock",
        ];
        assert_eq!(
            left, kept,
            "a young log, a live master, a busy lock and our own stay"
        );
        drop(busy);
    }
}
