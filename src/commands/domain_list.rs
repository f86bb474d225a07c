//! `virtomate domain-list`: the running domains of this host, libvirt's and
//! bare QEMU processes alike, with their agent channels and, as the
//! original virtomate, their `state`.

use serde::Serialize;

use super::{Answer, Context};
use crate::domain::{self, run_state, socket_holders, Source};
use crate::error::CliError;

#[derive(Serialize)]
struct DomainEntry {
    agent_channels: Vec<ChannelEntry>,
    name: String,
    pid: Option<u32>,
    source: Source,
    /// The original's words: `running`, `paused`, `shut-off`, … or `unknown`.
    state: &'static str,
    uuid: Option<String>,
}

#[derive(Serialize)]
struct ChannelEntry {
    /// Whether the guest has opened its end of the port, where libvirt
    /// records it; `null` when unknown.
    guest_connected: Option<bool>,
    /// Whether another client is connected, so that a new one would wait.
    held: bool,
    name: Option<String>,
    /// The socket: `@NAME` for an abstract one, as written for a relative
    /// path that cannot be resolved, `null` for a channel that is no socket.
    path: Option<String>,
    /// Why virtomate cannot use the channel; `null` when it can.
    unusable: Option<String>,
}

pub async fn run(context: &Context) -> Result<Answer, CliError> {
    let mut entries = Vec::new();
    for found in domain::list(&context.scope) {
        let state = run_state::listed_state(&found, &context.options).await;
        entries.push(DomainEntry {
            agent_channels: found
                .agent_channels
                .into_iter()
                .map(|channel| ChannelEntry {
                    guest_connected: channel.guest_connected,
                    held: channel.is_usable()
                        && socket_holders::connected_clients(&channel.path).is_ok_and(|n| n > 0),
                    path: channel.shown_path(),
                    unusable: channel.unusable(),
                    name: channel.port_name,
                })
                .collect(),
            name: found.name,
            pid: found.pid,
            source: found.source,
            state,
            uuid: found.uuid,
        });
    }
    entries.sort_by(|a, b| (&a.name, a.pid).cmp(&(&b.name, b.pid)));
    let json = serde_json::to_value(entries).expect("plain data always serializes");
    Ok(Answer::Json(json))
}
