//! The agent's file system freeze (`guest-fsfreeze-*`, QEMU 1.1 on;
//! `guest-fsfreeze-freeze-list` from 2.2).
//!
//! While the guest is frozen the agent refuses every command but a few
//! (`guest-ping`, `guest-info`, the syncs, `guest-fsfreeze-status` and
//! `guest-fsfreeze-thaw`); only a thaw lifts that, and the agent keeps the
//! state in a file of its state directory (`qga.state.isfrozen`), so that
//! even a restarted agent starts frozen.

use serde::{Deserialize, Serialize};

use super::Command;

/// `guest-fsfreeze-status`: whether the agent holds the guest frozen.
///
/// ```
/// use virtomate_protocol::qga::{Command, FreezeStatus, GuestFsfreezeStatus};
///
/// assert_eq!(GuestFsfreezeStatus::NAME, "guest-fsfreeze-status");
/// let status: FreezeStatus = serde_json::from_str(r#""frozen""#).unwrap();
/// assert_eq!(status, FreezeStatus::Frozen);
/// // A word a newer agent may add is kept, not fatal.
/// let status: FreezeStatus = serde_json::from_str(r#""freezing""#).unwrap();
/// assert_eq!(status, FreezeStatus::Other("freezing".into()));
/// ```
#[derive(Debug, Clone, Default, Serialize)]
pub struct GuestFsfreezeStatus {}

impl Command for GuestFsfreezeStatus {
    const NAME: &'static str = "guest-fsfreeze-status";
    type Output = FreezeStatus;
}

/// The `return` of `guest-fsfreeze-status`. It tells the agent's own flag,
/// not the file systems': a guest thawed behind the agent's back still
/// reads `frozen` until `guest-fsfreeze-thaw`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FreezeStatus {
    /// Not frozen: every enabled command works.
    Thawed,
    /// Frozen: the agent refuses what is unsafe while frozen.
    Frozen,
    /// A status this crate does not know.
    #[serde(untagged)]
    Other(String),
}

/// `guest-fsfreeze-freeze`: freezes every file system on a block device;
/// returns how many were frozen.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GuestFsfreezeFreeze {}

impl Command for GuestFsfreezeFreeze {
    const NAME: &'static str = "guest-fsfreeze-freeze";
    type Output = u64;
}

/// `guest-fsfreeze-freeze-list` (QEMU 2.2): freezes the file systems
/// mounted at `mountpoints` only; returns how many were frozen.
///
/// ```
/// use virtomate_protocol::qga::GuestFsfreezeFreezeList;
///
/// let request = GuestFsfreezeFreezeList { mountpoints: vec!["/var".into()] };
/// assert_eq!(serde_json::to_string(&request).unwrap(), r#"{"mountpoints":["/var"]}"#);
/// ```
#[derive(Debug, Clone, Default, Serialize)]
pub struct GuestFsfreezeFreezeList {
    /// The mount points to freeze.
    pub mountpoints: Vec<String>,
}

impl Command for GuestFsfreezeFreezeList {
    const NAME: &'static str = "guest-fsfreeze-freeze-list";
    type Output = u64;
}

/// `guest-fsfreeze-thaw`: thaws every frozen file system and lifts the
/// agent's frozen state; returns how many were thawed (0 when none was).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GuestFsfreezeThaw {}

impl Command for GuestFsfreezeThaw {
    const NAME: &'static str = "guest-fsfreeze-thaw";
    type Output = u64;
}
