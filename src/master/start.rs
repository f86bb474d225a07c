//! Reaching the master of an agent socket from a client process, and
//! starting it where none runs: under the start lock, a socket left by a
//! master that died is removed, a new one bound here and handed to the
//! master process as its standard input, so that the client can connect
//! at once and two processes starting a master together end with one.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::unistd::geteuid;
use tokio::net::UnixStream;
use tokio::time::Instant;

use super::paths::{start_lock, MasterPaths};

/// A log beyond this is started afresh when a master starts.
const LOG_LIMIT: u64 = 1 << 20;

/// Connects to the master of `paths`, starting one (persisting for
/// `persist`, connecting to the agent within `handshake`) where none
/// answers. Waits for the start lock until `deadline`.
pub async fn connect_or_start(
    paths: &MasterPaths,
    persist: Duration,
    handshake: Duration,
    deadline: Instant,
) -> io::Result<UnixStream> {
    match UnixStream::connect(&paths.socket).await {
        Ok(stream) => return Ok(stream),
        Err(e) if absent(&e) => {}
        Err(e) => return Err(e),
    }
    let _lock = start_lock(&paths.lock, deadline).await?;
    // Another process may have started one while we waited.
    match UnixStream::connect(&paths.socket).await {
        Ok(stream) => return Ok(stream),
        Err(e) if absent(&e) => {}
        Err(e) => return Err(e),
    }
    remove_stale(&paths.socket)?;
    let listener = std::os::unix::net::UnixListener::bind(&paths.socket)?;
    std::fs::set_permissions(&paths.socket, std::fs::Permissions::from_mode(0o600))?;
    spawn_master(paths, persist, handshake, listener.into())?;
    // Bound already: the connection waits in the backlog until the
    // master accepts it.
    UnixStream::connect(&paths.socket).await
}

/// Nobody listens there: no socket, or one whose master has died.
pub(super) fn absent(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
    )
}

/// Removes the socket a dead master left, if it is one of ours; anything
/// else there is an error, not removed.
pub(super) fn remove_stale(socket: &std::path::Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(socket) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    if !meta.file_type().is_socket() || meta.uid() != geteuid().as_raw() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} is not a socket of this user: not replaced", socket.display()),
        ));
    }
    tracing::info!(socket = %socket.display(), "a master's socket nobody listens on: removed");
    std::fs::remove_file(socket)
}

fn spawn_master(
    paths: &MasterPaths,
    persist: Duration,
    handshake: Duration,
    listener: OwnedFd,
) -> io::Result<()> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&paths.log)?;
    if log.metadata()?.len() > LOG_LIMIT {
        log.set_len(0)?;
    }
    let exe = std::env::current_exe()?;
    // It runs in `/`, keeping no directory of ours busy: the agent's path
    // made absolute first (the same socket, by device and inode).
    let agent = std::fs::canonicalize(&paths.agent)?;
    let child = Command::new(exe)
        .args(["--log", "info", "--timeout"])
        .arg(handshake.as_secs_f64().to_string())
        .args(["control", "serve", "--persist"])
        .arg(persist.as_secs_f64().to_string())
        .arg(&agent)
        .current_dir("/")
        .env_remove("VIRTOMATE_PERSIST")
        .stdin(Stdio::from(listener))
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()?;
    tracing::info!(pid = child.id(), log = %paths.log.display(), "started a master");
    // Not waited for: it outlives this process.
    drop(child);
    Ok(())
}
