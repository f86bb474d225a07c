//! Finding out whether an agent socket is already held by another client.
//!
//! QEMU's socket chardev (and `qemu-ga` on its own listening socket) serves
//! one client at a time. While that client stays connected, a second
//! client's `connect()` still succeeds — the kernel queues it in the
//! listener's backlog — but nobody ever reads from it, so its commands go
//! unanswered until it times out. libvirtd, for one, stays connected to the
//! `org.qemu.guest_agent.0` channel of every domain it runs. Looking before
//! connecting turns a puzzling timeout into "held by libvirtd (pid 1234)".
//!
//! Two kernel interfaces are used, both readable without privileges:
//!
//! * `/proc/net/unix` lists every UNIX socket of our network namespace.
//!   The listener bound at a path shows that path with state `01`
//!   (unconnected) and the `__SO_ACCEPTCON` flag; every connection it has
//!   accepted shows the *same* path with state `03` (connected), because an
//!   accepted socket shares its listener's address. A connection still
//!   waiting in the backlog shows state `02` (connecting) and inode 0. The
//!   client ends show no path at all, so this file tells how many clients
//!   are connected but not who they are.
//! * `sock_diag` netlink (`NETLINK_SOCK_DIAG`, see sock_diag(7) and
//!   `linux/unix_diag.h`) reports, for each socket, the inode of its peer.
//!   The peer of an accepted connection is the client's socket, and the
//!   processes holding it have a `/proc/PID/fd/*` link reading
//!   `socket:[INODE]`.
//!
//! Limitation: `/proc/net/unix` shows the path exactly as it was passed to
//! `bind()`, not as resolved by the kernel. A socket bound as `./qga.sock`
//! shows as `./qga.sock`, whatever the binder's working directory was. We
//! match the path as given, its canonical form, and any absolute path in the
//! table that names the same file (same device and inode), which covers
//! absolute binds through symlinks; a socket bound through a relative path
//! is only found when given by that same relative spelling. Paths are also
//! compared as strings, so the connections of an old listener whose file was
//! since replaced by a new listener at the same path count for the new one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// `/proc/net/unix` state of a listening socket (`SS_UNCONNECTED`).
const STATE_UNCONNECTED: u8 = 0x01;
/// `/proc/net/unix` state of a connected socket (`SS_CONNECTED`); on a
/// path-named socket this means a connection its listener has accepted.
const STATE_CONNECTED: u8 = 0x03;
/// `__SO_ACCEPTCON` in the `Flags` column: the socket is listening.
const FLAG_ACCEPTCON: u32 = 0x0001_0000;

/// A process holding a connection to the socket, as far as we could tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// `None` when the connection's owner could not be found: sock_diag is
    /// unavailable, or the process's `/proc/PID/fd` is not readable to us
    /// (another user's, without root), or the socket is in flight over
    /// `SCM_RIGHTS`.
    pub pid: Option<u32>,
    /// The program name, from `/proc/PID/comm` (or `cmdline` where `comm`
    /// was cut short by the kernel's 15-byte limit).
    pub command: Option<String>,
}

impl Holder {
    /// A connection whose owner we could not find.
    const UNKNOWN: Holder = Holder {
        pid: None,
        command: None,
    };
}

/// How many connections the listener at `path` has accepted and not yet
/// closed — our own included. Connections still waiting in the backlog are
/// not counted: they are the ones that will not be served.
pub fn connected_clients(path: &Path) -> io::Result<usize> {
    connected_clients_in(path, Path::new("/proc"))
}

/// The processes holding connections to the listener at `path`, except our
/// own process. One [`Holder`] per process (a process holding several
/// connections appears once), plus one with `pid: None` for each connection
/// whose owner could not be found. Connections whose client has already
/// gone are left out: the server will notice and serve the next client.
///
/// Empty when nothing is held, and also when `/proc` cannot be read: this
/// is for explaining a failure, never a reason for one.
pub fn holders(path: &Path) -> Vec<Holder> {
    holders_in(path, Path::new("/proc"), std::process::id(), sock_diag_peers)
}

