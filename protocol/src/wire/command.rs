//! What QGA and QMP commands have in common: both protocols frame a request
//! as `{"execute": NAME, "arguments": {...}}` and a success as
//! `{"return": ...}`, so one trait types the commands of either.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A request the agent or QEMU understands: its wire name, its arguments
/// (the value itself, serialized as `arguments`) and the type of its
/// `return`.
///
/// The same trait is [`qga::Command`](crate::qga::Command) and
/// [`qmp::Command`](crate::qmp::Command).
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

/// An empty `return` object, as `guest-ping` sends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Empty {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_return_is_empty() {
        assert_eq!(serde_json::from_str::<Empty>("{}").unwrap(), Empty {});
    }
}
