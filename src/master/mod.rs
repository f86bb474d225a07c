//! The control master: one background virtomate process per agent socket
//! that holds the agent's connection and serves every later virtomate
//! process of the same user, as ssh's ControlMaster does, so that a fresh
//! process does not pay the agent's wake-up on a new connection.
//!
//! The master speaks plain QGA to its clients: a client connects to its
//! socket instead of the agent's and changes nothing else. It answers
//! `guest-sync-delimited` itself and passes every other request on with an
//! id of its own, routing the reply back by it, so that requests of many
//! clients (and programs they start) run side by side. A `guest-run` is
//! not passed on command by command but given to the master whole
//! (`wire::RUN`): the master runs it with the session engine and relays
//! the engine's replies, one exchange with the client per run.
//!
//! - `paths`: where a master's socket, start lock and log live (a private
//!   runtime directory), keyed by the agent socket's device and inode;
//! - `wire`: ids swapped, the master's own commands, failures carried;
//! - `link`: the master's connection to the agent;
//! - `client_conn`: one client's connection; `hub`: the routing, letting
//!   go of the channel for others, and when to end; `serve`: the process;
//! - `run_conn`: a whole `guest-run` a client asks for (`wire::RUN`), run
//!   by the session engine in the master over `hub_connector`'s
//!   in-process connections, its replies relayed (the protocol crate's
//!   `session::relay`): one exchange with the client per run rather than
//!   one per agent command; `run_client`: the client's side of it;
//! - `start`: finding or starting the master from a client; `route`: the
//!   way to an agent whose master runs, without looking at its holders;
//!   `connector`: the client's [`MasterConnector`];
//! - `sweep`: a starting master removes the files of masters that no
//!   longer run, and the channels' lock files nobody uses.

mod client_conn;
mod connector;
mod hub;
mod hub_connector;
mod link;
mod paths;
mod route;
mod run_client;
mod run_conn;
mod serve;
mod start;
mod sweep;
mod wire;

pub use self::connector::{persist_setting, MasterConnector};
pub use self::hub::Settings;
pub use self::paths::MasterPaths;
pub use self::route::route_to_running_master;
pub use self::run_client::MasterRun;
pub use self::serve::serve_inherited;
pub use self::wire::{MasterInfo, EXIT, INFO};
