//! Reading `/proc/net/unix`, which tells how many clients a listener has
//! accepted but not who they are.
//!
//! Not with the `procfs` crate (0.18), whose `net::unix()` splits each line
//! on whitespace and keeps the first word of the path: a socket bound at
//! `/tmp/probe dir with spaces/qga sock` came back as `/tmp/probe`. It also
//! drops the `Flags` column that tells a listener apart, and fails the
//! whole table on one path that is not UTF-8.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// `/proc/net/unix` state of a listening socket (`SS_UNCONNECTED`).
pub(super) const STATE_UNCONNECTED: u8 = 0x01;
/// `/proc/net/unix` state of a connected socket (`SS_CONNECTED`); on a
/// path-named socket this means a connection its listener has accepted.
const STATE_CONNECTED: u8 = 0x03;
/// `__SO_ACCEPTCON` in the `Flags` column: the socket is listening.
pub(super) const FLAG_ACCEPTCON: u32 = 0x0001_0000;

/// One line of `/proc/net/unix`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct UnixEntry {
    flags: u32,
    state: u8,
    /// The inode of the socket itself (in sockfs), not of its file.
    inode: u64,
    /// The bound name as the kernel prints it: the path as passed to
    /// `bind()`, or `@` and the name for an abstract socket (with every
    /// NUL byte printed as `@`). Raw bytes, since paths need not be UTF-8.
    path: Option<Vec<u8>>,
}

pub(super) fn read_unix_table(proc_root: &Path) -> io::Result<Vec<UnixEntry>> {
    Ok(parse_unix_table(&fs::read(proc_root.join("net/unix"))?))
}

/// Parses the table, skipping the header and anything malformed.
///
/// Each line is `Num: RefCount Protocol Flags Type St Inode[ Path]`, the
/// inode right-aligned in five columns, then a single space and the path
/// verbatim — so the path may contain spaces and must not be split. (A path
/// containing a newline spreads over two lines; neither half matches.)
fn parse_unix_table(text: &[u8]) -> Vec<UnixEntry> {
    text.split(|&b| b == b'\n').filter_map(parse_unix_line).collect()
}

fn parse_unix_line(line: &[u8]) -> Option<UnixEntry> {
    let mut rest = line;
    let mut fields = [&b""[..]; 7];
    for field in &mut fields {
        let start = rest.iter().position(|&b| b != b' ')?;
        rest = &rest[start..];
        let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        *field = &rest[..end];
        rest = &rest[end..];
    }
    let [num, _refcount, _protocol, flags, _type, state, inode] = fields;
    // The header line has `Num` here; real lines a hex address and a colon.
    num.strip_suffix(b":")?;
    let path = match rest {
        [] => None,
        [b' ', path @ ..] if !path.is_empty() => Some(path.to_vec()),
        _ => return None,
    };
    let text = |field: &[u8]| std::str::from_utf8(field).ok().map(str::to_owned);
    Some(UnixEntry {
        flags: u32::from_str_radix(&text(flags)?, 16).ok()?,
        state: u8::from_str_radix(&text(state)?, 16).ok()?,
        inode: text(inode)?.parse().ok()?,
        path,
    })
}

/// The socket inodes of the connections accepted by the listener at `path`.
pub(super) fn accepted_connections(path: &Path, table: &[UnixEntry]) -> Vec<u64> {
    let names = names_of(path, table);
    table
        .iter()
        .filter(|entry| entry.state == STATE_CONNECTED)
        .filter(|entry| entry.path.as_ref().is_some_and(|p| names.contains(p)))
        .map(|entry| entry.inode)
        .collect()
}

/// The spellings under which the table may show the socket at `path`: as
/// given, canonical, and any listener's absolute path naming the same file.
fn names_of(path: &Path, table: &[UnixEntry]) -> BTreeSet<Vec<u8>> {
    let mut names = BTreeSet::new();
    names.insert(path.as_os_str().as_bytes().to_vec());
    if crate::domain::is_abstract(path) {
        return names; // no file: `@NAME` is how the table shows it
    }
    if let Ok(canonical) = fs::canonicalize(path) {
        names.insert(canonical.into_os_string().into_vec());
    }
    let Ok(meta) = fs::metadata(path) else {
        return names;
    };
    let identity = (meta.dev(), meta.ino());
    let listeners: BTreeSet<&Vec<u8>> = table
        .iter()
        .filter(|entry| entry.state == STATE_UNCONNECTED && entry.flags & FLAG_ACCEPTCON != 0)
        .filter_map(|entry| entry.path.as_ref())
        // Relative paths are relative to a working directory we don't know.
        .filter(|name| name.starts_with(b"/") && !names.contains(*name))
        .collect();
    for name in listeners {
        let same = fs::metadata(Path::new(OsStr::from_bytes(name)))
            .is_ok_and(|other| (other.dev(), other.ino()) == identity);
        if same {
            names.insert(name.clone());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::socket_holders::test_support::{line, HEADER};

    #[test]
    fn parses_the_table_keeping_paths_whole() {
        let text = format!(
            "{HEADER}{}\n{}\n{}\n{}\n{}\n\ngarbage\n",
            line(1, 123, "/tmp/a dir/agent sock"),
            line(3, 77001, ""),
            line(1, 5, "@abstract@name"),
            line(3, 6, " leading space"),
            "0000000012345678: 00000002 00000000 00010000 0001 01 12345 ",
        );
        let entries = parse_unix_table(text.as_bytes());
        let summary: Vec<_> = entries
            .iter()
            .map(|e| {
                (
                    e.flags,
                    e.state,
                    e.inode,
                    e.path.as_deref().map(|p| String::from_utf8_lossy(p)),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (FLAG_ACCEPTCON, 1, 123, Some("/tmp/a dir/agent sock".into())),
                (0, 3, 77001, None),
                (FLAG_ACCEPTCON, 1, 5, Some("@abstract@name".into())),
                (0, 3, 6, Some(" leading space".into())),
            ]
        );
    }

    #[test]
    fn parses_paths_that_are_not_utf8() {
        let mut text = line(1, 9, "").into_bytes();
        text.extend_from_slice(b" /tmp/\xff.sock\n");
        let entries = parse_unix_table(&text);
        assert_eq!(entries[0].path.as_deref(), Some(&b"/tmp/\xff.sock"[..]));
    }
}
