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
//! * `sock_diag` netlink (`NETLINK_SOCK_DIAG`, see sock_diag(7) and
//!   `linux/unix_diag.h`) reports, for each connected socket, the inode of
//!   its peer and (`UDIAG_SHOW_VFS`) the device and inode of the socket
//!   file it is bound to. A connection the listener accepted shares its
//!   listener's file, so the accepted connections of the socket at a path
//!   are those whose file is the one `stat()` finds there, however the
//!   listener spelled the path when it bound it. The peer of an accepted
//!   connection is the client's socket, and the processes holding it have
//!   a `/proc/PID/fd/*` link reading `socket:[INODE]`.
//! * `/proc/net/unix` lists every UNIX socket of our network namespace.
//!   The listener bound at a path shows that path with state `01`
//!   (unconnected) and the `__SO_ACCEPTCON` flag; every connection it has
//!   accepted shows the *same* path with state `03` (connected), because an
//!   accepted socket shares its listener's address. A connection still
//!   waiting in the backlog shows state `02` (connecting) and inode 0. The
//!   client ends show no path at all, so this file tells how many clients
//!   are connected but not who they are. It is the fallback where
//!   sock_diag is unavailable, and the way to abstract sockets (`@NAME`),
//!   which have no file.
//!
//! Limitation of the fallback: `/proc/net/unix` shows the path exactly as
//! it was passed to `bind()`, not as resolved by the kernel. A socket bound
//! as `./qga.sock` shows as `./qga.sock`, whatever the binder's working
//! directory was. There we match the path as given, its canonical form, and
//! any absolute path in the table that names the same file (same device and
//! inode), which covers absolute binds through symlinks; a socket bound
//! through a relative path is only found when given by that same relative
//! spelling. Paths are also compared as strings there, so the connections
//! of an old listener whose file was since replaced by a new listener at
//! the same path count for the new one. Matching by file through sock_diag
//! has neither problem; its one imprecision is the kernel's: it reports
//! inode numbers cut to 32 bits.

mod owners;
mod sock_diag;
#[cfg(test)]
mod test_support;
mod unix_table;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use owners::{command_of, socket_owners};
use sock_diag::{sock_diag_connected, sock_diag_listening, Connected};
use unix_table::{accepted_connections, read_unix_table};

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
    /// The process's uid (the owner of `/proc/PID`) when it is another
    /// user's than ours: a virtomate of another user does not take turns
    /// with this one (each user's lock files are its own).
    pub foreign_uid: Option<u32>,
}

impl Holder {
    /// A connection whose owner we could not find.
    const UNKNOWN: Holder = Holder {
        pid: None,
        command: None,
        foreign_uid: None,
    };

    /// Another virtomate, which is served in turn.
    pub fn is_virtomate(&self) -> bool {
        self.command.as_deref() == Some("virtomate")
    }

    /// Another user's process: a virtomate of another user takes turns
    /// through lock files of its own, so not with this one.
    pub fn is_other_users(&self) -> bool {
        self.foreign_uid.is_some()
    }

    /// One to wait for (within the usual time limits) rather than blame:
    /// another virtomate, or a process whose command could not be read.
    /// That is most often a virtomate that exited between being found
    /// holding the socket and being looked at; one that still holds it
    /// is met by the time limit of connecting, which names it then.
    pub fn is_waited_for(&self) -> bool {
        self.is_virtomate() || (self.pid.is_some() && self.command.is_none())
    }

    /// libvirt's QEMU driver: `libvirtd`, or `virtqemud` where libvirt
    /// runs its modular daemons (the default of newer distributions).
    pub fn is_libvirt_daemon(&self) -> bool {
        matches!(self.command.as_deref(), Some("libvirtd" | "virtqemud"))
    }
}

/// How many connections the listener at `path` has accepted and not yet
/// closed — our own included. Connections still waiting in the backlog are
/// not counted: they are the ones that will not be served.
pub fn connected_clients(path: &Path) -> io::Result<usize> {
    connected_clients_in(path, Path::new("/proc"), sock_diag_connected)
}

/// How many connections wait in the backlog of the listener at `path`,
/// not yet accepted: clients queued behind the one being served (QEMU's
/// socket chardev accepts one at a time).
pub fn queued_connections(path: &Path) -> io::Result<u32> {
    Ok(listeners_of(path)?.iter().map(|l| l.queued).sum())
}

