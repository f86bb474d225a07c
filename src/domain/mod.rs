//! Turning the DOMAIN argument into a domain and the way to its agent.
//!
//! # Layout
//!
//! * `model`: what a domain is ([`Domain`], its agent [`Channel`]s, how it
//!   was found) and how its agent is reached ([`Route`]);
//! * [`lookup`]: finding DOMAIN — a socket path (anything with a `/`, an
//!   existing socket in the current directory, or `@NAME`, an abstract
//!   socket), then a libvirt domain (by
//!   name or UUID), then the `-name` of a running bare QEMU process — and
//!   listing every running domain. `-c URI` ([`Scope`]) limits the search to
//!   one libvirt daemon;
//! * [`route`]: choosing, among a domain's agent channels, the one to use,
//!   or libvirtd, by looking at who holds each; and telling when libvirtd
//!   takes back a channel reached straight while it was down ([`Handback`]);
//! * `libvirt`, `procfs` and `qemu_args`: the two places domains are found
//!   in — libvirt's status files, and the command lines of QEMU processes;
//! * [`socket_holders`]: who else is connected to a socket.

mod libvirt;
mod lookup;
mod model;
mod procfs;
mod qemu_args;
mod route;
pub mod run_state;
pub mod socket_holders;

pub use lookup::{find, list, Scope};
pub use model::*;
pub use procfs::runs_qemu;
pub use route::Handback;
