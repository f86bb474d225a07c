//! How a finished `guest-run` is told: the original's JSON, or with `--raw`
//! the program's own bytes and exit status, as `ssh host cmd` gives them.

use std::io::{self, Write};

use virtomate_protocol::qga::GuestExecStatusReply;

use super::guest_run::RunResult;
use crate::output;

/// GNU `timeout`'s exit status for a program it had to stop.
pub const TIMED_OUT: u8 = 124;

/// A program's end, ready to print.
#[derive(Debug)]
pub enum RunOutput {
    /// The JSON result; exit status 0, or [`TIMED_OUT`].
    Json { result: RunResult, timed_out: bool },
    /// The bytes themselves and the program's exit status.
    Raw {
        status: GuestExecStatusReply,
        timed_out: bool,
    },
}

impl RunOutput {
    /// virtomate's exit status: with `--raw` the program's own (128+N for
    /// signal N, as shells report it), and [`TIMED_OUT`] after `--max-time`.
    pub fn exit_status(&self) -> u8 {
        match self {
            RunOutput::Json { timed_out: true, .. } | RunOutput::Raw { timed_out: true, .. } => TIMED_OUT,
            RunOutput::Json { .. } => 0,
            RunOutput::Raw { status, .. } => match (status.exitcode, status.signal) {
                // Linux gives WEXITSTATUS, 0-255; the low byte is what a
                // shell would see of anything else.
                (Some(code), _) => (code & 0xFF) as u8,
                (None, Some(signal)) => (128 + (signal & 0x7F)) as u8,
                (None, None) => 0,
            },
        }
    }

    /// Prints it: JSON on stdout, or the program's stdout and stderr on
    /// ours, byte for byte.
    pub fn print(&self, pretty: bool) -> io::Result<()> {
        match self {
            RunOutput::Json { result, .. } => output::print_json(result, pretty),
            RunOutput::Raw { status, .. } => {
                if let Some(err) = &status.err_data {
                    io::stderr().write_all(err)?;
                }
                for (cut, stream) in [
                    (status.out_truncated, "standard output"),
                    (status.err_truncated, "standard error"),
                ] {
                    if cut {
                        eprintln!("virtomate: the agent cut the program's {stream} at its 16 MiB cap");
                    }
                }
                let mut stdout = io::stdout().lock();
                if let Some(out) = &status.out_data {
                    stdout.write_all(out)?;
                }
                stdout.flush()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: serde_json::Value, timed_out: bool) -> RunOutput {
        RunOutput::Raw {
            status: serde_json::from_value(json).unwrap(),
            timed_out,
        }
    }

    #[test]
    fn raw_exit_statuses_are_the_programs_as_a_shell_reports_them() {
        assert_eq!(
            raw(serde_json::json!({"exited": true, "exitcode": 3}), false).exit_status(),
            3
        );
        assert_eq!(
            raw(serde_json::json!({"exited": true, "signal": 9}), false).exit_status(),
            137
        );
        assert_eq!(
            raw(serde_json::json!({"exited": true, "signal": 15}), true).exit_status(),
            124
        );
    }
}
