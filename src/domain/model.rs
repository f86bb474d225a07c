//! What a domain is: its agent [`Channel`]s, how it was found ([`Source`]),
//! and how its agent is reached ([`Route`]).

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{CliError, ErrorKind};

/// Prefix of the virtio port names the QEMU Guest Agent listens on.
pub const AGENT_PORT_PREFIX: &str = "org.qemu.guest_agent.";

/// A channel to an agent: a UNIX socket, as a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    /// The virtio port name, e.g. `org.qemu.guest_agent.0`, where known.
    pub port_name: Option<String>,
    /// The socket's path; `@NAME` for an abstract socket (as
    /// `/proc/net/unix` and `ss` show it, and as the protocol crate
    /// connects to it); as written on QEMU's command line for a relative
    /// path that cannot be resolved; empty for a channel that is no socket.
    pub path: PathBuf,
    pub kind: ChannelKind,
    /// Whether the guest has opened its end of the port, where the VM's
    /// manager records it (libvirt does, in the status file); `None`
    /// when unknown.
    pub guest_connected: Option<bool>,
}

/// What kind of channel a [`Channel`] is, and whether virtomate can use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelKind {
    /// A UNIX socket file.
    Socket,
    /// An abstract UNIX socket (`-chardev socket,abstract=on,path=NAME`),
    /// which has no file.
    Abstract,
    /// A relative socket path whose directory is unknown: QEMU resolved it
    /// against the directory it was started in, which it has left since
    /// (`-daemonize` changes to `/`), or which we may not read.
    UnresolvedRelative(&'static str),
    /// A chardev that is no UNIX socket, by its backend: `pty`, `file`, a
    /// TCP socket...
    NotASocket(String),
}

impl Channel {
    /// A UNIX socket file at `path`.
    pub fn socket(port_name: Option<String>, path: PathBuf, guest_connected: Option<bool>) -> Channel {
        Channel {
            port_name,
            path,
            kind: ChannelKind::Socket,
            guest_connected,
        }
    }

    /// Whether virtomate can connect to it.
    pub fn is_usable(&self) -> bool {
        matches!(self.kind, ChannelKind::Socket | ChannelKind::Abstract)
    }

    /// The path as it is shown: `None` for a channel that is no socket.
    pub fn shown_path(&self) -> Option<String> {
        match self.kind {
            ChannelKind::NotASocket(_) => None,
            _ => Some(self.path.display().to_string()),
        }
    }

    /// Why virtomate cannot use this channel, for `domain-list`; `None`
    /// when it can.
    pub fn unusable(&self) -> Option<String> {
        match &self.kind {
            ChannelKind::Socket | ChannelKind::Abstract => None,
            ChannelKind::UnresolvedRelative(why) => Some(format!(
                "the relative path {} cannot be resolved: {why}",
                self.path.display()
            )),
            ChannelKind::NotASocket(backend) => Some(format!("a {backend} chardev, not a UNIX socket")),
        }
    }

    /// The error for a channel virtomate cannot use, naming its `owner`
    /// (see [`Domain::described`]); `None` when it can use it.
    pub fn unusable_error(&self, owner: &str) -> Option<CliError> {
        let (problem, hint) = self.unusable_problem(owner)?;
        Some(CliError::new(ErrorKind::AgentUnavailable, problem).with_hint(hint))
    }

    /// What is wrong with a channel virtomate cannot use, and what to do.
    pub fn unusable_problem(&self, owner: &str) -> Option<(String, String)> {
        let port = self.port_name.as_deref().unwrap_or("agent channel");
        match &self.kind {
            ChannelKind::Socket | ChannelKind::Abstract => None,
            ChannelKind::UnresolvedRelative(why) => Some((
                format!(
                    "the {port} socket of {owner} is at the relative path {}, \
                     which cannot be resolved: {why}",
                    self.path.display()
                ),
                format!(
                    "pass the socket's path as DOMAIN ({} in the directory QEMU was started in), \
                     or start QEMU with an absolute -chardev path",
                    self.path.display()
                ),
            )),
            ChannelKind::NotASocket(backend) => Some((
                format!("the {port} channel of {owner} is a {backend} chardev, which virtomate cannot use"),
                match backend.as_str() {
                    "pty" => {
                        "give it a UNIX socket: -chardev socket,path=PATH,server=on,wait=off,id=ID \
                         (QMP's query-chardev names the pty's /dev/pts device, for other tools)"
                    }
                    _ => "give it a UNIX socket: -chardev socket,path=PATH,server=on,wait=off,id=ID",
                }
                .to_owned(),
            )),
        }
    }
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
pub(super) fn sort_by_port_number(channels: &mut [Channel]) {
    channels.sort_by_key(|channel| {
        let number = channel
            .port_name
            .as_deref()
            .and_then(|name| name.strip_prefix(AGENT_PORT_PREFIX));
        let number = number.and_then(|n| n.parse::<u32>().ok()).unwrap_or(u32::MAX);
        (number, channel.port_name.clone())
    });
}

/// Whether a UNIX socket file is at `path`.
pub fn is_socket(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|meta| meta.file_type().is_socket())
}

/// Whether `path` is spelled `@NAME`, an abstract socket's address.
pub fn is_abstract(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes().starts_with(b"@")
}

/// `path` as tokio's `UnixStream::connect` takes it: `@NAME` spelled
/// `\0NAME`, Linux's abstract address. (The protocol crate's connect does
/// the same, privately.)
pub fn unix_address(path: &Path) -> PathBuf {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    match path.as_os_str().as_bytes() {
        [b'@', name @ ..] => {
            let mut address = vec![0];
            address.extend_from_slice(name);
            std::ffi::OsString::from_vec(address).into()
        }
        _ => path.to_owned(),
    }
}
