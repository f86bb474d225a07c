//! Following a program's output while it runs.
//!
//! The agent hands a program's output over only once the program has ended
//! (and cuts each stream at 16 MiB). To see it as it is written, the
//! program is started with its standard output and standard error going
//! into two named pipes in a private directory of the guest, a small
//! rotator per stream copies each pipe into numbered chunk files there,
//! and those are read with `guest-file-read` on a schedule while it runs.
//! The host cannot read the pipes themselves: the agent opens files
//! non-blocking and reads through stdio, and a read that finds a pipe
//! short of what it asked for fails and loses what it had taken.
//!
//! 1. [`Follow::prepare`] checks that the agent has every command this
//!    needs ([`REQUIRED_COMMANDS`]), creates the directory with a
//!    `guest-exec` of `/bin/sh` (mode 0700 under `$TMPDIR`, else `/tmp`,
//!    named `virtomate-follow-` and 128 random bits in hex), with, for
//!    each stream (`out`, `err`), the named pipes `out.pipe` (the program
//!    writes to it) and `out.credit` (the host writes to it), the empty
//!    chunk file `out.0`, and the file `index`; it opens the index, the
//!    first chunks, and the credit pipes (mode `r+`). Nothing of the
//!    caller's has run yet: a guest without a POSIX `/bin/sh`, `mkfifo`
//!    or a writable temporary directory is refused here.
//! 2. [`Follow::redirect`] wraps the program: `/bin/sh -c SCRIPT sh DIR
//!    PROGRAM ARG...` — the user's arguments pass as arguments, never
//!    quoted into a script. The script starts the two rotators in the
//!    background, detached from it (so a stop of the program's process
//!    tree leaves them to copy what it wrote), then execs the program
//!    with its output on the pipes; the program keeps the shell's pid, so
//!    [`stop_group`](crate::stop_group) with
//!    [`StopScope::Tree`](crate::StopScope::Tree) stops it and what it
//!    started.
//! 3. A rotator copies its pipe into `out.0`, `out.1`, ... with `dd
//!    bs=4096 count=1024` (it calls `read(2)` and writes what each read
//!    gave, so nothing is read ahead and lost; a short read makes a short
//!    block, so a chunk holds at most [`CHUNK_MAX`] bytes, less when reads
//!    find the pipe short of a page: a program writing as fast as it can
//!    fills whole pages, and each chunk costs the guest a `dd`).
//!    After each chunk it opens the next one's file (empty) and appends
//!    `out N` to the index; an empty chunk is the end of the stream (`out
//!    N end`), and a chunk it failed to write (no space left) its last
//!    (`out N fail`). It starts by making an empty marker, `out.live`,
//!    and failing, it first renames it (`out.full` or `out.fail`), which
//!    a full disk cannot stop. Before starting chunk N+1 it waits for the
//!    host's credit for chunk N-1 (a line in `out.credit`), then removes that
//!    chunk: at most two chunks of a stream sit on the guest's disk, and
//!    a host that stops reading stops the program (its pipe fills)
//!    rather than filling the disk.
//! 4. [`Follow::read_new`] reads what is new in each stream's current
//!    chunk and hands it to a sink; once a chunk has nothing new, the
//!    index says whether it is complete, and a complete chunk read to its
//!    end is closed, credited and followed by the next. A busy stream
//!    costs no look at the index, a quiet one a look on each of its
//!    first polls, then on every fourth ([`QUIET_INDEX_LOOKS`]). The run engine
//!    ([`Session`](crate::session::Session)) calls it between its polls
//!    of `guest-exec-status`, pausing as [`FollowOptions::schedule`] says
//!    for the time nothing new came.
//! 5. Once the program has ended, [`Follow::drain`] reads the rest: until
//!    the rotators' end marks, but never more than the two chunks after
//!    the one read when the program ended (all it wrote lies there), nor
//!    past [`DRAIN_QUIET`] with nothing new: a process the program left
//!    behind may hold a pipe open, and what it writes later is not
//!    waited for. [`Follow::clean_up`] closes the files, stops the
//!    rotators still running (those of such a process), and removes the
//!    directory, telling whether it was still there, whether its file
//!    system had filled up, and whether a rotator had gone before the end
//!    of its stream (by its marker, else by its absence: one killed can
//!    leave no word).
//!
//! Within a stream, bytes come in order, each once: every read continues
//! where the last ended, and chunks are read in turn. Between standard
//! output and standard error there is no order: each is read in turn.
//!
//! A caller asks the engine for it (`follow` in a [`RunRequest`]) and gets
//! the output as [`Outcome::Chunk`]s:
//!
//! ```no_run
//! use std::io::Write;
//! use virtomate_protocol::follow::Stream;
//! use virtomate_protocol::session::{Outcome, Request, RunRequest, Session, SessionOptions};
//! use virtomate_protocol::{ClientOptions, SocketConnector};
//!
//! # async fn demo() {
//! let connector = SocketConnector::new("/run/vm/qga.sock", ClientOptions::default());
//! let mut session = Session::new(connector, SessionOptions::default());
//! let mut run = RunRequest::new("sh", ["-c", "for i in 1 2 3; do echo $i; sleep 1; done"]);
//! run.follow = true;
//! let (requests, mut incoming) = tokio::sync::mpsc::channel(1);
//! requests.send(Request::run(1.into(), run)).await.unwrap();
//! drop(requests);
//! session
//!     .serve(&mut incoming, |reply| match reply.outcome {
//!         Ok(Outcome::Chunk { stream: Stream::Stdout, bytes }) => std::io::stdout().write_all(&bytes),
//!         Ok(Outcome::Chunk { bytes, .. }) => std::io::stderr().write_all(&bytes),
//!         other => Ok(println!("{other:?}")),
//!     })
//!     .await;
//! session.close().await;
//! # }
//! ```
//!
//! [`RunRequest`]: crate::session::RunRequest
//! [`Outcome::Chunk`]: crate::session::Outcome::Chunk

mod chunks;
mod error;
mod report;
mod stream;

use std::time::{Duration, Instant};

use crate::channel::{MOST_REPLIES_LOST, RECONNECT_PAUSE};
use crate::qga::{GuestExec, GuestFileClose, GuestFileOpen, GuestInfo};
use crate::{wait_for_exit_on, Channel, Connector, Error, HoldPolicy, PollSchedule};
use chunks::{chunk_path, stream_name, Index, Tail};
pub use error::FollowError;
use report::Report;
pub use stream::Stream;

