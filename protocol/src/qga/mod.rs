//! The QEMU Guest Agent protocol: typed commands and the reply envelope.
//!
//! Each command is a type whose fields are the command's arguments and
//! whose [`Command::Output`] is the shape of its `return` value.

mod base64_data;
mod commands;
mod envelope;

pub use commands::{
    CommandInfo, Empty, ExecStarted, ExecStatus, GuestExec, GuestExecStatus, GuestInfo, GuestInfoReply,
    GuestPing, GuestSyncDelimited,
};
pub(crate) use envelope::{parse_reply, request_bytes, ReplyFor};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A request the agent understands: its wire name, its arguments (the
/// value itself, serialized as `arguments`) and the type of its `return`.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use virtomate_protocol::qga::Command;
///
/// /// `guest-get-host-name`, which this crate does not type itself.
/// #[derive(Serialize)]
/// struct GetHostName {}
///
/// #[derive(Deserialize)]
/// struct HostName {
///     #[serde(rename = "host-name")]
///     host_name: String,
/// }
///
/// impl Command for GetHostName {
///     const NAME: &'static str = "guest-get-host-name";
///     type Output = HostName;
/// }
/// ```
pub trait Command: Serialize {
    /// The `execute` member of the request.
    const NAME: &'static str;
    /// What a successful reply's `return` member holds.
    type Output: DeserializeOwned;
}
