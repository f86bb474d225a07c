//! Reading a tar stream from the guest one entry at a time, in bounded
//! memory: only a header and its name are ever held, never an entry's data.
//!
//! The `tar` crate decodes each 512-byte header's fields; the walk over
//! the stream is ours, because the crate's own reads a GNU long name or a
//! PAX header whole into memory whatever size the stream declares, and a
//! hostile guest may declare terabytes.

use std::borrow::Cow;
use std::io::{self, Read};

use tar::{EntryType, Header, PaxExtensions};

use crate::error::{CliError, ErrorKind};

/// The most a GNU long name or a PAX header may hold. Linux paths are at
/// most 4096 bytes; a PAX header carries a few more fields beside them.
const EXTENSION_MAX: u64 = 64 << 10;

const BLOCK: u64 = 512;

/// What an entry makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Directory,
    File,
    Symlink,
    HardLink,
    /// What copy -r never makes, named for the refusal ("a FIFO").
    Refused(&'static str),
}

/// One entry's header, its extensions applied.
#[derive(Debug)]
pub struct Entry {
    pub path: Vec<u8>,
    /// A link's target.
    pub link: Vec<u8>,
    pub kind: Kind,
    /// Permission bits, as the stream gives them (set-ID bits included).
    pub mode: u32,
    pub mtime: u64,
}

impl Entry {
    /// The name for a message: quoted, a newline or other control shown
    /// escaped.
    pub fn shown(&self) -> String {
        shown(&self.path)
    }
}

/// A name from the stream for a message.
pub fn shown(name: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(name))
}

/// The stream, one entry at a time.
pub struct ArchiveReader<R> {
    inner: R,
    /// Data of the current entry not read yet, and padding after it.
    unread: u64,
    padding: u64,
}

/// What GNU and PAX extension headers said about the entry that follows.
#[derive(Default)]
struct Extensions {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    mtime: Option<u64>,
}

impl<R: Read> ArchiveReader<R> {
    pub fn new(inner: R) -> ArchiveReader<R> {
        ArchiveReader {
            inner,
            unread: 0,
            padding: 0,
        }
    }

    /// The next entry, skipping what is left of the current one's data;
    /// `None` at the end-of-archive block.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, CliError> {
        self.skip_rest()?;
        let mut extensions = Extensions::default();
        loop {
            let mut block = [0u8; BLOCK as usize];
            if !self.read_block(&mut block)? {
                return Err(malformed("the archive ends without its end-of-archive block"));
            }
            if block.iter().all(|&b| b == 0) {
                return Ok(None);
            }
            let header = Header::from_byte_slice(&block);
            check_sum(header)?;
            let size = header.entry_size().map_err(|e| malformed(&e.to_string()))?;
            let kind = header.entry_type();
            match kind {
                EntryType::GNULongName => extensions.path = Some(self.extension(size, &block)?),
                EntryType::GNULongLink => extensions.link = Some(self.extension(size, &block)?),
                EntryType::XHeader => {
                    let pax = self.extension(size, &block)?;
                    apply_pax(&pax, &mut extensions)?;
                }
                EntryType::XGlobalHeader => drop(self.extension(size, &block)?),
                _ => return self.entry(header, extensions, size).map(Some),
            }
        }
    }

    /// The current entry's data, to read to its end.
    pub fn data(&mut self) -> impl Read + '_ {
        DataReader { archive: self }
    }

    /// Reads whatever follows the end of the archive (a writer pads to
    /// its record size), so that the sender is never left blocked.
    pub fn drain(&mut self) -> Result<(), CliError> {
        io::copy(&mut self.inner, &mut io::sink())
            .map(drop)
            .map_err(|e| stream_error(&e))
    }

    fn entry(&mut self, header: &Header, ext: Extensions, size: u64) -> Result<Entry, CliError> {
        let path = ext.path.unwrap_or_else(|| header.path_bytes().into_owned());
        let link = ext
            .link
            .or_else(|| header.link_name_bytes().map(Cow::into_owned))
            .unwrap_or_default();
        let size = ext.size.unwrap_or(size);
        let kind = match header.entry_type() {
            // An old (v7) archive marks a directory only by its name's `/`.
            EntryType::Regular if path.ends_with(b"/") => Kind::Directory,
            EntryType::Regular | EntryType::Continuous => Kind::File,
            EntryType::Directory => Kind::Directory,
            EntryType::Symlink => Kind::Symlink,
            EntryType::Link => Kind::HardLink,
            EntryType::Char => Kind::Refused("a character device"),
            EntryType::Block => Kind::Refused("a block device"),
            EntryType::Fifo => Kind::Refused("a FIFO"),
            EntryType::GNUSparse => Kind::Refused("a sparse file (GNU tar --sparse)"),
            _ => Kind::Refused("of an unknown tar entry type"),
        };
        let mode = header.mode().map_err(|e| malformed(&e.to_string()))?;
        let mtime = ext.mtime.or_else(|| header.mtime().ok()).unwrap_or(0);
        // Only a regular file's data is written (see `data`); another's
        // (a hard link may declare one) is skipped by the next call.
        self.unread = size;
        self.padding = (BLOCK - size % BLOCK) % BLOCK;
        Ok(Entry {
            path,
            link,
            kind,
            mode: mode & 0o7777,
            mtime,
        })
    }

    /// An extension header's content: at most [`EXTENSION_MAX`] bytes.
    fn extension(&mut self, size: u64, block: &[u8]) -> Result<Vec<u8>, CliError> {
        if size > EXTENSION_MAX {
            let name = shown(&Header::from_byte_slice(block).path_bytes());
            return Err(malformed(&format!(
                "an extension header ({name}) declares {size} bytes, more than the {EXTENSION_MAX} \
                 a name or its attributes may take"
            )));
        }
        let mut content = Vec::with_capacity(size as usize);
        (&mut self.inner)
            .take(size)
            .read_to_end(&mut content)
            .map_err(|e| stream_error(&e))?;
        if content.len() as u64 != size {
            return Err(malformed("the archive ends inside an extension header"));
        }
        self.skip((BLOCK - size % BLOCK) % BLOCK)?;
        // A GNU long name ends with a NUL.
        while content.last() == Some(&0) {
            content.pop();
        }
        Ok(content)
    }

    fn skip_rest(&mut self) -> Result<(), CliError> {
        let rest = self.unread + self.padding;
        (self.unread, self.padding) = (0, 0);
        self.skip(rest)
    }

    fn skip(&mut self, len: u64) -> Result<(), CliError> {
        let skipped = io::copy(&mut (&mut self.inner).take(len), &mut io::sink());
        match skipped.map_err(|e| stream_error(&e))? == len {
            true => Ok(()),
            false => Err(malformed("the archive ends inside an entry")),
        }
    }

    /// A whole block, or `false` at the end of the stream before any byte.
    fn read_block(&mut self, block: &mut [u8]) -> Result<bool, CliError> {
        let mut filled = 0;
        while filled < block.len() {
            match self.inner.read(&mut block[filled..]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => return Err(malformed("the archive ends inside a header")),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(stream_error(&e)),
            }
        }
        Ok(true)
    }
}