/// The agent commands following needs, all enabled (the writes carry the
/// credits).
pub const REQUIRED_COMMANDS: [&str; 8] = [
    "guest-exec",
    "guest-exec-status",
    "guest-file-open",
    "guest-file-read",
    "guest-file-seek",
    "guest-file-close",
    "guest-file-write",
    "guest-file-flush",
];

/// The agent commands feeding the input needs besides, all enabled
/// ([`Follow::prepare_with_stdin`]): following has them already.
pub const INPUT_COMMANDS: [&str; 2] = ["guest-file-write", "guest-file-flush"];

/// The most bytes in one chunk file: `dd bs=4096 count=1024`. Two of them
/// per stream at most sit in the guest's temporary directory.
pub const CHUNK_MAX: u64 = 4096 * 1024;

/// What a caller giving up awaits while the files are opened (see
/// [`Settling`](crate::Settling)).
const OPENING_FILES: &str =
    "the output files in the guest are being opened: awaiting their handles, to close them";

/// How long [`Follow::drain`] waits with nothing new for the rotators'
/// end marks, once the program has ended: a process it left running may
/// hold its output open.
pub const DRAIN_QUIET: Duration = Duration::from_secs(3);

/// Of the looks that find nothing new while the program runs, the first
/// this many read the index too, then one in this many.
pub const QUIET_INDEX_LOOKS: u32 = 4;

/// The pause between two looks while draining with nothing new.
const DRAIN_LOOKS: PollSchedule = PollSchedule {
    min_pause: Duration::from_millis(2),
    max_pause: Duration::from_millis(100),
    divisor: 10,
};

/// Bytes asked for per `guest-file-read` on a direct channel: a reply of
/// about 5.3 MiB in Base64, well within the reply bound, and few exchanges
/// for a program that writes fast.
pub const DIRECT_READ_COUNT: u64 = 4 << 20;

/// Bytes asked for per `guest-file-read` through libvirtd, whose RPC
/// carries strings of at most 4 MiB ([`STRING_MAX`]): 3 MiB less 64 KiB
/// is 4 MiB less 85 KiB in Base64, room left for the JSON around it.
///
/// [`STRING_MAX`]: crate::libvirt::STRING_MAX
///
/// ```
/// use virtomate_protocol::follow::LIBVIRT_READ_COUNT;
/// use virtomate_protocol::libvirt::STRING_MAX;
/// assert!(LIBVIRT_READ_COUNT.div_ceil(3) * 4 + 1024 < STRING_MAX as u64);
/// ```
pub const LIBVIRT_READ_COUNT: u64 = (3 << 20) - (64 << 10);

/// How a [`Follow`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowOptions {
    /// The most bytes one `guest-file-read` asks for (at most
    /// [`MAX_READ_COUNT`](crate::qga::MAX_READ_COUNT); through libvirtd,
    /// [`LIBVIRT_READ_COUNT`]).
    pub read_count: u64,
    /// The pause between two looks, after the time nothing new came: it
    /// grows while the program is quiet.
    pub schedule: PollSchedule,
}

impl Default for FollowOptions {
    /// [`DIRECT_READ_COUNT`], and a pause that grows to 200 ms after a
    /// second without output: a line reaches the caller within about that
    /// and the time of one look (three exchanges), and a quiet program
    /// costs the agent five looks a second.
    fn default() -> Self {
        FollowOptions {
            read_count: DIRECT_READ_COUNT,
            schedule: PollSchedule {
                min_pause: Duration::from_millis(5),
                max_pause: Duration::from_millis(200),
                divisor: 5,
            },
        }
    }
}

/// A shell function for the scripts below: `space_left DIR` prints the
/// KiB left on the file system of `DIR`, nothing if it cannot tell. From
/// `df -Pk` (POSIX), else `stat -f`: BusyBox's `df` names no file system
/// for an initramfs root ("can't find mount point"), where `/tmp` often
/// lives.
macro_rules! space_left_function {
    () => {
        r#"space_left() {
  set -- "$1" $(df -Pk -- "$1" 2>/dev/null | tail -n 1)
  case ${5-x} in *[!0-9]*) ;; *) echo "$5"; return ;; esac
  set -- $(stat -f -c '%a %S' -- "$1" 2>/dev/null)
  case ${1-x}${2-x} in *[!0-9]*) ;; *) echo $(($1 * ($2 / 512) / 2)) ;; esac
}
"#
    };
}

/// The script that makes the directory: `$1` is the random part of its
/// name, `$2` (when not empty) asks for the named pipe `in` too, `$3`
/// (when not empty) is its owner's tag, written to its file `owner`; it
/// prints the directory's path, then for each other private directory
/// with an owner a line `NAME TAG` (NAME the part after
/// `virtomate-follow-`; see [`leftovers`](crate::leftovers)), or ends
/// with status 4 where there is no `dd`. Each stream gets its pipe, its credit
/// pipe and its first chunk file (empty, so that it can be opened). A file system with no space left is
/// refused here, before the program runs, since its output would be lost
/// (and the fullness seen at the end could be gone by then).
const SETUP_SCRIPT: &str = concat!(
    space_left_function!(),
    r#"umask 077
command -v dd >/dev/null || exit 4
d="${TMPDIR:-/tmp}/virtomate-follow-$1"
mkdir -m 700 -- "$d" || exit 1
made() {
  : >"$d/index" || return 1
  for s in out err; do
    mkfifo -m 600 -- "$d/$s.pipe" "$d/$s.credit" && : >"$d/$s.0" || return 1
  done
  [ -z "$1" ] || mkfifo -m 600 -- "$d/in"
}
if ! made "$2"; then
  rm -rf -- "$d"; exit 1
fi
if [ "$(space_left "$d")" = 0 ]; then
  rm -rf -- "$d"
  echo "${d%/*} is full (no space left on its file system): the output would be lost" >&2; exit 1
fi
[ -z "$3" ] || printf '%s\n' "$3" >"$d/owner" || { rm -rf -- "$d"; exit 1; }
printf '%s\n' "$d"
[ -z "$3" ] && exit 0
for o in "${d%/*}"/virtomate-follow-*; do
  [ "$o" = "$d" ] || [ ! -f "$o/owner" ] ||
    printf '%s %s\n' "${o##*/virtomate-follow-}" "$(head -c 200 -- "$o/owner")"
done
exit 0"#
);

