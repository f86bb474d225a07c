//! The QEMU Guest Agent protocol: typed commands and the reply envelope.
//!
//! Each command is a type whose fields are the command's arguments and
//! whose [`Command::Output`] is the shape of its `return` value.
//!
//! ```
//! use virtomate_protocol::qga::{Command, GuestExecStatus};
//!
//! let request = GuestExecStatus { pid: 1234 };
//! assert_eq!(GuestExecStatus::NAME, "guest-exec-status");
//! assert_eq!(serde_json::to_value(&request).unwrap(), serde_json::json!({"pid": 1234}));
//! let reply: <GuestExecStatus as Command>::Output = serde_json::from_str(r#"{"exited": false}"#).unwrap();
//! assert!(!reply.exited);
//! ```

pub mod base64_data;
pub(crate) mod client;
mod commands;
mod environment;
mod files;
pub mod schema;
mod streamed_input;

pub(crate) use client::LONGEST_ID;
pub use client::{Both, QgaClient};
pub use commands::{
    CaptureOutput, CommandInfo, GuestExec, GuestExecReply, GuestExecStatus, GuestExecStatusReply, GuestInfo,
    GuestInfoReply, GuestPing, GuestSyncDelimited,
};
pub use environment::{environment, STANDARD_PATH};
pub use files::{
    GuestFileClose, GuestFileFlush, GuestFileOpen, GuestFileRead, GuestFileReadReply, GuestFileSeek,
    GuestFileSeekReply, GuestFileWrite, GuestFileWriteReply, Whence, MAX_READ_COUNT,
};
pub(crate) use streamed_input::{guest_exec_request, OutgoingRequest};

pub use crate::{Command, Empty};
