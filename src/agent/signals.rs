//! SIGINT, SIGTERM and SIGHUP for the commands that run programs: caught,
//! so that an interrupted run can say what it leaves behind in the guest.

use std::future::Future;

use tokio::signal::unix::{signal, Signal, SignalKind};
use virtomate_protocol::Settling;

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

/// How the work given up on a signal was let settle (see
/// [`Signals::settle`]).
pub enum Settled<T> {
    /// It ended meanwhile: what it says stands.
    Ended(T),
    /// No step of it awaits a reply: it can be dropped.
    Idle,
    /// Another signal stopped the wait for the reply to this step, which
    /// may leave what only that reply names (see [`cut_short`]).
    CutShort(&'static str),
}

impl Signals {
    /// After a signal: lets the step of `work` in flight on its channel
    /// end, so that what the agent keeps for it (a file's handle, a
    /// directory made) is in the clean-up's reach (see [`Settling`]),
    /// unless another signal comes first. Each step's reply comes within
    /// the reply timeout.
    pub async fn settle<W: Future + Unpin>(
        &mut self,
        settling: &Settling,
        work: &mut W,
    ) -> Settled<W::Output> {
        if !settling.in_flight() {
            return Settled::Idle;
        }
        tokio::select! {
            settled = settling.settle(work) => match settled {
                Some(outcome) => Settled::Ended(outcome),
                None => Settled::Idle,
            },
            () = self.arrival() => match settling.step_in_flight() {
                Some(step) => {
                    tracing::info!("another signal: no longer waiting for the reply while {step}");
                    Settled::CutShort(step)
                }
                None => Settled::Idle,
            },
        }
    }
}

/// What may stay in the guest when a second signal stopped the wait for
/// the reply to `step`: a hint.
pub fn cut_short(step: &str) -> String {
    format!(
        "a second signal stopped the wait for the agent's reply while {step}: what that request made may \
         stay in the guest (a file the agent keeps open until it restarts, a directory)"
    )
}

/// The hint when a further signal stopped the give-up's own clean-up
/// (stopping followed and time-limited programs, removing their files).
pub const CLEAN_UP_CUT_SHORT: &str =
    "a further signal stopped virtomate's clean-up: a program it was to stop may still run in the guest, \
     and a followed one's private directory stays until the next followed run or copy on this VM stops \
     what it holds and removes it";

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