/// The start of the script that starts the program (`$1` is the
/// directory, the rest the program and its arguments): the rotators (see
/// the [module](self) docs), started from a subshell that exits at once,
/// so that they are no part of the program's process tree, with nothing
/// of the agent's open (it reports the program's end once its own pipes
/// are closed). A rotator keeps the credit pipe open as descriptor 3,
/// which the clean-up finds it by, and the chunk it writes as descriptor
/// 4, opened before the next chunk is indexed (so that the host can open
/// it) and the first before the program starts.
/// A shell function, `stop_naming NAME`: the processes whose command
/// line holds NAME or that have a file named so open, but for this shell
/// and the agent (its parent, which may hold the output files open), get
/// SIGTERM, then SIGKILL while any is left, for about five seconds at most.
macro_rules! stop_naming_function {
    () => {
        r#"stop_naming() {
  s=TERM; i=0
  while [ "$i" -lt 50 ]; do
    found=
    for p in /proc/[0-9]*; do
      case ${p#/proc/} in "$$" | "$PPID") continue ;; esac
      case $(tr '\0' ' ' <"$p/cmdline"; ls -l "$p/fd") in
        *"$1"*) kill -s "$s" "${p#/proc/}" && found=1 ;;
      esac 2>/dev/null
    done
    [ -z "$found" ] && break
    s=KILL; i=$((i + 1)); sleep 0.1 2>/dev/null || sleep 1
  done
}
"#
    };
}

/// A rotator first makes its marker, the empty file `STREAM.live` (no
/// block, no process; before it opens its pipe, so before the program can
/// write). Failing (`failed STREAM CHUNK`), it renames it to `STREAM.full`
/// (the file system had no space left, as `space_left` tells then) or
/// `STREAM.fail`, before it tries to append its failure mark to the index:
/// a rename takes no block on a tmpfs (and rarely one elsewhere, the name
/// keeping its length), where a full disk can stop the append itself (an
/// empty index has no block yet). The clean-up reads the marker: none, the
/// rotator never ran; `live`, it was killed. Every failure comes here: the
/// open of a chunk is a `command exec`, as a failed redirection of a plain
/// `exec` ends the shell on the spot. A credit names the chunk it is for
/// (`credited STREAM CHUNK` waits for it); the host may send one again
/// after a connection dropped under it, unsure whether the agent wrote it,
/// and a credit for a chunk already removed is skipped.
macro_rules! rotators {
    () => {
        concat!(
            "d=$1; shift\n",
            space_left_function!(),
            r#"failed() {
  f=fail
  [ "$(space_left "$d")" != 0 ] || f=full
  mv -f -- "$d/$1.live" "$d/$1.$f"
  echo "$1 $2 fail" >>"$d/index"
  exit
}
credited() {
  c=-1
  until [ "$c" -ge "$2" ] 2>/dev/null; do read -r c <&3 || return; done
  rm -f -- "$d/$1.$2"
}
rotate() {
  umask 077
  n=0
  true >"$d/$1.live"
  command exec 3<>"$d/$1.credit" 4>"$d/$1.0" <"$d/$1.pipe" || failed "$1" 0
  while dd bs=4096 count=1024 >&4 2>/dev/null; do
    if [ ! -s "$d/$1.$n" ]; then echo "$1 $n end" >>"$d/index" && exit; break; fi
    command exec 4>"$d/$1.$((n + 1))" && echo "$1 $n" >>"$d/index" || break
    n=$((n + 1))
    if [ "$n" -gt 1 ]; then credited "$1" $((n - 2)) || break; fi
  done
  failed "$1" "$n"
}
(rotate out & rotate err &) </dev/null >/dev/null 2>&1
"#
        )
    };
}

