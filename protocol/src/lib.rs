#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`framing`]: bytes to reply lines ([`framing::LineCodec`]), bounded,
//!   with the skip to the sync sentinel; libvirt's messages are framed by
//!   [`libvirt::packet::PacketCodec`] the same way.
//! - `connection`: [`Connection`], the one owner of a socket and its read
//!   buffer: frames in, bytes out, every byte shown to a [`Trace`].
//! - `transport`: connecting, [`Deadline`]s, [`ClientOptions`].
//! - `envelope`: the JSON around every request and reply, shared by QGA
//!   and QMP; `command`: the [`Command`] trait that types them.
//! - [`qga`]: the agent's commands and [`QgaClient`]; `exec`: running a
//!   program to its end ([`wait_for_exit`]).
//! - [`qmp`]: QEMU's monitor, [`QmpClient`].
//! - [`libvirt`]: libvirt's RPC, for domains whose channels libvirtd holds.
//! - `agent`: the [`Agent`] trait over a direct channel and libvirtd, and
//!   [`AnyAgent`].
//! - `channel_lock`: [`ChannelLock`], taking turns on an agent socket with
//!   the other processes of the host (a flock in `/run/virtomate`);
//!   `channel`: [`Channel`], connected for an exchange when it needs to be
//!   and let go between exchanges ([`wait_for_exit_on`], [`HoldPolicy`]).
//! - [`follow`]: a program's output read while it runs, through files in
//!   a private directory of the guest ([`follow::Follow`]).
//! - [`session`]: many requests (runs, pings) over one channel, programs
//!   running side by side, for `virtomate session` and any Rust program.
//! - `error`: [`Error`], one variant per situation a caller can act on.
//!
//! # Naming
//!
//! A command is a type named after its wire name (`guest-exec-status` is
//! [`qga::GuestExecStatus`]); the type of its `return` is the command's name
//! followed by `Reply` ([`qga::GuestExecStatusReply`]). Types nested in a
//! reply are named for what they hold ([`qmp::ChardevInfo`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod agent;
mod channel;
mod channel_lock;
mod command;
mod connection;
mod envelope;
mod error;
mod exec;
pub mod follow;
pub mod framing;
pub mod libvirt;
pub mod qga;
pub mod qmp;
pub mod session;
mod trace;
mod transport;

pub use agent::{Agent, AnyAgent, RequestProgress};
pub use channel::{wait_for_exit_on, Channel, Connector, HoldPolicy, SocketConnector};
pub use channel_lock::{ChannelLock, Turn};
pub use command::Command;
pub use connection::Connection;
pub use envelope::MAX_REQUEST_LEN;
pub use error::{Error, Phase};
pub use exec::{stop_group, wait_for_exit, Finished, PollSchedule, StopScope, Stopped, TREE_SCRIPT};
pub use libvirt::LibvirtClient;
pub use qga::QgaClient;
pub use qmp::QmpClient;
pub use trace::{escape_bytes, Direction, Trace};
pub use transport::{ClientOptions, Deadline};
