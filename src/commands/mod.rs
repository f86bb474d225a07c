//! One module per subcommand, and what they share: reaching the agent of
//! a domain, and the answer to print.

pub mod control;
pub mod copy;
pub mod doctor;
pub mod domain_iface_list;
pub mod domain_list;
pub mod freeze_watchdog;
pub mod guest_cmd;
pub mod guest_facts;
pub mod guest_freeze;
pub mod guest_fstrim;
pub mod guest_info;
pub mod guest_ping;
pub mod guest_run;
pub mod guest_set_password;
pub mod guest_set_time;
pub mod guest_shutdown;
pub mod guest_ssh_keys;
pub mod guest_thaw;
pub mod qmp;
pub mod session;
pub mod shell;

pub use crate::agent::Context;
use crate::run_output::RunOutput;

/// What a command prints on success.
pub enum Answer {
    /// A program's end (kept typed: its output may be 16 MiB).
    Run(RunOutput),
    /// Any other JSON answer.
    Json(serde_json::Value),
    /// Nothing at all, as `guest-ping` on success.
    Nothing,
    /// Nothing more printed, and this exit status: a local command's
    /// (`guest-freeze -- COMMAND`), or 255 for `shell` left with `~.`.
    Exit(u8),
    /// Exit 1, all said already (`session`, interrupted, has printed a
    /// reply for each request it leaves).
    Failed,
    /// A diagnosis: a checklist on a terminal unless `json`, JSON
    /// otherwise; exit 1 when a step failed.
    Report { report: doctor::Report, json: bool },
}
