#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! Each layer uses only those above it in this list.
//!
//! - `error.rs`: [`Error`], one variant per situation a caller can act on.
//! - `wire/`: bytes to frames and back, for every client. `framing`
//!   parses reply lines ([`framing::LineCodec`]), bounded, with the skip
//!   to the sync sentinel; `trace` shows every byte to a [`Trace`];
//!   `connection` is [`Connection`], the one owner of a socket and its
//!   read buffer; `transport` connects within [`Deadline`]s
//!   ([`ClientOptions`]); `command` and `envelope` type the JSON around
//!   every request and reply ([`Command`]), shared by QGA and QMP.
//! - the clients, one folder each: [`qga`] (the agent's commands — every
//!   one of QEMU's schema in [`qga::schema`], generated — and
//!   [`QgaClient`]), [`qmp`] (QEMU's monitor, [`QmpClient`]) and
//!   [`libvirt`] (libvirt's RPC, for domains whose channels libvirtd
//!   holds); then `agent.rs`, the [`Agent`] trait over a direct channel
//!   and libvirtd, and [`AnyAgent`].
//! - `channel/`: taking turns on an agent socket with the other processes
//!   of the host ([`ChannelLock`], a flock in `/run/virtomate`, beside
//!   which a big request on its way is noted: [`RequestInFlight`]) and
//!   [`Channel`], connected for an exchange when it needs to be and let go
//!   between exchanges ([`HoldPolicy`]), with the step in flight whose
//!   reply a caller giving up awaits ([`Settling`]).
//! - `guest/`: what runs in the guest through the agent: a program polled
//!   to its end and stopped with its process tree ([`stop_group`]), and
//!   its output read while it runs through chunk files, rotated as they
//!   are read, in a private directory ([`follow::Follow`]), its input fed while it runs through a named
//!   pipe there ([`feed::Feed`]).
//! - [`session`]: the engine that runs programs: many requests (runs,
//!   pings, a caller's own jobs) over one channel, programs running side
//!   by side, for `virtomate guest-run`, `virtomate session` and any Rust
//!   program.
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
mod error;
mod guest;
pub mod libvirt;
pub mod qga;
pub mod qmp;
pub mod session;
mod wire;

pub use agent::{Agent, AnyAgent};
pub use channel::in_flight::RequestInFlight;
pub use channel::lock::{ChannelLock, Turn};
pub use channel::settling::{Settling, Step};
pub use channel::sweep::{files_to_sweep, MOST_EXAMINED};
pub use channel::{Channel, Connector, HoldPolicy, SocketConnector};
pub use error::{Error, Phase};
pub use guest::exec::{
    status_on, stop_group, wait_for_exit, wait_for_exit_on, Finished, PollSchedule, StopScope, Stopped,
    TREE_SCRIPT,
};
pub use guest::{feed, follow, leftovers};
pub use libvirt::LibvirtClient;
pub use qga::QgaClient;
pub use qmp::QmpClient;
pub use wire::command::{Command, Empty};
pub use wire::connection::Connection;
pub use wire::envelope::MAX_REQUEST_LEN;
pub use wire::hex::hex;
pub use wire::random::{random_bytes, random_name};
pub use wire::trace::{escape_bytes, Direction, Trace};
pub use wire::transport::{ClientOptions, Deadline};
pub use wire::RequestProgress;
pub use wire::{fields, framing};
