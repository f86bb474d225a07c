//! Whether the VM runs at all, as QEMU knows it: an agent that does not
//! answer in a paused, suspended or panicked VM is no fault of the agent,
//! and the user should hear what QEMU knew all along.

use std::time::Duration;

use virtomate_protocol::qmp::QueryStatus;
use virtomate_protocol::{ClientOptions, QmpClient};

use super::model::{Domain, Source};
use super::socket_holders;

/// QEMU's run state of a VM, and who told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunState {
    /// QMP's `RunState` (`running`, `paused`, `suspended`, …); libvirt's
    /// record is translated to the same words.
    pub status: String,
    /// Where it was learned, for messages.
    pub told_by: &'static str,
}

impl RunState {
    /// Why the agent cannot answer in this state, and what to do, for a
    /// VM named `name` (a libvirt domain when `libvirt`).
    pub fn advice(&self, name: &str, libvirt: bool) -> Option<String> {
        let qmp = |command: &str| format!("virtomate qmp {name} '{{\"execute\": \"{command}\"}}'");
        let state = &self.status;
        let told = self.told_by;
        let (what, todo) = match state.as_str() {
            "running" => return None,
            "paused" | "prelaunch" | "debug" => (
                // "as paused, paused: …" would say it twice.
                match state.as_str() {
                    "paused" => "no guest code runs, the agent included",
                    _ => "paused: no guest code runs, the agent included",
                },
                if libvirt {
                    format!("resume it: virsh resume {name}")
                } else {
                    format!("resume it: {}", qmp("cont"))
                },
            ),
            "suspended" => (
                "suspended by the guest (sleeping in RAM)",
                if libvirt {
                    format!("wake it: virsh dompmwakeup {name}")
                } else {
                    format!("wake it: {}", qmp("system_wakeup"))
                },
            ),
            "inmigrate" | "postmigrate" | "finish-migrate" => (
                "in migration, or migrated away from this QEMU",
                "wait for the migration to end, or reach the VM on the host it went to".to_owned(),
            ),
            "guest-panicked" => (
                "stopped after a panic of the guest's kernel",
                if libvirt {
                    format!("see the guest's console, then restart it: virsh reset {name}")
                } else {
                    format!(
                        "see the guest's console, then restart it: {}",
                        qmp("system_reset")
                    )
                },
            ),
            "shutdown" => (
                "shut down from inside the guest (QEMU was kept running)",
                "start the guest again (system_reset, then cont), or restart the VM".to_owned(),
            ),
            "io-error" | "internal-error" | "watchdog" => (
                "stopped by QEMU after an error",
                "see QEMU's log (a full disk is a common cause of io-error), fix it, then resume the VM"
                    .to_owned(),
            ),
            _ => (
                "not running",
                "the agent answers only while the VM runs".to_owned(),
            ),
        };
        Some(format!("{told} reports the VM as {state}, {what}; {todo}"))
    }
}

/// Asks QEMU over a QMP socket nobody else holds; else takes libvirt's
/// record. `None` when neither can tell.
pub async fn ask(found: &Domain, options: &ClientOptions) -> Option<RunState> {
    let quick = ClientOptions {
        handshake_timeout: options.handshake_timeout.min(Duration::from_secs(2)),
        reply_timeout: options.reply_timeout.min(Duration::from_secs(2)),
        ..options.clone()
    };
    for socket in &found.qmp_sockets {
        if !socket_holders::holders(socket).is_empty() {
            continue;
        }
        let Ok(mut qemu) = QmpClient::connect(socket, quick.clone()).await else {
            continue;
        };
        if let Ok(status) = qemu.execute(&QueryStatus {}).await {
            return Some(RunState {
                status: status.status,
                told_by: "QEMU",
            });
        }
    }
    let (state, reason) = found.libvirt_state.as_ref()?;
    Some(RunState {
        status: from_libvirt(state, reason).to_owned(),
        told_by: "libvirt",
    })
}

