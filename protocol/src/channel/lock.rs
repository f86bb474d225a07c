//! Taking turns on an agent channel with the other processes of this host.
//!
//! An agent socket serves one client at a time, and a second client is
//! connected but never answered until the first one leaves. Clients that
//! hold the channel for one exchange at a time therefore take turns
//! through a lock instead: `flock(2)` on a file named after the socket's
//! device and inode (not its path, which has many spellings). The kernel
//! drops a flock when its holder dies, SIGKILL included, so a lock left
//! by a killed process never blocks anybody.
//!
//! Two more files beside it tell the holder that somebody waits: a waiter
//! holds a shared flock on one while it waits, and the holder asks for an
//! exclusive one without blocking, which fails exactly while somebody
//! waits. `.poll` says that somebody waits at all ([`ChannelLock::waited_for`]);
//! `.wait` that somebody waits who should not be kept waiting
//! ([`ChannelLock::contended`]): a start, or a poll of a young program,
//! or a patient waiter whose patience ran out.
//!
//! The files live in a directory only this user can write: `/run/virtomate`
//! for root, `$XDG_RUNTIME_DIR/virtomate` otherwise, created with mode 0700
//! and checked (a directory, not a symlink, ours, closed to others) before
//! use; the files are opened without following symlinks and checked to be
//! ours too. Nothing is ever put in a directory another user could write.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::unistd::geteuid;
use tokio::time::{sleep, Instant};

use crate::{Deadline, Error};

/// How long a waiter sleeps between two tries: short, since the agent
/// answers a client that connects the instant the last one left within
/// milliseconds, and sleeps 100 ms at a time once it notices nobody is
/// there.
const RETRY_PAUSE: Duration = Duration::from_millis(1);

/// How long a patient waiter sleeps between two tries (see
/// [`ChannelLock::acquire_patiently`]): its exchange may come late, and a
/// client that takes the channel after another has let go pays the
/// agent's wake-up (up to 100 ms) with the channel held.
const PATIENT_RETRY_PAUSE: Duration = Duration::from_millis(25);

/// The lock of one agent socket, shared by every process of this user
/// (root's processes share `/run/virtomate`).
///
/// ```no_run
/// use std::time::Duration;
/// use virtomate_protocol::{ChannelLock, ClientOptions, Deadline, QgaClient};
/// use virtomate_protocol::qga::GuestPing;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let lock = ChannelLock::for_socket("/run/vm/qga.sock".as_ref())?;
/// let turn = lock.acquire(Deadline::after(Duration::from_secs(5))).await?;
/// let mut agent = QgaClient::connect("/run/vm/qga.sock", ClientOptions::default()).await?;
/// agent.execute(&GuestPing {}).await?;
/// drop(agent);
/// drop(turn); // the next process's turn
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ChannelLock {
    socket: PathBuf,
    turn: PathBuf,
    wait: PathBuf,
    poll: PathBuf,
}

/// A turn on the channel: held until dropped.
#[derive(Debug)]
pub struct Turn {
    _lock: Flock<File>,
}

impl ChannelLock {
    /// The lock of the agent socket at `socket`, its files created if
    /// need be. Fails when the socket cannot be looked at, or when there
    /// is no safe place for the files (no `XDG_RUNTIME_DIR` for a user
    /// other than root, a directory another user owns or may write).
    ///
    /// ```no_run
    /// use virtomate_protocol::ChannelLock;
    ///
    /// match ChannelLock::for_socket("/run/vm/qga.sock".as_ref()) {
    ///     Ok(lock) => println!("taking turns with {lock:?}"),
    ///     Err(e) => println!("no lock, going on alone: {e}"),
    /// }
    /// ```
    pub fn for_socket(socket: &Path) -> io::Result<ChannelLock> {
        ChannelLock::in_dir(socket, &runtime_dir()?)
    }

    fn in_dir(socket: &Path, dir: &Path) -> io::Result<ChannelLock> {
        let meta = std::fs::metadata(socket)?;
        let name = format!("agent-{:x}-{}", meta.dev(), meta.ino());
        let lock = ChannelLock {
            socket: socket.to_owned(),
            turn: dir.join(format!("{name}.lock")),
            wait: dir.join(format!("{name}.wait")),
            poll: dir.join(format!("{name}.poll")),
        };
        // Created and checked now, so that a bad file shows up here.
        open_own_file(&lock.turn)?;
        open_own_file(&lock.wait)?;
        open_own_file(&lock.poll)?;
        Ok(lock)
    }

    /// The file whose flock is the turn on the channel.
    pub fn path(&self) -> &Path {
        &self.turn
    }

