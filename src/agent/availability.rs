//! Whether the guest's agent can do a command, from its `guest-info`: a
//! command it lacks says which QEMU brought it, a disabled one how to
//! enable it, and a guest whose file systems are frozen says so.

use virtomate_protocol::qga::schema::command_spec;
use virtomate_protocol::qga::{GuestInfo, GuestInfoReply};
use virtomate_protocol::Error as AgentError;

use super::domain_agent::DomainAgent;
use crate::error::{CliError, ErrorKind};

/// Why `command` cannot be used on the agent that answered `info`, or
/// `None` when it has it enabled.
pub fn unavailable(info: &GuestInfoReply, command: &str) -> Option<CliError> {
    let version = &info.version;
    match info.supported_commands.iter().find(|known| known.name == command) {
        Some(known) if known.enabled => None,
        Some(_) => Some(
            CliError::new(
                ErrorKind::Unavailable,
                format!("the guest's agent (qemu-ga {version}) has {command} disabled"),
            )
            .with_hint(how_to_enable(command)),
        ),
        None => Some(
            CliError::new(
                ErrorKind::Unavailable,
                format!("the guest's agent (qemu-ga {version}) does not have {command}"),
            )
            .with_hint(why_lacking(info, command)),
        ),
    }
}

/// How a disabled command is enabled in the guest.
pub fn how_to_enable(command: &str) -> String {
    format!(
        "qemu-ga disables what it is told to block, and what it cannot do on the guest's system; \
         if blocked, start qemu-ga in the guest without {command} in its --block-rpcs list, or with it \
         in its --allow-rpcs list (QEMU 8.1 on); on RHEL-family guests these options are in \
         FILTER_RPC_ARGS of /etc/sysconfig/qemu-ga (then restart qemu-guest-agent)"
    )
}

/// Which QEMU brought `command`, against the agent's own version.
pub fn why_lacking(info: &GuestInfoReply, command: &str) -> String {
    let Some(spec) = command_spec(command) else {
        return "QEMU's schema has no such command either".to_owned();
    };
    match spec.since_version() {
        Some((major, minor)) if !info.is_at_least(major, minor) => format!(
            "{command} came with QEMU {}: install a newer qemu-guest-agent in the guest",
            spec.since
        ),
        _ => format!(
            "{command} came with QEMU {}, but this agent was built without it (QEMU offers some \
             commands on some systems only)",
            spec.since
        ),
    }
}

/// The agent's own word that it is frozen, from an error reply.
pub fn frozen(error: &AgentError) -> bool {
    matches!(error, AgentError::Agent { desc, .. } if desc.contains("frozen"))
}

/// What to do when the guest's file systems are frozen.
pub const THAW_HINT: &str = "the guest's file systems are frozen, and its agent refuses most commands \
     until they are thawed: send guest-fsfreeze-thaw (virtomate guest-cmd DOMAIN guest-fsfreeze-thaw)";

impl DomainAgent {
    /// The agent's `guest-info`.
    pub async fn guest_info(&mut self) -> Result<GuestInfoReply, CliError> {
        self.execute(&GuestInfo {}).await
    }

    /// The agent's `guest-info`, or an [`ErrorKind::Unavailable`] error
    /// naming the first of `commands` it lacks or has disabled.
    pub async fn require(&mut self, commands: &[&str]) -> Result<GuestInfoReply, CliError> {
        let info = self.guest_info().await?;
        match commands.iter().find_map(|command| unavailable(&info, command)) {
            Some(error) => Err(self.unless_frozen(&info, error).await),
            None => Ok(info),
        }
    }

    /// A frozen agent reports most commands disabled: then the fix is to
    /// thaw, not to enable them.
    pub async fn unless_frozen(&mut self, info: &GuestInfoReply, error: CliError) -> CliError {
        if unavailable(info, "guest-fsfreeze-status").is_some() {
            return error;
        }
        let status = self.execute_json("guest-fsfreeze-status", None, None).await;
        match status {
            Ok(status) if status == "frozen" => error.with_hint_instead(THAW_HINT),
            _ => error,
        }
    }

    /// What to add to the agent's refusal of `command`: why it is
    /// missing or disabled (asking `guest-info` once it refused with
    /// `CommandNotFound`), or that the guest is frozen.
    pub async fn refusal_hint(&mut self, command: &str, error: &AgentError) -> Option<String> {
        if frozen(error) {
            return Some(THAW_HINT.to_owned());
        }
        if !matches!(error, AgentError::Agent { class, .. } if class == "CommandNotFound") {
            return None;
        }
        let info = self.guest_info().await.ok()?;
        match info.supported_commands.iter().find(|known| known.name == command) {
            Some(known) if known.enabled => None,
            Some(_) => Some(how_to_enable(command)),
            // A name QEMU never had (sent --unchecked): the agent said all.
            None if command_spec(command).is_none() => None,
            None => Some(format!(
                "this agent is qemu-ga {}; {}",
                info.version,
                why_lacking(&info, command)
            )),
        }
    }
}
