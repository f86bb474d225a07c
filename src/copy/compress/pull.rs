//! `--compress` out of the guest: gzip's output read while it is written,
//! unpacked on the host step by step (see the [module](super) docs).

use std::io::Write;
use std::time::{Duration, Instant};

use flate2::write::GzDecoder;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use virtomate_protocol::follow::{FollowError, FollowOptions};
use virtomate_protocol::qga::GuestExec;
use virtomate_protocol::{hex, PollSchedule};

use crate::copy::agent::FileAgent;
use crate::copy::location::guest_name;
use crate::copy::progress::Progress;
use crate::copy::{chunks, guest, output, Copy, Options, Summary, Target};
use crate::error::{CliError, ErrorKind};

/// How much compressed data the host unpacks at a time: what it produces
/// from that is bounded by gzip's largest ratio (about 1:1032).
const UNPACK_STEP: usize = 8 << 10;

/// How often to look at gzip's output while it runs: seldom enough that
/// the agent's work for the looks (three exchanges each) takes little
/// from gzip on a guest with one CPU, often enough that the output does
/// not pile up far ahead of the transfer.
const LOOKS: PollSchedule = PollSchedule {
    min_pause: Duration::from_millis(100),
    max_pause: Duration::from_millis(200),
    divisor: 5,
};

impl<A: FileAgent> Copy<'_, A> {
    pub(in crate::copy) async fn pull_compressed(
        &mut self,
        path: &str,
        target: Target,
        options: &Options,
    ) -> Result<Summary, CliError> {
        let started = Instant::now();
        let mode = self.source_mode(path).await?;
        self.check_gzip().await?;
        let chunk = chunks::for_reads(options.chunk_size, self.agent.through_libvirtd()) as u64;
        let follow_options = FollowOptions {
            read_count: chunk,
            schedule: LOOKS,
        };
        let prepared = output::prepare(self.agent.channel(), follow_options, false).await;
        let follow = prepared.map_err(|e| self.follow_error(e))?;
        self.left.guest_dir = Some(follow.dir().to_owned());
        let follow = self.left.follow.insert(follow);
        // gzip's output is read while it is written: the transfer and the
        // guest's compressing overlap.
        let gzip = GuestExec::new("/bin/sh", ["-c", "gzip -1 -c < \"$1\"", "sh", path]);
        let started_gzip = self.agent.channel().guest_exec(&follow.redirect(gzip)).await;
        let pid = started_gzip.map_err(|e| self.agent.error(e))?.pid;
        self.left.program = Some(pid);

        let (mut writer, dest) = self.local_writer(target, guest_name(path), mode).await?;
        let progress = Progress::new(options.progress, None);
        let mut hasher = options.verify.then(Sha256::new);
        let mut unpacker = Unpacker::new(&packed_name(path));
        let mut said = Vec::new();
        let copied = async {
            let mut watched = output::Watched::new(pid, follow_options.schedule);
            loop {
                let mut packed = Vec::new();
                let follow = self.left.follow.as_mut().expect("prepared above");
                let channel = self.agent.channel();
                let read = output::look(
                    follow,
                    channel,
                    watched.has_ended(),
                    &mut packed,
                    &mut said,
                    GZIP_SAID_MAX,
                );
                let (read, more) = read.await.map_err(|e| self.follow_error(e))?;
                progress.advance(packed.len() as u64);
                // Step by step, each step's output written before the next:
                // a guest's stream that unpacks to much more is never whole
                // in memory.
                for step in packed.chunks(UNPACK_STEP) {
                    let out = unpacker.step(step)?;
                    if let Some(hasher) = &mut hasher {
                        hasher.update(&out);
                    }
                    writer
                        .write_all(&out)
                        .await
                        .map_err(|e| CliError::io("cannot write the local file", e))?;
                }
                if let Some(ended) = watched.after_look(self.agent, read, more).await? {
                    break Ok(ended);
                }
            }
        }
        .await;
        let ended = match copied {
            Ok(ended) => ended,
            Err(error) => {
                progress.abandon();
                return Err(error);
            }
        };
        self.left.program = None;
        if ended.exitcode != Some(0) {
            progress.abandon();
            let ran = guest::Ran {
                exit_code: ended.exitcode,
                stdout: Vec::new(),
                stderr: String::from_utf8_lossy(&said).into_owned(),
            };
            let failed = format!("cannot compress {path} in the guest: {}", ran.failure("gzip"));
            // Its output's file system may have filled up, or the reader of
            // its output ended early (and then its message is lost): the
            // clean-up tells.
            if let Some(mut follow) = self.left.follow.take() {
                match follow.clean_up(self.agent.channel()).await {
                    Err(full @ (FollowError::Full { .. } | FollowError::Lost { .. })) => {
                        self.left.guest_dir = None;
                        return Err(CliError::new(
                            ErrorKind::AgentCommand,
                            format!("{failed}: {full}"),
                        ));
                    }
                    Ok(()) => self.left.guest_dir = None,
                    Err(_) => {}
                }
            }
            return Err(CliError::new(ErrorKind::Path, failed));
        }
        let out = unpacker.finish()?;
        if let Some(hasher) = &mut hasher {
            hasher.update(&out);
        }
        writer
            .write_all(&out)
            .await
            .and(writer.flush().await)
            .map_err(|e| CliError::io("cannot write the local file", e))?;
        let sha256 = match hasher {
            Some(hasher) => Some(self.check_sha256(path, hex(&hasher.finalize())).await?),
            None => None,
        };
        if let Some(mut follow) = self.left.follow.take() {
            match follow.clean_up(self.agent.channel()).await {
                Ok(()) => self.left.guest_dir = None,
                Err(error) => tracing::warn!("{error}; {} may be left in the guest", follow.dir()),
            }
        }
        drop(writer);
        self.put_local_in_place(dest).await?;
        progress.finish();
        Ok(Summary {
            bytes: unpacker.unpacked,
            seconds: started.elapsed().as_secs_f64(),
            sha256,
        })
    }

    /// Following gzip's output failed: the agent's error in the user's
    /// terms, or what the guest lacked.
    fn follow_error(&self, error: FollowError) -> CliError {
        match error {
            FollowError::Agent(error) => guest::file_error(self.agent, error),
            other => CliError::new(ErrorKind::AgentCommand, format!("--compress: {other}")).with_hint(
                "--compress out of the guest reads gzip's output from a private directory under \
                 $TMPDIR or /tmp there, with /bin/sh; copy without --compress",
            ),
        }
    }
}

