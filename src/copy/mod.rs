//! Copying one file into or out of a guest, through the agent's
//! `guest-file-*` commands, in chunks: the core of `virtomate copy`, made
//! to be driven by other commands too (a session carrying copies).
//!
//! # Layout
//!
//! - `location`: `DOMAIN:/PATH`, a local path or `-`.
//! - `chunks`: how much one request carries.
//! - `guest`: the guest's files and the programs run there.
//! - `local`: the host's file, read, or written under a temporary name.
//! - `progress`: the bar on stderr.
//! - `compress`: `--compress`, gzip on the host and in the guest.
//! - `tree`: `copy -r`, a directory tree as a tar stream, unpacked on
//!   the host without trusting the guest.
//! - `cut_off`: the clean-up of a copy whose VM stopped under it.
//!
//! # Writing into the guest
//!
//! `guest-file-open` with mode `w` follows a symbolic link to an existing
//! file and truncates it, and creates a file `rw-rw-rw-` whatever the
//! umask. So the data goes to `DIR/.virtomate-RANDOM/data`, where DIR is
//! the destination's directory and RANDOM 128 random bits: the directory is
//! made by `mkdir -m 700` (which fails on anything already there, a planted
//! link included), so only root can reach the file, and the file is
//! `chmod`ed to its final mode before the first byte is written. Once
//! complete (and its size, or with `--verify` its SHA-256, checked), `mv
//! -f -T` renames it over the destination — a link there is replaced, not
//! followed — and the directory is removed. The guest needs `guest-exec`
//! and the programs `test`, `mkdir`, `chmod`, `mv`, `rmdir` and `rm` (and
//! `sha256sum` for `--verify`); without them nothing is written.
//!
//! # Failing
//!
//! A copy that fails or is interrupted keeps what it left in
//! [`Copy::clean_up`]'s reach: the open handle is closed, the temporary
//! directory (or the local temporary file) removed; the destination is
//! never touched before the rename. What could not be cleaned up is said.

mod agent;
pub mod chunks;
mod compress;
mod cut_off;
mod guest;
mod local;
pub mod location;
mod output;
pub mod progress;
mod stale;
mod tree;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use virtomate_protocol::feed::Feed;
use virtomate_protocol::follow::{Follow, FollowError};
use virtomate_protocol::{hex, stop_group, AnyAgent, Error as AgentError, Phase, Settling, StopScope};

pub use self::agent::{FileAgent, LentChannel};
pub use self::guest::random_name;
use self::guest::{DirKind, Handle};
use self::local::Dest;
pub use self::local::Source;
use self::location::{guest_name, guest_parent};
use self::progress::{Progress, Show};
pub use self::tree::TreeSummary;
use crate::error::{CliError, ErrorKind};

/// How to copy.
#[derive(Debug, Clone)]
pub struct Options {
    /// Bytes per request (see [`chunks`]); the default when `None`.
    pub chunk_size: Option<usize>,
    /// The guest file's mode; by default the local file's, or `0600` for
    /// standard input.
    pub mode: Option<u32>,
    /// Compare SHA-256 sums, not just sizes.
    pub verify: bool,
    /// gzip on the host, `gzip` in the guest (see [`compress`]).
    pub compress: bool,
    pub progress: Show,
}

/// What a successful copy reports.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub bytes: u64,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// Where a copy out of the guest writes.
pub enum Target {
    /// A local file (or directory to put it in).
    Path(PathBuf),
    /// A stream written as it comes: standard output, a session's stream.
    Stream(Box<dyn AsyncWrite + Unpin + Send>),
}

