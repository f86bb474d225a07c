//! `copy -r` into the guest: the tree packed on the host, sent as one file
//! by the plain copy, unpacked by the guest's `tar -x` beside DEST and
//! renamed into place (see the [module](super) docs).
//!
//! Interim: the archive lands on the guest's disk whole before `tar -x`
//! reads it. Once a live pipe into a guest program exists (`guest-run
//! -i`), the stream goes straight into `tar -x` instead.

use std::fs::File;
use std::path::Path;
use std::time::Instant;

use super::pack::pack;
use super::TreeSummary;
use crate::copy::agent::FileAgent;
use crate::copy::guest::{self, DirKind};
use crate::copy::local::Source;
use crate::copy::location::guest_parent;
use crate::copy::{Copy, Options};
use crate::error::{CliError, ErrorKind};

/// Unpacks `$1/tree.tar` into `$1/tree` and renames that to `$2`, then
/// removes `$1`. `-o`: the files are the agent's user's (root's), not
/// whoever the archive names (GNU and busybox tar both take it).
const UNPACK_SCRIPT: &str = r#"d=$1 t=$2
mkdir -m 700 "$d/tree" || exit
tar -x -o -f "$d/tree.tar" -C "$d/tree" || exit
rm -f "$d/tree.tar"
mv -T "$d/tree" "$t" || exit
rmdir "$d""#;

impl<A: FileAgent> Copy<'_, A> {
    /// Copies the local directory `source` to `path` in the guest (or
    /// into it, when it is a directory).
    pub async fn push_tree(
        &mut self,
        source: &Path,
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
        let dir = self.private_dir(guest_parent(&target)).await?;
        // The plain copy below makes and removes its own directory in it.
        self.left.guest_tree = self.left.guest_dir.take();

        let (read, write) = nix::unistd::pipe().map_err(|e| CliError::io("cannot make a pipe", e.into()))?;
        let root = source.to_owned();
        let packing = tokio::task::spawn_blocking(move || pack(&root, File::from(write)));
        let archive = Source {
            reader: Box::new(tokio::fs::File::from_std(File::from(read))),
            what: "the archive of the local directory",
            len: None,
            mode: Some(0o600),
            name: None,
        };
        let archive_options = Options {
            mode: Some(0o600),
            verify: false,
            ..options.clone()
        };
        let sent = self
            .push(archive, &format!("{dir}/tree.tar"), &archive_options)
            .await;
        let packed = packing
            .await
            .unwrap_or_else(|_| Err(CliError::new(ErrorKind::Io, "the packing thread ended")));
        // The source's fault (a FIFO, a file that shrank) explains an
        // archive cut short; a send that failed explains a packer whose
        // pipe was closed.
        let (packed, sent) = match (packed, sent) {
            (Err(error), _) if error.kind() == ErrorKind::Path => return Err(error),
            (_, Err(error)) | (Err(error), Ok(_)) => return Err(error),
            (Ok(packed), Ok(sent)) => (packed, sent),
        };

        let purpose = "to unpack the archive (tar) and rename the copy into place";
        let ran = guest::run(
            self.agent,
            "/bin/sh",
            &["-c", UNPACK_SCRIPT, "sh", &dir, &target],
            purpose,
        )
        .await?;
        if !ran.ok() {
            return Err(CliError::new(
                ErrorKind::Path,
                format!("cannot unpack the directory in the guest: {}", ran.failure("sh")),
            ));
        }
        self.left.guest_tree = None;
        Ok(TreeSummary {
            dest: target,
            files: packed.files,
            directories: packed.directories,
            symlinks: packed.symlinks,
            bytes: packed.bytes,
            archive_bytes: sent.bytes,
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
