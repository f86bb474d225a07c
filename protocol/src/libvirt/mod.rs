//! libvirt's remote (RPC) protocol, spoken natively, just enough to run
//! guest agent and QEMU monitor commands in libvirt-managed domains.
//!
//! libvirtd keeps the agent channel of each domain it runs connected, and
//! QEMU's chardev serves one client: a second client on the agent socket
//! is never answered. What libvirtd offers instead is
//! `virDomainQemuAgentCommand`, which this module calls over libvirtd's
//! UNIX socket, without linking libvirt: [`LibvirtClient`] on top of
//! [`packet`] (length-prefixed messages) and [`xdr`] (their encoding).
//! [`LibvirtAgent`] wraps it in the typed commands of [`crate::qga`].
//!
//! The same holds for QEMU's monitor (QMP), reached with
//! `virDomainQemuMonitorCommand` ([`LibvirtClient::monitor_command`],
//! typed: [`LibvirtMonitor`]). libvirtd marks a domain tainted
//! (`custom-monitor`) once that is used, as it does for `virsh
//! qemu-monitor-command`.
//!
//! ```no_run
//! use std::path::Path;
//! use std::time::Duration;
//! use virtomate_protocol::{ClientOptions, Deadline};
//! use virtomate_protocol::libvirt::{LibvirtClient, AGENT_TIMEOUT_DEFAULT, ERR_NO_DOMAIN};
//!
//! # async fn demo() -> Result<(), virtomate_protocol::Error> {
//! let socket = Path::new("/run/libvirt/libvirt-sock");
//! let mut libvirt = LibvirtClient::connect(socket, "qemu:///system", &ClientOptions::default()).await?;
//! match libvirt.lookup_domain_by_name("web1").await {
//!     Ok(domain) => {
//!         let deadline = Deadline::after(Duration::from_secs(30));
//!         let reply = libvirt
//!             .agent_command(&domain, r#"{"execute":"guest-ping"}"#, AGENT_TIMEOUT_DEFAULT, deadline)
//!             .await?;
//!         println!("{reply:?}");
//!     }
//!     Err(virtomate_protocol::Error::Libvirt { code: ERR_NO_DOMAIN, .. }) => println!("no such domain"),
//!     Err(e) => return Err(e),
//! }
//! libvirt.close().await
//! # }
//! ```
//!
//! Protocol facts (program and procedure numbers, layouts, limits) are
//! from libvirt's `.x` files and were checked against libvirtd 9.0.0, see
//! `docs/libvirt-notes.md`.

mod agent;
mod client;
mod interfaces;
mod monitor;
#[doc(hidden)] // public for the fuzz targets, which play libvirtd
pub mod packet;
mod remote;
#[cfg(test)]
mod tests;
#[doc(hidden)] // public for the fuzz targets
pub mod xdr;

pub use agent::{LibvirtAgent, CLASS_UNKNOWN_THROUGH_LIBVIRT};
pub use client::LibvirtClient;
pub use interfaces::{AddressSource, DomainAddress, DomainInterface};
pub use monitor::LibvirtMonitor;
pub use remote::{parse_uuid, RemoteDomain};

/// The longest string in an RPC message: 4 MiB (`REMOTE_STRING_MAX`, the
/// same as `VIR_NET_MESSAGE_STRING_MAX`).
///
/// An agent command is one such string, so a longer one is refused before
/// sending; so is an agent reply, and libvirtd fails a call whose reply is
/// longer with "Unable to encode message payload" (code [`ERR_RPC`]) - after
/// the agent answered, so a finished `guest-exec`'s output, for one, is
/// gone. Agent replies are thus smaller than [`AGENT_RESPONSE_MAX`]
/// suggests.
pub const STRING_MAX: usize = 4 << 20;

/// The longest message after its length word, header included: 32 MiB
/// (`VIR_NET_MESSAGE_MAX` in libvirt 9.0.0; older versions had 16 MiB).
///
/// libvirtd drops a connection that sends a longer one, and this crate
/// refuses longer ones from libvirtd without reading them.
pub const MESSAGE_MAX: usize = 32 << 20;

/// The most libvirtd buffers of one reply from a guest agent: 10 MiB
/// (`QEMU_AGENT_MAX_RESPONSE` in libvirt's `src/hypervisor/qemu_agent.c`).
///
/// A longer agent reply fails the command ("No complete agent response
/// found in 10485760 bytes", code 38, `VIR_ERR_SYSTEM_ERROR`) and libvirtd
/// treats the agent channel as broken until the domain restarts: every
/// later agent command fails with [`ERR_AGENT_UNRESPONSIVE`]. Replies
/// between [`STRING_MAX`] and this fail more mildly, see there; keep
/// requests whose replies can grow, such as
/// `guest-file-read` or `guest-exec-status` of a chatty program, well
/// below both.
pub const AGENT_RESPONSE_MAX: usize = 10 << 20;

/// The most authentication types libvirtd lists
/// (`REMOTE_AUTH_TYPE_LIST_MAX`).
pub const AUTH_TYPE_LIST_MAX: usize = 20;