    /// Waits for the turn on the channel until `deadline`; past it,
    /// [`Error::Busy`] names the process that held it.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use virtomate_protocol::{ChannelLock, Deadline, Error};
    /// # async fn demo(lock: ChannelLock) {
    /// match lock.acquire(Deadline::after(Duration::from_secs(1))).await {
    ///     Ok(_turn) => println!("ours"),
    ///     Err(Error::Busy { holder, waited, .. }) => println!("{holder:?} kept it for {waited:?}"),
    ///     Err(e) => println!("{e}"),
    /// }
    /// # }
    /// ```
    pub async fn acquire(&self, deadline: Deadline) -> Result<Turn, Error> {
        self.acquire_patiently(deadline, Duration::ZERO).await
    }

    /// Waits for the turn as [`acquire`](Self::acquire) does, but tells
    /// the holder that somebody waits ([`contended`](Self::contended))
    /// only once it has waited `patience`: for an exchange that may come
    /// late (a status poll of a program that has run for a while), so
    /// that a holder whose own program is young keeps the channel.
    pub async fn acquire_patiently(&self, deadline: Deadline, patience: Duration) -> Result<Turn, Error> {
        let file = open_own_file(&self.turn).map_err(Error::Io)?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(Turn { _lock: lock }),
            Err((file, Errno::EWOULDBLOCK)) => file,
            Err((_, errno)) => return Err(Error::Io(errno.into())),
        };
        let started = Instant::now();
        // That we wait, and later that we should not wait longer: held as
        // long as we do (dropped on return). A failure to say it only
        // costs the holder's courtesy.
        let _waiting = say_so(&self.poll);
        let mut urgent = None;
        loop {
            if urgent.is_none() && started.elapsed() >= patience {
                urgent = Some(say_so(&self.wait));
            }
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(Turn { _lock: lock }),
                Err((back, Errno::EWOULDBLOCK)) => file = back,
                Err((_, errno)) => return Err(Error::Io(errno.into())),
            }
            if Instant::now() >= deadline.at() {
                let holder = flock_holder(&file);
                return Err(Error::Busy {
                    path: self.socket.clone(),
                    waited: started.elapsed(),
                    holder,
                });
            }
            // A patient waiter looks seldom, so that it rarely slips in
            // between two clients that follow each other closely.
            sleep(if urgent.is_some() {
                RETRY_PAUSE
            } else {
                PATIENT_RETRY_PAUSE
            })
            .await;
        }
    }

    /// Whether another process waits for the channel and should not be
    /// kept waiting, so that its holder should let go at its next pause.
    pub fn contended(&self) -> bool {
        somebody_says_so(&self.wait)
    }

    /// Whether another process waits for the channel at all, patiently
    /// or not: a holder that merely polls a program that has run for a
    /// while lets go then.
    pub fn waited_for(&self) -> bool {
        somebody_says_so(&self.poll)
    }
}

/// A shared flock on `path`, which tells the holder that somebody waits.
fn say_so(path: &Path) -> Option<Flock<File>> {
    let file = open_own_file(path).ok()?;
    Flock::lock(file, FlockArg::LockSharedNonblock).ok()
}

/// Whether somebody holds a shared flock on `path`: our exclusive try
/// fails exactly then; dropping the lock we got at once lets the next
/// waiter in.
fn somebody_says_so(path: &Path) -> bool {
    let Ok(file) = open_own_file(path) else {
        return false;
    };
    matches!(
        Flock::lock(file, FlockArg::LockExclusiveNonblock),
        Err((_, Errno::EWOULDBLOCK))
    )
}

/// The process holding a flock on `file`, named as in `/proc/locks`, with
/// its command: for the message of a channel that stayed busy.
fn flock_holder(file: &File) -> Option<String> {
    let meta = file.metadata().ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let pid = holder_in_proc_locks(&locks, meta.dev(), meta.ino())?;
    let command = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok();
    Some(match command {
        Some(command) => format!("{} (pid {pid})", command.trim_end()),
        None => format!("process {pid}"),
    })
}

/// In `/proc/locks`, the pid of the process holding an exclusive flock on
/// the file `dev`/`ino`. A line reads
/// `1: FLOCK  ADVISORY  WRITE 1234 fe:00:5840902 0 EOF`; a waiter's line
/// starts `1: -> FLOCK` and is skipped.
fn holder_in_proc_locks(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, "FLOCK", _, "WRITE", pid, file, ..] = fields.as_slice() else {
            return None;
        };
        let mut parts = file.split(':');
        let (maj, min, inode) = (parts.next()?, parts.next()?, parts.next()?);
        let same = u64::from_str_radix(maj, 16).ok() == Some(major)
            && u64::from_str_radix(min, 16).ok() == Some(minor)
            && inode.parse::<u64>().ok() == Some(ino);
        same.then(|| pid.parse().ok()).flatten()
    })
}

