//! Packing a local directory tree into a tar stream for the guest's `tar
//! x`, with the `tar` crate's writer.
//!
//! Nothing is followed: a symbolic link in the tree goes as a link, a file
//! is opened with `O_NOFOLLOW` and checked to be the regular file that was
//! listed. Only the directory named on the command line is taken as it
//! resolves. Owners go as root (uid and gid 0), so that the guest's `tar`,
//! run as root, gives the files to root rather than to a guest user who
//! happens to have the host user's uid. A device node, FIFO or socket is
//! refused by name, as the unpacker refuses them; a hard-linked file goes
//! once per name.

use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tar::{Builder, EntryType, Header};

use crate::error::{CliError, ErrorKind};

/// What was packed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Packed {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    /// Bytes of file data.
    pub bytes: u64,
}

/// Packs the tree at `root` into `out`, names relative to it (`./`,
/// `./a`, …), directories before what they hold.
pub fn pack(root: &Path, out: impl Write) -> Result<Packed, CliError> {
    let mut builder = Builder::new(out);
    let mut packed = Packed::default();
    let meta = std::fs::metadata(root).map_err(|e| path_error(root, e))?;
    if !meta.is_dir() {
        return Err(not_a_directory(root));
    }
    let mut pending = vec![(root.to_owned(), PathBuf::from("."), meta)];
    while let Some((path, name, meta)) = pending.pop() {
        let kind = meta.file_type();
        let mut header = header_for(&meta);
        let written = if kind.is_dir() {
            header.set_entry_type(EntryType::Directory);
            header.set_size(0);
            // The tree's own directory is the copy, not in it.
            packed.directories += u64::from(name != Path::new("."));
            let mut children = list(&path)?;
            // Popped from the end: reversed, they go out in name order.
            children.reverse();
            pending.extend(children.into_iter().map(|(child, meta)| {
                let child_name = name.join(child.file_name().expect("a listed name"));
                (child, child_name, meta)
            }));
            builder.append_data(&mut header, &name, io::empty())
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&path).map_err(|e| path_error(&path, e))?;
            header.set_entry_type(EntryType::Symlink);
            header.set_size(0);
            packed.symlinks += 1;
            builder.append_link(&mut header, &name, &target)
        } else if kind.is_file() {
            let file = open_file(&path, &meta)?;
            header.set_entry_type(EntryType::Regular);
            header.set_size(meta.len());
            packed.files += 1;
            packed.bytes += meta.len();
            let exact = Exactly {
                inner: file.take(meta.len()),
                left: meta.len(),
            };
            builder.append_data(&mut header, &name, exact)
        } else {
            return Err(special(&path, &meta));
        };
        written.map_err(|e| write_error(&path, e))?;
    }
    builder
        .into_inner()
        .and_then(|mut out| out.flush())
        .map_err(|e| CliError::io("cannot send the archive", e))?;
    Ok(packed)
}

/// The directory's entries with their metadata (links not followed), in
/// name order.
fn list(dir: &Path) -> Result<Vec<(PathBuf, Metadata)>, CliError> {
    let mut children = Vec::new();
    for child in std::fs::read_dir(dir).map_err(|e| path_error(dir, e))? {
        let path = child.map_err(|e| path_error(dir, e))?.path();
        let meta = std::fs::symlink_metadata(&path).map_err(|e| path_error(&path, e))?;
        children.push((path, meta));
    }
    children.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(children)
}

fn header_for(meta: &Metadata) -> Header {
    let mut header = Header::new_gnu();
    header.set_mode(meta.mode() & 0o7777);
    header.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
    header.set_uid(0);
    header.set_gid(0);
    header
}

/// The listed file, opened without following a link, and still the same
/// file (a name replaced since the listing is refused).
fn open_file(path: &Path, listed: &Metadata) -> Result<File, CliError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| path_error(path, e))?;
    let meta = file.metadata().map_err(|e| path_error(path, e))?;
    if meta.ino() != listed.ino() || meta.dev() != listed.dev() || !meta.is_file() {
        return Err(CliError::new(
            ErrorKind::Path,
            format!("{} changed while it was being copied", path.display()),
        ));
    }
    Ok(file)
}

/// A file's data, exactly as long as its header says: a file that shrank
/// during the copy is an error, not a short entry that would shift every
/// header after it.
struct Exactly<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exactly<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.left -= read as u64;
        if read == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::other("the file shrank while it was being copied"));
        }
        Ok(read)
    }
}

fn special(path: &Path, meta: &Metadata) -> CliError {
    let kind = meta.file_type();
    let what = if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() {
        "a character device"
    } else {
        "a block device"
    };
    CliError::new(
        ErrorKind::Path,
        format!(
            "{} is {what}: copy -r copies only directories, files and symbolic links",
            path.display()
        ),
    )
    .with_hint("remove it from the tree, or copy the rest without it")
}

fn not_a_directory(path: &Path) -> CliError {
    CliError::new(
        ErrorKind::Path,
        format!("{} is not a directory; copy -r takes a directory", path.display()),
    )
    .with_hint("copy one file without -r")
}

fn path_error(path: &Path, error: io::Error) -> CliError {
    CliError::new(
        ErrorKind::Path,
        format!("cannot read {}: {error}", path.display()),
    )
    .with_source(error)
}

fn write_error(path: &Path, error: io::Error) -> CliError {
    match error.get_ref().map(|e| e.to_string()) {
        Some(said) if said.contains("shrank") => CliError::new(
            ErrorKind::Path,
            format!("{} shrank while it was being copied", path.display()),
        ),
        _ => CliError::io(format!("cannot send {}", path.display()), error),
    }
}
