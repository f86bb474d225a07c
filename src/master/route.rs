//! The way to a domain's agent when its master runs: straight to it,
//! without first looking at who holds the agent's socket (the master
//! does, and finding out costs a look at every process's descriptors).

use crate::domain::{ChannelKind, Domain, Route};

use super::paths::MasterPaths;

/// The first agent channel of `found` whose master's socket is there; a
/// master that died there is replaced when connecting.
pub fn route_to_running_master(found: &Domain) -> Option<Route> {
    found
        .agent_channels
        .iter()
        .filter(|channel| channel.kind == ChannelKind::Socket)
        .find(|channel| MasterPaths::for_agent(&channel.path).is_ok_and(|paths| paths.socket.exists()))
        .map(|channel| Route::Direct(channel.path.clone()))
}
