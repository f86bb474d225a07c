//! `copy -r` into the guest: the tree packed on the host and streamed
//! straight into the guest's `tar -x` while it runs (`stream_in.rs`),
//! which unpacks it beside DEST; renamed into place once complete (see the
//! [module](super) docs).

use std::time::Instant;

use flate2::write::GzEncoder;
use flate2::Compression;
use tokio::sync::mpsc;
use virtomate_protocol::follow::FollowOptions;
use virtomate_protocol::qga::GuestExec;

use super::pack::pack;
use super::stream_in::{PieceWriter, QUEUED};
use super::TreeSummary;
use crate::copy::agent::FileAgent;
use crate::copy::guest::{self, DirKind};
use crate::copy::location::guest_parent;
use crate::copy::output;
use crate::copy::progress::Progress;
use crate::copy::{stale, Copy, Options};
use crate::error::{CliError, ErrorKind};

/// Unpacks standard input (gzip's stream when `$2` is `gzip`) into
/// `$1/tree`, then reads the input to its end: the script ends only once
/// the whole stream went in, which the host has checked was complete.
/// `-o`: the files are the agent's user's (root's), not whoever the
/// archive names (GNU and busybox tar both take it). A gzip that fails is
/// caught through fd 3 (a pipeline's status is its last program's).
const UNPACK_SCRIPT: &str = r#"d=$1
mkdir -m 700 "$d/tree" || exit
if [ "$2" = gzip ]; then
  z=$( { { gzip -d -c; echo $? >&3; } | tar -x -o -f - -C "$d/tree" >&2; } 3>&1 ) || exit
  [ "$z" = 0 ] || exit 1
else
  tar -x -o -f - -C "$d/tree" || exit
fi
exec cat >/dev/null"#;

/// Renames the complete `$1/tree` to `$3`, failing with 2 if it cannot;
/// then, as a one-file copy does once in place (`stale`), removes `$1`
/// and lists the private directories of copies in `$2` (DEST's parent).
fn place_script() -> String {
    format!("mv -T \"$1/tree\" \"$3\" || exit 2\n{}", stale::RMDIR_AND_LIST)
}

impl<A: FileAgent> Copy<'_, A> {
    /// Copies the local directory `source` to `path` in the guest (or
    /// into it, when it is a directory).
    pub async fn push_tree(
        &mut self,
        source: &std::path::Path,
        path: &str,
        options: &Options,
    ) -> Result<TreeSummary, CliError> {
        let started = Instant::now();
        let name = source
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned));
        let target = self.tree_target(path, name.as_deref()).await?;
        self.check_tar().await?;
        if options.compress {
            self.check_gzip().await?;
        }
        let dir = self.private_dir(guest_parent(&target)).await?;
        self.left.guest_tree = self.left.guest_dir.take();

        // tar's standard error, read while it runs: a few bytes at a time.
        let follow_options = FollowOptions {
            read_count: 64 << 10,
            ..FollowOptions::default()
        };
        let prepared = output::prepare(self.agent.channel(), follow_options, true).await;
        let follow = prepared.map_err(|e| self.tree_follow_error(e))?;
        self.left.guest_dir = Some(follow.dir().to_owned());
        let follow = self.left.follow.insert(follow);
        let compression = if options.compress { "gzip" } else { "" };
        let tar = GuestExec::new("/bin/sh", ["-c", UNPACK_SCRIPT, "sh", &dir, compression]);
        let started_tar = self.agent.channel().guest_exec(&follow.redirect(tar)).await;
        let pid = started_tar.map_err(|e| self.agent.error(e))?.pid;
        self.left.program = Some(pid);
        self.left.program_name = Some("tar");

        let (queue, pieces) = mpsc::channel(QUEUED);
        let root = source.to_owned();
        let compress = options.compress;
        // Ends by itself once the queue's reader has gone.
        tokio::task::spawn_blocking(move || {
            let mut writer = PieceWriter::new(queue);
            let packed = match compress {
                true => {
                    let mut gzip = GzEncoder::new(&mut writer, Compression::default());
                    let packed = pack(&root, &mut gzip);
                    packed.and_then(|packed| {
                        gzip.try_finish()
                            .map_err(|e| CliError::io("cannot send the archive", e))
                            .map(|()| packed)
                    })
                }
                false => pack(&root, &mut writer),
            };
            writer.end(packed);
        });
        let progress = Progress::new(options.progress, None);
        let fed = self.feed_program(pid, pieces, &progress).await;
        let fed = fed.inspect_err(|_| progress.abandon())?;
        self.close_feed().await;
        if fed.status.exitcode != Some(0) {
            progress.abandon();
            let ran = guest::Ran {
                exit_code: fed.status.exitcode,
                stdout: Vec::new(),
                stderr: fed.said,
            };
            return Err(CliError::new(
                ErrorKind::Path,
                format!("cannot unpack the directory in the guest: {}", ran.failure("tar")),
            ));
        }
        let Some(packed) = fed.packed else {
            progress.abandon();
            return Err(CliError::new(
                ErrorKind::AgentCommand,
                "tar ended in the guest before the whole archive was sent",
            ));
        };
        if let Some(mut follow) = self.left.follow.take() {
            match follow.clean_up(self.agent.channel()).await {
                Ok(()) => self.left.guest_dir = None,
                Err(error) => tracing::warn!("{error}; {} may be left in the guest", follow.dir()),
            }
        }
        let purpose = "to rename the copy into place";
        let (parent, place) = (guest_parent(&target), place_script());
        let script = ["-c", &place, "sh", &dir, parent, &target];
        let placed = guest::run(self.agent, "/bin/sh", &script, purpose).await?;
        match placed.exit_code {
            Some(0) => self.remove_stale(parent, &placed.stdout).await,
            Some(2) => {
                return Err(CliError::new(
                    ErrorKind::Path,
                    format!(
                        "cannot rename the copy into place in the guest: {}",
                        placed.failure("mv")
                    ),
                ))
            }
            // In place: only the empty private directory is left.
            _ => tracing::warn!("{}; {dir} is left in the guest", placed.failure("rmdir")),
        }
        self.left.guest_tree = None;
        progress.finish();
        Ok(TreeSummary {
            dest: target,
            files: packed.files,
            directories: packed.directories,
            symlinks: packed.symlinks,
            bytes: packed.bytes,
            archive_bytes: fed.sent,
            seconds: started.elapsed().as_secs_f64(),
            stripped: Vec::new(),
        })
    }

    /// The guest directory to make: `path`, or `path/NAME` when `path` is
    /// a directory or ends with `/`; refused when it exists.
    async fn tree_target(&mut self, path: &str, name: Option<&str>) -> Result<String, CliError> {
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
        let target = match (into_dir, name) {
            (false, _) => path.to_owned(),
            (true, Some(name)) => format!("{}/{name}", path.trim_end_matches('/')),
            (true, None) => {
                return Err(CliError::new(
                    ErrorKind::Path,
                    format!("{path} is a directory in the guest, and the source has no name to give"),
                ))
            }
        };
        let purpose = "to tell whether the destination exists";
        let exists = guest::run(
            self.agent,
            "/bin/sh",
            &["-c", r#"test -e "$1" || test -h "$1""#, "sh", &target],
            purpose,
        )
        .await?;
        if exists.ok() {
            return Err(CliError::new(
                ErrorKind::Path,
                format!(
                    "{target} already exists in the guest; copy -r makes a new directory and merges \
                     into none"
                ),
            ));
        }
        Ok(target)
    }
}