/// The state `domain-list` shows, in the original virtomate's words
/// (`running`, `paused`, `shut-off`, `suspended`, …): libvirt's record for
/// its domains, QEMU's answer over a free QMP socket for the others, and
/// `unknown` when neither tells.
pub async fn listed_state(found: &Domain, options: &ClientOptions) -> &'static str {
    if let Some((state, _)) = &found.libvirt_state {
        return match state.as_str() {
            "nostate" => "no state",
            "running" => "running",
            "blocked" => "blocked",
            "paused" => "paused",
            "shutdown" => "shutdown",
            "shutoff" => "shut-off",
            "crashed" => "crashed",
            "pmsuspended" => "suspended",
            _ => "unknown",
        };
    }
    match ask(found, options).await.map(|state| state.status) {
        Some(status) => match status.as_str() {
            "running" => "running",
            "suspended" => "suspended",
            "shutdown" => "shutdown",
            "guest-panicked" => "crashed",
            "paused" | "prelaunch" | "debug" | "inmigrate" | "postmigrate" | "finish-migrate" | "save-vm"
            | "restore-vm" | "io-error" | "watchdog" | "internal-error" | "colo" => "paused",
            _ => "unknown",
        },
        None => "unknown",
    }
}

/// libvirt's `virDomainState` and reason, in QMP's words.
fn from_libvirt(state: &str, reason: &str) -> &'static str {
    match (state, reason) {
        ("running", "migrated" | "restored" | "from snapshot" | "unpaused" | "booted" | _) => "running",
        ("paused", "migration" | "postcopy") => "inmigrate",
        ("paused", "ioerror") => "io-error",
        ("paused", "watchdog") => "watchdog",
        ("paused", "panicked") | ("crashed", _) => "guest-panicked",
        ("paused", _) | ("blocked", _) => "paused",
        ("pmsuspended", _) => "suspended",
        ("shutdown" | "shutoff", _) => "shutdown",
        _ => "unknown",
    }
}

/// The domain an agent socket given as DOMAIN belongs to, if virtomate
/// can find it among the running ones.
pub fn owner_of(found: &Domain, scope: &super::Scope) -> Option<Domain> {
    if found.source != Source::Socket {
        return Some(found.clone());
    }
    let wanted = std::fs::canonicalize(&found.agent_channels.first()?.path).ok()?;
    super::list(scope).into_iter().find(|vm| {
        vm.agent_channels
            .iter()
            .any(|c| std::fs::canonicalize(&c.path).ok().as_ref() == Some(&wanted))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(status: &str) -> RunState {
        RunState {
            status: status.to_owned(),
            told_by: "QEMU",
        }
    }

    #[test]
    fn a_running_vm_needs_no_advice() {
        assert_eq!(state("running").advice("web", false), None);
    }

    #[test]
    fn each_stopped_state_says_what_to_do_the_way_the_vm_is_managed() {
        let paused = state("paused").advice("web", false).unwrap();
        assert_eq!(
            paused,
            "QEMU reports the VM as paused, no guest code runs, the agent included; resume it: \
             virtomate qmp web '{\"execute\": \"cont\"}'"
        );
        assert!(state("paused")
            .advice("web", true)
            .unwrap()
            .ends_with("virsh resume web"));
        assert!(state("suspended")
            .advice("web", false)
            .unwrap()
            .contains("system_wakeup"));
        assert!(state("inmigrate")
            .advice("web", false)
            .unwrap()
            .contains("migration"));
        assert!(state("guest-panicked")
            .advice("web", true)
            .unwrap()
            .contains("virsh reset web"));
        assert!(state("shutdown")
            .advice("web", false)
            .unwrap()
            .contains("shut down from inside"));
        assert!(state("io-error")
            .advice("web", false)
            .unwrap()
            .contains("full disk"));
        assert!(state("colo")
            .advice("web", false)
            .unwrap()
            .contains("not running"));
    }

    #[test]
    fn libvirts_record_is_put_in_qmps_words() {
        assert_eq!(from_libvirt("running", "booted"), "running");
        assert_eq!(from_libvirt("paused", "user"), "paused");
        assert_eq!(from_libvirt("paused", "migration"), "inmigrate");
        assert_eq!(from_libvirt("paused", "ioerror"), "io-error");
        assert_eq!(from_libvirt("pmsuspended", "unknown"), "suspended");
        assert_eq!(from_libvirt("crashed", "panicked"), "guest-panicked");
    }
}
