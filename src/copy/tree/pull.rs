//! `copy -r` out of the guest: `tar -c` followed as it writes, its stream
//! unpacked on the host by a thread as it arrives (see the
//! [module](super) docs).

use std::io::{self, Read};
use std::path::Path;
use std::time::{Duration, Instant};

use flate2::read::GzDecoder;
use tokio::sync::{mpsc, oneshot};
use virtomate_protocol::follow::{FollowError, FollowOptions, Stream};
use virtomate_protocol::qga::GuestExec;
use virtomate_protocol::PollSchedule;

use super::unpack::{Unpacked, Unpacker};
use super::{local_dest, not_a_guest_directory, TreeSummary};
use crate::copy::agent::FileAgent;
use crate::copy::location::guest_name;
use crate::copy::progress::Progress;
use crate::copy::{chunks, guest, local, output, random_name, stale, Copy, Options};
use crate::error::{CliError, ErrorKind};

/// `tar` in SRC (`$1`), its stream on standard output.
const TAR: &str = r#"cd -- "$1" && exec tar -c -f - ."#;

/// The same through `gzip -1`, with tar's exit status as the script's
/// (a pipeline's is its last program's): tar's goes out on fd 3.
const TAR_GZIP: &str = r#"cd -- "$1" || exit
exec 4>&1
status=$( { { tar -c -f - .; echo $? >&3; } | gzip -1 -c >&4; } 3>&1 )
exit "${status:-1}""#;

/// Chunks read from the guest and not yet unpacked: with the chunk size,
/// the memory a copy holds.
const QUEUED: usize = 4;

/// How often to look at tar's output while it runs (as `--compress` does
/// for gzip's).
const LOOKS: PollSchedule = PollSchedule {
    min_pause: Duration::from_millis(50),
    max_pause: Duration::from_millis(200),
    divisor: 5,
};

/// The most of tar's standard error kept for a message.
const SAID_MAX: usize = 4 << 10;

/// What the reading side hands the unpacking thread.
enum Piece {
    Data(Vec<u8>),
    /// tar exited 0 and all it wrote was sent.
    End,
}

type Outcome = Result<(Unpacker, Unpacked), CliError>;