/// The script that starts the program, its output into the pipes: each
/// `open` waits until its rotator has opened the pipe too.
const REDIRECT_SCRIPT: &str = concat!(rotators!(), r#"exec "$@" >"$d/out.pipe" 2>"$d/err.pipe""#);

/// The same with standard input from the named pipe `in`. The shell opens
/// it first, and waits there until a writer opens it too (see
/// [`feed`](crate::feed)).
const REDIRECT_INPUT_SCRIPT: &str = concat!(
    rotators!(),
    r#"exec "$@" <"$d/in" >"$d/out.pipe" 2>"$d/err.pipe""#
);

/// The script that removes the directory `$1`: exit status 3 if it is
/// gone already. First, of each stream named in `$2` (those whose end mark
/// the host did not read), it prints `STREAM HOW` when its rotator is gone
/// without having written the end mark: HOW is its marker's name (`full`,
/// `fail`, or `live` for one killed; none for one that never ran, as when
/// the program was not started; see `rotators!`). A rotator still
/// running is one a process the program left behind keeps reading. It is
/// looked for first, so that one writing its end mark meanwhile has it
/// in the index by the time that is read. Then it stops the rotators
/// still running (those whose descriptor 3 is a credit pipe of the
/// directory, and their `dd`s): SIGTERM, then SIGKILL while any is left,
/// for about five seconds at most. Before removing the directory, it
/// prints the KiB left on its file system (nothing if it cannot tell).
/// Should the removal fail because something of the run made a file there
/// as it went (a chunk's stager starting as the run was given up), what
/// names the directory is stopped and it is removed again.
const CLEAN_UP_SCRIPT: &str = concat!(
    space_left_function!(),
    stop_naming_function!(),
    r#"d=$1; s=TERM; i=0
[ -d "$d" ] || exit 3
for t in $2; do
  for p in /proc/[0-9]*; do
    [ "$p/fd/3" -ef "$d/$t.credit" ] && continue 2
  done
  while read -r u n e; do
    [ "$u $e" = "$t end" ] && continue 2
  done <"$d/index"
  for f in full fail live; do
    [ -e "$d/$t.$f" ] && echo "$t $f" && break
  done
done 2>/dev/null
while [ "$i" -lt 50 ]; do
  found=
  for p in /proc/[0-9]*; do
    if [ "$p/fd/3" -ef "$d/out.credit" ] || [ "$p/fd/3" -ef "$d/err.credit" ]; then
      kill -s "$s" "${p#/proc/}" && found=1
    fi 2>/dev/null
  done
  [ -z "$found" ] && break
  s=KILL; i=$((i + 1)); sleep 0.1 2>/dev/null || sleep 1
done
space_left "$d"
rm -rf -- "$d" 2>/dev/null && exit 0
stop_naming "${d##*/}"
rm -rf -- "$d""#
);

/// A private output directory in the guest and where reading its files has
/// got to; see the [module](self) docs.
#[derive(Debug)]
pub struct Follow {
    dir: String,
    options: FollowOptions,
    /// Whether the directory has the named pipe `in` for the input.
    stdin_pipe: bool,
    tails: [Tail; 2],
    index: Index,
    /// Looks in a row that found nothing new.
    quiet_looks: u32,
    /// The other private directories' owner tags, as the setup listed
    /// them (`NAME TAG` a line), when it was given an owner.
    other_owners: String,
}

impl Follow {
    /// Checks that the agent can do it, makes the directory and its two
    /// files, and opens them.
    ///
    /// ```no_run
    /// # use virtomate_protocol::follow::{Follow, FollowError, FollowOptions};
    /// # async fn demo(channel: &mut virtomate_protocol::Channel<virtomate_protocol::SocketConnector>) {
    /// match Follow::prepare(channel, FollowOptions::default()).await {
    ///     Ok(follow) => println!("output goes to {}", follow.dir()),
    ///     Err(FollowError::Setup { reason }) => eprintln!("this guest cannot: {reason}"),
    ///     Err(other) => eprintln!("{other}"),
    /// }
    /// # }
    /// ```
    pub async fn prepare<C: Connector>(
        channel: &mut Channel<C>,
        options: FollowOptions,
    ) -> Result<Follow, FollowError> {
        Follow::prepare_for(channel, options, false).await
    }

    /// As [`prepare`](Self::prepare), and makes the named pipe `in` too,
    /// which [`redirect`](Self::redirect) then connects to the program's
    /// standard input, to feed it while it runs (see [`feed`](crate::feed)).
    pub async fn prepare_with_stdin<C: Connector>(
        channel: &mut Channel<C>,
        options: FollowOptions,
    ) -> Result<Follow, FollowError> {
        Follow::prepare_for(channel, options, true).await
    }

    async fn prepare_for<C: Connector>(
        channel: &mut Channel<C>,
        options: FollowOptions,
        stdin_pipe: bool,
    ) -> Result<Follow, FollowError> {
        Follow::prepare_named(channel, options, stdin_pipe, &Follow::new_name()?, None).await
    }

    /// A random name for a private directory, for
    /// [`prepare_named`](Self::prepare_named).
    pub fn new_name() -> Result<String, FollowError> {
        crate::random_name().map_err(|e| FollowError::Setup {
            reason: format!("no random name: {e}"),
        })
    }

    /// As [`prepare`](Self::prepare) (with the named pipe when
    /// `stdin_pipe`), the directory named after `name` from
    /// [`new_name`](Self::new_name): a caller cut short in the middle of
    /// it, or of the program's start, can [`sweep`](Self::sweep) it. With
    /// an `owner` tag, the directory is tagged with it in the same step,
    /// and the other directories' tags are kept for
    /// [`other_owners`](Self::other_owners).
    pub async fn prepare_named<C: Connector>(
        channel: &mut Channel<C>,
        options: FollowOptions,
        stdin_pipe: bool,
        name: &str,
        owner: Option<&str>,
    ) -> Result<Follow, FollowError> {
        let info = channel.execute(&GuestInfo {}).await?;
        let input: &[&str] = if stdin_pipe { &INPUT_COMMANDS } else { &[] };
        let missing: Vec<String> = REQUIRED_COMMANDS
            .iter()
            .chain(input)
            .filter(|name| {
                !info
                    .supported_commands
                    .iter()
                    .any(|c| c.name == **name && c.enabled)
            })
            .map(|name| (*name).to_owned())
            .collect();
        if !missing.is_empty() {
            return Err(FollowError::Unsupported { missing });
        }
        let pipe = if stdin_pipe { "in" } else { "" };
        let setup = GuestExec::new(
            "/bin/sh",
            ["-c", SETUP_SCRIPT, "sh", name, pipe, owner.unwrap_or("")],
        );
        let pid = match channel.guest_exec(&setup).await {
            Ok(started) => started.pid,
            Err(Error::Agent { desc, .. }) => {
                return Err(FollowError::Setup {
                    reason: format!("the guest has no POSIX shell at /bin/sh: {desc}"),
                })
            }
            Err(other) => return Err(other.into()),
        };
        let status = wait_for_exit_on(channel, pid, PollSchedule::default(), HoldPolicy::default())
            .await?
            .status;
        let said = String::from_utf8_lossy(status.out_data.as_deref().unwrap_or_default()).into_owned();
        let (dir, other_owners) = said.split_once('\n').unwrap_or((&said, ""));
        let (dir, other_owners) = (dir.to_owned(), other_owners.to_owned());
        if status.exitcode == Some(4) {
            return Err(FollowError::Setup {
                reason: "the guest has no dd, which copies the output into chunk files".to_owned(),
            });
        }
        if status.exitcode != Some(0) || !dir.starts_with('/') || !dir.ends_with(name) {
            let said = String::from_utf8_lossy(status.err_data.as_deref().unwrap_or_default());
            return Err(FollowError::Setup {
                reason: format!(
                    "no writable temporary directory ($TMPDIR, else /tmp): {}",
                    match said.trim() {
                        "" => format!("the shell ended with {:?}", (status.exitcode, status.signal)),
                        said => said.to_owned(),
                    }
                ),
            });
        }
        let mut follow = Follow {
            dir,
            options,
            stdin_pipe,
            tails: [Tail::new(Stream::Stdout), Tail::new(Stream::Stderr)],
            index: Index::default(),
            quiet_looks: 0,
            other_owners,
        };
        // A caller giving up meanwhile awaits the opens' replies (see
        // `Settling`), and the files are closed and the directory removed
        // here: the handles are known only to this `Follow`, which its
        // dropping would lose.
        let settling = channel.settling();
        let step = settling.begin(OPENING_FILES);
        let opened = follow.open_all(channel).await;
        if opened.is_err() || settling.given_up() {
            // Best effort: the error that matters is the open's.
            let _ = follow.clean_up(channel).await;
        }
        drop(step);
        settling.hold_if_given_up().await;
        opened?;
        Ok(follow)
    }

    /// Opens the first chunks, the index and the credit pipes, two at a
    /// time; each handle kept as soon as known, for the clean-up to close.
    async fn open_all<C: Connector>(&mut self, channel: &mut Channel<C>) -> Result<(), Error> {
        let read = |path: String| GuestFileOpen::new(path, "r");
        let credit = |tail: &Tail| GuestFileOpen::new(format!("{}/{}.credit", self.dir, tail.name()), "r+");
        let (out, err) = (&self.tails[0], &self.tails[1]);
        let firsts = (
            read(chunk_path(&self.dir, out.stream, 0)),
            read(chunk_path(&self.dir, err.stream, 0)),
        );
        let credits = (credit(out), credit(err));
        let index = read(format!("{}/index", self.dir));
        let (first, second) = channel.execute_both(&firsts.0, &firsts.1).await?;
        self.tails[0].file.handle = first.as_ref().ok().copied();
        self.tails[1].file.handle = second.as_ref().ok().copied();
        first.and(second)?;
        let (first, second) = channel.execute_both(&credits.0, &index).await?;
        self.tails[0].credit = first.as_ref().ok().copied();
        self.index.file.handle = second.as_ref().ok().copied();
        first.and(second)?;
        self.tails[1].credit = Some(channel.execute(&credits.1).await?);
        Ok(())
    }

    /// Whether a stream's output stopped short of its end mark, once
    /// drained: its rotator ended (or was stopped) before the program
    /// closed the stream, or a process the program left holds it open.
    pub fn stopped_short(&self) -> bool {
        self.tails.iter().any(|tail| !tail.finished())
    }

    /// The private directory, as the guest names it.
    pub fn dir(&self) -> &str {
        &self.dir
    }

    /// The other private directories with an owner tag, as the guest
    /// listed them when this one was made with an owner: `NAME TAG` a
    /// line, whatever the guest wrote (see [`leftovers`](crate::leftovers)).
    pub fn other_owners(&self) -> &str {
        &self.other_owners
    }

    /// The chunk file of `stream` being read, as the guest names it.
    pub fn path(&self, stream: Stream) -> String {
        let tail = self.tail(stream);
        chunk_path(&self.dir, stream, tail.chunk)
    }

    fn tail(&self, stream: Stream) -> &Tail {
        let [out, err] = &self.tails;
        match stream {
            Stream::Stdout => out,
            Stream::Stderr => err,
        }
    }

    /// The named pipe the program reads its standard input from, when
    /// [`prepare_with_stdin`](Self::prepare_with_stdin) made one.
    pub fn stdin_pipe(&self) -> Option<String> {
        self.stdin_pipe.then(|| format!("{}/in", self.dir))
    }

    /// `exec` with its output going to the directory's files (and its
    /// input coming from the named pipe, when there is one): started
    /// through `/bin/sh`, with the program and its arguments passed as
    /// arguments. Its environment, input and `capture-output` stay; the
    /// agent then captures only what the shell itself says before the
    /// redirection.
    pub fn redirect(&self, exec: GuestExec) -> GuestExec {
        let script = match self.stdin_pipe {
            true => REDIRECT_INPUT_SCRIPT,
            false => REDIRECT_SCRIPT,
        };
        let mut arg = vec![
            "-c".to_owned(),
            script.to_owned(),
            "sh".to_owned(),
            self.dir.clone(),
            exec.path,
        ];
        arg.extend(exec.arg);
        GuestExec {
            path: "/bin/sh".to_owned(),
            arg,
            ..exec
        }
    }

    /// Bytes read from `stream` so far.
    pub fn read_so_far(&self, stream: Stream) -> u64 {
        self.tail(stream).total
    }

    /// Reads what is new in each stream, one read each, moving on to a
    /// stream's next chunk file once its current one is complete and read;
    /// hands what came to `sink`. Returns the bytes read and whether more
    /// may wait (a read came back full, or a chunk was done with).
    pub async fn read_new<C: Connector>(
        &mut self,
        channel: &mut Channel<C>,
        sink: &mut impl FnMut(Stream, &[u8]) -> std::io::Result<()>,
    ) -> Result<(u64, bool), FollowError> {
        self.look_on(channel, false, sink).await
    }

    /// A [`look`](Self::look), made again on a new connection where the
    /// connection dropped under it and the agent outlives that (libvirtd
    /// went away: see [`Connector::outlives_disconnect`]), from where it
    /// was: a read cut short seeks back first, and the steps to the next
    /// chunk are owed until made (`Tail::settle`). It waits between tries,
    /// and so do the caller's other programs, whose connection is down
    /// too.
    async fn look_on<C: Connector>(
        &mut self,
        channel: &mut Channel<C>,
        ended: bool,
        sink: &mut impl FnMut(Stream, &[u8]) -> std::io::Result<()>,
    ) -> Result<(u64, bool), FollowError> {
        loop {
            match self.look(channel, ended, sink).await {
                // A look makes several exchanges, each of which may drop:
                // only drops with no reply between them are a lost
                // connection (a look that got further before its drop
                // is not counted against the next).
                Err(FollowError::Agent(Error::Disconnected))
                    if channel.connector().outlives_disconnect()
                        && channel.drops_in_a_row() <= MOST_REPLIES_LOST =>
                {
                    tracing::info!(
                        dir = self.dir,
                        "the connection dropped under reading the output: reading again on a new one"
                    );
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
                looked => return looked,
            }
        }
    }

    /// One read of each stream, and of the index when only it can tell
    /// whether a chunk at its end for now is complete.
    async fn look<C: Connector>(
        &mut self,
        channel: &mut Channel<C>,
        ended: bool,
        sink: &mut impl FnMut(Stream, &[u8]) -> std::io::Result<()>,
    ) -> Result<(u64, bool), FollowError> {
        let count = self.options.read_count;
        let (mut total, mut more) = (0, false);
        for tail in &mut self.tails {
            let (read, more_here) = tail.look(channel, &self.dir, count, sink).await?;
            total += read;
            more |= more_here;
        }
        // While the program runs and nothing comes, a chunk rarely ends
        // (a chunk is 1024 reads of its pipe): the index is read on a look
        // that found output and on the next few, then on every fourth.
        self.quiet_looks = if total > 0 {
            0
        } else {
            self.quiet_looks.wrapping_add(1)
        };
        let quiet = self.quiet_looks;
        let due = ended || quiet < QUIET_INDEX_LOOKS || quiet % QUIET_INDEX_LOOKS == 0;
        if due && self.tails.iter().any(|tail| tail.needs_index(ended)) {
            // Something new in it: a chunk complete, to read to its end.
            more |= self.index.read(channel, count, &mut self.tails).await?;
        }
        Ok((total, more))
    }

    /// Once the program has ended, reads the rest of its output: each
    /// stream until its rotator's end mark, but no further than two chunks
    /// past the one read now, and no longer than [`DRAIN_QUIET`] while
    /// nothing new comes.
    pub async fn drain<C: Connector>(
        &mut self,
        channel: &mut Channel<C>,
        sink: &mut impl FnMut(Stream, &[u8]) -> std::io::Result<()>,
    ) -> Result<(), FollowError> {
        let last = self.tails.each_ref().map(|tail| tail.chunk + 2);
        let mut quiet_since = Instant::now();
        loop {
            let chunks = self.tails.each_ref().map(|tail| tail.chunk);
            let (read, more) = self.look_on(channel, true, sink).await?;
            let past = |i: usize| self.tails[i].finished || self.tails[i].chunk > last[i];
            if past(0) && past(1) {
                return Ok(());
            }
            if more || read > 0 || chunks != self.tails.each_ref().map(|tail| tail.chunk) {
                quiet_since = Instant::now();
                if more {
                    continue;
                }
            }
            let waited = quiet_since.elapsed();
            if waited >= DRAIN_QUIET {
                tracing::info!(dir = self.dir, "no end of the output within the drain's bound");
                return Ok(());
            }
            tokio::time::sleep(DRAIN_LOOKS.pause_after(waited)).await;
        }
    }

    /// Closes the files and removes the directory, stopping the rotators
    /// still running. Errors: the directory was gone already
    /// ([`FollowError::Removed`]), or its file system had no space left, or
    /// a rotator failed for want of space ([`FollowError::Full`]), or a
    /// rotator failed otherwise or was killed before the end of its stream
    /// ([`FollowError::Lost`]): removed all the same.
    pub async fn clean_up<C: Connector>(&mut self, channel: &mut Channel<C>) -> Result<(), FollowError> {
        let closed = self.close_files(channel).await;
        let unended: Vec<&str> = self
            .tails
            .iter()
            .filter(|t| !t.ended_well())
            .map(Tail::name)
            .collect();
        let remove = GuestExec::new(
            "/bin/sh",
            ["-c", CLEAN_UP_SCRIPT, "sh", &self.dir, &unended.join(" ")],
        );
        let pid = channel.guest_exec(&remove).await?.pid;
        let status = wait_for_exit_on(channel, pid, PollSchedule::default(), HoldPolicy::default())
            .await?
            .status;
        let dir = self.dir.clone();
        match status.exitcode {
            Some(0) => {}
            Some(3) => return Err(FollowError::Removed { dir }),
            _ => {
                let said = String::from_utf8_lossy(status.err_data.as_deref().unwrap_or_default());
                return Err(FollowError::CleanUp {
                    dir,
                    reason: said.trim().to_owned(),
                });
            }
        }
        closed?;
        let said = String::from_utf8_lossy(status.out_data.as_deref().unwrap_or_default());
        Report::parse(&said).verdict(&dir, &self.tails)
    }

    /// Closes the files the agent holds open for this directory, each once
    /// (whatever the agent answers: it keeps a handle whose close failed,
    /// and a second close would use a freed `FILE`). The first error; a
    /// connection dropped under a go-between that the agent outlives is
    /// none (see [`Connector::outlives_disconnect`]).
    pub async fn close_files<C: Connector>(&mut self, channel: &mut Channel<C>) -> Result<(), FollowError> {
        let mut first_error = None;
        let index = self.index.file.handle.take();
        let handles = self.tails.iter_mut().flat_map(Tail::take_handles).chain([index]);
        // Two at a time: one round trip for two on a direct channel.
        for pair in handles.flatten().collect::<Vec<_>>().chunks(2) {
            let close = |handle: &i64| GuestFileClose { handle: *handle };
            let closed = match pair {
                [first, second] => match channel.execute_both(&close(first), &close(second)).await {
                    Ok((first, second)) => first.and(second).map(drop),
                    Err(error) => Err(error),
                },
                [one] => channel.execute(&close(one)).await.map(drop),
                _ => Ok(()),
            };
            match closed {
                // Sent once, as any close: the agent went on, and at worst
                // keeps the handle.
                Err(Error::Disconnected) if channel.connector().outlives_disconnect() => {
                    tracing::info!("the connection dropped under closing the output's files: going on");
                }
                Err(error) => {
                    first_error.get_or_insert(FollowError::from(error));
                }
                Ok(()) => {}
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Follow {
    /// Removes the directory named after `name` that
    /// [`prepare_named`](Self::prepare_named) was making or had made for
    /// a caller cut short before the program ran (a signal), and stops
    /// the processes that still use it: the setup, and a program whose
    /// start was under way (with standard input from the named pipe, it
    /// waits for a writer that will never come). Returns whether the
    /// guest did all that.
    pub async fn sweep<C: Connector>(channel: &mut Channel<C>, name: &str) -> Result<bool, Error> {
        // In two arguments: the sweep's own command line must not hold
        // the name it looks for.
        let (first, second) = name.split_at(name.len() / 2);
        let sweep = GuestExec::new("/bin/sh", ["-c", SWEEP_SCRIPT, "sh", first, second]);
        let pid = channel.guest_exec(&sweep).await?.pid;
        let finished = wait_for_exit_on(channel, pid, PollSchedule::default(), HoldPolicy::default()).await?;
        Ok(finished.status.exitcode == Some(0))
    }
}

/// The script that sweeps the directory named after `$1$2` (see
/// [`Follow::sweep`]): the processes whose command line holds the name
/// (the setup, the shell that starts the program) or that have a file of
/// the directory open (a program it started), but for the agent (its
/// parent, which may hold the output files open) get SIGTERM, then SIGKILL
/// while any is left, for about five seconds at most; then the directory
/// goes.
const SWEEP_SCRIPT: &str = concat!(
    stop_naming_function!(),
    r#"n=$1$2
stop_naming "$n"
rm -rf -- "${TMPDIR:-/tmp}/virtomate-follow-$n""#
);

/// The files in the directory `dir` that `stream` goes to, as the guest
/// names them (`N` counting from 0): what to tell a user when the
/// directory stays behind.
pub fn output_path(dir: &str, stream: Stream) -> String {
    format!("{dir}/{}.N", stream_name(stream))
}

#[cfg(test)]
mod tests {
    use super::*;
    use report::available_kib;

    #[test]
    fn the_space_left_comes_from_df_else_from_stat() {
        let space_left = |path: &str, df: &str| {
            // A `df` that prints `df`'s lines, as BusyBox's does on an
            // initramfs root: the header only.
            let bin = tempfile::tempdir().unwrap();
            let fake = bin.path().join("df");
            std::fs::write(&fake, format!("#!/bin/sh\nprintf '{df}'\n")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
            let path_var = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap());
            let script = concat!(space_left_function!(), r#"space_left "$1""#);
            let said = std::process::Command::new("/bin/sh")
                .args(["-c", script, "sh", path])
                .env("PATH", path_var)
                .output()
                .unwrap();
            String::from_utf8(said.stdout).unwrap()
        };
        let header = "Filesystem 1024-blocks Used Available Capacity Mounted on\\n";
        let full = format!("{header}tmpfs 64 64 0 100%% /tmp\\n");
        assert_eq!(space_left("/", &full), "0\n");
        let from_stat = space_left("/", header);
        assert!(available_kib(&from_stat).is_some(), "{from_stat:?}");
    }

    #[test]
    fn the_program_and_its_arguments_pass_as_arguments() {
        let follow = Follow {
            dir: "/tmp/virtomate-follow-x".to_owned(),
            options: FollowOptions::default(),
            stdin_pipe: false,
            tails: [Tail::new(Stream::Stdout), Tail::new(Stream::Stderr)],
            index: Index::default(),
            quiet_looks: 0,
            other_owners: String::new(),
        };
        let mut exec = GuestExec::new("printf", ["%s\\n", "a'b", "$(x)"]).with_input(b"in".to_vec());
        exec.env = Some(vec!["A=1".to_owned()]);
        let exec = follow.redirect(exec);
        assert_eq!(exec.path, "/bin/sh");
        assert_eq!(
            exec.arg,
            [
                "-c",
                REDIRECT_SCRIPT,
                "sh",
                "/tmp/virtomate-follow-x",
                "printf",
                "%s\\n",
                "a'b",
                "$(x)"
            ]
        );
        assert_eq!(exec.input_data.as_deref(), Some(&b"in"[..]));
        assert_eq!(exec.env, Some(vec!["A=1".to_owned()]));
    }

    #[test]
    fn the_sweep_stops_a_shell_waiting_on_the_pipe_and_removes_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("virtomate-follow-abcd");
        let made = std::process::Command::new("/bin/sh")
            .args(["-c", SETUP_SCRIPT, "sh", "abcd", "in"])
            .env("TMPDIR", tmp.path())
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
        // As the program's shell waits, for a writer that never comes.
        let mut waiting = std::process::Command::new("/bin/sh")
            .args(["-c", REDIRECT_INPUT_SCRIPT, "sh"])
            .arg(&dir)
            .arg("cat")
            .spawn()
            .unwrap();
        let swept = std::process::Command::new("/bin/sh")
            .args(["-c", SWEEP_SCRIPT, "sh", "ab", "cd"])
            .env("TMPDIR", tmp.path())
            .output()
            .unwrap();
        assert!(swept.status.success(), "{swept:?}");
        assert!(swept.stderr.is_empty(), "{swept:?}");
        let ended = waiting.wait().unwrap();
        assert!(!ended.success(), "killed: {ended:?}");
        assert!(!dir.exists());
    }

    #[test]
    fn the_clean_up_stops_rotators_that_a_left_behind_process_keeps_going() {
        let tmp = tempfile::tempdir().unwrap();
        let made = std::process::Command::new("/bin/sh")
            .args(["-c", SETUP_SCRIPT, "sh", "left"])
            .env("TMPDIR", tmp.path())
            .output()
            .unwrap();
        let dir = String::from_utf8(made.stdout).unwrap().trim_end().to_owned();
        // The program ends at once; its child holds both pipes on.
        let ran = std::process::Command::new("/bin/sh")
            .args([
                "-c",
                REDIRECT_SCRIPT,
                "sh",
                &dir,
                "sh",
                "-c",
                "sleep 30 & echo $! >&2",
            ])
            .status()
            .unwrap();
        assert!(ran.success());
        let said = wait_for(|| {
            let said = std::fs::read_to_string(format!("{dir}/err.0")).unwrap();
            said.ends_with('\n').then_some(said)
        });
        let rotators = || {
            let procs = std::fs::read_dir("/proc").unwrap().flatten();
            let cmdline =
                |entry: &std::fs::DirEntry| std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let dir = dir.as_bytes();
            procs
                .filter(|entry| cmdline(entry).windows(dir.len()).any(|w| w == dir))
                .count()
        };
        assert!(rotators() >= 2, "the rotators run");
        // Asked about both streams (their end marks not in), it tells of
        // neither: their rotators run.
        let cleaned = std::process::Command::new("/bin/sh")
            .args(["-c", CLEAN_UP_SCRIPT, "sh", &dir, "out err"])
            .output()
            .unwrap();
        assert!(cleaned.status.success(), "{cleaned:?}");
        let told = String::from_utf8(cleaned.stdout).unwrap();
        assert!(available_kib(&told).is_some(), "only the space left: {told:?}");
        assert!(!std::path::Path::new(&dir).exists());
        wait_for(|| (rotators() == 0).then_some(()));
        let killed = std::process::Command::new("kill")
            .arg(said.trim())
            .status()
            .unwrap();
        assert!(killed.success());
    }

    /// `script` run by `/bin/sh` with `args`, `$TMPDIR` being `tmp`.
    fn sh(tmp: &std::path::Path, script: &str, args: &[&str]) -> std::process::Output {
        std::process::Command::new("/bin/sh")
            .args(["-c", script, "sh"])
            .args(args)
            .env("TMPDIR", tmp)
            .output()
            .unwrap()
    }

    #[test]
    fn a_rotator_failing_to_open_its_next_chunk_renames_its_marker_and_the_clean_up_tells() {
        let tmp = tempfile::tempdir().unwrap();
        let made = sh(tmp.path(), SETUP_SCRIPT, &["open"]);
        let dir = String::from_utf8(made.stdout).unwrap().trim_end().to_owned();
        // Chunk 1 cannot be opened for writing: a directory has its name.
        std::fs::create_dir(format!("{dir}/out.1")).unwrap();
        let program = "head -c 5000000 /dev/zero; echo $? >&2";
        let ran = sh(tmp.path(), REDIRECT_SCRIPT, &[&dir, "sh", "-c", program]);
        assert!(ran.status.success(), "{ran:?}");
        let index = wait_for(|| {
            let index = std::fs::read_to_string(format!("{dir}/index")).unwrap();
            index.contains("err 1 end\n").then_some(index)
        });
        assert!(index.contains("out 0 fail\n"), "{index:?}");
        assert_eq!(std::fs::read(format!("{dir}/err.0")).unwrap(), b"141\n");
        assert!(std::path::Path::new(&format!("{dir}/out.fail")).exists());
        let cleaned = sh(tmp.path(), CLEAN_UP_SCRIPT, &[&dir, "out err"]);
        assert!(cleaned.status.success(), "{cleaned:?}");
        let said = String::from_utf8(cleaned.stdout).unwrap();
        assert!(said.starts_with("out fail\n"), "{said:?}");
        assert!(matches!(
            Report::parse(&said).verdict(&dir, &[Tail::new(Stream::Stdout)]),
            Err(FollowError::Lost { failed: true, .. })
        ));
    }

    #[test]
    fn the_clean_up_tells_nothing_of_rotators_that_never_ran() {
        let tmp = tempfile::tempdir().unwrap();
        let made = sh(tmp.path(), SETUP_SCRIPT, &["unused"]);
        let dir = String::from_utf8(made.stdout).unwrap().trim_end().to_owned();
        let cleaned = sh(tmp.path(), CLEAN_UP_SCRIPT, &[&dir, "out err"]);
        assert!(cleaned.status.success(), "{cleaned:?}");
        let said = String::from_utf8(cleaned.stdout).unwrap();
        assert!(available_kib(&said).is_some(), "only the space left: {said:?}");
        assert!(Report::parse(&said)
            .verdict(&dir, &[Tail::new(Stream::Stdout)])
            .is_ok());
    }

    #[test]
    fn the_clean_up_tells_a_rotator_killed_and_not_one_that_ended() {
        let tmp = tempfile::tempdir().unwrap();
        let made = sh(tmp.path(), SETUP_SCRIPT, &["killed"]);
        let dir = String::from_utf8(made.stdout).unwrap().trim_end().to_owned();
        // The program closes its stderr, and holds its stdout, quiet.
        let program = "exec 2>&-; exec sleep 30";
        let mut running = std::process::Command::new("/bin/sh")
            .args(["-c", REDIRECT_SCRIPT, "sh", &dir, "sh", "-c", program])
            .spawn()
            .unwrap();
        let index = || std::fs::read_to_string(format!("{dir}/index")).unwrap();
        wait_for(|| index().contains("err 0 end\n").then_some(()));
        let out_rotator = || {
            let procs = std::fs::read_dir("/proc").unwrap().flatten();
            let credit = std::fs::canonicalize(format!("{dir}/out.credit")).unwrap();
            procs
                .filter(|p| std::fs::read_link(p.path().join("fd/3")).is_ok_and(|t| t == credit))
                .filter_map(|p| p.file_name().to_str()?.parse::<i32>().ok())
                .collect::<Vec<_>>()
        };
        wait_for(|| (!out_rotator().is_empty()).then_some(()));
        for pid in out_rotator() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        wait_for(|| out_rotator().is_empty().then_some(()));
        // Both asked for: stderr's rotator ended with its mark.
        let cleaned = sh(tmp.path(), CLEAN_UP_SCRIPT, &[&dir, "out err"]);
        let said = String::from_utf8(cleaned.stdout).unwrap();
        assert!(
            said.starts_with("out live\n") && !said.contains("err"),
            "{said:?}"
        );
        running.kill().unwrap();
        running.wait().unwrap();
    }

    /// What `probe` gives, once it gives something; panics after 10 s.
    fn wait_for<T>(mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(found) = probe() {
                return found;
            }
            assert!(Instant::now() < deadline, "not seen within 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn the_scripts_run_in_a_posix_shell() {
        let dir = tempfile::tempdir().unwrap();
        let run = |script: &str, args: &[&str]| {
            std::process::Command::new("/bin/sh")
                .args(["-c", script, "sh"])
                .args(args)
                .env("TMPDIR", dir.path())
                .output()
                .unwrap()
        };
        let made = run(SETUP_SCRIPT, &["abc"]);
        assert!(made.status.success(), "{made:?}");
        let path = String::from_utf8(made.stdout).unwrap().trim_end().to_owned();
        assert_eq!(path, format!("{}/virtomate-follow-abc", dir.path().display()));
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o700);
        assert_eq!(mode(&format!("{path}/out.0")), 0o600);
        // Made once only: a second setup with the same name fails.
        assert!(!run(SETUP_SCRIPT, &["abc"]).status.success());
        let piped = run(SETUP_SCRIPT, &["pipe", "in"]);
        assert!(piped.status.success(), "{piped:?}");
        let fifo = format!("{}/in", String::from_utf8(piped.stdout).unwrap().trim_end());
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        assert_eq!(mode(&fifo), 0o600);

        // With an owner: tagged, and the other tagged directories listed
        // after its path (`pipe` and `abc` have no tag).
        let tagged = run(SETUP_SCRIPT, &["one", "", "owner 1"]);
        assert!(tagged.status.success(), "{tagged:?}");
        let one = format!("{}/virtomate-follow-one", dir.path().display());
        assert_eq!(String::from_utf8(tagged.stdout).unwrap(), format!("{one}\n"));
        assert_eq!(
            std::fs::read_to_string(format!("{one}/owner")).unwrap(),
            "owner 1\n"
        );
        let listed = run(SETUP_SCRIPT, &["two", "", "owner 2"]);
        let two = format!("{}/virtomate-follow-two", dir.path().display());
        assert_eq!(
            String::from_utf8(listed.stdout).unwrap(),
            format!("{two}\none owner 1\n")
        );

        for fifo in ["out.pipe", "err.credit"] {
            assert!(std::fs::metadata(format!("{path}/{fifo}"))
                .unwrap()
                .file_type()
                .is_fifo());
        }
        assert_eq!(mode(&format!("{path}/out.0")), 0o600);

        // Small output: one chunk each, then the end; nothing waits for a
        // credit.
        let ran = run(
            REDIRECT_SCRIPT,
            &[&path, "sh", "-c", "echo 'o k'; echo e >&2; exit 4"],
        );
        assert_eq!(ran.status.code(), Some(4));
        assert!(ran.stdout.is_empty() && ran.stderr.is_empty());
        let ended = |index: &str| index.contains("out 1 end\n") && index.contains("err 1 end\n");
        let index =
            wait_for(|| Some(std::fs::read_to_string(format!("{path}/index")).unwrap()).filter(|i| ended(i)));
        let mut lines: Vec<&str> = index.lines().collect();
        lines.sort();
        assert_eq!(lines, ["err 0", "err 1 end", "out 0", "out 1 end"]);
        assert_eq!(std::fs::read(format!("{path}/out.0")).unwrap(), b"o k\n");
        assert_eq!(std::fs::read(format!("{path}/err.0")).unwrap(), b"e\n");

        let cleaned = run(CLEAN_UP_SCRIPT, &[&path]);
        assert!(cleaned.status.success(), "{cleaned:?}");
        assert!(available_kib(&String::from_utf8_lossy(&cleaned.stdout)).is_some());
        assert!(!std::path::Path::new(&path).exists());
        assert_eq!(run(CLEAN_UP_SCRIPT, &[&path]).status.code(), Some(3));
    }
}
