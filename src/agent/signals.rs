//! SIGINT, SIGTERM and SIGHUP for the commands that run programs: caught,
//! so that an interrupted run can say what it leaves behind in the guest.

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::error::{CliError, Interruption};

/// SIGINT, SIGTERM and SIGHUP, caught so that an interrupted run can still
/// say what it leaves behind in the guest. A signal ignored when virtomate
/// started (`nohup`, a background job of a non-interactive shell) stays
/// ignored, as programs are expected to keep it.
pub struct Signals {
    interrupt: Option<Signal>,
    terminate: Option<Signal>,
    hangup: Option<Signal>,
}

impl Signals {
    pub fn install() -> Result<Signals, CliError> {
        let ignored = ignored_signals();
        let catch = |kind: SignalKind| {
            if ignores(ignored, kind) {
                tracing::debug!(signal = kind.as_raw_value(), "ignored at start: left ignored");
                return Ok(None);
            }
            signal(kind)
                .map(Some)
                .map_err(|e| CliError::io("cannot install a signal handler", e))
        };
        Ok(Signals {
            interrupt: catch(SignalKind::interrupt())?,
            terminate: catch(SignalKind::terminate())?,
            hangup: catch(SignalKind::hangup())?,
        })
    }

    /// The next arrival of any of them (`copy` decides itself what an
    /// interruption means at each point).
    pub async fn arrival(&mut self) {
        tokio::select! {
            _ = arrival(&mut self.interrupt) => {}
            _ = arrival(&mut self.terminate) => {}
            _ = arrival(&mut self.hangup) => {}
        }
    }

    /// Runs `work` unless a signal arrives first; then the error says
    /// what `stage` the run was in.
    pub async fn unless_interrupted<T>(
        &mut self,
        stage: Interruption,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, CliError> {
        tokio::select! {
            result = work => Ok(result),
            _ = arrival(&mut self.interrupt) => Err(CliError::interrupted(stage)),
            _ = arrival(&mut self.terminate) => Err(CliError::interrupted(stage)),
            _ = arrival(&mut self.hangup) => Err(CliError::interrupted(stage)),
        }
    }
}

/// The next arrival of a caught signal; never, for one left ignored.
async fn arrival(signal: &mut Option<Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// The signals this process ignores, as a mask (bit N-1 for signal N).
/// Read from `/proc/self/status` (`SigIgn`): asking `sigaction(2)` would
/// need unsafe code, which this crate forbids. Unreadable, nothing counts
/// as ignored, and every signal is caught.
fn ignored_signals() -> u64 {
    // Read with room for the whole file at once: `read_to_string`'s small
    // first reads each make the kernel write the file out again.
    let mut status = String::with_capacity(4096);
    let read = std::fs::File::open("/proc/self/status")
        .and_then(|mut file| std::io::Read::read_to_string(&mut file, &mut status));
    match read {
        Ok(_) => sig_ign_mask(&status).unwrap_or(0),
        Err(_) => 0,
    }
}

fn ignores(mask: u64, kind: SignalKind) -> bool {
    mask & (1 << (kind.as_raw_value() - 1)) != 0
}

fn sig_ign_mask(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|line| line.strip_prefix("SigIgn:"))?;
    u64::from_str_radix(line.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignored_signals_are_read_from_the_status_file() {
        let status = "Name:\tvirtomate\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000001002\nSigCgt:\t0\n";
        let mask = sig_ign_mask(status).unwrap();
        assert_eq!(mask, 0x1002);
        // SIGINT (2) ignored, SIGHUP (1) and SIGTERM (15) not.
        assert!(ignores(mask, SignalKind::interrupt()));
        assert!(!ignores(mask, SignalKind::hangup()));
        assert!(!ignores(mask, SignalKind::terminate()));
        assert_eq!(sig_ign_mask("Name:\tx\n"), None);
    }
}