/// The directory of the lock files, created (0700) if need be and checked.
fn runtime_dir() -> io::Result<PathBuf> {
    let parent = if geteuid().is_root() {
        PathBuf::from("/run")
    } else {
        match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
            Some(dir) if dir.is_absolute() => dir,
            _ => return Err(unsafe_place("XDG_RUNTIME_DIR is not set to an absolute path")),
        }
    };
    let meta = std::fs::metadata(&parent)?;
    let trusted_owner = meta.uid() == geteuid().as_raw() || meta.uid() == 0;
    if !meta.is_dir() || !trusted_owner || meta.mode() & 0o022 != 0 {
        return Err(unsafe_place(&format!(
            "{} may be written by other users",
            parent.display()
        )));
    }
    let dir = parent.join("virtomate");
    match DirBuilder::new().mode(0o700).create(&dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let meta = std::fs::symlink_metadata(&dir)?;
    if !meta.is_dir() || meta.uid() != geteuid().as_raw() || meta.mode() & 0o077 != 0 {
        return Err(unsafe_place(&format!(
            "{} is not a directory of this user closed to others (mode 0700)",
            dir.display()
        )));
    }
    Ok(dir)
}

/// Opens (creating, mode 0600) a lock file, never through a symlink, and
/// checks that it is a file of ours.
fn open_own_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.uid() != geteuid().as_raw() {
        return Err(unsafe_place(&format!(
            "{} is not a file of this user",
            path.display()
        )));
    }
    Ok(file)
}

fn unsafe_place(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("no safe place for lock files: {why}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_is_read_from_proc_locks() {
        let locks = "1: FLOCK  ADVISORY  WRITE 22729 fe:00:5840902 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 300 fe:00:5840902 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 7 fe:00:99 0 EOF\n\
                     3: FLOCK  ADVISORY  READ 8 fe:00:77 0 EOF\n";
        let dev = nix::sys::stat::makedev(0xfe, 0);
        assert_eq!(holder_in_proc_locks(locks, dev, 5840902), Some(22729));
        assert_eq!(holder_in_proc_locks(locks, dev, 99), None);
        assert_eq!(holder_in_proc_locks(locks, dev, 77), None);
        assert_eq!(
            holder_in_proc_locks(locks, nix::sys::stat::makedev(8, 1), 5840902),
            None
        );
    }

    #[test]
    fn a_symlink_is_never_followed_to_a_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(open_own_file(&link).is_err());
        assert!(open_own_file(&dir.path().join("fresh")).is_ok());
    }

    #[tokio::test]
    async fn a_waiter_is_seen_and_times_out_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qga.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let lock = ChannelLock::in_dir(&socket, dir.path()).unwrap();
        let other = ChannelLock::in_dir(&socket, dir.path()).unwrap();
        let turn = lock
            .acquire(Deadline::after(Duration::from_secs(1)))
            .await
            .unwrap();
        assert!(!lock.contended());
        let waiting = other.acquire(Deadline::after(Duration::from_millis(200)));
        let watch = async {
            sleep(Duration::from_millis(50)).await;
            lock.contended()
        };
        let (waited, seen) = tokio::join!(waiting, watch);
        assert!(seen, "the holder sees the waiter");
        match waited {
            Err(Error::Busy { holder, waited, .. }) => {
                let me = format!("(pid {})", std::process::id());
                assert!(holder.unwrap_or_default().contains(&me));
                assert!(waited >= Duration::from_millis(200));
            }
            other => panic!("{other:?}"),
        }
        assert!(!lock.contended(), "the waiter gave up");
        drop(turn);
        other
            .acquire(Deadline::after(Duration::from_secs(1)))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_patient_waiter_is_seen_only_once_its_patience_is_out() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qga.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let lock = ChannelLock::in_dir(&socket, dir.path()).unwrap();
        let other = ChannelLock::in_dir(&socket, dir.path()).unwrap();
        let _turn = lock
            .acquire(Deadline::after(Duration::from_secs(1)))
            .await
            .unwrap();
        let deadline = Deadline::after(Duration::from_millis(600));
        let waiting = other.acquire_patiently(deadline, Duration::from_millis(300));
        let watch = async {
            sleep(Duration::from_millis(100)).await;
            let early = (lock.waited_for(), lock.contended());
            sleep(Duration::from_millis(350)).await;
            (early, lock.contended())
        };
        let (waited, (early, late)) = tokio::join!(waiting, watch);
        assert_eq!(
            early,
            (true, false),
            "waiting, but not urgently within its patience"
        );
        assert!(late, "urgently after it");
        assert!(!lock.waited_for(), "the waiter gave up");
        assert!(matches!(waited, Err(Error::Busy { .. })), "{waited:?}");
    }
}
