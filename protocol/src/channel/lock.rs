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
//!
//! The files are made when a turn is taken, and removed by the holder that
//! lets go when nobody waits (said in `.poll` or `.wait`), while it still
//! holds the turn. A process that opened a file before it was removed
//! would lock a file no longer there, beside the holder of the one made
//! anew: so a turn counts only once the path is seen, after locking, to
//! still name the locked file, and is tried again on the file there
//! otherwise; a waiter's say-so is said again the same way. The files of
//! a holder killed with SIGKILL, which removes none, are left to
//! [`ChannelLock::sweep`], which removes them as their last holder would.

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

/// A turn on the channel: held until dropped. The last holder (nobody
/// waits when it lets go) removes the lock files.
#[derive(Debug)]
pub struct Turn {
    lock: Option<Flock<File>>,
    files: [PathBuf; 3],
}

impl Drop for Turn {
    fn drop(&mut self) {
        let [turn, wait, poll] = &self.files;
        remove_unless_waited(turn, wait, poll);
        drop(self.lock.take());
    }
}

/// Removes the three files of a channel's lock unless somebody waits (says
/// so in `poll` or `wait`); returns how many went. Called holding the turn
/// on `turn`, so that no other process holds it: a waiter that opened a
/// file before it is removed finds, once it has locked it, that the path
/// no longer names it, and opens afresh (see `names`). The turn's file
/// goes last: while it is there, a waiter's say-so in the other two is
/// looked for.
pub(super) fn remove_unless_waited(turn: &Path, wait: &Path, poll: &Path) -> usize {
    if somebody_says_so(poll) || somebody_says_so(wait) {
        return 0;
    }
    [wait, poll, turn]
        .into_iter()
        .filter(|path| std::fs::remove_file(path).is_ok())
        .count()
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

    pub(crate) fn in_dir(socket: &Path, dir: &Path) -> io::Result<ChannelLock> {
        let meta = std::fs::metadata(socket)?;
        let name = format!("agent-{:x}-{}", meta.dev(), meta.ino());
        let lock = ChannelLock {
            socket: socket.to_owned(),
            turn: dir.join(format!("{name}.lock")),
            wait: dir.join(format!("{name}.wait")),
            poll: dir.join(format!("{name}.poll")),
        };
        // Those there checked now, so that a bad file shows up here; they
        // are created when a turn is taken, and removed by its last holder.
        for path in [&lock.turn, &lock.wait, &lock.poll] {
            match open_own_file(path, false) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
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
        let mut file = match self.try_turn()? {
            Ok(turn) => return Ok(turn),
            Err(file) => file,
        };
        let started = Instant::now();
        // That we wait, and later that we should not wait longer: held as
        // long as we do (dropped on return). A failure to say it only
        // costs the holder's courtesy; one said in a file its last holder
        // has removed since is said again.
        let mut waiting = say_so(&self.poll);
        let mut urgent = None;
        loop {
            if !waiting.as_deref().is_some_and(|f| names(&self.poll, f)) {
                waiting = say_so(&self.poll);
            }
            if started.elapsed() >= patience && !urgent.as_deref().is_some_and(|f| names(&self.wait, f)) {
                urgent = say_so(&self.wait);
            }
            if names(&self.turn, &file) {
                match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                    Ok(lock) if names(&self.turn, &lock) => return Ok(self.turn_of(lock)),
                    // Removed by its last holder while we had it open.
                    Ok(orphan) => file = orphan.unlock().map_err(|(_, e)| Error::Io(e.into()))?,
                    Err((back, Errno::EWOULDBLOCK)) => file = back,
                    Err((_, errno)) => return Err(Error::Io(errno.into())),
                }
            } else {
                file = match self.try_turn()? {
                    Ok(turn) => return Ok(turn),
                    Err(file) => file,
                };
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
            sleep(if started.elapsed() >= patience {
                RETRY_PAUSE
            } else {
                PATIENT_RETRY_PAUSE
            })
            .await;
        }
    }

    /// The turn if it is free (`Ok`), else the file it is held by, to try
    /// again. A file its last holder removed while we opened and locked
    /// it is let go, and the one now at the path tried.
    fn try_turn(&self) -> Result<Result<Turn, File>, Error> {
        loop {
            let file = open_own_file(&self.turn, true).map_err(Error::Io)?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) if names(&self.turn, &lock) => return Ok(Ok(self.turn_of(lock))),
                Ok(_orphan) => continue,
                Err((file, Errno::EWOULDBLOCK)) => return Ok(Err(file)),
                Err((_, errno)) => return Err(Error::Io(errno.into())),
            }
        }
    }

    fn turn_of(&self, lock: Flock<File>) -> Turn {
        Turn {
            lock: Some(lock),
            files: [self.turn.clone(), self.wait.clone(), self.poll.clone()],
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
    let file = open_own_file(path, true).ok()?;
    Flock::lock(file, FlockArg::LockSharedNonblock).ok()
}

/// Whether somebody holds a shared flock on `path`: our exclusive try
/// fails exactly then; dropping the lock we got at once lets the next
/// waiter in. A file that is not there says nothing (and is not made).
pub(super) fn somebody_says_so(path: &Path) -> bool {
    let Ok(file) = open_own_file(path, false) else {
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
pub(super) fn runtime_dir() -> io::Result<PathBuf> {
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

/// Whether `path` still names the file `file` is open on: not when the
/// lock files' last holder has removed it since (and another may have
/// been made there).
pub(super) fn names(path: &Path, file: &File) -> bool {
    match (std::fs::symlink_metadata(path), file.metadata()) {
        (Ok(there), Ok(ours)) => there.dev() == ours.dev() && there.ino() == ours.ino(),
        _ => false,
    }
}

/// Opens (creating, mode 0600, if `create`) a lock file, never through a
/// symlink, and checks that it is a file of ours.
pub(crate) fn open_own_file(path: &Path, create: bool) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
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
        assert!(open_own_file(&link, true).is_err());
        assert!(open_own_file(&dir.path().join("fresh"), true).is_ok());
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

    /// Turns taken and let go by threads at once, with the files removed
    /// by each last holder and made again by the next: never two turns at
    /// a time (a thread that locked a removed file would hold one beside
    /// the holder of the new one), and no file left at the end.
    #[test]
    fn files_removed_by_the_last_holder_never_give_two_turns() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qga.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let locks = dir.path().join("locks");
        std::fs::create_dir(&locks).unwrap();
        let inside = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (socket, locks, inside) = (socket.clone(), locks.clone(), inside.clone());
                std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    for _ in 0..200 {
                        let lock = ChannelLock::in_dir(&socket, &locks).unwrap();
                        let turn = runtime
                            .block_on(lock.acquire(Deadline::after(Duration::from_secs(20))))
                            .unwrap();
                        assert!(!inside.swap(true, Ordering::SeqCst), "two turns at once");
                        std::thread::yield_now();
                        inside.store(false, Ordering::SeqCst);
                        drop(turn);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let left: Vec<_> = std::fs::read_dir(&locks)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// How many of our fds are open on `path`.
    fn opened(path: &Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == path))
            .count()
    }

    /// A waiter that opened the turn's file before its last holder removed
    /// it (here: one whose say-so cannot be made, so that the holder sees
    /// nobody waiting) takes its turn on the file made anew, not on the
    /// removed one beside a newcomer's.
    #[tokio::test]
    async fn a_waiter_on_a_removed_file_takes_its_turn_on_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qga.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let lock = ChannelLock::in_dir(&socket, dir.path()).unwrap();
        let path = lock.path().to_owned();
        let waiter = ChannelLock::in_dir(&socket, dir.path()).unwrap();
        std::fs::create_dir(&lock.poll).unwrap(); // no say-so possible
        let turn = lock
            .acquire(Deadline::after(Duration::from_secs(1)))
            .await
            .unwrap();
        let waiting =
            waiter.acquire_patiently(Deadline::after(Duration::from_secs(5)), Duration::from_secs(60));
        let letting_go = async {
            while opened(&path) < 2 {
                sleep(Duration::from_millis(1)).await;
            }
            drop(turn);
            assert!(!path.exists(), "removed by its last holder");
        };
        let (taken, ()) = tokio::join!(waiting, letting_go);
        let taken = taken.unwrap();
        assert!(
            names(&path, taken.lock.as_ref().unwrap()),
            "a turn on the file at the path"
        );
        std::fs::remove_dir(&lock.poll).unwrap();
        let newcomer = ChannelLock::in_dir(&socket, dir.path()).unwrap();
        let late = newcomer
            .acquire(Deadline::after(Duration::from_millis(100)))
            .await;
        assert!(matches!(late, Err(Error::Busy { .. })), "{late:?}");
    }
}
