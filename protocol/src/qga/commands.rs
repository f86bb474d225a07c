//! The agent commands this crate types (`qga/qapi-schema.json`).

use serde::{Deserialize, Serialize};

use super::{base64_data, Command, Empty};

/// `guest-sync-delimited`: the agent echoes `id`, preceded by the byte
/// `0xFF`. Used by [`QgaClient`](crate::QgaClient) on every new connection.
#[derive(Debug, Clone, Serialize)]
pub struct GuestSyncDelimited {
    /// The number the agent must echo.
    pub id: u64,
}

impl Command for GuestSyncDelimited {
    const NAME: &'static str = "guest-sync-delimited";
    type Output = u64;
}

/// `guest-ping`: answers `{}` when the agent is alive.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GuestPing {}

impl Command for GuestPing {
    const NAME: &'static str = "guest-ping";
    type Output = Empty;
}

/// `guest-info`: the agent's version and the commands it knows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GuestInfo {}

impl Command for GuestInfo {
    const NAME: &'static str = "guest-info";
    type Output = GuestInfoReply;
}

/// The `return` of `guest-info`.
///
/// ```
/// use virtomate_protocol::qga::GuestInfoReply;
///
/// let info: GuestInfoReply = serde_json::from_str(
///     r#"{"version": "7.2.22", "supported_commands": [
///         {"name": "guest-exec", "enabled": true, "success-response": true},
///         {"name": "guest-exec-status", "enabled": true, "success-response": true}]}"#,
/// ).unwrap();
/// let can_run = |name: &str| info.supported_commands.iter().any(|c| c.name == name && c.enabled);
/// assert!(can_run("guest-exec") && can_run("guest-exec-status"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct GuestInfoReply {
    /// The agent's version, e.g. `7.2.22`.
    pub version: String,
    /// Every command the agent knows, enabled or not.
    pub supported_commands: Vec<CommandInfo>,
}

impl GuestInfoReply {
    /// Whether the agent is at least version `major.minor` (an unreadable
    /// version counts as too old).
    pub fn is_at_least(&self, major: u32, minor: u32) -> bool {
        let mut parts = self.version.split('.').map(|part| part.parse::<u32>());
        match (parts.next(), parts.next()) {
            (Some(Ok(have_major)), Some(Ok(have_minor))) => (have_major, have_minor) >= (major, minor),
            _ => false,
        }
    }
}

/// One entry of [`GuestInfoReply::supported_commands`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct CommandInfo {
    /// The command's name.
    pub name: String,
    /// False when disabled, e.g. by `qemu-ga --block-rpcs`.
    pub enabled: bool,
    /// False for commands that do not reply on success (`guest-shutdown`),
    /// which are sent with
    /// [`QgaClient::execute_without_reply`](crate::QgaClient::execute_without_reply).
    #[serde(rename = "success-response")]
    pub success_response: bool,
}

/// `guest-exec`: starts a program in the guest and returns its pid at once.
///
/// ```
/// use virtomate_protocol::qga::GuestExec;
/// let exec = GuestExec::new("echo", ["-n", "Hello"]).with_input(b"hi".to_vec());
/// assert_eq!(
///     serde_json::to_string(&exec).unwrap(),
///     r#"{"path":"echo","arg":["-n","Hello"],"input-data":"aGk=","capture-output":true}"#,
/// );
/// ```
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestExec {
    /// The program; the guest's `PATH` is searched.
    pub path: String,
    /// Its arguments, without the program name.
    pub arg: Vec<String>,
    /// `K=V` pairs that replace the whole environment, `PATH` included
    /// (see [`environment`](super::environment)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Bytes fed to the program's standard input, which is then closed.
    #[serde(with = "base64_data", skip_serializing_if = "Option::is_none")]
    pub input_data: Option<Vec<u8>>,
    /// Which output the agent collects.
    pub capture_output: CaptureOutput,
}

/// Which output `guest-exec` collects.
///
/// ```
/// use virtomate_protocol::qga::CaptureOutput;
///
/// // What every agent understands, and what a 7.2 agent insists on:
/// assert_eq!(serde_json::to_string(&CaptureOutput::Separated).unwrap(), "true");
/// // From QEMU 8.1 on: stdout and stderr in one stream, in the order written.
/// assert_eq!(serde_json::to_string(&CaptureOutput::Merged).unwrap(), r#""merged""#);
/// assert_eq!(CaptureOutput::Merged.needs_agent(), Some((8, 1)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaptureOutput {
    /// Standard output and standard error, each on its own (`true`).
    #[default]
    Separated,
    /// Both in one stream, `out-data` (`"merged"`; not on Windows).
    Merged,
}

impl CaptureOutput {
    /// The oldest agent that takes this mode, as `(major, minor)`; `None`
    /// for one every agent takes.
    pub fn needs_agent(self) -> Option<(u32, u32)> {
        match self {
            CaptureOutput::Separated => None,
            CaptureOutput::Merged => Some((8, 1)),
        }
    }
}

impl Serialize for CaptureOutput {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            // A boolean, not "separated": agents before 8.1 refuse strings.
            CaptureOutput::Separated => serializer.serialize_bool(true),
            CaptureOutput::Merged => serializer.serialize_str("merged"),
        }
    }
}

