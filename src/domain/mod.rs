//! Turning the DOMAIN argument into a domain and the way to its agent.
//!
//! # Layout
//!
//! * this file: what a domain is ([`Domain`], its agent [`Channel`]s, how it
//!   was found) and how its agent is reached ([`Route`]);
//! * [`lookup`]: finding DOMAIN — a socket path (anything with a `/`, or an
//!   existing socket in the current directory), then a libvirt domain (by
//!   name or UUID), then the `-name` of a running bare QEMU process — and
//!   listing every running domain. `-c URI` ([`Scope`]) limits the search to
//!   one libvirt daemon;
//! * [`route`]: choosing, among a domain's agent channels, the one to use,
//!   or libvirtd, by looking at who holds each;
//! * `libvirt`, `procfs` and `qemu_args`: the two places domains are found
//!   in — libvirt's status files, and the command lines of QEMU processes;
//! * [`socket_holders`]: who else is connected to a socket.

mod libvirt;
mod lookup;
mod procfs;
mod qemu_args;
mod route;
pub mod run_state;
pub mod socket_holders;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use lookup::{find, list, Scope};

/// A UNIX socket channel to an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    /// The virtio port name, e.g. `org.qemu.guest_agent.0`, where known.
    pub port_name: Option<String>,
    pub path: PathBuf,
    /// Whether the guest has opened its end of the port, where the VM's
    /// manager records it (libvirt does, in the status file); `None`
    /// when unknown.
    pub guest_connected: Option<bool>,
}

/// How a domain was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// DOMAIN was the socket path itself.
    Socket,
    /// A bare QEMU process, by its `-name`.
    Qemu,
    /// A libvirt domain, by its status file.
    Libvirt,
}

/// A running domain and the ways to reach it.
#[derive(Debug, Clone)]
pub struct Domain {
    pub name: String,
    pub uuid: Option<String>,
    pub pid: Option<u32>,
    pub source: Source,
    pub agent_channels: Vec<Channel>,
    /// QMP sockets (for libvirt: the monitor, which libvirtd holds).
    pub qmp_sockets: Vec<PathBuf>,
    /// For libvirt domains: the daemon's URI and RPC socket.
    pub libvirt_daemon: Option<(&'static str, PathBuf)>,
    /// For libvirt domains: the run state and its reason as libvirt last
    /// recorded them (`paused`, `user`).
    pub libvirt_state: Option<(String, String)>,
}

/// How to reach a domain's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Straight over this agent socket.
    Direct(PathBuf),
    /// Through libvirtd's RPC socket, which holds the agent's channel.
    Libvirt { socket: PathBuf, uri: &'static str },
}

/// Agent channels by port number: `org.qemu.guest_agent.2` before `.10`,
/// wherever they were found, so that the choice among them is the same.
fn sort_by_port_number(channels: &mut [Channel]) {
    channels.sort_by_key(|channel| {
        let number = channel
            .port_name
            .as_deref()
            .and_then(|name| name.strip_prefix(qemu_args::AGENT_PORT_PREFIX));
        let number = number.and_then(|n| n.parse::<u32>().ok()).unwrap_or(u32::MAX);
        (number, channel.port_name.clone())
    });
}

fn is_socket(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|meta| meta.file_type().is_socket())
}