/// The most of gzip's standard error kept for a message.
const GZIP_SAID_MAX: usize = 4 << 10;

/// The name a message gives the compressed stream of `path`.
fn packed_name(path: &str) -> String {
    format!("gzip's output of {path}")
}

/// Unpacks gzip's output as it comes, a few KiB at a time: what comes out
/// of one step is bounded by deflate's largest ratio (about 1:1032).
struct Unpacker {
    decoder: GzDecoder<Vec<u8>>,
    name: String,
    unpacked: u64,
}

impl Unpacker {
    fn new(name: &str) -> Unpacker {
        Unpacker {
            decoder: GzDecoder::new(Vec::with_capacity(2 * UNPACK_STEP)),
            name: name.to_owned(),
            unpacked: 0,
        }
    }

    /// What `step` (at most [`UNPACK_STEP`] bytes) unpacks to.
    fn step(&mut self, step: &[u8]) -> Result<Vec<u8>, CliError> {
        self.decoder.write_all(step).map_err(|e| self.error(e))?;
        let out = std::mem::take(self.decoder.get_mut());
        self.unpacked += out.len() as u64;
        Ok(out)
    }

    /// The rest, once the stream has ended; an error if it was cut short
    /// or its checksum differs.
    fn finish(&mut self) -> Result<Vec<u8>, CliError> {
        self.decoder.try_finish().map_err(|e| self.error(e))?;
        let out = std::mem::take(self.decoder.get_mut());
        self.unpacked += out.len() as u64;
        Ok(out)
    }

    fn error(&self, error: std::io::Error) -> CliError {
        CliError::new(
            ErrorKind::Verification,
            format!("cannot unpack {}: {error}", self.name),
        )
    }
}
