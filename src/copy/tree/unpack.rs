//! Unpacking a tar stream that the guest sent, which may be hostile, into
//! a private directory beside the destination, then renaming it into
//! place.
//!
//! Nothing the stream holds may land outside that directory, so every name
//! is resolved here, one component at a time, relative to an open
//! directory: each `openat` with `O_NOFOLLOW | O_DIRECTORY`, so that no
//! symbolic link (one the stream made itself included) is ever followed,
//! and each file created with `O_CREAT | O_EXCL | O_NOFOLLOW`. Refused,
//! with the entry named, and the whole copy with it:
//!
//! - an absolute name, or one with a `..` component;
//! - a name under a symbolic link or a file (`link -> /etc`, then
//!   `link/passwd`);
//! - a name the stream already made (only a directory may come again):
//!   an entry is never written over another;
//! - a hard link to anything but a regular file the stream made;
//! - a device node, a FIFO, a sparse file, an unknown type.
//!
//! Set-user-ID, set-group-ID and sticky bits are dropped, each said in the
//! log; modes are the stream's less the umask, as `tar x` gives them to a
//! user who is not root; nothing's owner is set. A refused or failed copy
//! removes the private directory, so it leaves nothing behind.
//!
//! The directory is made `0700` and every directory in it too until the
//! end, when each gets its mode (deepest first): no other user sees a
//! half-written tree, and a directory of mode `0500` still takes its
//! entries.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, fstatat, futimens, mkdirat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{linkat, symlinkat};
use rustix::fs::{renameat_with, RenameFlags};

use super::archive::{shown, ArchiveReader, Entry, Kind};
use crate::copy::stale;
use crate::error::{CliError, ErrorKind};

/// What was unpacked.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    /// Bytes of file data.
    pub bytes: u64,
    /// Entries whose set-user-ID, set-group-ID or sticky bit was dropped
    /// (the first [`STRIPPED_LISTED`]), and how many more.
    pub stripped: Vec<String>,
    pub stripped_more: u64,
}

/// The most names of entries with dropped bits listed.
pub const STRIPPED_LISTED: usize = 100;

/// The most bytes of directory names kept to give each its mode and time
/// at the end: a hostile stream naming directories without end is
/// bounded by the disk, and this by much less.
const DIR_RECORDS_MAX: usize = 16 << 20;

/// The deepest a name may go: Linux takes a path of at most 4096 bytes,
/// so no tree a guest's programs use goes deeper than 2048; a stream that
/// does would only make the host's work grow with the square of it.
const DEPTH_MAX: usize = 2048;

/// The private directory a tree is unpacked into, beside its destination;
/// removed when dropped unless [`Unpacker::place`] renamed it into place.
pub struct Unpacker {
    parent: OwnedFd,
    temp_name: OsString,
    dest_name: OsString,
    /// The private directory's path, for messages and the removal.
    temp: PathBuf,
    root: OwnedFd,
    umask: u32,
    /// Directories' final modes (umask applied) and times, set at the
    /// end; and the bytes their names take.
    dirs: HashMap<Vec<OsString>, (u32, Option<u64>)>,
    dir_bytes: usize,
    placed: bool,
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

impl Unpacker {
    /// Makes `PARENT/.NAME.virtomate-RANDOM`, mode 0700, for `dest`
    /// (`PARENT/NAME`), which must not exist.
    pub fn create(dest: &Path, random: &str, umask: u32) -> Result<Unpacker, CliError> {
        let (parent_path, dest_name) = split(dest)?;
        let parent = openat(
            nix::fcntl::AT_FDCWD,
            &parent_path,
            DIR_FLAGS.difference(OFlag::O_NOFOLLOW),
            Mode::empty(),
        )
        .map_err(|e| path_error(&format!("cannot open the directory {}", parent_path.display()), e))?;
        if fstatat(parent.as_fd(), dest_name.as_os_str(), flag_nofollow()).is_ok() {
            return Err(exists(dest));
        }
        let temp_name = stale::local_temp_name(&dest_name, random);
        mkdirat(
            parent.as_fd(),
            temp_name.as_os_str(),
            Mode::from_bits_truncate(0o700),
        )
        .map_err(|e| {
            path_error(
                &format!("cannot make a directory in {}", parent_path.display()),
                e,
            )
        })?;
        let temp = parent_path.join(&temp_name);
        let root = openat(parent.as_fd(), temp_name.as_os_str(), DIR_FLAGS, Mode::empty());
        let root = match root {
            Ok(root) => root,
            Err(e) => {
                let _ = std::fs::remove_dir(&temp);
                return Err(path_error(&format!("cannot open {}", temp.display()), e));
            }
        };
        Ok(Unpacker {
            parent,
            temp_name,
            dest_name,
            temp,
            root,
            umask,
            dirs: HashMap::new(),
            dir_bytes: 0,
            placed: false,
        })
    }

