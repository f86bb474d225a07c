//! `--compress`: the data crosses the channel gzipped, compressed on the
//! host and unpacked by `gzip` in the guest (or the other way round).
//!
//! # Into the guest
//!
//! The host compresses as it reads and writes the compressed bytes in
//! parts, each a gzip stream of its own, to `part.N` in the private 0700
//! directory beside the destination (the one a plain copy uses). Each part
//! is closed, its size checked, and unpacked by `gzip -d` onto the end of
//! `data` beside it while the next part is sent, so that unpacking in the
//! guest and the transfer overlap (`push.rs`). Once all is unpacked the
//! file gets its mode, its size (and with `--verify` its SHA-256) is
//! checked, and `mv` renames it into place. No other user reaches a byte
//! of it on the way.
//!
//! # Out of the guest
//!
//! `gzip -1 -c < FILE` runs in the guest with its output going to a file
//! in a private directory (the protocol crate's `follow`, as for
//! `guest-run --follow`: `$TMPDIR` or `/tmp`, mode 0700), and that file is
//! read while gzip writes it, so that compressing in the guest and the
//! transfer overlap. The host unpacks it as it arrives, a few KiB at a
//! time (bounded memory whatever the ratio: a hostile guest's stream is
//! never whole in memory); gzip's own checksum and length at the end of
//! the stream check what arrived. The directory is removed after, and on
//! a failure or a signal gzip is stopped too (`pull.rs`).
//!
//! # Without gzip
//!
//! The guest is asked first (`gzip -h`); a guest that cannot run `gzip`
//! makes `--compress` an error that says so, before anything is written:
//! no silent fallback, since `--compress` is asked for speed and the plain
//! copy may be much slower than the user planned for.

mod pull;
mod push;

use super::agent::FileAgent;
use super::guest;
use super::Copy;
use crate::error::{CliError, ErrorKind};

impl<A: FileAgent> Copy<'_, A> {
    /// Whether the guest can run `gzip`; an error that says so if not.
    pub(super) async fn check_gzip(&mut self) -> Result<(), CliError> {
        match guest::run(self.agent, "gzip", &["-h"], "for --compress").await {
            // Any exit status: busybox's gzip has no -h and says so.
            Ok(_) => Ok(()),
            Err(error) if error.kind() == ErrorKind::AgentCommand => Err(CliError::new(
                ErrorKind::AgentCommand,
                format!("--compress: the guest cannot run gzip: {error}"),
            )
            .with_hint("install gzip in the guest, or copy without --compress")),
            Err(error) => Err(error),
        }
    }
}