/// The current entry's data; then its padding is skipped by the next
/// [`ArchiveReader::next_entry`].
struct DataReader<'a, R> {
    archive: &'a mut ArchiveReader<R>,
}

impl<R: Read> Read for DataReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let archive = &mut *self.archive;
        let want = buf.len().min(archive.unread.min(usize::MAX as u64) as usize);
        if want == 0 {
            return Ok(0);
        }
        let read = archive.inner.read(&mut buf[..want])?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside a file's data",
            ));
        }
        archive.unread -= read as u64;
        Ok(read)
    }
}

/// The header's checksum, as every tar reader checks it: a stream that is
/// no tar at all (an error message, a shell's noise) stops here.
fn check_sum(header: &Header) -> Result<(), CliError> {
    let bytes = header.as_bytes();
    let computed: u32 = bytes
        .iter()
        .enumerate()
        .map(|(at, &b)| {
            if (148..156).contains(&at) {
                u32::from(b' ')
            } else {
                u32::from(b)
            }
        })
        .sum();
    match header.cksum() {
        Ok(sum) if sum == computed => Ok(()),
        _ => Err(malformed(
            "a header's checksum is wrong: this is not a tar archive, or it is damaged",
        )),
    }
}

/// The PAX records that matter here: names, size and mtime.
fn apply_pax(pax: &[u8], extensions: &mut Extensions) -> Result<(), CliError> {
    for record in PaxExtensions::new(pax) {
        let record = record.map_err(|_| malformed("a PAX header is malformed"))?;
        let value = record.value_bytes();
        let number = || {
            std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.split('.').next()?.parse::<u64>().ok())
                .ok_or_else(|| malformed("a PAX header holds a number that is none"))
        };
        match record.key_bytes() {
            b"path" => extensions.path = Some(value.to_vec()),
            b"linkpath" => extensions.link = Some(value.to_vec()),
            b"size" => extensions.size = Some(number()?),
            b"mtime" => extensions.mtime = number().ok(),
            _ => {}
        }
    }
    Ok(())
}

/// The stream is no tar archive, or a damaged one.
fn malformed(what: &str) -> CliError {
    CliError::new(
        ErrorKind::Verification,
        format!("the archive from the guest cannot be read: {what}"),
    )
}

/// Reading the stream itself failed (the copy stopped, gzip's data is bad).
fn stream_error(error: &io::Error) -> CliError {
    CliError::new(
        ErrorKind::Verification,
        format!("the archive from the guest cannot be read: {error}"),
    )
}