    /// The private directory.
    pub fn temp(&self) -> &Path {
        &self.temp
    }

    /// Unpacks the whole stream; the first entry refused ends it.
    pub fn unpack(&mut self, stream: impl Read) -> Result<Unpacked, CliError> {
        let mut archive = ArchiveReader::new(stream);
        let mut unpacked = Unpacked::default();
        while let Some(entry) = archive.next_entry()? {
            self.entry(&entry, &mut archive, &mut unpacked)?;
        }
        archive.drain()?;
        self.set_directory_modes()?;
        Ok(unpacked)
    }

    /// Renames the complete tree to its destination, which must still not
    /// exist.
    pub fn place(mut self) -> Result<(), CliError> {
        let (parent, from, to) = (
            self.parent.as_fd(),
            self.temp_name.as_os_str(),
            self.dest_name.as_os_str(),
        );
        match renameat_with(parent, from, parent, to, RenameFlags::NOREPLACE) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => return Err(exists(&self.temp.with_file_name(&self.dest_name))),
            Err(e) => {
                return Err(path_error(
                    "cannot rename the copy into place",
                    Errno::from_raw(e.raw_os_error()),
                ))
            }
        }
        self.placed = true;
        Ok(())
    }

    fn entry<R: Read>(
        &mut self,
        entry: &Entry,
        archive: &mut ArchiveReader<R>,
        unpacked: &mut Unpacked,
    ) -> Result<(), CliError> {
        let names = components(&entry.path, entry)?;
        let mut mode = entry.mode;
        if mode & 0o7000 != 0 && entry.kind != Kind::Symlink && entry.kind != Kind::HardLink {
            tracing::warn!(
                "{}: set-user-ID, set-group-ID and sticky bits dropped",
                entry.shown()
            );
            match unpacked.stripped.len() < STRIPPED_LISTED {
                true => unpacked
                    .stripped
                    .push(String::from_utf8_lossy(&entry.path).into_owned()),
                false => unpacked.stripped_more += 1,
            }
            mode &= 0o777;
        }
        let Some((name, dirs)) = names.split_last() else {
            // `./`: the tree's own directory.
            return match entry.kind {
                Kind::Directory => {
                    let root = self.root.try_clone().map_err(|e| self.write_error(entry, &e))?;
                    self.directory(&[], root.as_fd(), mode, Some(entry.mtime), entry)
                }
                _ => Err(refused(
                    entry,
                    "names the destination itself, which is a directory",
                )),
            };
        };
        if let Kind::Refused(what) = entry.kind {
            return Err(refused(
                entry,
                &format!("is {what}: copy -r makes only directories, files and links"),
            ));
        }
        let parent = self.walk(dirs, entry, true)?;
        let parent = parent.as_fd();
        match entry.kind {
            Kind::Directory => {
                match mkdirat(parent, name.as_os_str(), Mode::from_bits_truncate(0o700)) {
                    Ok(()) => unpacked.directories += 1,
                    Err(Errno::EEXIST) if is_directory(parent, name) => {}
                    Err(e) => return Err(self.create_error(entry, e)),
                }
                let made = openat(parent, name.as_os_str(), DIR_FLAGS, Mode::empty())
                    .map_err(|e| self.create_error(entry, e))?;
                self.directory(&names, made.as_fd(), mode, Some(entry.mtime), entry)?;
            }
            Kind::File => {
                let flags =
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let file = openat(parent, name.as_os_str(), flags, Mode::from_bits_truncate(0o600))
                    .map_err(|e| self.create_error(entry, e))?;
                let mut file = File::from(file);
                let written =
                    io::copy(&mut archive.data(), &mut file).map_err(|e| self.write_error(entry, &e))?;
                fchmod(file.as_fd(), Mode::from_bits_truncate(mode & !self.umask))
                    .and_then(|()| set_mtime(file.as_fd(), entry.mtime))
                    .map_err(|e| self.write_error(entry, &e.into()))?;
                unpacked.files += 1;
                unpacked.bytes += written;
            }
            Kind::Symlink => {
                if entry.link.is_empty() || entry.link.contains(&0) {
                    return Err(refused(
                        entry,
                        "is a symbolic link to an empty or malformed target",
                    ));
                }
                symlinkat(OsStr::from_bytes(&entry.link), parent, name.as_os_str())
                    .map_err(|e| self.create_error(entry, e))?;
                unpacked.symlinks += 1;
            }
            Kind::HardLink => {
                self.hard_link(entry, parent, name)?;
                unpacked.hard_links += 1;
            }
            Kind::Refused(_) => unreachable!("refused above"),
        }
        Ok(())
    }

