//! A client for the QEMU Guest Agent (QGA) that talks straight to its UNIX
//! socket: line framing with a bound on every reply, the
//! `guest-sync-delimited` handshake, typed commands, and an async client on
//! tokio; and a client for the QEMU Machine Protocol (QMP), see [`qmp`].
//!
//! ```no_run
//! use virtomate_protocol::{ClientOptions, PollSchedule, QgaClient};
//! use virtomate_protocol::qga::GuestExec;
//!
//! # async fn demo() -> Result<(), virtomate_protocol::Error> {
//! let mut agent = QgaClient::connect("/run/vm/qga.sock", ClientOptions::default()).await?;
//! let started = agent.execute(&GuestExec::new("echo", ["-n", "Hello World"])).await?;
//! let finished = agent.wait_for_exit(started.pid, PollSchedule::default()).await?;
//! assert_eq!(finished.status.out_data.as_deref(), Some(&b"Hello World"[..]));
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod agent;
mod client;
mod command;
mod error;
mod exec;
pub mod framing;
pub mod libvirt;
pub mod qga;
pub mod qmp;
mod trace;

pub use agent::Agent;
pub use client::{ClientOptions, QgaClient, MAX_REQUEST_LEN};
pub use error::{Error, Phase};
pub use exec::{wait_for_exit, Finished, PollSchedule};
pub use libvirt::LibvirtClient;
pub use qmp::QmpClient;
pub use trace::{escape_bytes, Direction, Trace};
