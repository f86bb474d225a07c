//! What went wrong while following.

use super::stream::Stream;
use crate::Error;

/// What went wrong while following.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FollowError {
    /// An exchange with the agent failed.
    #[error(transparent)]
    Agent(#[from] Error),
    /// The agent lacks commands following needs, or has them disabled;
    /// nothing was done in the guest.
    #[error("the agent lacks {}, which following output (or feeding input) needs", missing.join(", "))]
    Unsupported {
        /// The commands missing or disabled.
        missing: Vec<String>,
    },
    /// The private directory could not be made: no `/bin/sh`, no writable
    /// temporary directory. Nothing of the caller's was started.
    #[error("cannot make a private directory for the output in the guest: {reason}")]
    Setup {
        /// What the guest said.
        reason: String,
    },
    /// The directory was gone at the end: something in the guest removed
    /// it while the program ran.
    #[error("the output directory {dir} was removed in the guest while the program ran")]
    Removed {
        /// The directory, as the guest names it.
        dir: String,
    },
    /// The file system of the directory had no space left at the end: the
    /// program may have failed to write some of its output.
    #[error(
        "the guest's temporary directory filled up while the program ran (no space left on the file \
         system of {dir}): its output may be incomplete"
    )]
    Full {
        /// The directory, as the guest names it.
        dir: String,
    },
    /// A stream's reader in the guest (its rotator) ended before the
    /// program closed the stream, without its end mark: killed, or failing
    /// to write a chunk file with space left. What it held and what the
    /// program wrote after are missing. The directory was removed all the
    /// same.
    #[error(
        "output lost: the guest-side reader of {stream} ended early ({}): what the program wrote \
         after is missing",
        if *failed { "it failed, with space left" } else { "without a word: killed, most likely" }
    )]
    Lost {
        /// The directory, as the guest names it.
        dir: String,
        /// The stream whose output is missing.
        stream: Stream,
        /// Whether the reader said it failed (else it was killed or
        /// vanished).
        failed: bool,
    },
    /// The index of the chunk files, which the guest writes, makes no
    /// sense: something in the guest other than the rotators wrote to it.
    #[error("the index of the output's chunk files in the guest makes no sense: {reason}")]
    Index {
        /// What was wrong.
        reason: String,
    },
    /// The directory could not be removed.
    #[error("cannot remove the output directory {dir} in the guest: {reason}")]
    CleanUp {
        /// The directory, as the guest names it.
        dir: String,
        /// What the guest said.
        reason: String,
    },
    /// The program's input could not be fed (see [`feed`](crate::feed)):
    /// the agent did something unforeseen with it (it may have lost or
    /// repeated some), no chunk file fitted in the guest's temporary
    /// directory, or the helper moving one into the pipe failed. The
    /// program is stopped.
    #[error("cannot feed the program's input: {reason}")]
    Input {
        /// What the agent did.
        reason: String,
    },
    /// The sink refused a chunk (a reader that went away, say).
    #[error("cannot pass the output on: {0}")]
    Sink(#[source] std::io::Error),
}