    /// A hard link: only to a regular file this stream made, inside the
    /// tree, found without following any link.
    fn hard_link(&mut self, entry: &Entry, parent: BorrowedFd, name: &OsStr) -> Result<(), CliError> {
        let outside = || {
            refused(
                entry,
                &format!("is a hard link to {}, outside the copy", shown(&entry.link)),
            )
        };
        let target = components(&entry.link, entry).map_err(|_| outside())?;
        let Some((target_name, target_dirs)) = target.split_last() else {
            return Err(outside());
        };
        let not_made = || {
            refused(
                entry,
                &format!(
                    "is a hard link to {}, which is no file the copy made",
                    shown(&entry.link)
                ),
            )
        };
        let target_parent = self.walk(target_dirs, entry, false).map_err(|_| not_made())?;
        match fstatat(target_parent.as_fd(), target_name.as_os_str(), flag_nofollow()) {
            Ok(stat) if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG => {}
            _ => return Err(not_made()),
        }
        linkat(
            target_parent.as_fd(),
            target_name.as_os_str(),
            parent,
            name,
            nix::fcntl::AtFlags::empty(),
        )
        .map_err(|e| self.create_error(entry, e))
    }

    /// Opens the directory `dirs` below the tree's root, without following
    /// any link; with `make`, a missing one is made (a stream may name a
    /// file before its directory).
    fn walk(&mut self, dirs: &[OsString], entry: &Entry, make: bool) -> Result<OwnedFd, CliError> {
        let mut current = self.root.try_clone().map_err(|e| self.write_error(entry, &e))?;
        for (depth, dir) in dirs.iter().enumerate() {
            let mut opened = openat(current.as_fd(), dir.as_os_str(), DIR_FLAGS, Mode::empty());
            if matches!(opened, Err(Errno::ENOENT)) && make {
                mkdirat(current.as_fd(), dir.as_os_str(), Mode::from_bits_truncate(0o700))
                    .map_err(|e| self.create_error(entry, e))?;
                opened = openat(current.as_fd(), dir.as_os_str(), DIR_FLAGS, Mode::empty());
                // As `mkdir` would make it; an entry of its own may follow.
                if let Ok(made) = &opened {
                    self.directory(&dirs[..=depth], made.as_fd(), 0o777, None, entry)?;
                }
            }
            current = match opened {
                Ok(fd) => fd,
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    let through = dirs[..=depth]
                        .iter()
                        .map(|d| d.as_bytes())
                        .collect::<Vec<_>>()
                        .join(&b'/');
                    return Err(refused(
                        entry,
                        &format!(
                            "would be written through {}, which is a symbolic link or a file, not a \
                             directory",
                            shown(&through)
                        ),
                    ));
                }
                Err(e) => return Err(self.create_error(entry, e)),
            };
        }
        Ok(current)
    }

    /// Gives the directory `fd` (`names` below the root) its mode now,
    /// with the owner's `rwx` so that entries still go in, and keeps its
    /// exact mode and time for the end. Beyond [`DIR_RECORDS_MAX`], one
    /// whose mode is already exact keeps it and loses its time; another is
    /// refused.
    fn directory(
        &mut self,
        names: &[OsString],
        fd: BorrowedFd,
        mode: u32,
        mtime: Option<u64>,
        entry: &Entry,
    ) -> Result<(), CliError> {
        let mode = mode & 0o777 & !self.umask;
        fchmod(fd, Mode::from_bits_truncate(mode | 0o700)).map_err(|e| self.create_error(entry, e))?;
        if let Some(kept) = self.dirs.get_mut(names) {
            *kept = (mode, mtime.or(kept.1));
            return Ok(());
        }
        let size = names.iter().map(|n| n.len() + 24).sum::<usize>() + 64;
        if self.dir_bytes + size <= DIR_RECORDS_MAX {
            self.dir_bytes += size;
            self.dirs.insert(names.to_vec(), (mode, mtime));
        } else if mode & 0o700 != 0o700 {
            return Err(refused(
                entry,
                "is a directory without the owner's rwx beyond the many copy -r can track",
            ));
        }
        Ok(())
    }

    /// Each directory's mode and time, deepest first: a parent made
    /// read-only last.
    fn set_directory_modes(&mut self) -> Result<(), CliError> {
        let mut dirs: Vec<_> = std::mem::take(&mut self.dirs).into_iter().collect();
        dirs.sort_by_key(|(names, _)| std::cmp::Reverse(names.len()));
        for (names, (mode, mtime)) in dirs {
            let fd = self.walk_existing(&names)?;
            fchmod(fd.as_fd(), Mode::from_bits_truncate(mode))
                .and_then(|()| mtime.map_or(Ok(()), |mtime| set_mtime(fd.as_fd(), mtime)))
                .map_err(|e| {
                    path_error(
                        &format!("cannot set the mode of a directory in {}", self.temp.display()),
                        e,
                    )
                })?;
        }
        Ok(())
    }

    fn walk_existing(&self, names: &[OsString]) -> Result<OwnedFd, CliError> {
        let mut current = self
            .root
            .try_clone()
            .map_err(|e| CliError::io("cannot open a directory", e))?;
        for name in names {
            current = openat(current.as_fd(), name.as_os_str(), DIR_FLAGS, Mode::empty())
                .map_err(|e| path_error(&format!("cannot open a directory in {}", self.temp.display()), e))?;
        }
        Ok(current)
    }

    fn create_error(&self, entry: &Entry, errno: Errno) -> CliError {
        match errno {
            Errno::EEXIST => refused(
                entry,
                "comes twice in the archive: copy -r writes no entry over another",
            ),
            Errno::ELOOP | Errno::ENOTDIR => {
                refused(entry, "would be written through a symbolic link or a file")
            }
            _ => self.write_error(entry, &errno.into()),
        }
    }

    fn write_error(&self, entry: &Entry, error: &io::Error) -> CliError {
        if error.kind() == io::ErrorKind::UnexpectedEof {
            return CliError::new(
                ErrorKind::Verification,
                format!(
                    "the archive from the guest cannot be read: it ends inside {}",
                    entry.shown()
                ),
            );
        }
        CliError::new(
            ErrorKind::Io,
            format!(
                "cannot write {} in {}: {error}",
                entry.shown(),
                self.temp.display()
            ),
        )
    }
}

