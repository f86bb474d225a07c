//! `--compress`: the data crosses the channel gzipped, compressed on the
//! host and unpacked by `gzip` in the guest (or the other way round).
//!
//! # Into the guest
//!
//! The host compresses as it reads, and writes the compressed bytes in
//! chunks to `DIR/.virtomate-RANDOM/data.gz` (the same private 0700
//! directory as without `--compress`). When all is there and its size
//! checked, `gzip -d` in the guest unpacks it to `data` beside it — inside
//! the private directory, so no other user can reach a byte of it — then
//! the file gets its mode, its size (and with `--verify` its SHA-256) is
//! checked, and `mv` renames it into place.
//!
//! # Out of the guest
//!
//! `gzip -c FILE > /tmp/.virtomate-RANDOM/data.gz` in the guest (through
//! `sh`), then that file is read in chunks and unpacked on the host as it
//! arrives, a few KiB at a time (bounded memory whatever the ratio); the
//! private directory is removed after.
//!
//! # Without gzip
//!
//! The guest is asked first (`gzip -h`); a guest that cannot run `gzip`
//! makes `--compress` an error that says so, before anything is written:
//! no silent fallback, since `--compress` is asked for speed and the plain
//! copy may be much slower than the user planned for.

use std::io::Write;
use std::time::Instant;

use flate2::write::{GzDecoder, GzEncoder};
use flate2::Compression;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::agent::FileAgent;
use super::guest;
use super::local::Source;
use super::location::{guest_name, guest_parent};
use super::progress::Progress;
use super::{chunks, hex, size_mismatch, Copy, Options, Summary, Target, STDIN_MODE};
use crate::error::{CliError, ErrorKind};

/// How much compressed data the host unpacks at a time: what it produces
/// from that is bounded by gzip's largest ratio (about 1:1032).
const UNPACK_STEP: usize = 8 << 10;

/// The guest's private directory for a copy out.
const GUEST_TMP: &str = "/tmp";