impl<A: FileAgent> Copy<'_, A> {
    /// Copies the guest directory `path` to the local `dest` (or into it).
    pub async fn pull_tree(
        &mut self,
        path: &str,
        dest: &Path,
        options: &Options,
    ) -> Result<TreeSummary, CliError> {
        let started = Instant::now();
        let purpose = "to tell whether the source is a directory";
        if !guest::run(self.agent, "test", &["-d", path], purpose).await?.ok() {
            return Err(not_a_guest_directory(path));
        }
        self.check_tar().await?;
        if options.compress {
            self.check_gzip().await?;
        }
        let dest = local_dest(dest, guest_name(path))?;
        let unpacker = Unpacker::create(&dest, &random_name()?, local::umask())?;
        self.left.local_tree = Some(unpacker.temp().to_owned());
        let (pieces, outcome) = self.start_unpacking(unpacker, options.compress);

        let chunk = chunks::for_reads(options.chunk_size, self.agent.through_libvirtd()) as u64;
        let follow_options = FollowOptions {
            read_count: chunk,
            schedule: LOOKS,
        };
        let prepared = output::prepare(self.agent.channel(), follow_options, false).await;
        let follow = prepared.map_err(|e| self.tree_follow_error(e))?;
        self.left.guest_dir = Some(follow.dir().to_owned());
        let follow = self.left.follow.insert(follow);
        let script = if options.compress { TAR_GZIP } else { TAR };
        let tar = GuestExec::new("/bin/sh", ["-c", script, "sh", path]);
        let started_tar = self.agent.channel().guest_exec(&follow.redirect(tar)).await;
        let pid = started_tar.map_err(|e| self.agent.error(e))?.pid;
        self.left.program = Some(pid);
        self.left.program_name = Some("tar");

        let progress = Progress::new(options.progress, None);
        let streamed = self.stream(pid, pieces, &progress).await;
        let archive_bytes = match streamed {
            Ok(streamed) => streamed,
            Err(error) => {
                progress.abandon();
                return Err(self.unpacking_error(outcome, error).await);
            }
        };
        self.left.program = None;
        let ended = outcome
            .await
            .unwrap_or_else(|_| Err(CliError::new(ErrorKind::Io, "the unpacking thread ended")));
        self.finish_unpacking().await;
        let (unpacker, unpacked) = ended.inspect_err(|_| progress.abandon())?;
        let parent = unpacker.temp().parent().map(Path::to_owned);
        unpacker.place()?;
        self.left.local_tree = None;
        // With it, what killed copies left beside it goes.
        if let Some(parent) = parent {
            stale::remove_stale_local(&parent);
        }
        progress.finish();
        Ok(TreeSummary {
            dest: dest.display().to_string(),
            files: unpacked.files + unpacked.hard_links,
            directories: unpacked.directories,
            symlinks: unpacked.symlinks,
            bytes: unpacked.bytes,
            archive_bytes,
            seconds: started.elapsed().as_secs_f64(),
            stripped: stripped_list(unpacked.stripped, unpacked.stripped_more),
        })
    }

    /// The thread that unpacks what `pieces` brings; its outcome comes on
    /// the receiver, and [`Copy::clean_up`] can wait for it to end.
    fn start_unpacking(
        &mut self,
        mut unpacker: Unpacker,
        compressed: bool,
    ) -> (mpsc::Sender<Piece>, oneshot::Receiver<Outcome>) {
        let (pieces, receiver) = mpsc::channel(QUEUED);
        let (tell, outcome) = oneshot::channel();
        let thread = tokio::task::spawn_blocking(move || {
            let mut stream = PieceReader {
                receiver,
                current: Vec::new(),
                at: 0,
                ended: false,
            };
            let unpacked = match compressed {
                true => unpacker.unpack(GzDecoder::new(&mut stream)),
                false => unpacker.unpack(&mut stream),
            };
            // What follows the archive (or gzip's stream) is read to the
            // end, so that the sender is never left blocked.
            let unpacked = unpacked.and_then(|unpacked| {
                io::copy(&mut stream, &mut io::sink())
                    .map_err(|e| CliError::io("the copy stopped", e))
                    .map(|_| unpacked)
            });
            // On an error the unpacker is dropped here, in the thread: its
            // directory is removed before the thread ends.
            let _ = tell.send(unpacked.map(|unpacked| (unpacker, unpacked)));
        });
        self.left.unpacking = Some(thread);
        (pieces, outcome)
    }

    /// Waits for the unpacking thread to have ended (its directory removed
    /// if it failed).
    pub(in crate::copy) async fn finish_unpacking(&mut self) {
        if let Some(thread) = self.left.unpacking.take() {
            let _ = thread.await;
        }
    }

    /// The error to report once streaming failed: the unpacker's, when it
    /// refused the stream (and so stopped taking it), else `error`.
    async fn unpacking_error(&mut self, outcome: oneshot::Receiver<Outcome>, error: CliError) -> CliError {
        if !error.to_string().contains(UNPACKER_STOPPED) {
            return error;
        }
        self.finish_unpacking().await;
        match outcome.await {
            Ok(Err(refused)) => refused,
            _ => error,
        }
    }

    /// Reads tar's output until it has exited, handing it to the unpacker;
    /// the bytes read.
    async fn stream(
        &mut self,
        pid: i64,
        pieces: mpsc::Sender<Piece>,
        progress: &Progress,
    ) -> Result<u64, CliError> {
        let mut said = Vec::new();
        let mut total = 0u64;
        let mut watched = output::Watched::new(pid, LOOKS);
        let ended = loop {
            let mut data = Vec::new();
            let follow = self.left.follow.as_mut().expect("prepared before");
            let channel = self.agent.channel();
            let read = output::look(
                follow,
                channel,
                watched.has_ended(),
                &mut data,
                &mut said,
                SAID_MAX,
            );
            let (read, more) = read.await.map_err(|e| self.tree_follow_error(e))?;
            if !data.is_empty() {
                total += data.len() as u64;
                progress.advance(data.len() as u64);
                if pieces.send(Piece::Data(data)).await.is_err() {
                    return Err(CliError::new(ErrorKind::Verification, UNPACKER_STOPPED));
                }
            }
            if let Some(ended) = watched.after_look(self.agent, read, more).await? {
                break ended;
            }
        };
        self.left.program = None;
        if ended.exitcode != Some(0) {
            let ran = guest::Ran {
                exit_code: ended.exitcode,
                stdout: Vec::new(),
                stderr: String::from_utf8_lossy(&said).into_owned(),
            };
            return Err(CliError::new(
                ErrorKind::Path,
                format!("cannot pack the directory in the guest: {}", ran.failure("tar")),
            ));
        }
        self.check_whole().await?;
        // A thread that has ended already (gzip's stream is over) needs
        // no end.
        let _ = pieces.send(Piece::End).await;
        Ok(total)
    }

    /// Whether all of tar's output came: its exit status cannot tell when
    /// the reader of its output in the guest was killed, or failed, with
    /// the last of the archive in hand. A plain archive that stops at an
    /// entry's end reads as whole, so the stream's end mark decides.
    async fn check_whole(&mut self) -> Result<(), CliError> {
        let Some(mut follow) = self.left.follow.take() else {
            return Ok(());
        };
        match follow.clean_up(self.agent.channel()).await {
            Ok(()) => self.left.guest_dir = None,
            // Only tar's messages are missing.
            Err(FollowError::Lost {
                stream: Stream::Stderr,
                ..
            }) => self.left.guest_dir = None,
            Err(cut @ (FollowError::Full { .. } | FollowError::Lost { .. })) => {
                self.left.guest_dir = None;
                return Err(self.tree_follow_error(cut));
            }
            Err(error) => tracing::warn!("{error}; {} may be left in the guest", follow.dir()),
        }
        Ok(())
    }
}

/// The names listed, and a last item that counts the rest.
fn stripped_list(mut listed: Vec<String>, more: u64) -> Vec<String> {
    if more > 0 {
        listed.push(format!("... and {more} more"));
    }
    listed
}

/// The message of a copy whose unpacker stopped taking the stream.
const UNPACKER_STOPPED: &str = "the unpacker stopped taking the guest's archive";

/// The pieces as one stream, for the unpacker. A sender gone before
/// [`Piece::End`] is an error, never the end of the archive: a copy that
/// stopped must not look complete.
struct PieceReader {
    receiver: mpsc::Receiver<Piece>,
    current: Vec<u8>,
    at: usize,
    ended: bool,
}

impl Read for PieceReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.at < self.current.len() {
                let n = buf.len().min(self.current.len() - self.at);
                buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
                self.at += n;
                return Ok(n);
            }
            if self.ended {
                return Ok(0);
            }
            match self.receiver.blocking_recv() {
                Some(Piece::Data(data)) => (self.current, self.at) = (data, 0),
                Some(Piece::End) => self.ended = true,
                None => return Err(io::Error::other("the copy stopped before the archive ended")),
            }
        }
    }
}