/// What a copy has made that is not in place yet.
#[derive(Debug, Default)]
struct Leftovers {
    handle: Option<Handle>,
    /// The file written under the temporary directory, for `truncate`.
    guest_temp: Option<String>,
    guest_dir: Option<String>,
    local_temp: Option<PathBuf>,
    /// A program of the copy's running in the guest (`--compress`'s gzip).
    program: Option<i64>,
    /// Its name, for messages, when it is not gzip (`copy -r`'s tar).
    program_name: Option<&'static str>,
    /// The output files of that program, open in the agent.
    follow: Option<Follow>,
    /// `copy -r` out: the thread unpacking the guest's stream, and the
    /// private directory it writes (which it removes if it fails).
    unpacking: Option<tokio::task::JoinHandle<()>>,
    local_tree: Option<PathBuf>,
    /// `copy -r` in: the private directory beside the destination in the
    /// guest that holds the unpacked tree, and the pipe into its `tar`.
    guest_tree: Option<String>,
    feed: Option<Feed>,
}

/// What a copy out writes to: a local file or a stream.
type LocalWriter = Box<dyn AsyncWrite + Unpin + Send>;

/// A copy out's local temporary file, to put in place once complete.
struct LocalPlace {
    temp: PathBuf,
    dest: PathBuf,
    /// The temporary file, to set its mode through.
    file: tokio::fs::File,
    /// The guest file's permission bits, when known.
    mode: Option<u32>,
}

/// One copy on an agent; after a failure (or when its future was dropped
/// on an interruption), [`Copy::clean_up`] removes what it left.
pub struct Copy<'a, A: FileAgent> {
    agent: &'a mut A,
    left: Leftovers,
    /// The channel's steps whose reply a caller giving up awaits.
    settling: Settling,
}

/// The mode of a guest file written from standard input, which has none.
const STDIN_MODE: u32 = 0o600;