/// Whether anything listens on the socket file at `path`: not when the
/// process that bound it (QEMU) has died and left it behind.
pub fn is_listening(path: &Path) -> io::Result<bool> {
    Ok(!listeners_of(path)?.is_empty())
}

fn listeners_of(path: &Path) -> io::Result<Vec<sock_diag::Listening>> {
    let meta = fs::metadata(path)?;
    let mut all = sock_diag_listening()?;
    all.retain(|l| l.file.is_some_and(|file| file.is(&meta)));
    Ok(all)
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
    holders_in(path, Path::new("/proc"), std::process::id(), sock_diag_connected)
}

/// Whether libvirtd holds a socket with these `holders`: one of them is
/// libvirtd by name or, where `libvirt_keeps_it` (a socket libvirtd stays
/// connected to for the domain's whole life: its monitor, its
/// `org.qemu.guest_agent.0`), one we could not name (no sock_diag,
/// another user's process without root).
pub fn held_by_libvirtd(holders: &[Holder], libvirt_keeps_it: bool) -> bool {
    holders
        .iter()
        .any(|holder| holder.is_libvirt_daemon() || (libvirt_keeps_it && holder.pid.is_none()))
}

/// A sentence for an error message, such as `held by libvirtd (pid 1234)`
/// or `held by another client`.
pub fn describe(holders: &[Holder]) -> String {
    let mut parts: Vec<String> = Vec::new();
    for holder in holders {
        if let Some(pid) = holder.pid {
            parts.push(match (&holder.command, holder.foreign_uid) {
                (Some(command), None) => format!("{command} (pid {pid})"),
                (Some(command), Some(uid)) => format!("{command} (pid {pid}, uid {uid})"),
                (None, None) => format!("process {pid}"),
                (None, Some(uid)) => format!("process {pid} (uid {uid})"),
            });
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

fn connected_clients_in(
    path: &Path,
    proc_root: &Path,
    diag: impl FnOnce() -> io::Result<Vec<Connected>>,
) -> io::Result<usize> {
    Ok(match accepted_in(path, proc_root, diag)? {
        Ok(accepted) => accepted.len(),
        Err(count) => count,
    })
}

/// The connections the listener at `path` has accepted: with their peers
/// where sock_diag answers (`Ok`), else only how many (`Err`), from
/// `/proc/net/unix`. `diag` stands for sock_diag so that tests can do
/// without it.
fn accepted_in(
    path: &Path,
    proc_root: &Path,
    diag: impl FnOnce() -> io::Result<Vec<Connected>>,
) -> io::Result<Result<Vec<Connected>, usize>> {
    let diag = diag();
    // `@NAME`, an abstract socket, has no file: the table names it.
    let file = std::fs::metadata(path)
        .ok()
        .filter(|meta| meta.file_type().is_socket() && !crate::domain::is_abstract(path));
    if let (Ok(all), Some(file)) = (&diag, &file) {
        // Inode 0: still in the backlog, not accepted.
        let accepted = all
            .iter()
            .filter(|c| c.inode != 0 && c.file.is_some_and(|f| f.is(file)))
            .copied()
            .collect();
        return Ok(Ok(accepted));
    }
    let table = read_unix_table(proc_root)?;
    let inodes = accepted_connections(path, &table);
    Ok(match diag {
        Ok(all) => {
            let by_inode: HashMap<u64, Connected> = all.into_iter().map(|c| (c.inode, c)).collect();
            // One missing from the dump was closed in between: no peer.
            Ok(inodes
                .into_iter()
                .map(|inode| {
                    by_inode.get(&inode).copied().unwrap_or(Connected {
                        inode,
                        ..Connected::default()
                    })
                })
                .collect())
        }
        Err(_) => Err(inodes.len()),
    })
}

/// `diag` stands for sock_diag so that tests can do without it.
fn holders_in(
    path: &Path,
    proc_root: &Path,
    own_pid: u32,
    mut diag: impl FnMut() -> io::Result<Vec<Connected>>,
) -> Vec<Holder> {
    let accepted = match accepted_in(path, proc_root, &mut diag) {
        Ok(Ok(accepted)) => accepted,
        // Without sock_diag we know how many are connected but not who (nor
        // whether one of them is us).
        Ok(Err(count)) => return vec![Holder::UNKNOWN; count],
        Err(_) => return Vec::new(),
    };
    // A server-side socket whose peer inode is 0 lost its client, and the
    // server has not noticed yet: it is held by nobody.
    let clients: Vec<u64> = accepted
        .iter()
        .map(|c| c.peer)
        .filter(|&peer| peer != 0)
        .collect();
    let owners = socket_owners(proc_root, &clients.iter().copied().collect());

    let mut known: BTreeMap<u32, Holder> = BTreeMap::new();
    let mut unknown = Vec::new();
    for client in &clients {
        match owners.get(client) {
            Some(pids) => {
                for &pid in pids.iter().filter(|&&pid| pid != own_pid) {
                    let dir = proc_root.join(pid.to_string());
                    let command = command_of(&dir);
                    // Gone since its fds were read: it holds nothing now.
                    if command.is_none() && !dir.exists() {
                        continue;
                    }
                    let uid = fs::metadata(&dir).map(|meta| meta.uid()).ok();
                    known.entry(pid).or_insert(Holder {
                        pid: Some(pid),
                        command,
                        foreign_uid: uid.filter(|&uid| uid != nix::unistd::geteuid().as_raw()),
                    });
                }
            }
            None => unknown.push(*client),
        }
    }
    if !unknown.is_empty() {
        unknown = still_connected(path, proc_root, diag, unknown);
    }
    let mut holders: Vec<Holder> = known.into_values().collect();
    holders.extend(std::iter::repeat(Holder::UNKNOWN).take(unknown.len()));
    holders
}

/// Those of `clients` still connected to the listener at `path`, asked
/// anew. A client no process was found holding may have closed between
/// the first question and the search of `/proc`: another virtomate done
/// with its exchange, most often. Counted, it would pass for a holder
/// nobody can name, a foreign one (or, on libvirt's own channel,
/// libvirtd), and the route choice would fail or go through libvirtd for
/// a channel that is free. A client still connected now was connected all
/// along, and is one we truly cannot name.
fn still_connected(
    path: &Path,
    proc_root: &Path,
    diag: impl FnOnce() -> io::Result<Vec<Connected>>,
    clients: Vec<u64>,
) -> Vec<u64> {
    let Ok(Ok(accepted)) = accepted_in(path, proc_root, diag) else {
        return clients;
    };
    let peers: std::collections::BTreeSet<u64> = accepted.iter().map(|c| c.peer).collect();
    clients
        .into_iter()
        .filter(|client| peers.contains(client))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::test_support::{fake_proc, libvirt_table, line, lines};
    use super::*;
    use std::fs;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// sock_diag's answer: these connected sockets and their peers.
    fn peers(pairs: &[(u64, u64)]) -> impl FnMut() -> io::Result<Vec<Connected>> {
        let all: Vec<Connected> = pairs
            .iter()
            .map(|&(inode, peer)| Connected {
                inode,
                peer,
                file: None,
            })
            .collect();
        move || Ok(all.clone())
    }

    fn no_sock_diag() -> io::Result<Vec<Connected>> {
        Err(io::Error::from_raw_os_error(nix::libc::EPROTONOSUPPORT))
    }

    fn held_by(pid: u32, command: &str) -> Holder {
        Holder {
            pid: Some(pid),
            command: Some(command.to_owned()),
            foreign_uid: None,
        }
    }

    #[test]
    fn libvirts_daemons_and_virtomate_are_told_by_name() {
        assert!(held_by(1, "libvirtd").is_libvirt_daemon());
        assert!(held_by(1, "virtqemud").is_libvirt_daemon());
        assert!(!held_by(1, "virtlogd").is_libvirt_daemon());
        assert!(!UNKNOWN.is_libvirt_daemon());
        assert!(held_by(1, "virtomate").is_virtomate());
        assert!(!held_by(1, "python3").is_virtomate());
    }

    const UNKNOWN: Holder = Holder::UNKNOWN;

    #[test]
    fn counts_only_accepted_connections_of_that_path() {
        let root = fake_proc(&lines(&libvirt_table()), &[]);
        assert_eq!(
            connected_clients_in(Path::new("/run/qga.sock"), root.path(), no_sock_diag).unwrap(),
            1
        );
        assert_eq!(
            connected_clients_in(Path::new("/run/other.sock"), root.path(), no_sock_diag).unwrap(),
            1
        );
        assert_eq!(
            connected_clients_in(Path::new("/run/none.sock"), root.path(), no_sock_diag).unwrap(),
            0
        );
        // The abstract socket `\0/run/qga.sock` is another socket.
        assert_eq!(
            connected_clients_in(Path::new("@/run/qga.sock"), root.path(), no_sock_diag).unwrap(),
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
            connected_clients_in(Path::new("/run/my vm/qga.sock"), root.path(), no_sock_diag).unwrap(),
            1
        );
        assert_eq!(
            connected_clients_in(Path::new("/run/my"), root.path(), no_sock_diag).unwrap(),
            0
        );
    }

    /// The fallback's limitation: the table shows the path as bound, so a
    /// socket bound relatively is only found under that same spelling.
    #[test]
    fn relative_binds_match_only_as_spelled() {
        let table = [line(1, 10, "./qga.sock"), line(3, 11, "./qga.sock")];
        let root = fake_proc(&lines(&table), &[]);
        assert_eq!(
            connected_clients_in(Path::new("./qga.sock"), root.path(), no_sock_diag).unwrap(),
            1
        );
        assert_eq!(
            connected_clients_in(Path::new("/run/vm/qga.sock"), root.path(), no_sock_diag).unwrap(),
            0
        );
    }

    #[test]
    fn no_table_is_an_error_for_counting_and_nobody_for_holders() {
        let root = tempfile::tempdir().unwrap();
        assert!(connected_clients_in(Path::new("/run/qga.sock"), root.path(), no_sock_diag).is_err());
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
            connected_clients_in(Path::new("/run/qga.sock"), root.path(), no_sock_diag).unwrap(),
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

    /// A process whose command cannot be read (here: its comm and
    /// cmdline gone) is named by pid, and waited for.
    #[test]
    fn a_holder_whose_command_cannot_be_read_is_waited_for() {
        let root = fake_proc(
            &lines(&libvirt_table()),
            &[(700, "virtomate", "virtomate", &[102])],
        );
        fs::remove_file(root.path().join("700/comm")).unwrap();
        fs::remove_file(root.path().join("700/cmdline")).unwrap();
        let found = holders_in(Path::new("/run/qga.sock"), root.path(), 999, peers(&[(101, 102)]));
        assert_eq!(
            found,
            vec![Holder {
                pid: Some(700),
                command: None,
                foreign_uid: None,
            }]
        );
        assert!(found[0].is_waited_for());
        assert!(!UNKNOWN.is_waited_for());
        assert!(held_by(1, "virtomate").is_waited_for());
        assert!(!held_by(1, "socat").is_waited_for());
    }

    /// Another user's process is named with its uid.
    #[test]
    fn another_users_holder_is_named_with_its_uid() {
        let other = Holder {
            foreign_uid: Some(1000),
            ..held_by(12, "virtomate")
        };
        assert_eq!(describe(&[other]), "held by virtomate (pid 12, uid 1000)");
        let unnamed = Holder {
            pid: Some(13),
            command: None,
            foreign_uid: Some(1000),
        };
        assert_eq!(describe(&[unnamed]), "held by process 13 (uid 1000)");
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
        let found = holders_in(Path::new("/run/qga.sock"), root.path(), 999, no_sock_diag);
        assert_eq!(found, vec![UNKNOWN, UNKNOWN]);
        assert_eq!(describe(&found), "held by 2 other clients");
    }

    #[test]
    fn describes_holders_in_a_sentence() {
        assert_eq!(describe(&[]), "not held by another client");
        assert_eq!(
            describe(&[Holder {
                pid: Some(7),
                command: None,
                foreign_uid: None,
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

    /// Held by every test here that opens real sockets. Between `fork` and
    /// `exec`, a child spawned by one test carries copies of every descriptor
    /// of this process — another test's sockets included — and under the
    /// test thread's name, so it would show up as a holder there.
    static REAL_SOCKETS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn real_sockets_to_ourselves() -> std::sync::MutexGuard<'static, ()> {
        REAL_SOCKETS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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
        let _alone = real_sockets_to_ourselves();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        assert_eq!(connected_clients(&path).unwrap(), 0);
        assert_eq!(holders(&path), vec![]);

        let mut client = Client::connect(&path);
        let _from_client = accept(&listener, Some(&mut client));
        assert_eq!(connected_clients(&path).unwrap(), 1);
        let found = holders(&path);
        match sock_diag_connected() {
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
        if sock_diag_connected().is_ok() {
            assert_eq!(holders(&path), found);
        }

        // Once the client is gone it holds nothing, although the server has
        // not closed its end yet.
        drop(client);
        assert_eq!(connected_clients(&path).unwrap(), 2);
        if sock_diag_connected().is_ok() {
            assert_eq!(holders(&path), vec![]);
        }
        drop(_from_client);
        assert_eq!(connected_clients(&path).unwrap(), 1);
    }

    /// The race the route choice met: a client (another virtomate, done
    /// with its exchange) is connected when sock_diag is asked and has
    /// closed by the time `/proc` is searched for its owner. Nobody holds
    /// the channel then, yet that client passed for one nobody can name: a
    /// foreign holder, which fails a route or sends it through libvirtd.
    #[test]
    fn a_client_that_closes_while_its_owner_is_looked_for_holds_nothing() {
        let _alone = real_sockets_to_ourselves();
        if let Err(error) = sock_diag_connected() {
            eprintln!("sock_diag unavailable ({error}): the fallback cannot tell");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let mut client = Some(Client::connect(&path));
        let _from_client = accept(&listener, client.as_mut());
        let deadline = Instant::now() + Duration::from_secs(20);
        while holders(&path).is_empty() {
            assert!(Instant::now() < deadline, "the client never showed");
            std::thread::sleep(Duration::from_millis(10));
        }
        // The client closes right after the kernel reported it connected:
        // the server has not closed its end (as QEMU, busy, may not have).
        let closing_while_looked_at = || {
            let connected = sock_diag_connected();
            drop(client.take());
            connected
        };
        let found = holders_in(
            &path,
            Path::new("/proc"),
            std::process::id(),
            closing_while_looked_at,
        );
        assert_eq!(found, vec![], "{}", describe(&found));
    }

    /// A listener in another process that binds `rel.sock` relative to
    /// `dir`, accepts one connection and keeps it: as a QEMU started in
    /// `dir` with `-chardev socket,path=rel.sock`.
    fn relative_listener(dir: &Path) -> Client {
        let script = "import os, socket, sys, time\n\
                      os.chdir(sys.argv[1])\n\
                      s = socket.socket(socket.AF_UNIX)\n\
                      s.bind('rel.sock')\n\
                      s.listen(1)\n\
                      c, _ = s.accept()\n\
                      time.sleep(60)\n";
        let child = Command::new("python3")
            .args(["-c", script])
            .arg(dir)
            .stdin(Stdio::null())
            .spawn()
            .expect("these tests need python3 for a listener in another process");
        Client(child)
    }

    /// `/proc/net/unix` shows `rel.sock`, which names nothing here; the
    /// socket's file does.
    #[test]
    fn names_the_client_of_a_socket_bound_through_a_relative_path() {
        let _alone = real_sockets_to_ourselves();
        if let Err(error) = sock_diag_connected() {
            eprintln!("sock_diag unavailable ({error}): the fallback cannot do this");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rel.sock");
        let _server = relative_listener(dir.path());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !path.exists() {
            assert!(Instant::now() < deadline, "the listener never bound");
            std::thread::sleep(Duration::from_millis(10));
        }
        let client = Client::connect(&path);
        while connected_clients(&path).unwrap() == 0 {
            assert!(Instant::now() < deadline, "never seen as connected");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(connected_clients(&path).unwrap(), 1);
        let found = holders(&path);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].pid, Some(client.0.id()));
        assert!(describe(&found).starts_with("held by python"), "{found:?}");
    }

    #[test]
    fn finds_a_real_socket_by_other_spellings_of_its_path() {
        let _alone = real_sockets_to_ourselves();
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