impl GuestExec {
    /// A program with arguments whose output is captured.
    pub fn new<I, A>(path: impl Into<String>, args: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<String>,
    {
        GuestExec {
            path: path.into(),
            arg: args.into_iter().map(Into::into).collect(),
            env: None,
            input_data: None,
            capture_output: CaptureOutput::Separated,
        }
    }

    /// Feeds `input` to the program's standard input.
    pub fn with_input(mut self, input: Vec<u8>) -> Self {
        self.input_data = Some(input);
        self
    }

    /// Starts the program through `setsid`, so that it leads a process
    /// group (and session) of its own, whose pid is the program's: the
    /// agent starts programs in its own group, which a group kill would
    /// hit. [`stop_group`](crate::stop_group) with `StopScope::Group`
    /// then stops the program and everything it started. The guest needs
    /// `setsid` (util-linux or busybox) in the program's `PATH`. virtomate
    /// itself no longer uses it: `StopScope::Tree` needs no wrapper.
    pub fn as_group_leader(mut self) -> Self {
        // setsid(1) forks only when called by a group leader, which the
        // agent's child is not: it execs in place, keeping the pid.
        self.arg
            .insert(0, std::mem::replace(&mut self.path, "setsid".to_owned()));
        self
    }
}

impl GuestExec {
    /// The length of the request line that [`QgaClient::guest_exec`]
    /// sends for it, at most (request ids vary in length): to check input
    /// against [`MAX_REQUEST_LEN`] before connecting.
    ///
    /// [`QgaClient::guest_exec`]: crate::QgaClient::guest_exec
    /// [`MAX_REQUEST_LEN`]: crate::MAX_REQUEST_LEN
    pub fn request_len(&self) -> usize {
        super::guest_exec_request(self, super::LONGEST_ID).len()
    }
}

impl Command for GuestExec {
    const NAME: &'static str = "guest-exec";
    type Output = GuestExecReply;
}

/// The `return` of `guest-exec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct GuestExecReply {
    /// The guest's pid of the started program.
    pub pid: i64,
}

/// `guest-exec-status`: whether a started program has ended, and its
/// results once it has. The agent forgets the pid after it reported
/// `exited: true` once.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct GuestExecStatus {
    /// The pid that `guest-exec` returned.
    pub pid: i64,
}

impl Command for GuestExecStatus {
    const NAME: &'static str = "guest-exec-status";
    type Output = GuestExecStatusReply;
}

/// The `return` of `guest-exec-status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestExecStatusReply {
    /// True once the program was reaped and its output pipes closed.
    pub exited: bool,
    /// The exit status, when it exited normally.
    pub exitcode: Option<i32>,
    /// The signal that ended it (on Windows: an NTSTATUS value).
    pub signal: Option<i32>,
    /// Standard output; absent when the program wrote nothing.
    #[serde(default, with = "base64_data")]
    pub out_data: Option<Vec<u8>>,
    /// Standard error; absent when the program wrote nothing.
    #[serde(default, with = "base64_data")]
    pub err_data: Option<Vec<u8>>,
    /// True when standard output exceeded the agent's 16 MiB cap.
    #[serde(default)]
    pub out_truncated: bool,
    /// True when standard error exceeded the agent's 16 MiB cap.
    #[serde(default)]
    pub err_truncated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json<T: Serialize>(value: &T) -> String {
        serde_json::to_string(value).unwrap()
    }

    #[test]
    fn requests_are_what_the_agent_reads() {
        assert_eq!(GuestSyncDelimited::NAME, "guest-sync-delimited");
        assert_eq!(json(&GuestSyncDelimited { id: 7 }), r#"{"id":7}"#);
        assert_eq!(json(&GuestExecStatus { pid: 1234 }), r#"{"pid":1234}"#);
        let exec = GuestExec::new("ls", ["-l", "/tmp"]);
        assert_eq!(exec.capture_output, CaptureOutput::Separated);
        assert_eq!(exec.input_data, None);
    }

    #[test]
    fn a_group_leader_is_started_through_setsid() {
        let exec = GuestExec::new("sh", ["-c", "sleep 60 | cat"]).as_group_leader();
        assert_eq!(exec.path, "setsid");
        assert_eq!(exec.arg, ["sh", "-c", "sleep 60 | cat"]);
    }

    #[test]
    fn the_request_length_counts_the_input_in_base64() {
        let exec = GuestExec::new("wc", ["-c"]).with_input(vec![b'x'; 3 << 20]);
        assert!(exec.request_len() > 4 << 20);
        assert!(exec.request_len() < (4 << 20) + 200);
    }

    #[test]
    fn agent_versions_compare_by_major_and_minor() {
        let info = |version: &str| GuestInfoReply {
            version: version.into(),
            supported_commands: vec![],
        };
        assert!(info("7.2.22").is_at_least(7, 2));
        assert!(!info("7.2.22").is_at_least(8, 1));
        assert!(info("10.0.0").is_at_least(8, 1));
        assert!(!info("eight").is_at_least(0, 0));
    }

    #[test]
    fn replies_decode() {
        let started: GuestExecReply = serde_json::from_str(r#"{"pid": 1234}"#).unwrap();
        assert_eq!(started.pid, 1234);
        let info: CommandInfo =
            serde_json::from_str(r#"{"name": "guest-shutdown", "enabled": true, "success-response": false}"#)
                .unwrap();
        assert!(info.enabled && !info.success_response);
        let status: GuestExecStatusReply = serde_json::from_str(
            r#"{"exited": true, "exitcode": 0, "out-data": "SGVsbG8=", "out-truncated": false}"#,
        )
        .unwrap();
        assert_eq!(status.out_data.as_deref(), Some(&b"Hello"[..]));
        assert_eq!(status.err_data, None);
        // Killed by SIGKILL after writing nothing: no exit code, no `*-data`.
        let killed: GuestExecStatusReply = serde_json::from_str(
            r#"{"exited": true, "signal": 9, "out-truncated": false, "err-truncated": false}"#,
        )
        .unwrap();
        assert_eq!((killed.exitcode, killed.signal), (None, Some(9)));
        assert_eq!(killed.out_data, None);
    }
}