/// Agent timeout: wait for the agent as long as it takes
/// (`VIR_DOMAIN_QEMU_AGENT_COMMAND_BLOCK`).
pub const AGENT_TIMEOUT_BLOCK: i32 = -2;

/// Agent timeout: libvirtd's default for the domain, what `virsh
/// qemu-agent-command` sends (`VIR_DOMAIN_QEMU_AGENT_COMMAND_DEFAULT`).
pub const AGENT_TIMEOUT_DEFAULT: i32 = -1;

/// Agent timeout: fail at once unless the agent is free
/// (`VIR_DOMAIN_QEMU_AGENT_COMMAND_NOWAIT`).
pub const AGENT_TIMEOUT_NOWAIT: i32 = 0;

/// libvirt error code: an internal error, also what a failed agent
/// command reports (`VIR_ERR_INTERNAL_ERROR`).
pub const ERR_INTERNAL_ERROR: i32 = 1;

/// libvirt error code: access denied, e.g. agent commands on a read-only
/// connection (`VIR_ERR_OPERATION_DENIED`).
pub const ERR_OPERATION_DENIED: i32 = 29;

/// libvirt error code: an RPC error, e.g. "authentication required"
/// (`VIR_ERR_RPC`).
pub const ERR_RPC: i32 = 39;

/// libvirt's `virDomainState`: what a domain is doing, as
/// [`LibvirtClient::domain_state`] (`virsh domstate`) tells it. The
/// numbers are libvirt's, stable across its releases; one it may add
/// later is [`DomainState::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainState {
    /// No state (`VIR_DOMAIN_NOSTATE`, 0).
    NoState,
    /// Running (`VIR_DOMAIN_RUNNING`, 1).
    Running,
    /// Blocked on a resource (`VIR_DOMAIN_BLOCKED`, 2).
    Blocked,
    /// Paused by a user or by libvirt (`VIR_DOMAIN_PAUSED`, 3).
    Paused,
    /// Being shut down (`VIR_DOMAIN_SHUTDOWN`, 4).
    ShuttingDown,
    /// Shut off: its QEMU is gone (`VIR_DOMAIN_SHUTOFF`, 5).
    ShutOff,
    /// Crashed (`VIR_DOMAIN_CRASHED`, 6).
    Crashed,
    /// Suspended by guest power management (`VIR_DOMAIN_PMSUSPENDED`, 7).
    PmSuspended,
    /// A number this crate does not know.
    Other(i32),
}

impl DomainState {
    /// The state libvirt's number `code` stands for.
    pub fn from_code(code: i32) -> DomainState {
        match code {
            0 => DomainState::NoState,
            1 => DomainState::Running,
            2 => DomainState::Blocked,
            3 => DomainState::Paused,
            4 => DomainState::ShuttingDown,
            5 => DomainState::ShutOff,
            6 => DomainState::Crashed,
            7 => DomainState::PmSuspended,
            other => DomainState::Other(other),
        }
    }

    /// Whether the domain's QEMU is going or gone, and a program in it
    /// with it: being shut down, shut off, crashed.
    pub fn stopped(self) -> bool {
        matches!(
            self,
            DomainState::ShuttingDown | DomainState::ShutOff | DomainState::Crashed
        )
    }
}

/// libvirt error code: no such domain (`VIR_ERR_NO_DOMAIN`).
pub const ERR_NO_DOMAIN: i32 = 42;

/// libvirt error code: not possible in the domain's state, e.g. "domain
/// is not running" (`VIR_ERR_OPERATION_INVALID`).
pub const ERR_OPERATION_INVALID: i32 = 55;

/// libvirt error code: the guest agent is not connected or did not
/// answer (`VIR_ERR_AGENT_UNRESPONSIVE`).
pub const ERR_AGENT_UNRESPONSIVE: i32 = 86;

/// libvirt error code: the guest agent did not answer a command within
/// its timeout (`VIR_ERR_AGENT_COMMAND_TIMEOUT`, libvirt 10 and later;
/// older releases report [`ERR_AGENT_UNRESPONSIVE`]).
pub const ERR_AGENT_COMMAND_TIMEOUT: i32 = 112;

/// libvirt error code: the guest agent answered with an error
/// (`VIR_ERR_AGENT_COMMAND_FAILED`, libvirt 10 and later; older releases
/// report [`ERR_INTERNAL_ERROR`]).
pub const ERR_AGENT_COMMAND_FAILED: i32 = 113;

/// The longest agent command this crate passes to libvirtd: 192 KiB.
///
/// libvirt 9.0 stalls on longer ones: it writes what fits into the agent
/// socket's buffer (212992 bytes by default) and never the rest, so the
/// command times out ("Guest agent not available for now") and the next
/// command on the channel fails too. `virsh qemu-agent-command` fails
/// alike; here, commands of 218 KB went through and commands of 224 KB
/// stalled. [`LibvirtAgent`] refuses longer commands before sending
/// ([`Error::RequestTooLarge`](crate::Error::RequestTooLarge)): for big
/// `guest-exec` input (about 144 KiB of it fits, once in Base64), use an
/// agent channel of the domain's own.
pub const AGENT_COMMAND_MAX: usize = 192 << 10;
