//! One module per subcommand, and what they share: reaching the agent of
//! a domain, and the answer to print.

pub mod copy;
pub mod doctor;
pub mod domain_list;
pub mod guest_cmd;
pub mod guest_info;
pub mod guest_ping;
pub mod guest_run;
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
    /// Exit 1, all said already (`session`, interrupted, has printed a
    /// reply for each request it leaves).
    Failed,
    /// Exit with this status, all said already (`shell` left with `~.`).
    Status(u8),
    /// A diagnosis: a checklist on a terminal unless `json`, JSON
    /// otherwise; exit 1 when a step failed.
    Report { report: doctor::Report, json: bool },
}
