//! The QEMU Machine Protocol: QEMU's own control socket (`-qmp`), as
//! opposed to the agent inside the guest.
//!
//! It uses the same requests and replies as the guest agent (one JSON
//! object a line, typed with the same [`Command`] trait), with three
//! differences that [`QmpClient`] handles: QEMU greets first
//! ([`Greeting`]), accepts nothing but `qmp_capabilities` until that
//! succeeded, and sends [`Event`]s at any time, also between a request and
//! its reply.
//!
//! ```no_run
//! use virtomate_protocol::{ClientOptions, QmpClient};
//! use virtomate_protocol::qmp::QueryStatus;
//!
//! # async fn demo() -> Result<(), virtomate_protocol::Error> {
//! let mut qemu = QmpClient::connect("/run/vm/qmp.sock", ClientOptions::default()).await?;
//! println!("QEMU {}", qemu.greeting().version);
//! let status = qemu.execute(&QueryStatus {}).await?;
//! println!("{} (running: {})", status.status, status.running);
//! # Ok(()) }
//! ```

mod client;
mod commands;
mod events;
mod greeting;
#[cfg(test)]
mod tests;

pub use client::QmpClient;
pub use commands::{
    ChardevInfo, QemuVersion, QmpCapabilities, QueryChardev, QueryStatus, QueryStatusReply, QueryVersion,
    QueryVersionReply,
};
pub use events::{Event, MAX_STORED_EVENTS, MAX_STORED_EVENT_BYTES};
pub use greeting::Greeting;

pub use crate::{Command, Empty};
