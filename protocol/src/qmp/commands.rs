//! The QMP commands this crate types (`qapi/*.json` in QEMU).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Command, Empty};

/// `qmp_capabilities`: leaves capabilities negotiation mode; QEMU refuses
/// every other command before. [`QmpClient`](crate::QmpClient) sends it on
/// connecting, without enabling any optional capability.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QmpCapabilities {}

impl Command for QmpCapabilities {
    const NAME: &'static str = "qmp_capabilities";
    type Output = Empty;
}

/// `query-chardev`: QEMU's character devices, e.g. the guest agent's socket.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueryChardev {}

impl Command for QueryChardev {
    const NAME: &'static str = "query-chardev";
    type Output = Vec<ChardevInfo>;
}

/// One entry of the `return` of `query-chardev`.
///
/// ```
/// use virtomate_protocol::qmp::ChardevInfo;
///
/// let qga: ChardevInfo = serde_json::from_str(
///     r#"{"frontend-open": true, "filename": "disconnected:unix:/tmp/vm/qga.sock,server=on",
///         "label": "qga0"}"#,
/// ).unwrap();
/// // The agent runs in the guest and no host client holds the socket: free to connect.
/// assert!(qga.frontend_open && qga.filename.starts_with("disconnected:"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ChardevInfo {
    /// The `id` given to `-chardev`, e.g. `qga0`.
    pub label: String,
    /// The backend, e.g. `unix:/tmp/vm/qga.sock,server=on`; a listening
    /// socket nobody is connected to has `disconnected:` in front.
    pub filename: String,
    /// True while the guest side has the device open (for a guest agent
    /// port: while `qemu-ga` runs).
    #[serde(rename = "frontend-open")]
    pub frontend_open: bool,
}

/// `query-status`: whether the guest's CPUs run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueryStatus {}

impl Command for QueryStatus {
    const NAME: &'static str = "query-status";
    type Output = QueryStatusReply;
}

/// The `return` of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct QueryStatusReply {
    /// The run state, e.g. `running`, `paused`, `shutdown`, `inmigrate`.
    pub status: String,
    /// True while the guest's CPUs run.
    pub running: bool,
}

/// `query-version`: the version of the QEMU process.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueryVersion {}

impl Command for QueryVersion {
    const NAME: &'static str = "query-version";
    type Output = QueryVersionReply;
}

/// The `return` of `query-version`, and the version in the [`Greeting`](super::Greeting).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct QueryVersionReply {
    /// The upstream version.
    pub qemu: QemuVersion,
    /// The distribution's package version, or empty for a plain build.
    pub package: String,
}

/// An upstream QEMU version; versions order as numbers, field by field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
pub struct QemuVersion {
    /// E.g. 7 in 7.2.22.
    pub major: u32,
    /// E.g. 2 in 7.2.22.
    pub minor: u32,
    /// E.g. 22 in 7.2.22.
    pub micro: u32,
}

impl fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_sends_no_capability() {
        assert_eq!(QmpCapabilities::NAME, "qmp_capabilities");
        assert_eq!(serde_json::to_string(&QmpCapabilities {}).unwrap(), "{}");
    }

    #[test]
    fn replies_decode() {
        // QEMU 7.2 also sends `singlestep`, which is not kept.
        let status: QueryStatusReply =
            serde_json::from_str(r#"{"status": "paused", "singlestep": false, "running": false}"#).unwrap();
        assert_eq!(
            status,
            QueryStatusReply {
                status: "paused".into(),
                running: false
            }
        );
        // A QEMU built from source, not by a distribution.
        let info: QueryVersionReply =
            serde_json::from_str(r#"{"qemu": {"micro": 0, "minor": 1, "major": 8}, "package": ""}"#).unwrap();
        assert!(info.package.is_empty());
        assert_eq!(info.qemu.to_string(), "8.1.0");
    }

    #[test]
    fn versions_order_field_by_field() {
        let v = |major, minor, micro| QemuVersion { major, minor, micro };
        assert!(v(7, 2, 22) >= v(7, 0, 0));
        assert!(v(7, 2, 22) < v(7, 10, 0));
        assert!(v(8, 1, 0) > v(7, 2, 22));
        assert_eq!(v(7, 2, 22).to_string(), "7.2.22");
    }
}
