//! Every command of QEMU's guest agent, typed from QEMU's own schema
//! (`qga/qapi-schema.json`, pinned in `protocol/schema/qga/`).
//!
//! A command is a type named after its wire name (`guest-get-osinfo` is
//! [`GuestGetOsinfo`]) whose fields are its arguments, and whose
//! [`Command::Output`](crate::Command::Output) is its reply. The schema's
//! other types keep their schema names (`GuestOSInfo`), except the few
//! named exactly like a command, which take the crate's `Reply` suffix
//! (`GuestExecStatus` is [`GuestExecStatusReply`] here).
//!
//! Replies read leniently, as agents of different versions and systems
//! answer differently: a member the schema does not name is kept in the
//! struct's `extra`, an enum value it does not list is kept as `Other`,
//! and a member that came after its struct is optional.
//!
//! The types the engine itself uses ([`qga::GuestExec`](super::GuestExec),
//! the file commands) are written by hand, with helpers these lack; this
//! module is the rest of the agent, and [`COMMANDS`] the catalogue to
//! check a request against.
//!
//! ```
//! use virtomate_protocol::qga::schema::{GuestGetLoad, GuestLoadAverage};
//! use virtomate_protocol::Command;
//!
//! assert_eq!(GuestGetLoad::NAME, "guest-get-load");
//! let load: <GuestGetLoad as Command>::Output =
//!     serde_json::from_str(r#"{"load1m": 0.5, "load5m": 0.25, "load15m": 0.1, "new": 1}"#).unwrap();
//! assert_eq!(load.load1m, 0.5);
//! assert_eq!(load.extra["new"], 1);
//! # let _: GuestLoadAverage = load;
//! ```

mod generated;
mod spec;

pub use generated::*;
pub use spec::{CommandSpec, MemberSpec, Shape, TypeSpec};

/// The schema's entry for the command `name`, if it has one.
pub fn command_spec(name: &str) -> Option<&'static CommandSpec> {
    COMMANDS.iter().find(|command| command.name == name)
}

/// The schema's entry for the argument type `name`, if it has one.
pub fn argument_type(name: &str) -> Option<&'static TypeSpec> {
    ARGUMENT_TYPES.iter().find(|ty| ty.name == name)
}

#[cfg(test)]
mod tests;