impl<A: FileAgent> Copy<'_, A> {
    /// Whether the guest can run `gzip`; an error that says so if not.
    async fn check_gzip(&mut self) -> Result<(), CliError> {
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

    pub(super) async fn push_compressed(
        &mut self,
        mut source: Source,
        path: &str,
        options: &Options,
    ) -> Result<Summary, CliError> {
        let started = Instant::now();
        let target = self.guest_target(path, source.name.as_deref()).await?;
        self.check_gzip().await?;
        let mode = options.mode.or(source.mode).unwrap_or(STDIN_MODE);
        let dir = self.private_dir(guest_parent(&target)).await?;
        let packed = format!("{dir}/data.gz");
        let handle = guest::open(self.agent, &packed, "w").await?;
        self.left.handle = Some(handle);
        self.left.guest_temp = Some(packed.clone());

        let chunk = chunks::for_writes(options.chunk_size, self.agent.through_libvirtd());
        let progress = Progress::new(options.progress, source.len);
        let mut hasher = options.verify.then(Sha256::new);
        let mut encoder = GzEncoder::new(Vec::with_capacity(2 * chunk), Compression::default());
        let mut buf = Vec::with_capacity(chunk);
        let (mut read, mut sent) = (0u64, 0u64);
        let copied = async {
            loop {
                source.read_chunk(&mut buf, chunk).await?;
                if buf.is_empty() {
                    break;
                }
                if let Some(hasher) = &mut hasher {
                    hasher.update(&buf);
                }
                encoder
                    .write_all(&buf)
                    .map_err(|e| CliError::io("cannot compress", e))?;
                read += buf.len() as u64;
                progress.advance(buf.len() as u64);
                while encoder.get_ref().len() >= chunk {
                    let out: Vec<u8> = encoder.get_mut().drain(..chunk).collect();
                    sent += out.len() as u64;
                    guest::write(self.agent, handle, out).await?;
                }
            }
            encoder
                .try_finish()
                .map_err(|e| CliError::io("cannot compress", e))?;
            let rest = std::mem::take(encoder.get_mut());
            for out in rest.chunks(chunk) {
                sent += out.len() as u64;
                guest::write(self.agent, handle, out.to_vec()).await?;
            }
            Ok::<(), CliError>(())
        }
        .await;
        if let Err(error) = copied {
            progress.abandon();
            return Err(error);
        }
        let size = guest::size(self.agent, handle).await?;
        self.left.handle = None;
        guest::close(self.agent, handle).await?;
        if size != sent {
            return Err(size_mismatch(&packed, size, sent));
        }

        // Unpacked inside the private directory: no other user reaches it.
        let temp = format!("{dir}/data");
        self.left.guest_temp = None;
        let unpacked = guest::run(self.agent, "gzip", &["-d", "-f", &packed], "for --compress").await?;
        if !unpacked.ok() {
            return Err(CliError::new(
                ErrorKind::AgentCommand,
                unpacked.failure("gzip -d"),
            ));
        }
        let mode_text = format!("{mode:o}");
        let chmod = guest::run(
            self.agent,
            "chmod",
            &[&mode_text, &temp],
            "to set the file's mode",
        )
        .await?;
        if !chmod.ok() {
            return Err(CliError::new(ErrorKind::AgentCommand, chmod.failure("chmod")));
        }
        let size = self.guest_size(&temp).await?;
        if size != read {
            return Err(size_mismatch(&temp, size, read));
        }
        let sha256 = self.put_in_place(hasher, &temp, &target, &dir).await?;
        progress.finish();
        Ok(Summary {
            bytes: read,
            seconds: started.elapsed().as_secs_f64(),
            sha256,
        })
    }

    /// The size of the guest file `path`, opened for it.
    async fn guest_size(&mut self, path: &str) -> Result<u64, CliError> {
        let handle = guest::open(self.agent, path, "r").await?;
        self.left.handle = Some(handle);
        let size = guest::size(self.agent, handle).await;
        self.left.handle = None;
        guest::close(self.agent, handle).await?;
        size
    }

    pub(super) async fn pull_compressed(
        &mut self,
        path: &str,
        target: Target,
        options: &Options,
    ) -> Result<Summary, CliError> {
        let started = Instant::now();
        self.check_gzip().await?;
        let dir = self.private_dir(GUEST_TMP).await?;
        let packed = format!("{dir}/data.gz");
        let ran = guest::run(
            self.agent,
            "sh",
            &["-c", "gzip -1 -c < \"$1\" > \"$2\"", "sh", path, &packed],
            "for --compress",
        )
        .await?;
        if !ran.ok() {
            return Err(CliError::new(
                ErrorKind::Path,
                format!("cannot compress {path} in the guest: {}", ran.failure("gzip")),
            ));
        }
        let (handle, total) = self.open_for_reading(&packed, options).await?;
        let (mut writer, dest) = self.local_writer(target, guest_name(path)).await?;
        let chunk = chunks::for_reads(options.chunk_size, self.agent.through_libvirtd()) as u64;
        let progress = Progress::new(options.progress, total);
        let mut hasher = options.verify.then(Sha256::new);
        let mut decoder = GzDecoder::new(Vec::with_capacity(2 * UNPACK_STEP));
        let (mut received, mut unpacked) = (0u64, 0u64);
        let unpack_error = |e| CliError::new(ErrorKind::Verification, format!("cannot unpack {packed}: {e}"));
        let copied = async {
            loop {
                let (data, eof) = guest::read(self.agent, handle, chunk).await?;
                received += data.len() as u64;
                progress.advance(data.len() as u64);
                let last = eof || data.is_empty();
                for step in data.chunks(UNPACK_STEP) {
                    decoder.write_all(step).map_err(unpack_error)?;
                    let out = std::mem::take(decoder.get_mut());
                    if let Some(hasher) = &mut hasher {
                        hasher.update(&out);
                    }
                    unpacked += out.len() as u64;
                    writer
                        .write_all(&out)
                        .await
                        .map_err(|e| CliError::io("cannot write the local file", e))?;
                    // The buffer back, emptied, for the next step.
                    *decoder.get_mut() = out;
                    decoder.get_mut().clear();
                }
                if last {
                    decoder.try_finish().map_err(unpack_error)?;
                    let out = std::mem::take(decoder.get_mut());
                    if let Some(hasher) = &mut hasher {
                        hasher.update(&out);
                    }
                    unpacked += out.len() as u64;
                    writer
                        .write_all(&out)
                        .await
                        .map_err(|e| CliError::io("cannot write the local file", e))?;
                    return writer
                        .flush()
                        .await
                        .map_err(|e| CliError::io("cannot write the local file", e));
                }
            }
        }
        .await;
        if let Err(error) = copied {
            progress.abandon();
            return Err(error);
        }
        let size = guest::size(self.agent, handle).await?;
        self.left.handle = None;
        guest::close(self.agent, handle).await?;
        if size != received {
            return Err(size_mismatch(&packed, size, received));
        }
        let sha256 = match hasher {
            Some(hasher) => Some(self.check_sha256(path, hex(&hasher.finalize())).await?),
            None => None,
        };
        match guest::run(
            self.agent,
            "rm",
            &["-rf", &dir],
            "to remove its temporary directory",
        )
        .await
        {
            Ok(ran) if ran.ok() => self.left.guest_dir = None,
            Ok(ran) => tracing::warn!("{}; {dir} is left in the guest", ran.failure("rm")),
            Err(error) => tracing::warn!("{error}; {dir} is left in the guest"),
        }
        drop(writer);
        if let Some((temp, dest)) = dest {
            tokio::fs::rename(&temp, &dest)
                .await
                .map_err(|e| CliError::io(format!("cannot rename the copy to {}", dest.display()), e))?;
            self.left.local_temp = None;
        }
        progress.finish();
        Ok(Summary {
            bytes: unpacked,
            seconds: started.elapsed().as_secs_f64(),
            sha256,
        })
    }
}
