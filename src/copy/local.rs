//! The host's side of a copy: the file read (or standard input), and the
//! file written, first under a temporary name beside it, private (`0600`)
//! until it is complete, then given its mode as `cp` would (an existing
//! destination's, else the guest file's less the umask) and renamed into
//! place.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncReadExt};

use super::stale;
use crate::error::{CliError, ErrorKind};

/// What a copy into the guest reads.
pub struct Source {
    pub reader: Box<dyn AsyncRead + Unpin + Send>,
    /// What it is, for errors: "the local file", "standard input".
    pub what: &'static str,
    /// Its size, when it has one (not standard input).
    pub len: Option<u64>,
    /// Its permission bits, kept in the guest by default.
    pub mode: Option<u32>,
    /// Its file name, for a guest destination that is a directory.
    pub name: Option<String>,
}

impl Source {
    pub async fn open(path: &Path) -> Result<Source, CliError> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display();
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| path_error(format!("cannot open {shown}"), e))?;
        let meta = file
            .metadata()
            .await
            .map_err(|e| path_error(format!("cannot read {shown}"), e))?;
        if meta.is_dir() {
            return Err(CliError::new(
                ErrorKind::Path,
                format!("{shown} is a directory; copy takes one file"),
            ));
        }
        let name = path.file_name().and_then(|n| n.to_str()).map(str::to_owned);
        Ok(Source {
            reader: Box::new(file),
            what: "the local file",
            // A device or a FIFO has no meaningful size.
            len: meta.is_file().then_some(meta.len()),
            mode: Some(meta.permissions().mode() & 0o7777),
            name,
        })
    }

    pub fn stdin() -> Source {
        Source {
            reader: Box::new(tokio::io::stdin()),
            what: "standard input",
            len: None,
            mode: None,
            name: None,
        }
    }

    /// Up to `len` bytes into `buf` (cleared first): fewer only at the end.
    pub async fn read_chunk(&mut self, buf: &mut Vec<u8>, len: usize) -> Result<(), CliError> {
        buf.clear();
        let what = self.what;
        let reader = &mut self.reader;
        let mut limited = reader.take(len as u64);
        loop {
            let before = buf.len();
            limited
                .read_buf(buf)
                .await
                .map_err(|e| CliError::io(format!("cannot read {what}"), e))?;
            if buf.len() == before || buf.len() >= len {
                return Ok(());
            }
        }
    }
}

/// The local file a copy out of the guest writes: a temporary file beside
/// `dest`, renamed to it when complete.
pub struct Dest {
    pub dest: PathBuf,
    pub temp: PathBuf,
    pub file: tokio::fs::File,
}

/// The mode of a new local file whose guest file's mode is unknown (the
/// guest could not run `stat`): private, as a guest file from standard
/// input.
const UNKNOWN_MODE: u32 = 0o600;

/// The mode the complete local file gets, as `cp` gives it: an existing
/// `dest` keeps its own (less set-user/group-ID), a new one gets
/// `source_mode` (the guest file's) less the umask.
pub fn final_mode(dest: &Path, source_mode: Option<u32>) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(dest) {
        Ok(meta) => meta.permissions().mode() & 0o1777,
        Err(_) => source_mode.unwrap_or(UNKNOWN_MODE) & 0o777 & !umask(),
    }
}

/// The process's umask, read without changing it where Linux tells it.
pub fn umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let told = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .and_then(|m| u32::from_str_radix(m.trim(), 8).ok());
    told.unwrap_or_else(|| {
        use nix::sys::stat::{umask, Mode};
        let mask = umask(Mode::from_bits_truncate(0o077));
        umask(mask);
        mask.bits()
    })
}

impl Dest {
    /// `dest`, or `dest/NAME` when it is a directory (or ends with `/`).
    pub fn create(dest: &Path, name: Option<&str>, random: &str) -> Result<Dest, CliError> {
        let into_dir = dest.as_os_str().to_string_lossy().ends_with('/') || dest.is_dir();
        let dest = match (into_dir, name) {
            (true, Some(name)) => dest.join(name),
            (true, None) => {
                return Err(CliError::new(
                    ErrorKind::Path,
                    format!(
                        "{} is a directory, and the guest path has no file name",
                        dest.display()
                    ),
                ))
            }
            (false, _) => dest.to_owned(),
        };
        if dest.is_dir() {
            return Err(CliError::new(
                ErrorKind::Path,
                format!("{} is a directory; give the file to write", dest.display()),
            ));
        }
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let file_name = dest.file_name().unwrap_or(std::ffi::OsStr::new("copy"));
        let temp = parent.join(stale::local_temp_name(file_name, random));
        // create_new: never follows or reuses what is there; private until
        // complete, whatever the file becomes. Made at once, not on another
        // thread: a copy given up (a signal) while it is made would leave
        // it without its name kept for the clean-up.
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map(tokio::fs::File::from_std)
            .map_err(|e| {
                let error = path_error(format!("cannot create a file in {}", parent.display()), e);
                if parent.is_dir() {
                    error
                } else if parent.exists() {
                    CliError::new(ErrorKind::Path, format!("{}: Not a directory", parent.display()))
                } else {
                    CliError::new(
                        ErrorKind::Path,
                        format!("the local directory {} does not exist", parent.display()),
                    )
                }
            })?;
        Ok(Dest { dest, temp, file })
    }
}

/// A local path that cannot be used: the user fixes the path.
fn path_error(what: String, source: std::io::Error) -> CliError {
    CliError::new(ErrorKind::Path, format!("{what}: {source}")).with_source(source)
}