/// A sentence for an error message, such as `held by libvirtd (pid 1234)`
/// or `held by another client`.
pub fn describe(holders: &[Holder]) -> String {
    let mut parts: Vec<String> = Vec::new();
    for holder in holders {
        match (holder.pid, &holder.command) {
            (Some(pid), Some(command)) => parts.push(format!("{command} (pid {pid})")),
            (Some(pid), None) => parts.push(format!("process {pid}")),
            (None, _) => {}
        }
    }
    match holders.iter().filter(|holder| holder.pid.is_none()).count() {
        0 => {}
        1 if parts.is_empty() => parts.push("another client".to_owned()),
        1 => parts.push("one more client".to_owned()),
        n if parts.is_empty() => parts.push(format!("{n} other clients")),
        n => parts.push(format!("{n} more clients")),
    }
    match parts.split_last() {
        None => "not held by another client".to_owned(),
        Some((last, [])) => format!("held by {last}"),
        Some((last, others)) => format!("held by {} and {last}", others.join(", ")),
    }
}

fn connected_clients_in(path: &Path, proc_root: &Path) -> io::Result<usize> {
    let table = read_unix_table(proc_root)?;
    Ok(accepted_connections(path, &table).len())
}

/// `peers_of` stands for sock_diag so that tests can do without it.
fn holders_in(
    path: &Path,
    proc_root: &Path,
    own_pid: u32,
    peers_of: impl FnOnce() -> io::Result<HashMap<u64, u64>>,
) -> Vec<Holder> {
    let Ok(table) = read_unix_table(proc_root) else {
        return Vec::new();
    };
    let accepted = accepted_connections(path, &table);
    if accepted.is_empty() {
        return Vec::new();
    }
    let peers = match peers_of() {
        Ok(peers) => peers,
        // Without sock_diag we know how many are connected but not who (nor
        // whether one of them is us).
        Err(_) => return vec![Holder::UNKNOWN; accepted.len()],
    };
    // A server-side socket missing from the dump was closed in between; one
    // without a peer (or with peer inode 0) lost its client, and the server
    // has not noticed yet. Neither is held by anybody.
    let clients: Vec<u64> = accepted
        .iter()
        .filter_map(|inode| peers.get(inode).copied())
        .filter(|&peer| peer != 0)
        .collect();
    let owners = socket_owners(proc_root, &clients.iter().copied().collect());

    let mut known: BTreeMap<u32, Holder> = BTreeMap::new();
    let mut unknown = 0;
    for client in &clients {
        match owners.get(client) {
            Some(pids) => {
                for &pid in pids.iter().filter(|&&pid| pid != own_pid) {
                    known.entry(pid).or_insert_with(|| Holder {
                        pid: Some(pid),
                        command: command_of(&proc_root.join(pid.to_string())),
                    });
                }
            }
            None => unknown += 1,
        }
    }
    let mut holders: Vec<Holder> = known.into_values().collect();
    holders.extend(std::iter::repeat(Holder::UNKNOWN).take(unknown));
    holders
}

/// One line of `/proc/net/unix`.
#[derive(Debug, PartialEq, Eq)]
struct UnixEntry {
    flags: u32,
    state: u8,
    /// The inode of the socket itself (in sockfs), not of its file.
    inode: u64,
    /// The bound name as the kernel prints it: the path as passed to
    /// `bind()`, or `@` and the name for an abstract socket (with every
    /// NUL byte printed as `@`). Raw bytes, since paths need not be UTF-8.
    path: Option<Vec<u8>>,
}

