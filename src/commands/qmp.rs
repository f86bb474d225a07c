//! `virtomate qmp`: any QMP command, sent to QEMU's monitor of a domain;
//! prints its `return` value (and, with `--events`, the events that
//! arrived meanwhile). The monitor of a libvirt domain is libvirtd's, so
//! the command goes through libvirtd.

use std::path::{Path, PathBuf};

use serde_json::json;
use virtomate_protocol::libvirt::LibvirtMonitor;
use virtomate_protocol::QmpClient;

use super::{Answer, Context};
use crate::cli::Request;
use crate::domain::socket_holders::{self, Holder};
use crate::domain::{self, Source};
use crate::error::{CliError, ErrorKind, Peer};

/// How to reach QEMU's monitor.
enum Monitor {
    /// Straight over this QMP socket.
    Socket(PathBuf),
    /// Through libvirtd's RPC socket: libvirtd holds the monitor of its
    /// domain `name`.
    Libvirt {
        socket: PathBuf,
        uri: &'static str,
        name: String,
    },
}

pub async fn run(
    domain: &str,
    request: &Request,
    events: bool,
    context: &Context,
) -> Result<Answer, CliError> {
    match monitor(domain, context)? {
        Monitor::Socket(socket) => direct(&socket, request, events, context).await,
        Monitor::Libvirt { name, .. } if events => Err(CliError::new(
            ErrorKind::AgentUnavailable,
            format!(
                "--events needs QEMU's monitor socket itself, and libvirtd holds the one of '{name}': \
                 libvirtd passes commands on but keeps the events"
            ),
        )
        .with_hint("run without --events")),
        Monitor::Libvirt { socket, uri, name } => {
            tracing::warn!(
                socket = %socket.display(),
                "libvirtd holds QEMU's monitor: going through libvirtd, \
                 which marks the domain tainted (custom-monitor)"
            );
            let error = |e| CliError::from_libvirtd(e, &socket, Peer::Qmp);
            let mut qemu = LibvirtMonitor::connect(&socket, uri, &name, &context.options)
                .await
                .map_err(error)?;
            let ret = qemu
                .execute_json(&request.name, request.arguments.as_ref())
                .await
                .map_err(error)?;
            if let Err(error) = qemu.into_client().close().await {
                tracing::debug!(%error, "closing the connection to libvirtd");
            }
            Ok(Answer::Json(ret))
        }
    }
}

async fn direct(
    socket: &Path,
    request: &Request,
    events: bool,
    context: &Context,
) -> Result<Answer, CliError> {
    let qmp_error = |e| CliError::from_raw(e, socket, Peer::Qmp);
    let mut qmp = QmpClient::connect(socket, context.options.clone())
        .await
        .map_err(qmp_error)?;
    let ret = qmp
        .execute_json(&request.name, request.arguments.as_ref())
        .await
        .map_err(qmp_error)?;
    if !events {
        return Ok(Answer::Json(ret));
    }
    let events = serde_json::to_value(qmp.take_events()).expect("events are plain JSON");
    Ok(Answer::Json(json!({ "events": events, "return": ret })))
}

/// The domain's monitor; DOMAIN may also be the QMP socket's path.
fn monitor(domain: &str, context: &Context) -> Result<Monitor, CliError> {
    let found = domain::find(domain, &context.scope)?;
    if found.source == Source::Socket {
        return Ok(Monitor::Socket(domain.into()));
    }
    if found.qmp_sockets.is_empty() {
        return Err(CliError::new(
            ErrorKind::AgentUnavailable,
            format!("'{}' has no QMP socket", found.name),
        )
        .with_hint("start QEMU with -qmp unix:PATH,server=on,wait=off"));
    }
    let seen: Vec<(&PathBuf, Vec<Holder>)> = found
        .qmp_sockets
        .iter()
        .map(|socket| (socket, socket_holders::holders(socket)))
        .collect();
    if let Some((free, _)) = seen
        .iter()
        .find(|(_, holders)| holders.iter().all(Holder::is_waited_for))
    {
        return Ok(Monitor::Socket((*free).clone()));
    }
    let libvirt_keeps_it = found.source == Source::Libvirt;
    let held_by_libvirtd = seen
        .iter()
        .any(|(_, holders)| socket_holders::held_by_libvirtd(holders, libvirt_keeps_it));
    if let (Source::Libvirt, true, Some((uri, rpc_socket))) =
        (found.source, held_by_libvirtd, &found.libvirt_daemon)
    {
        return Ok(Monitor::Libvirt {
            socket: rpc_socket.clone(),
            uri,
            name: found.name,
        });
    }
    let held: Vec<String> = seen
        .iter()
        .map(|(socket, holders)| format!("{} is {}", socket.display(), socket_holders::describe(holders)))
        .collect();
    Err(CliError::new(
        ErrorKind::AgentUnavailable,
        format!("QEMU's monitor of '{}' is held: {}", found.name, held.join("; ")),
    )
    .with_hint("QEMU serves one QMP client at a time"))
}
