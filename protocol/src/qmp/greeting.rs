//! The line QEMU sends first on every QMP connection.

use serde::{Deserialize, Serialize};

use super::{QemuVersion, QueryVersionReply};
use crate::Error;

/// What QEMU announces on connecting: its version and the optional
/// capabilities `qmp_capabilities` could enable.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(from = "Wire", into = "Wire")]
pub struct Greeting {
    /// The upstream QEMU version.
    pub version: QemuVersion,
    /// The distribution's package version, or empty for a plain build.
    pub package: String,
    /// Optional capabilities on offer, e.g. `oob` (out-of-band commands).
    pub capabilities: Vec<String>,
}

/// The greeting as on the wire: `{"QMP": {"version": ..., "capabilities": [...]}}`.
#[derive(Deserialize, Serialize)]
struct Wire {
    #[serde(rename = "QMP")]
    qmp: WireBody,
}

#[derive(Deserialize, Serialize)]
struct WireBody {
    version: QueryVersionReply,
    capabilities: Vec<String>,
}

impl From<Wire> for Greeting {
    fn from(wire: Wire) -> Greeting {
        Greeting {
            version: wire.qmp.version.qemu,
            package: wire.qmp.version.package,
            capabilities: wire.qmp.capabilities,
        }
    }
}

impl From<Greeting> for Wire {
    fn from(greeting: Greeting) -> Wire {
        Wire {
            qmp: WireBody {
                version: QueryVersionReply {
                    qemu: greeting.version,
                    package: greeting.package,
                },
                capabilities: greeting.capabilities,
            },
        }
    }
}

/// Decodes the first line of a connection.
pub(crate) fn parse_greeting(line: &[u8]) -> Result<Greeting, Error> {
    serde_json::from_slice(line).map_err(|e| Error::Malformed {
        command: "the QMP handshake".to_owned(),
        reason: format!("expected the greeting: {e}"),
    })
}
