//! A master, as it starts, sweeps the per-user runtime directory: files
//! that masters no longer running and processes killed while they held a
//! channel's turn left go, and every file in use stays. Other tests'
//! masters share the directory and sweep it too: the files planted here
//! carry a device number no file system has, so that no live file of
//! theirs is ever named like them.

use std::fs::File;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::fcntl::{Flock, FlockArg};

use crate::master::{end_master, master_info, through_master};
use crate::support::host_agent::HostAgent;
use crate::support::wait_until;

/// A device number no file system has (major 0xffffff): a made-up agent
/// socket's, so that the names below are nobody's.
const NO_DEVICE: &str = "ffffffffdead";

/// This user's runtime directory, where virtomate keeps its lock files.
pub fn runtime_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        PathBuf::from("/run/virtomate")
    } else {
        Path::new(&std::env::var_os("XDG_RUNTIME_DIR").unwrap()).join("virtomate")
    }
}

fn plant(path: &Path) -> PathBuf {
    std::fs::write(path, b"").unwrap();
    path.to_owned()
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn a_starting_master_removes_what_nobody_uses_and_keeps_what_is_in_use() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let dir = runtime_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let name = |kind: &str, n: u32, ext: &str| {
        dir.join(format!("{kind}-{NO_DEVICE}-{}{n}.{ext}", std::process::id()))
    };

    // A master killed: its socket nobody listens on, its lock and an old log.
    let dead_master = name("master", 1, "sock");
    drop(UnixListener::bind(&dead_master).unwrap());
    let mut stale = vec![dead_master, plant(&name("master", 1, "lock"))];
    let old_log = plant(&name("master", 1, "log"));
    let week_ago = SystemTime::now() - Duration::from_secs(8 * 24 * 60 * 60);
    File::options()
        .write(true)
        .open(&old_log)
        .unwrap()
        .set_modified(week_ago)
        .unwrap();
    stale.push(old_log);
    // A channel's holder killed with a waiter: nobody holds any of them.
    stale.extend(["lock", "wait", "poll"].map(|ext| plant(&name("agent", 2, ext))));
    // In use: a turn held, and a master listening.
    let held = plant(&name("agent", 3, "lock"));
    let _turn = Flock::lock(File::open(&held).unwrap(), FlockArg::LockExclusive).unwrap();
    let listening = name("master", 4, "sock");
    let _listener = UnixListener::bind(&listening).unwrap();

    let out = through_master(&["guest-ping", socket.to_str().unwrap()], None);
    assert_eq!(out.status, 0, "{out:?}");
    let own = PathBuf::from(master_info(&socket)["socket"].as_str().unwrap());
    assert_eq!(
        own.parent(),
        Some(dir.as_path()),
        "the runtime directory planted in"
    );
    wait_until(20, "the stale files swept", || {
        stale.iter().all(|path| !path.exists())
    });
    for path in [&held, &listening, &own, &own.with_extension("lock")] {
        assert!(path.exists(), "{} is in use and stays", path.display());
    }
    end_master(&socket);
    // The sweep made a lock to look at the listening one under.
    for path in [held, listening.with_extension("lock"), listening] {
        let _ = std::fs::remove_file(path);
    }
}