impl<'a, A: FileAgent> Copy<'a, A> {
    pub fn new(agent: &'a mut A) -> Copy<'a, A> {
        let settling = agent.channel().settling();
        Copy {
            agent,
            left: Leftovers::default(),
            settling,
        }
    }

    /// Whether a step of this copy's awaits a reply that names what the
    /// agent keeps (a file's handle, a directory made): for whoever gives
    /// the copy up, to let it end first (see [`Settling`]).
    pub fn settling(&self) -> Settling {
        self.settling.clone()
    }

    /// Opens the guest file `path` (`mode` as `guest-file-open` takes it)
    /// and keeps its handle for the clean-up, before the open counts as
    /// ended.
    async fn open(&mut self, path: &str, mode: &str) -> Result<Handle, CliError> {
        let step = self.settling.begin(OPENING);
        let handle = guest::open(self.agent, path, mode).await?;
        self.left.handle = Some(handle);
        drop(step);
        self.settling.hold_if_given_up().await;
        Ok(handle)
    }

    /// Copies `source` to `path` in the guest (into it, with the source's
    /// name, when it is a directory or ends with `/`).
    pub async fn push(
        &mut self,
        mut source: Source,
        path: &str,
        options: &Options,
    ) -> Result<Summary, CliError> {
        if options.compress {
            return self.push_compressed(source, path, options).await;
        }
        let started = Instant::now();
        let target = self.guest_target(path, source.name.as_deref()).await?;
        let mode = options.mode.or(source.mode).unwrap_or(STDIN_MODE);
        let dir = self.private_dir(guest_parent(&target)).await?;
        let temp = format!("{dir}/data");
        let handle = self.open(&temp, "w").await?;
        self.left.guest_temp = Some(temp.clone());
        // Before the first byte: the file's own mode, not the agent's 0666.
        self.set_mode(&temp, mode).await?;

        let chunk = chunks::for_writes(options.chunk_size, self.agent.through_libvirtd());
        let progress = Progress::new(options.progress, source.len);
        let mut hasher = options.verify.then(Sha256::new);
        let mut buf = Vec::with_capacity(chunk);
        let mut sent = 0u64;
        let copied = async {
            loop {
                source.read_chunk(&mut buf, chunk).await?;
                if buf.is_empty() {
                    return Ok(());
                }
                if let Some(hasher) = &mut hasher {
                    hasher.update(&buf);
                }
                let len = buf.len() as u64;
                buf = guest::write(self.agent, handle, std::mem::take(&mut buf), sent).await?;
                sent += len;
                progress.advance(len);
            }
        }
        .await;
        if let Err(error) = copied {
            progress.abandon();
            return Err(error);
        }
        let size = self.size_and_close(handle).await?;
        if size != sent {
            return Err(size_mismatch(&temp, size, sent));
        }
        let sha256 = self.put_in_place(hasher, &temp, &target, &dir).await?;
        progress.finish();
        Ok(Summary {
            bytes: sent,
            seconds: started.elapsed().as_secs_f64(),
            sha256,
        })
    }

    /// The size of the open guest file `handle`, which is then closed.
    /// A size that cannot be had (a flush onto a full disk) leaves the
    /// handle to [`Copy::clean_up`], which empties the file first. Closed
    /// once only, whatever the agent answers: qemu-ga keeps a handle whose
    /// close failed, and a second close would use a freed FILE.
    async fn size_and_close(&mut self, handle: Handle) -> Result<u64, CliError> {
        let size = guest::size(self.agent, handle).await?;
        self.left.handle = None;
        guest::close(self.agent, handle).await?;
        Ok(size)
    }

    /// Sets the mode of the guest file `path` (`chmod`).
    async fn set_mode(&mut self, path: &str, mode: u32) -> Result<(), CliError> {
        let mode_text = format!("{mode:o}");
        let chmod = guest::run(self.agent, "chmod", &[&mode_text, path], "to set the file's mode").await?;
        match chmod.ok() {
            true => Ok(()),
            false => Err(CliError::new(ErrorKind::AgentCommand, chmod.failure("chmod"))),
        }
    }

    /// Gives the complete local temporary file its mode (see
    /// [`local::final_mode`]) and renames it to its destination (when the
    /// copy went to a file, not a stream).
    async fn put_local_in_place(&mut self, place: Option<LocalPlace>) -> Result<(), CliError> {
        if let Some(LocalPlace {
            temp,
            dest,
            file,
            mode,
        }) = place
        {
            let mode = local::final_mode(&dest, mode);
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .await
                .map_err(|e| CliError::io(format!("cannot set the mode of {}", temp.display()), e))?;
            drop(file);
            tokio::fs::rename(&temp, &dest)
                .await
                .map_err(|e| CliError::io(format!("cannot rename the copy to {}", dest.display()), e))?;
            self.left.local_temp = None;
            // With it, what killed copies left beside it goes.
            if let Some(parent) = temp.parent() {
                stale::remove_stale_local(parent);
            }
        }
        Ok(())
    }

    /// Makes `PARENT/.virtomate-RANDOM`, mode 0700, and keeps it for the
    /// clean-up.
    async fn private_dir(&mut self, parent: &str) -> Result<String, CliError> {
        // Tagged with this process, so that a later copy can remove it if
        // this one is killed (see `stale`).
        let tag = stale::own_tag().map(|tag| format!("-{tag}")).unwrap_or_default();
        let dir = format!(
            "{}/.virtomate-{}{tag}",
            parent.trim_end_matches('/'),
            random_name()?
        );
        // Kept for the clean-up before it is made: a copy given up while
        // `mkdir` runs awaits its end (see `settling`), and the clean-up's
        // `rm -rf` removes what it made, if anything.
        let step = self.settling.begin(MAKING_DIR);
        self.left.guest_dir = Some(dir.clone());
        let made = guest::run(
            self.agent,
            "mkdir",
            &["-m", "700", &dir],
            "to make a private directory beside the destination",
        )
        .await;
        drop(step);
        self.settling.hold_if_given_up().await;
        let made = match made {
            // Refused by the agent: nothing ran, nothing was made.
            Err(error) if error.kind() == ErrorKind::AgentCommand => {
                self.left.guest_dir = None;
                return Err(error);
            }
            made => made?,
        };
        if !made.ok() {
            self.left.guest_dir = None;
            return Err(mkdir_failure(parent, &made));
        }
        Ok(dir)
    }

    /// The complete `temp` in the guest: its sum checked (with `hasher`),
    /// renamed to `target`, `dir` removed. The sum, when checked.
    async fn put_in_place(
        &mut self,
        hasher: Option<Sha256>,
        temp: &str,
        target: &str,
        dir: &str,
    ) -> Result<Option<String>, CliError> {
        let sha256 = match hasher {
            Some(hasher) => Some(self.check_sha256(temp, hex(&hasher.finalize())).await?),
            None => None,
        };
        let moved = guest::run(
            self.agent,
            "mv",
            &["-f", "-T", temp, target],
            "to rename the complete file into place",
        )
        .await?;
        if !moved.ok() {
            return Err(CliError::new(ErrorKind::AgentCommand, moved.failure("mv")));
        }
        self.left.guest_temp = None;
        // The file is in place: an empty directory is all that is left.
        // With it, what killed copies left beside it goes (see `stale`).
        let parent = guest_parent(target);
        let script = ["-c", stale::RMDIR_AND_LIST, "sh", dir, parent];
        let removed = match guest::run(self.agent, "/bin/sh", &script, REMOVE_TEMPORARY).await {
            Err(error) if error.kind() == ErrorKind::AgentCommand => {
                guest::run(self.agent, "rmdir", &[dir], REMOVE_TEMPORARY).await
            }
            ran => ran,
        };
        match removed {
            Ok(ran) if ran.ok() => {
                self.left.guest_dir = None;
                self.remove_stale(parent, &ran.stdout).await;
            }
            Ok(ran) => tracing::warn!("{}; {dir} is left in the guest", ran.failure("rmdir")),
            Err(error) => tracing::warn!("{error}; {dir} is left in the guest"),
        }
        Ok(sha256)
    }

    /// Removes, of the directories `listed` in the guest's `parent`, those
    /// of killed copies; what cannot be removed stays, said in the log.
    async fn remove_stale(&mut self, parent: &str, listed: &[u8]) {
        let listed = String::from_utf8_lossy(listed);
        let stale: Vec<&str> = listed.lines().filter(|name| stale::is_stale(name)).collect();
        if stale.is_empty() {
            return;
        }
        let mut args = vec!["-c", stale::REMOVE_STALE, "sh", parent];
        args.extend(&stale);
        let purpose = "to remove what killed copies left";
        match guest::run(self.agent, "/bin/sh", &args, purpose).await {
            Ok(ran) if ran.ok() => tracing::info!("removed in {parent} what killed copies left: {stale:?}"),
            Ok(ran) => tracing::warn!("{}; {stale:?} may be left in {parent}", ran.failure("sh")),
            Err(error) => tracing::warn!("{error}; {stale:?} may be left in {parent}"),
        }
    }

    /// The guest file to write: `path`, or `path/NAME` when `path` ends
    /// with `/` or is a directory. A link to a directory is refused rather
    /// than replaced or followed; so is a directory at `path/NAME`, before
    /// anything is sent.
    async fn guest_target(&mut self, path: &str, name: Option<&str>) -> Result<String, CliError> {
        let into_dir = path.ends_with('/')
            || match guest::directory_kind(self.agent, path).await? {
                DirKind::NotADirectory => false,
                DirKind::Directory => true,
                DirKind::LinkToDirectory => {
                    return Err(CliError::new(
                        ErrorKind::Path,
                        format!("{path} is a symbolic link to a directory in the guest"),
                    )
                    .with_hint(format!("write {path}/ to copy into that directory")))
                }
            };
        if !into_dir {
            return Ok(path.to_owned());
        }
        let Some(name) = name else {
            return Err(CliError::new(
                ErrorKind::Path,
                format!(
                    "{path} is a directory in the guest, and standard input has no name: give the \
                     file's path"
                ),
            ));
        };
        let target = format!("{}/{name}", path.trim_end_matches('/'));
        // `mv -T` would fail on it only once all is sent.
        match guest::directory_kind(self.agent, &target).await? {
            DirKind::NotADirectory => Ok(target),
            DirKind::Directory => Err(CliError::new(
                ErrorKind::Path,
                format!("{target} is a directory in the guest; copy writes one file"),
            )
            .with_hint("remove it first, or give the file another name")),
            DirKind::LinkToDirectory => Err(CliError::new(
                ErrorKind::Path,
                format!("{target} is a symbolic link to a directory in the guest"),
            )
            .with_hint(format!("write {target}/ to copy into that directory"))),
        }
    }

    /// Opens the guest file `path` for reading, and asks its size where a
    /// progress bar shows it: two requests, which on a slow guest a copy
    /// without a bar does not pay.
    async fn open_for_reading(
        &mut self,
        path: &str,
        options: &Options,
    ) -> Result<(Handle, Option<u64>), CliError> {
        let handle = self.open(path, "r").await?;
        let total = if options.progress.shows() {
            let size = guest::size(self.agent, handle).await?;
            guest::rewind(self.agent, handle).await?;
            Some(size)
        } else {
            None
        };
        Ok((handle, total))
    }

    /// Where what is read goes: a temporary file beside the local
    /// destination (put in place at the end: the [`LocalPlace`] returned),
    /// or the stream itself. `mode` is the guest file's, when known.
    async fn local_writer(
        &mut self,
        target: Target,
        name: Option<&str>,
        mode: Option<u32>,
    ) -> Result<(LocalWriter, Option<LocalPlace>), CliError> {
        match target {
            Target::Path(local) => {
                let dest = Dest::create(&local, name, &random_name()?)?;
                self.left.local_temp = Some(dest.temp.clone());
                let file =
                    dest.file.try_clone().await.map_err(|e| {
                        CliError::io(format!("cannot use the file {}", dest.temp.display()), e)
                    })?;
                let writer = tokio::io::BufWriter::with_capacity(1 << 20, dest.file);
                let place = LocalPlace {
                    temp: dest.temp,
                    dest: dest.dest,
                    file,
                    mode,
                };
                Ok((Box::new(writer), Some(place)))
            }
            Target::Stream(stream) => Ok((stream, None)),
        }
    }

    /// Copies the guest file `path` to `target`.
    pub async fn pull(&mut self, path: &str, target: Target, options: &Options) -> Result<Summary, CliError> {
        if options.compress {
            return self.pull_compressed(path, target, options).await;
        }
        let started = Instant::now();
        let mode = self.source_mode(path).await?;
        let (handle, total) = self.open_for_reading(path, options).await?;
        let (mut writer, dest) = self.local_writer(target, guest_name(path), mode).await?;
        let chunk = chunks::for_reads(options.chunk_size, self.agent.through_libvirtd()) as u64;
        let progress = Progress::new(options.progress, total);
        let mut hasher = options.verify.then(Sha256::new);
        let mut received = 0u64;
        let copied = async {
            loop {
                let (data, eof) = guest::read(self.agent, handle, chunk, received)
                    .await
                    .map_err(|e| directory_read(e, path))?;
                if let Some(hasher) = &mut hasher {
                    hasher.update(&data);
                }
                writer
                    .write_all(&data)
                    .await
                    .map_err(|e| CliError::io("cannot write the local file", e))?;
                received += data.len() as u64;
                progress.advance(data.len() as u64);
                if eof || data.is_empty() {
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
        let size = self.size_and_close(handle).await?;
        // A file of /proc or /sys says 0 and has content: no size to check.
        if size != 0 && size != received {
            return Err(size_mismatch(path, size, received));
        }
        let sha256 = match hasher {
            Some(hasher) => Some(self.check_sha256(path, hex(&hasher.finalize())).await?),
            None => None,
        };
        drop(writer);
        self.put_local_in_place(dest).await?;
        progress.finish();
        Ok(Summary {
            bytes: received,
            seconds: started.elapsed().as_secs_f64(),
            sha256,
        })
    }

    /// The permission bits of the guest file `path` to copy out, when the
    /// guest can tell them; an error, before the file is opened, when it is
    /// not a regular file (a FIFO would block or never end).
    async fn source_mode(&mut self, path: &str) -> Result<Option<u32>, CliError> {
        let Some(mode) = guest::file_mode(self.agent, path).await? else {
            return Ok(None);
        };
        guest::regular_file(path, mode)?;
        Ok(Some(mode & 0o7777))
    }

    /// Compares `expected` with what `sha256sum` computes of `path` in the
    /// guest; the sum, when they agree.
    async fn check_sha256(&mut self, path: &str, expected: String) -> Result<String, CliError> {
        let cannot = |why: String| {
            CliError::new(
                ErrorKind::Verification,
                format!("--verify: the guest cannot compute a SHA-256 of {path}: {why}"),
            )
            .with_hint("install sha256sum (coreutils or busybox) in the guest, or copy without --verify")
        };
        let ran = guest::run(self.agent, "sha256sum", &[path], "for --verify")
            .await
            .map_err(|e| match e.kind() {
                ErrorKind::AgentCommand => cannot(e.to_string()),
                _ => e,
            })?;
        if !ran.ok() {
            return Err(cannot(ran.failure("sha256sum")));
        }
        let found = ran
            .stdout
            .get(..64)
            .map(|h| String::from_utf8_lossy(h).into_owned());
        match found {
            Some(sum) if sum == expected => Ok(expected),
            Some(sum) if sum.bytes().all(|b| b.is_ascii_hexdigit()) => Err(CliError::new(
                ErrorKind::Verification,
                format!("SHA-256 differs: {expected} on the host, {sum} in the guest ({path})"),
            )),
            _ => Err(cannot("sha256sum printed no sum".to_owned())),
        }
    }

    /// Removes what a failed or interrupted copy left, as far as the agent
    /// still lets it, and says what is left where.
    pub async fn clean_up(&mut self) -> String {
        let mut done = Vec::new();
        let mut left = Vec::new();
        let name = self.left.program_name.unwrap_or("gzip");
        // A program the agent no longer knows (it restarted) cannot be
        // stopped by it: it ends with its pipes, closed below.
        let mut unknown = None;
        if let Some(pid) = self.left.program.take() {
            let stopped = match self.agent_for_clean_up().await {
                Ok(agent) => stop_group(agent, pid, PROGRAM_GRACE, StopScope::Tree).await,
                Err(error) => Err(error),
            };
            match stopped {
                Ok(_) => done.push(format!("stopped {name} (pid {pid}) in the guest")),
                Err(AgentError::Agent { .. }) if self.left.follow.is_some() => unknown = Some(pid),
                Err(e) => left.push(format!("{name} may still run in the guest as pid {pid} ({e})")),
            }
        }
        if let Some(mut feed) = self.left.feed.take() {
            if let Err(e) = feed.close(self.agent.channel()).await {
                match guest::file_error(self.agent, e) {
                    // The agent restarted or went away: it holds no pipe of ours.
                    e if e.kind() == ErrorKind::AgentDisconnected => {}
                    e => left.push(format!("the agent may keep the pipe into {name} open ({e})")),
                }
            }
        }
        if let Some(mut follow) = self.left.follow.take() {
            match follow.clean_up(self.agent.channel()).await {
                Ok(()) => {
                    done.push(format!("removed the temporary {} in the guest", follow.dir()));
                    self.left.guest_dir = None;
                }
                Err(FollowError::Full { .. } | FollowError::Lost { .. }) => self.left.guest_dir = None,
                // The directory below is removed again, or named as left.
                Err(_) => {}
            }
        }
        if let Some(pid) = unknown {
            match self.ended_with_its_pipes(pid).await {
                true => done.push(format!("{name} (pid {pid}) ended in the guest")),
                false => left.push(format!(
                    "{name} may still run in the guest as pid {pid} (its agent restarted, and the new one \
                     does not know it)"
                )),
            }
        }
        if let (Some(_), Some(temp)) = (self.left.handle, self.left.guest_temp.clone()) {
            // Emptied first: a close that flushes onto a full disk would
            // fail, and qemu-ga would keep the handle.
            let _ = guest::run(
                self.agent,
                "truncate",
                &["-s", "0", &temp],
                "to empty its temporary file",
            )
            .await;
        }
        if let Some(handle) = self.left.handle {
            match guest::close(self.agent, handle).await {
                Ok(()) => done.push("closed the file in the guest".to_owned()),
                // The agent restarted or went away: it holds no file of ours.
                Err(e) if e.kind() == ErrorKind::AgentDisconnected => {}
                Err(e) => left.push(format!("the agent may keep the file open ({e})")),
            }
            self.left.handle = None;
        }
        if let Some(dir) = self.left.guest_dir.clone() {
            // Tagged: a later run or copy removes it, should the agent not.
            let later = cut_off::removed_later(&dir);
            match guest::run(self.agent, "rm", &["-rf", &dir], REMOVE_TEMPORARY).await {
                Ok(ran) if ran.ok() => done.push(format!("removed the temporary {dir} in the guest")),
                Ok(ran) => left.push(format!("{dir} in the guest ({}; {later})", ran.failure("rm"))),
                Err(e) => left.push(format!("{dir} in the guest ({e}; {later})")),
            }
            self.left.guest_dir = None;
        }
        if let Some(dir) = self.left.guest_tree.take() {
            let later = cut_off::removed_later(&dir);
            match guest::run(self.agent, "rm", &["-rf", &dir], REMOVE_TEMPORARY).await {
                Ok(ran) if ran.ok() => done.push(format!("removed the temporary {dir} in the guest")),
                Ok(ran) => left.push(format!("{dir} in the guest ({}; {later})", ran.failure("rm"))),
                Err(e) => left.push(format!("{dir} in the guest ({e}; {later})")),
            }
        }
        self.clean_up_host(&mut done, &mut left).await;
        said_left(done, left)
    }

    /// The agent, connected for the clean-up. After a restart the new
    /// agent first reads the rest of a long request the old one had begun
    /// (up to about a MiB, a second or more in a slow guest, longer on a
    /// busy host), and the first handshake may time out meanwhile: one more
    /// is tried, within the clean-up's bound.
    async fn agent_for_clean_up(&mut self) -> Result<&mut AnyAgent, AgentError> {
        let channel = self.agent.channel();
        match channel.agent().await.map(|_| ()) {
            Ok(())
            | Err(AgentError::Timeout {
                phase: Phase::Handshake,
                ..
            })
            | Err(AgentError::BusyWithEarlierRequest { .. }) => channel.agent().await,
            Err(error) => Err(error),
        }
    }

    /// Whether the program `pid`, which the agent no longer knows, has
    /// ended within five seconds, its pipes closed: asked
    /// of the guest's `/proc`.
    async fn ended_with_its_pipes(&mut self, pid: i64) -> bool {
        let script = "i=0; while [ -d \"/proc/$1\" ]; do [ \"$i\" -lt 50 ] || exit 1; i=$((i + 1)); \
                      sleep 0.1 2>/dev/null || sleep 1; done";
        let pid = pid.to_string();
        let ran = guest::run(
            self.agent,
            "/bin/sh",
            &["-c", script, "sh", &pid],
            "to see gzip or tar end",
        )
        .await;
        ran.is_ok_and(|ran| ran.ok())
    }

    /// Removes what a failed copy left on the host: the local temporary
    /// file or directory.
    async fn clean_up_host(&mut self, done: &mut Vec<String>, left: &mut Vec<String>) {
        // The unpacking thread removes its directory when it fails: once
        // it has ended, the directory is gone, or removed here.
        self.finish_unpacking().await;
        if let Some(dir) = self.left.local_tree.take() {
            match tokio::fs::remove_dir_all(&dir).await {
                Ok(()) => done.push(format!("removed the temporary {}", dir.display())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    done.push(format!("removed the temporary {}", dir.display()))
                }
                Err(e) => left.push(format!("{} ({e})", dir.display())),
            }
        }
        if let Some(temp) = self.left.local_temp.take() {
            match tokio::fs::remove_file(&temp).await {
                Ok(()) => done.push(format!("removed the temporary {}", temp.display())),
                Err(e) => left.push(format!("{} ({e})", temp.display())),
            }
        }
    }

    /// Lets go of the agent's connection: the next exchange connects anew
    /// and starts with a sync, which resets the agent's parser and skips
    /// stale replies. For a clean-up after the agent went silent or away:
    /// a restarted agent reads the rest of a request the old one had begun
    /// to read as garbage.
    pub async fn start_afresh(&mut self) {
        self.agent.channel().release().await;
    }

    /// What [`Copy::clean_up`] has not removed yet: for a clean-up cut short.
    pub fn pending(&self) -> String {
        let mut left = Vec::new();
        if let Some(pid) = self.left.program {
            let name = self.left.program_name.unwrap_or("gzip");
            left.push(format!("{name} may still run in the guest as pid {pid}"));
        }
        if self.left.handle.is_some() || self.left.follow.is_some() {
            left.push("files may still be open in the agent".to_owned());
        }
        for dir in [&self.left.guest_dir, &self.left.guest_tree]
            .into_iter()
            .flatten()
        {
            left.push(format!("{dir} in the guest ({})", cut_off::removed_later(dir)));
        }
        if let Some(temp) = &self.left.local_temp {
            left.push(temp.display().to_string());
        }
        if let Some(dir) = &self.left.local_tree {
            left.push(dir.display().to_string());
        }
        format!(
            "the destination was not touched; left behind, to remove by hand: {}",
            left.join("; ")
        )
    }
}

/// What a clean-up did (`done`) and could not do (`left`), in a sentence.
fn said_left(done: Vec<String>, left: Vec<String>) -> String {
    let done = if done.is_empty() {
        String::new()
    } else {
        format!("{}; ", done.join(", "))
    };
    if left.is_empty() {
        format!("{done}the destination was not touched")
    } else {
        format!(
            "{done}the destination was not touched, but left behind, to remove by hand: {}",
            left.join("; ")
        )
    }
}

/// Between SIGTERM and SIGKILL for a program of the copy's stopped in a
/// clean-up.
const PROGRAM_GRACE: Duration = Duration::from_secs(1);

/// How long [`Copy::clean_up`] may take at most, e.g. with an agent that
/// stopped answering.
pub const CLEAN_UP_TIME: Duration = Duration::from_secs(15);

/// What a copy given up awaits while it opens a guest file (for the log).
const OPENING: &str = "a guest file is being opened: awaiting its handle, to close it";

/// What a copy given up awaits while it makes its private directory.
const MAKING_DIR: &str =
    "the copy's private directory is being made: awaiting mkdir, to remove the directory";

/// Why the clean-up runs `rmdir` or `rm -rf` in the guest.
const REMOVE_TEMPORARY: &str = "to remove its temporary directory";

fn size_mismatch(path: &str, size: u64, moved: u64) -> CliError {
    CliError::new(
        ErrorKind::Verification,
        format!("{path} in the guest has {size} bytes, but {moved} were copied"),
    )
    .with_hint("the file may have changed during the copy")
}

/// `mkdir` failed beside the destination: most often its directory does not exist.
fn mkdir_failure(parent: &str, made: &guest::Ran) -> CliError {
    let said = &made.stderr;
    if said.contains("No such file or directory") {
        CliError::new(
            ErrorKind::Path,
            format!("the directory {parent} does not exist in the guest"),
        )
    } else if said.contains("Not a directory") {
        CliError::new(
            ErrorKind::Path,
            format!("{parent} is not a directory in the guest"),
        )
    } else {
        CliError::new(ErrorKind::Path, made.failure("mkdir")).with_hint(format!(
            "copy makes a temporary directory in {parent}, beside the destination"
        ))
    }
}

/// A guest "file" that is a directory opens, then fails to read.
fn directory_read(error: CliError, path: &str) -> CliError {
    if error.to_string().contains("Is a directory") {
        CliError::new(
            ErrorKind::Path,
            format!("{path} is a directory in the guest; copy takes one file"),
        )
    } else {
        error
    }
}