fn read_unix_table(proc_root: &Path) -> io::Result<Vec<UnixEntry>> {
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
fn accepted_connections(path: &Path, table: &[UnixEntry]) -> Vec<u64> {
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

/// The pids of the processes having each of `inodes` open, found by reading
/// every `/proc/PID/fd/*` link. Processes we may not look into are skipped.
fn socket_owners(proc_root: &Path, inodes: &BTreeSet<u64>) -> HashMap<u64, Vec<u32>> {
    let mut owners: HashMap<u64, Vec<u32>> = HashMap::new();
    if inodes.is_empty() {
        return owners;
    }
    let Ok(processes) = fs::read_dir(proc_root) else {
        return owners;
    };
    for process in processes.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Some(inode) = fs::read_link(fd.path())
                .ok()
                .and_then(|target| socket_inode(&target))
            else {
                continue;
            };
            if inodes.contains(&inode) {
                let pids = owners.entry(inode).or_default();
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
    }
    owners
}

/// The inode in a `socket:[INODE]` fd link.
fn socket_inode(target: &Path) -> Option<u64> {
    let text = target.to_str()?;
    text.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// The program name of a process. `comm` is what `ps` shows, but the kernel
/// cuts it to 15 bytes (`qemu-system-x86_64` becomes `qemu-system-x86`);
/// then the file name of `argv[0]` is used if it starts the same.
fn command_of(proc_dir: &Path) -> Option<String> {
    const COMM_MAX: usize = 15;
    let comm = fs::read_to_string(proc_dir.join("comm")).ok();
    let comm = comm
        .as_deref()
        .map(|c| c.trim_end_matches('\n'))
        .filter(|c| !c.is_empty());
    let argv0 = fs::read(proc_dir.join("cmdline")).ok().and_then(|raw| {
        let first = raw.split(|&b| b == 0).next()?;
        let name = Path::new(OsStr::from_bytes(first)).file_name()?;
        Some(name.to_string_lossy().into_owned())
    });
    match (comm, argv0) {
        (Some(comm), Some(argv0)) if comm.len() == COMM_MAX && argv0.starts_with(comm) => Some(argv0),
        (Some(comm), _) => Some(comm.to_owned()),
        (None, argv0) => argv0.filter(|name| !name.is_empty()),
    }
}

// sock_diag, from linux/netlink.h, linux/sock_diag.h and linux/unix_diag.h.
// Everything is in native byte order.

/// `struct nlmsghdr`: length, type, flags, sequence number, port id.
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_ROOT | NLM_F_MATCH`: all sockets, not one looked up by inode
/// (which would need its cookie).
const NLM_F_DUMP: u16 = 0x300;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `struct unix_diag_req`: family, protocol, pad, states, inode, show,
/// cookie[2].
const UNIX_DIAG_REQ_LEN: usize = 24;
/// `struct unix_diag_msg`: family, type, state, pad, inode, cookie[2].
const UNIX_DIAG_MSG_LEN: usize = 16;
/// `udiag_states` is a bit mask of kernel socket states (`TCP_*` numbering,
/// not the `SS_*` of `/proc/net/unix`); accepted connections are in
/// `TCP_ESTABLISHED` (1).
const TCP_ESTABLISHED_BIT: u32 = 1 << 1;
const UDIAG_SHOW_PEER: u32 = 0x4;
/// The attribute carrying the peer's inode, a `u32`.
const UNIX_DIAG_PEER: u16 = 2;

/// The peer inode of every connected UNIX socket of our network namespace,
/// keyed by the socket's own inode.
fn sock_diag_peers() -> io::Result<HashMap<u64, u64>> {
    // SAFETY: socket() takes no pointers; a non-negative result is a new
    // file descriptor nobody else owns, so OwnedFd may take and close it.
    let fd = unsafe {
        let fd = nix::libc::socket(
            nix::libc::AF_NETLINK,
            nix::libc::SOCK_DGRAM | nix::libc::SOCK_CLOEXEC,
            nix::libc::NETLINK_SOCK_DIAG,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        OwnedFd::from_raw_fd(fd)
    };
    // Plain write() and read() suffice: an unconnected netlink socket sends
    // to the kernel (port 0), and each read() returns one datagram.
    let mut socket = fs::File::from(fd);
    let seq = 1;
    socket.write_all(&dump_request(seq))?;
    let mut peers = HashMap::new();
    // The kernel's dump datagrams are at most 32 KiB; a cut one would show
    // as a message running past the end, and fail to parse.
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let len = socket.read(&mut buffer)?;
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "sock_diag: empty reply",
            ));
        }
        if parse_replies(&buffer[..len], seq, &mut peers)? {
            return Ok(peers);
        }
    }
}

fn dump_request(seq: u32) -> Vec<u8> {
    let len = NLMSG_HDRLEN + UNIX_DIAG_REQ_LEN;
    let mut request = Vec::with_capacity(len);
    request.extend_from_slice(&(len as u32).to_ne_bytes());
    request.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request.extend_from_slice(&seq.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    request.push(nix::libc::AF_UNIX as u8); // sdiag_family
    request.push(0); // sdiag_protocol
    request.extend_from_slice(&0u16.to_ne_bytes()); // pad
    request.extend_from_slice(&TCP_ESTABLISHED_BIT.to_ne_bytes()); // udiag_states
    request.extend_from_slice(&0u32.to_ne_bytes()); // udiag_ino: ignored in a dump
    request.extend_from_slice(&UDIAG_SHOW_PEER.to_ne_bytes()); // udiag_show
    request.extend_from_slice(&[0; 8]); // udiag_cookie: ignored in a dump
    request
}

/// Reads one datagram of netlink messages into `peers`; true once the dump
/// is done.
fn parse_replies(mut data: &[u8], seq: u32, peers: &mut HashMap<u64, u64>) -> io::Result<bool> {
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, "sock_diag: malformed reply");
    while data.len() >= NLMSG_HDRLEN {
        let len = u32_at(data, 0) as usize;
        let kind = u16_at(data, 4);
        let message_seq = u32_at(data, 8);
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(malformed());
        }
        let payload = &data[NLMSG_HDRLEN..len];
        data = &data[align4(len).min(data.len())..];
        if message_seq != seq {
            // Not an answer to our request; cannot happen on a fresh socket.
            continue;
        }
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                // A negative errno, then the request it answers.
                let errno = payload
                    .get(..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().unwrap()));
                return Err(match errno {
                    Some(errno) if errno < 0 => io::Error::from_raw_os_error(-errno),
                    _ => malformed(),
                });
            }
            SOCK_DIAG_BY_FAMILY => {
                if payload.len() < UNIX_DIAG_MSG_LEN {
                    return Err(malformed());
                }
                let inode = u32_at(payload, 4);
                if let Some(peer) = peer_attribute(&payload[UNIX_DIAG_MSG_LEN..]) {
                    peers.insert(u64::from(inode), u64::from(peer));
                }
            }
            _ => {}
        }
    }
    Ok(false)
}

/// The `UNIX_DIAG_PEER` value among the `struct rtattr`s (length and type
/// as `u16`s, then the value, padded to 4 bytes) following a message.
fn peer_attribute(mut attributes: &[u8]) -> Option<u32> {
    while attributes.len() >= 4 {
        let len = usize::from(u16_at(attributes, 0));
        let kind = u16_at(attributes, 2);
        if len < 4 || len > attributes.len() {
            return None;
        }
        if kind == UNIX_DIAG_PEER && len >= 8 {
            return Some(u32_at(attributes, 4));
        }
        attributes = &attributes[align4(len).min(attributes.len())..];
    }
    None
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

fn u16_at(data: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([data[at], data[at + 1]])
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    const HEADER: &str = "Num       RefCount Protocol Flags    Type St Inode Path\n";

    /// A `/proc` with the given `net/unix` lines and processes, each with
    /// its comm, cmdline and the socket inodes it has open.
    fn fake_proc(unix: &[&str], processes: &[(u32, &str, &str, &[u64])]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("net")).unwrap();
        let mut table = HEADER.to_owned();
        for line in unix {
            table.push_str(line);
            table.push('\n');
        }
        fs::write(root.path().join("net/unix"), table).unwrap();
        for (pid, comm, cmdline, sockets) in processes {
            let dir = root.path().join(pid.to_string());
            fs::create_dir_all(dir.join("fd")).unwrap();
            fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
            fs::write(dir.join("cmdline"), cmdline.replace(' ', "\0") + "\0").unwrap();
            // Like the real thing: stdin and a non-socket before the sockets.
            std::os::unix::fs::symlink("/dev/null", dir.join("fd/0")).unwrap();
            std::os::unix::fs::symlink("pipe:[77]", dir.join("fd/1")).unwrap();
            for (fd, inode) in sockets.iter().enumerate() {
                let link = dir.join(format!("fd/{}", fd + 3));
                std::os::unix::fs::symlink(format!("socket:[{inode}]"), link).unwrap();
            }
        }
        root
    }

    fn line(state: u8, inode: u64, path: &str) -> String {
        let flags = if state == STATE_UNCONNECTED {
            FLAG_ACCEPTCON
        } else {
            0
        };
        let refs = if state == STATE_UNCONNECTED { 2 } else { 3 };
        let mut line =
            format!("0000000012345678: {refs:08X} 00000000 {flags:08X} 0001 {state:02X} {inode:5}");
        if !path.is_empty() {
            line.push(' ');
            line.push_str(path);
        }
        line
    }

    /// libvirtd (pid 500) connected to /run/qga.sock, as 101 <-> 102; a
    /// second client waiting in the backlog; other sockets around.
    fn libvirt_table() -> Vec<String> {
        vec![
            line(1, 100, "/run/qga.sock"),
            line(3, 101, "/run/qga.sock"),
            line(2, 0, "/run/qga.sock"),
            line(3, 102, ""),
            line(1, 200, "/run/other.sock"),
            line(3, 201, "/run/other.sock"),
            line(3, 202, ""),
            line(1, 300, "@/run/qga.sock"),
        ]
    }

    fn peers(pairs: &[(u64, u64)]) -> impl FnOnce() -> io::Result<HashMap<u64, u64>> {
        let map: HashMap<u64, u64> = pairs.iter().copied().collect();
        move || Ok(map)
    }

    fn held_by(pid: u32, command: &str) -> Holder {
        Holder {
            pid: Some(pid),
            command: Some(command.to_owned()),
        }
    }

    const UNKNOWN: Holder = Holder::UNKNOWN;

    fn lines(table: &[String]) -> Vec<&str> {
        table.iter().map(String::as_str).collect()
    }

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

    #[test]
    fn counts_only_accepted_connections_of_that_path() {
        let root = fake_proc(&lines(&libvirt_table()), &[]);
        assert_eq!(
            connected_clients_in(Path::new("/run/qga.sock"), root.path()).unwrap(),
            1
        );
        assert_eq!(
            connected_clients_in(Path::new("/run/other.sock"), root.path()).unwrap(),
            1
        );
        assert_eq!(
            connected_clients_in(Path::new("/run/none.sock"), root.path()).unwrap(),
            0
        );
        // The abstract socket `\0/run/qga.sock` is another socket.
        assert_eq!(
            connected_clients_in(Path::new("@/run/qga.sock"), root.path()).unwrap(),
            0
        );
    }

    #[test]
    fn counts_paths_with_spaces() {
        let table = [
            line(1, 10, "/run/my vm/qga.sock"),
            line(3, 11, "/run/my vm/qga.sock"),
        ];
        let root = fake_proc(&lines(&table), &[]);
        assert_eq!(
            connected_clients_in(Path::new("/run/my vm/qga.sock"), root.path()).unwrap(),
            1
        );
        assert_eq!(
            connected_clients_in(Path::new("/run/my"), root.path()).unwrap(),
            0
        );
    }

    /// The limitation: the table shows the path as bound, so a socket bound
    /// relatively is only found under that same spelling.
    #[test]
    fn relative_binds_match_only_as_spelled() {
        let table = [line(1, 10, "./qga.sock"), line(3, 11, "./qga.sock")];
        let root = fake_proc(&lines(&table), &[]);
        assert_eq!(
            connected_clients_in(Path::new("./qga.sock"), root.path()).unwrap(),
            1
        );
        assert_eq!(
            connected_clients_in(Path::new("/run/vm/qga.sock"), root.path()).unwrap(),
            0
        );
    }

    #[test]
    fn no_table_is_an_error_for_counting_and_nobody_for_holders() {
        let root = tempfile::tempdir().unwrap();
        assert!(connected_clients_in(Path::new("/run/qga.sock"), root.path()).is_err());
        assert_eq!(
            holders_in(Path::new("/run/qga.sock"), root.path(), 1, peers(&[])),
            vec![]
        );
    }

    #[test]
    fn names_the_process_holding_the_peer() {
        let root = fake_proc(
            &lines(&libvirt_table()),
            &[
                (500, "libvirtd", "/usr/sbin/libvirtd --timeout 120", &[7, 102]),
                (600, "other", "other", &[202]),
            ],
        );
        let found = holders_in(
            Path::new("/run/qga.sock"),
            root.path(),
            999,
            peers(&[(101, 102), (201, 202)]),
        );
        assert_eq!(found, vec![held_by(500, "libvirtd")]);
        assert_eq!(describe(&found), "held by libvirtd (pid 500)");
    }

    #[test]
    fn leaves_out_our_own_process() {
        let root = fake_proc(
            &lines(&libvirt_table()),
            &[(500, "virtomate", "virtomate", &[102])],
        );
        let found = holders_in(Path::new("/run/qga.sock"), root.path(), 500, peers(&[(101, 102)]));
        assert_eq!(found, vec![]);
        assert_eq!(
            connected_clients_in(Path::new("/run/qga.sock"), root.path()).unwrap(),
            1
        );
    }

    #[test]
    fn names_every_process_sharing_the_peer_once() {
        let mut table = libvirt_table();
        table.extend([line(3, 103, "/run/qga.sock"), line(3, 104, "")]);
        let root = fake_proc(
            &lines(&table),
            &[
                (500, "libvirtd", "libvirtd", &[102, 104]),
                (501, "libvirtd", "libvirtd", &[102]),
                (9, "me", "", &[102]),
            ],
        );
        let found = holders_in(
            Path::new("/run/qga.sock"),
            root.path(),
            9,
            peers(&[(101, 102), (103, 104)]),
        );
        assert_eq!(found, vec![held_by(500, "libvirtd"), held_by(501, "libvirtd")]);
        assert_eq!(
            describe(&found),
            "held by libvirtd (pid 500) and libvirtd (pid 501)"
        );
    }

    #[test]
    fn a_peer_nobody_visibly_owns_is_another_client() {
        let root = fake_proc(&lines(&libvirt_table()), &[(500, "unrelated", "unrelated", &[7])]);
        let found = holders_in(Path::new("/run/qga.sock"), root.path(), 999, peers(&[(101, 102)]));
        assert_eq!(found, vec![UNKNOWN]);
        assert_eq!(describe(&found), "held by another client");
    }

    #[test]
    fn a_client_that_left_holds_nothing() {
        let root = fake_proc(&lines(&libvirt_table()), &[]);
        // Peer inode 0: the client closed its end.
        assert_eq!(
            holders_in(Path::new("/run/qga.sock"), root.path(), 999, peers(&[(101, 0)])),
            vec![]
        );
        // Not in the dump: the connection closed in between.
        assert_eq!(
            holders_in(Path::new("/run/qga.sock"), root.path(), 999, peers(&[])),
            vec![]
        );
    }

    #[test]
    fn without_sock_diag_every_connection_is_another_client() {
        let mut table = libvirt_table();
        table.push(line(3, 103, "/run/qga.sock"));
        let root = fake_proc(&lines(&table), &[(500, "libvirtd", "libvirtd", &[102])]);
        let no_netlink = || Err(io::Error::from_raw_os_error(nix::libc::EPROTONOSUPPORT));
        let found = holders_in(Path::new("/run/qga.sock"), root.path(), 999, no_netlink);
        assert_eq!(found, vec![UNKNOWN, UNKNOWN]);
        assert_eq!(describe(&found), "held by 2 other clients");
    }

    #[test]
    fn prefers_argv0_when_comm_was_cut_short() {
        let root = fake_proc(
            &[],
            &[
                (1, "qemu-system-x86", "/usr/bin/qemu-system-x86_64 -name vm", &[]),
                (2, "libvirtd", "/usr/sbin/libvirtd --daemon", &[]),
                (3, "worker-thread-1", "/usr/bin/some-other-program", &[]),
            ],
        );
        let command = |pid: u32| command_of(&root.path().join(pid.to_string()));
        assert_eq!(command(1).as_deref(), Some("qemu-system-x86_64"));
        assert_eq!(command(2).as_deref(), Some("libvirtd"));
        assert_eq!(command(3).as_deref(), Some("worker-thread-1"));
        assert_eq!(command(4), None);
    }

    #[test]
    fn describes_holders_in_a_sentence() {
        assert_eq!(describe(&[]), "not held by another client");
        assert_eq!(
            describe(&[Holder {
                pid: Some(7),
                command: None
            }]),
            "held by process 7"
        );
        assert_eq!(
            describe(&[held_by(1, "a"), held_by(2, "b"), UNKNOWN]),
            "held by a (pid 1), b (pid 2) and one more client"
        );
        assert_eq!(
            describe(&[held_by(1, "a"), UNKNOWN, UNKNOWN]),
            "held by a (pid 1) and 2 more clients"
        );
    }

    fn nlmsg(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut message = Vec::new();
        message.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        message.extend_from_slice(&kind.to_ne_bytes());
        message.extend_from_slice(&0x2u16.to_ne_bytes()); // NLM_F_MULTI
        message.extend_from_slice(&seq.to_ne_bytes());
        message.extend_from_slice(&4321u32.to_ne_bytes());
        message.extend_from_slice(payload);
        message.resize(align4(message.len()), 0);
        message
    }

    fn diag_msg(inode: u32, attributes: &[(u16, &[u8])]) -> Vec<u8> {
        let mut payload = vec![nix::libc::AF_UNIX as u8, 1, 1, 0];
        payload.extend_from_slice(&inode.to_ne_bytes());
        payload.extend_from_slice(&[0xff; 8]);
        for (kind, value) in attributes {
            payload.extend_from_slice(&(4 + value.len() as u16).to_ne_bytes());
            payload.extend_from_slice(&kind.to_ne_bytes());
            payload.extend_from_slice(value);
            payload.resize(align4(payload.len()), 0);
        }
        payload
    }

    #[test]
    fn reads_peers_from_sock_diag_replies() {
        const UNIX_DIAG_NAME: u16 = 0;
        let mut datagram = nlmsg(
            SOCK_DIAG_BY_FAMILY,
            1,
            &diag_msg(
                101,
                &[
                    (UNIX_DIAG_NAME, b"/run/qga"),
                    (UNIX_DIAG_PEER, &102u32.to_ne_bytes()),
                ],
            ),
        );
        datagram.extend(nlmsg(
            SOCK_DIAG_BY_FAMILY,
            1,
            &diag_msg(103, &[(UNIX_DIAG_NAME, b"/x")]),
        ));
        datagram.extend(nlmsg(
            SOCK_DIAG_BY_FAMILY,
            9,
            &diag_msg(105, &[(UNIX_DIAG_PEER, &[6, 0, 0, 0])]),
        ));
        let mut peers = HashMap::new();
        assert!(!parse_replies(&datagram, 1, &mut peers).unwrap());
        assert_eq!(peers, HashMap::from([(101, 102)]));

        let done = nlmsg(NLMSG_DONE, 1, &0i32.to_ne_bytes());
        assert!(parse_replies(&done, 1, &mut peers).unwrap());
    }

    #[test]
    fn sock_diag_errors_and_garbage_are_errors() {
        let mut error = (-nix::libc::EINVAL).to_ne_bytes().to_vec();
        error.extend(dump_request(1));
        let error = parse_replies(&nlmsg(NLMSG_ERROR, 1, &error), 1, &mut HashMap::new()).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(nix::libc::EINVAL));

        let mut cut = nlmsg(SOCK_DIAG_BY_FAMILY, 1, &diag_msg(101, &[]));
        cut.truncate(cut.len() - 4);
        assert!(parse_replies(&cut, 1, &mut HashMap::new()).is_err());
    }

    #[test]
    fn the_request_has_the_kernels_layout() {
        let request = dump_request(7);
        assert_eq!(request.len(), 40);
        assert_eq!(u32_at(&request, 0), 40);
        assert_eq!(u16_at(&request, 4), 20);
        assert_eq!(u16_at(&request, 6), 0x301);
        assert_eq!(u32_at(&request, 8), 7);
        assert_eq!(request[16], 1); // AF_UNIX
        assert_eq!(u32_at(&request, 20), 1 << 1);
        assert_eq!(u32_at(&request, 28), UDIAG_SHOW_PEER);
    }

    /// A client in another process, killed when dropped.
    struct Client(std::process::Child);

    impl Client {
        fn connect(path: &Path) -> Client {
            let script = "import socket, sys, time\n\
                          s = socket.socket(socket.AF_UNIX)\n\
                          s.connect(sys.argv[1])\n\
                          time.sleep(60)\n";
            let child = Command::new("python3")
                .args(["-c", script])
                .arg(path)
                .stdin(Stdio::null())
                .spawn()
                .expect("these tests need python3 for a client in another process");
            Client(child)
        }
    }

    impl Drop for Client {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Accepts the next connection, failing rather than hanging if the
    /// client never comes.
    fn accept(listener: &UnixListener, client: Option<&mut Client>) -> UnixStream {
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut client = client;
        loop {
            match listener.accept() {
                Ok((stream, _)) => return stream,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => panic!("accept: {error}"),
            }
            if let Some(client) = client.as_mut() {
                if let Some(status) = client.0.try_wait().unwrap() {
                    panic!("the client exited before connecting: {status}");
                }
            }
            assert!(Instant::now() < deadline, "no client connected");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn finds_a_real_client_in_another_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        assert_eq!(connected_clients(&path).unwrap(), 0);
        assert_eq!(holders(&path), vec![]);

        let mut client = Client::connect(&path);
        let _from_client = accept(&listener, Some(&mut client));
        assert_eq!(connected_clients(&path).unwrap(), 1);
        let found = holders(&path);
        match sock_diag_peers() {
            Ok(_) => {
                assert_eq!(found.len(), 1, "{found:?}");
                assert_eq!(found[0].pid, Some(client.0.id()));
                let command = found[0].command.as_deref().unwrap_or_default();
                assert!(command.starts_with("python"), "{command}");
            }
            Err(error) => {
                eprintln!("sock_diag unavailable ({error}): checking the fallback only");
                assert_eq!(found, vec![UNKNOWN]);
            }
        }

        // Our own connection counts but is not named.
        let _ours = UnixStream::connect(&path).unwrap();
        let _from_us = accept(&listener, None);
        assert_eq!(connected_clients(&path).unwrap(), 2);
        if sock_diag_peers().is_ok() {
            assert_eq!(holders(&path), found);
        }

        // Once the client is gone it holds nothing, although the server has
        // not closed its end yet.
        drop(client);
        assert_eq!(connected_clients(&path).unwrap(), 2);
        if sock_diag_peers().is_ok() {
            assert_eq!(holders(&path), vec![]);
        }
        drop(_from_client);
        assert_eq!(connected_clients(&path).unwrap(), 1);
    }

    #[test]
    fn finds_a_real_socket_by_other_spellings_of_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("my vm");
        fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        // Bound through the symlink, so the kernel shows `.../link/qga.sock`.
        let listener = UnixListener::bind(dir.path().join("link/qga.sock")).unwrap();
        let _ours = UnixStream::connect(real.join("qga.sock")).unwrap();
        let _accepted = accept(&listener, None);

        assert_eq!(connected_clients(&dir.path().join("link/qga.sock")).unwrap(), 1);
        assert_eq!(connected_clients(&real.join("qga.sock")).unwrap(), 1);
        assert_eq!(connected_clients(&dir.path().join("link/./qga.sock")).unwrap(), 1);
        // Relative to our working directory, however deep that is.
        let cwd = std::env::current_dir().unwrap();
        let mut relative = std::path::PathBuf::new();
        for _ in cwd.components().skip(1) {
            relative.push("..");
        }
        relative.push(real.join("qga.sock").strip_prefix("/").unwrap());
        assert_eq!(connected_clients(&relative).unwrap(), 1);
        // Our own connection: counted, not named.
        assert_eq!(holders(&real.join("qga.sock")), vec![]);
    }
}
