//! `copy -r`: a directory tree into or out of the guest, as a tar stream,
//! with `tar` in the guest (GNU's or busybox's).
//!
//! # Out of the guest
//!
//! `tar -c -f - .` runs in the guest's SRC (piped through `gzip -1` with
//! `--compress`), its output followed as it is written, as `--compress`
//! follows gzip's (`pull.rs`). The chunks go to a thread that unpacks them
//! as they come (`unpack.rs`), through a short queue: memory stays bounded
//! and a slow disk slows the reads. The guest is untrusted, and so is its
//! stream: the unpacker refuses whatever would land outside the private
//! directory it writes, and that directory is renamed to DEST only once
//! the stream has ended and `tar` has exited 0. A refusal or a failure
//! removes it.
//!
//! # Into the guest
//!
//! The tree is packed on the host (`pack.rs`, through gzip with
//! `--compress`) by a thread, and streamed as it is packed into the
//! standard input of `tar -x` (after `gzip -d`) running in the guest, in a
//! private 0700 directory beside DEST (`stream_in.rs`, through the
//! protocol crate's named pipe, as `guest-run -i` feeds a program): no
//! archive lands on the guest's disk, and a guest that reads slowly slows
//! the packer. Once `tar` has exited 0 after the end of the stream, the
//! unpacked tree is renamed to DEST (`push.rs`). A failure stops `tar`
//! and removes the private directory.
//!
//! # Destination
//!
//! As `cp -r`: DEST names the new directory, or, when it is a directory
//! already, the one to make SRC's copy in (under SRC's name). A copy never
//! merges into a directory that exists: it is refused before anything is
//! sent.

mod archive;
mod pack;
mod pull;
mod push;
mod stream_in;
#[cfg(test)]
mod tests;
pub mod unpack;

use std::path::{Path, PathBuf};

use serde::Serialize;
use virtomate_protocol::follow::FollowError;

use super::agent::FileAgent;
use super::guest;
use super::Copy;
use crate::error::{CliError, ErrorKind};

/// What a `copy -r` reports.
#[derive(Debug, Serialize)]
pub struct TreeSummary {
    /// The directory made.
    pub dest: String,
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    /// Bytes of file data.
    pub bytes: u64,
    /// Bytes of the tar stream that crossed the channel (compressed, with
    /// `--compress`).
    pub archive_bytes: u64,
    pub seconds: f64,
    /// Entries whose set-user-ID, set-group-ID or sticky bit was dropped.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stripped: Vec<String>,
}

impl<A: FileAgent> Copy<'_, A> {
    /// Whether the guest can run `tar`; an error that says so if not.
    async fn check_tar(&mut self) -> Result<(), CliError> {
        match guest::run(self.agent, "tar", &["--help"], "for copy -r").await {
            // Any exit status: only a tar that cannot be started is missing.
            Ok(_) => Ok(()),
            Err(error) if error.kind() == ErrorKind::AgentCommand => Err(CliError::new(
                ErrorKind::AgentCommand,
                format!("copy -r: the guest cannot run tar: {error}"),
            )
            .with_hint("install tar (GNU or busybox) in the guest, or copy the files one by one")),
            Err(error) => Err(error),
        }
    }

    /// A failure of the files (and pipe) `tar` works through in the guest.
    fn tree_follow_error(&self, error: FollowError) -> CliError {
        match error {
            FollowError::Agent(error) => guest::file_error(self.agent, error),
            other => CliError::new(ErrorKind::AgentCommand, format!("copy -r: {other}")).with_hint(
                "copy -r runs tar in the guest with /bin/sh, its input and output passing through a \
                 private directory under $TMPDIR or /tmp there",
            ),
        }
    }
}

/// The local directory a copy out makes: `dest`, or `dest/NAME` when
/// `dest` is a directory already (or ends with `/`).
fn local_dest(dest: &Path, name: Option<&str>) -> Result<PathBuf, CliError> {
    let into_dir = dest.as_os_str().to_string_lossy().ends_with('/') || dest.is_dir();
    match (into_dir, name) {
        (true, Some(name)) => Ok(dest.join(name)),
        (true, None) => Err(CliError::new(
            ErrorKind::Path,
            format!(
                "{} is a directory, and the guest path has no name to make in it",
                dest.display()
            ),
        )),
        (false, _) => Ok(dest.to_owned()),
    }
}

fn not_a_guest_directory(path: &str) -> CliError {
    CliError::new(
        ErrorKind::Path,
        format!("{path} is not a directory in the guest; copy -r takes a directory"),
    )
    .with_hint("copy one file without -r")
}