impl Drop for Unpacker {
    /// A copy that did not complete leaves nothing: `remove_dir_all`
    /// follows no link it meets.
    fn drop(&mut self) {
        if !self.placed {
            if let Err(error) = std::fs::remove_dir_all(&self.temp) {
                tracing::warn!("cannot remove {}: {error}", self.temp.display());
            }
        }
    }
}

/// The components of a name from the stream: `.` and empty ones dropped;
/// an absolute name or a `..` refused.
fn components(name: &[u8], entry: &Entry) -> Result<Vec<OsString>, CliError> {
    if name.first() == Some(&b'/') {
        return Err(refused(entry, "has an absolute name"));
    }
    if name.contains(&0) {
        return Err(refused(entry, "has a NUL byte in a name"));
    }
    let mut names = Vec::new();
    if name.split(|&b| b == b'/').count() > DEPTH_MAX {
        return Err(refused(
            entry,
            &format!("is nested deeper than the {DEPTH_MAX} directories copy -r goes"),
        ));
    }
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                return Err(refused(
                    entry,
                    "has a '..' component, which would lead outside the copy",
                ))
            }
            part => names.push(OsStr::from_bytes(part).to_owned()),
        }
    }
    Ok(names)
}

fn is_directory(parent: BorrowedFd, name: &OsStr) -> bool {
    fstatat(parent, name, flag_nofollow())
        .is_ok_and(|stat| SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)
}

fn flag_nofollow() -> nix::fcntl::AtFlags {
    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW
}

fn set_mtime(fd: BorrowedFd, mtime: u64) -> nix::Result<()> {
    let omit = TimeSpec::UTIME_OMIT;
    let mtime = TimeSpec::new(i64::try_from(mtime).unwrap_or(i64::MAX), 0);
    futimens(fd, &omit, &mtime)
}

/// `dest`'s directory and name.
fn split(dest: &Path) -> Result<(PathBuf, OsString), CliError> {
    let name = dest
        .file_name()
        .filter(|n| *n != "." && *n != "..")
        .ok_or_else(|| {
            CliError::new(
                ErrorKind::Path,
                format!("{} names no directory to make", dest.display()),
            )
        })?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name.to_owned()))
}

/// An entry refused: the copy ends, and nothing of it is left.
fn refused(entry: &Entry, why: &str) -> CliError {
    CliError::new(
        ErrorKind::Verification,
        format!("refused the guest's archive: {} {why}", entry.shown()),
    )
    .with_hint("nothing was written: the guest sent what copy -r does not unpack (see the guide)")
}

fn exists(dest: &Path) -> CliError {
    CliError::new(
        ErrorKind::Path,
        format!(
            "{} already exists; copy -r makes a new directory and merges into none",
            dest.display()
        ),
    )
}

fn path_error(what: &str, errno: Errno) -> CliError {
    let error = io::Error::from(errno);
    CliError::new(ErrorKind::Path, format!("{what}: {error}")).with_source(error)
}
