//! `virtomate qmp`: any QMP command, sent to QEMU's monitor of a domain;
//! prints its `return` value (and, with `--events`, the events that
//! arrived meanwhile).

use std::path::PathBuf;

use serde_json::json;
use virtomate_protocol::QmpClient;

use super::guest_cmd::Request;
use super::{Answer, Context};
use crate::domain::{self, socket_holders, Source};
use crate::error::{CliError, Peer};

pub async fn run(
    domain: &str,
    request: &Request,
    events: bool,
    context: &Context,
) -> Result<Answer, CliError> {
    let socket = qmp_socket(domain, context)?;
    let qmp_error = |e| CliError::from_raw(e, &socket, Peer::Qmp);
    let mut qmp = QmpClient::connect(&socket, context.options.clone())
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

/// The domain's QMP socket; DOMAIN may also be the QMP socket's path.
pub fn qmp_socket(domain: &str, context: &Context) -> Result<PathBuf, CliError> {
    let found = domain::find(domain, &context.scope)?;
    if found.source == Source::Socket {
        return Ok(domain.into());
    }
    let Some(socket) = found.qmp_sockets.first() else {
        return Err(CliError::AgentUnavailable(format!(
            "'{}' has no QMP socket; start QEMU with -qmp unix:PATH,server=on,wait=off",
            found.name
        )));
    };
    let holders = socket_holders::holders(socket);
    if holders.iter().any(|h| h.command.as_deref() != Some("virtomate")) {
        let why = if found.source == Source::Libvirt {
            "libvirtd keeps the monitor of its domains for itself and QEMU serves one QMP client at a time"
        } else {
            "QEMU serves one QMP client at a time"
        };
        return Err(CliError::AgentUnavailable(format!(
            "QEMU's monitor of '{}' at {} is {}: {why}",
            found.name,
            socket.display(),
            socket_holders::describe(&holders)
        )));
    }
    Ok(socket.clone())
}
