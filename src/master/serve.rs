//! The master process: detached from the terminal, it accepts this
//! user's clients on the socket its starter bound and handed it, runs the
//! hub, and on its way out removes its socket under the start lock.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nix::unistd::geteuid;
use tokio::sync::mpsc;

use super::client_conn::{serve_client, ClientEvent};
use super::hub::{Hub, Settings};
use super::hub_connector::HubConnector;
use super::paths::start_lock;
use super::run_conn::serve_run;
use super::sweep::sweep_runtime_dir;

/// Serves on the listening socket the starter passed as standard input,
/// until the hub says to end.
pub async fn serve_inherited(settings: Settings) -> io::Result<()> {
    // A session of its own: no terminal, none of its signals.
    let _ = nix::unistd::setsid();
    let listener = std::os::unix::net::UnixListener::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    tokio::spawn(sweep_runtime_dir(settings.paths.socket.clone()));
    serve(listener, settings).await
}

pub async fn serve(listener: std::os::unix::net::UnixListener, settings: Settings) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let own = std::fs::symlink_metadata(&settings.paths.socket)?;
    let (own_dev, own_ino) = (own.dev(), own.ino());
    let listener = tokio::net::UnixListener::from_std(listener)?;
    tracing::info!(
        pid = std::process::id(),
        agent = %settings.paths.agent.display(),
        "master started"
    );
    let (hub_tx, hub_rx) = mpsc::unbounded_channel();
    // Clients, and requests to the agent, are numbered from one count.
    let ids = Arc::new(AtomicU64::new(1));
    let max_reply_len = settings.max_reply_len;
    let accepting = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, say: a pause, not a spin.
                    tracing::warn!(%error, "cannot accept a client");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Only this user's processes; root's master serves root only.
            match stream.peer_cred() {
                Ok(peer) if peer.uid() == geteuid().as_raw() => {}
                peer => {
                    tracing::warn!(?peer, "a client of another user refused");
                    continue;
                }
            }
            let client = ids.fetch_add(1, Ordering::Relaxed);
            let (ids, hub_tx) = (ids.clone(), hub_tx.clone());
            tokio::spawn(async move {
                if let Some(run) =
                    serve_client(stream.into_split(), client, ids.clone(), hub_tx.clone()).await
                {
                    let _ = hub_tx.send(ClientEvent::Run);
                    let connect = |options| HubConnector::new(hub_tx, ids, options);
                    serve_run(run, connect, max_reply_len).await;
                }
            });
        }
    });
    let lock_path = settings.paths.lock.clone();
    let socket_path = settings.paths.socket.clone();
    let end = Hub::new(settings).run(hub_rx).await;
    accepting.abort();
    // Under the start lock: a client that finds no socket then starts a
    // new master, and none is removed that a new master has bound.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    let _lock = start_lock(&lock_path, deadline).await;
    let still_ours =
        std::fs::symlink_metadata(&socket_path).is_ok_and(|m| m.dev() == own_dev && m.ino() == own_ino);
    if still_ours {
        let _ = std::fs::remove_file(&socket_path);
    }
    tracing::info!(?end, "master ended");
    Ok(())
}
