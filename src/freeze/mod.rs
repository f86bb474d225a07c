//! Freezing a guest's file systems so that the freeze never outlives its
//! limit, whatever happens to virtomate or to the host's connection.
//!
//! Two watchdogs are armed before the freeze, each able to end it alone:
//! one on the host ([`host_watchdog`]), a process of its own that thaws
//! through the agent, and one in the guest ([`guest_watchdog`]), which
//! thaws without the host and restarts an agent stuck in its frozen
//! state. Both act some seconds before the limit, the host's first (its
//! thaw is the clean one); a thaw stands both down. docs/guide.md tells
//! which covers which failure.

pub mod guest_watchdog;
pub mod host_watchdog;
pub mod registry;

use std::time::Duration;

use crate::error::CliError;

/// The shortest `--max-time`: room for both watchdogs to act before it.
pub const MIN_MAX_TIME: Duration = Duration::from_secs(10);

/// How long before the limit the host's watchdog thaws.
const HOST_LEAD: Duration = Duration::from_secs(7);

/// How long before the limit the guest's watchdog acts, at the least: it
/// counts whole seconds (up to one early), looks once a second, and may
/// wait a second for the agent's supervisor before it restarts the agent.
const GUEST_LEAD_SECONDS: u64 = 5;

/// When each watchdog acts, counted from just before they are armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// The host's watchdog thaws after this.
    pub host: Duration,
    /// The guest's acts after this many whole seconds.
    pub guest_seconds: u64,
}

impl Schedule {
    /// The schedule for a freeze of at most `max_time`, which must be at
    /// least [`MIN_MAX_TIME`].
    pub fn for_limit(max_time: Duration) -> Schedule {
        Schedule {
            host: max_time.saturating_sub(HOST_LEAD),
            guest_seconds: max_time.as_secs().saturating_sub(GUEST_LEAD_SECONDS),
        }
    }
}

/// A fresh name for one freeze, which tells its watchdogs from those of
/// any other.
pub fn new_token() -> Result<String, CliError> {
    virtomate_protocol::random_name().map_err(|e| CliError::io("cannot read random bytes", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_acts_first_and_both_before_the_limit() {
        let schedule = Schedule::for_limit(MIN_MAX_TIME);
        assert_eq!(schedule.host, Duration::from_secs(3));
        assert_eq!(schedule.guest_seconds, 5);
        let schedule = Schedule::for_limit(Duration::from_millis(60_900));
        assert_eq!(schedule.host, Duration::from_millis(53_900));
        assert_eq!(schedule.guest_seconds, 55);
    }
}
