//! Private directories a dead virtomate left in the guest, swept by the
//! next run that makes one.
//!
//! A run's directory (see [`follow`](crate::follow)) is removed at its
//! end, or when it is given up on a signal; but a virtomate killed with
//! SIGKILL, or one that gave up on an agent that restarted under it,
//! leaves it in the guest's temporary directory, with the program perhaps
//! still running. So each run tags its directory with its owner, this
//! process ([`Owner`]: the host's boot id, the pid namespace, the pid and
//! the pid's start time), as it makes it, and looks at the other
//! directories' tags, listed in the same step
//! ([`Follow::prepare_named`]): one whose owner is provably dead is swept as a run cut short is (its
//! processes stopped, the directory removed; [`Follow::sweep`]).
//!
//! Provably dead means: the same boot of the same host and the same pid
//! namespace as this process (so that its pid means the same process
//! here), and no process under that pid, or one started at another time.
//! A directory without a tag (another host's virtomate may not see this
//! one's processes, an older virtomate wrote none, or its owner died
//! between making it and tagging it), with a tag of another boot, host or
//! namespace, or whose owner may live, is left alone.
//!
//! [`prepare_tagged`] does both for any caller that makes a private
//! directory: a followed run and the copies whose programs' output (`copy
//! -r`, `--compress`) or input (`copy -r` into the guest) pass through
//! one.

use std::path::Path;
use std::time::Duration;

use crate::channel::in_flight::start_time;
use crate::follow::{Follow, FollowError, FollowOptions};
use crate::{Channel, Connector, Error};

/// The most directories one run sweeps: each sweep takes a round trip or
/// more, and a hostile guest could list any number.
pub const MOST_SWEPT: usize = 4;

/// The longest [`prepare_tagged`] waits for the sweep of dead runs'
/// directories: a sweep takes about five seconds at worst, and there are
/// [`MOST_SWEPT`] at most.
pub const SWEPT_WITHIN: Duration = Duration::from_secs(30);

/// What a tag starts with: its format, should it ever change.
const TAG_VERSION: &str = "virtomate-owner-1";

/// The process that made a private directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// `/proc/sys/kernel/random/boot_id`: this boot of this host.
    boot_id: String,
    /// The pid namespace, as `/proc/self/ns/pid` names it.
    pid_ns: String,
    pid: u32,
    /// The pid's start time (`/proc/PID/stat`, clock ticks since boot).
    started: u64,
}

impl Owner {
    /// This process, as `proc_root` (`/proc`) tells it; `None` where it
    /// cannot (no procfs): its directories are then not tagged.
    pub fn this_process(proc_root: &Path) -> Option<Owner> {
        let boot_id = std::fs::read_to_string(proc_root.join("sys/kernel/random/boot_id")).ok()?;
        let pid_ns = std::fs::read_link(proc_root.join("self/ns/pid")).ok()?;
        let pid = std::process::id();
        Some(Owner {
            boot_id: boot_id.trim().to_owned(),
            pid_ns: pid_ns.to_string_lossy().into_owned(),
            pid,
            started: start_time(proc_root.join(format!("{pid}/stat")))?,
        })
    }

    /// The tag written into the directory: one line of words.
    pub fn tag(&self) -> String {
        format!(
            "{TAG_VERSION} {} {} {} {}",
            self.boot_id, self.pid_ns, self.pid, self.started
        )
    }

    /// The owner a tag names; `None` for anything else.
    fn parse(tag: &str) -> Option<Owner> {
        let words: Vec<&str> = tag.split_whitespace().collect();
        let [TAG_VERSION, boot_id, pid_ns, pid, started] = words[..] else {
            return None;
        };
        Owner::of_words(boot_id, pid_ns, pid, started)
    }

    fn of_words(boot_id: &str, pid_ns: &str, pid: &str, started: &str) -> Option<Owner> {
        Some(Owner {
            boot_id: boot_id.to_owned(),
            pid_ns: pid_ns.to_owned(),
            pid: pid.parse().ok()?,
            started: started.parse().ok()?,
        })
    }

    /// The owner as a file name carries it, `BOOT.NS.PID.STARTED`: the
    /// boot id without its dashes and the namespace's number alone. `copy`
    /// names its private directories and host temporaries so.
    ///
    /// ```
    /// # use std::path::Path;
    /// use virtomate_protocol::leftovers::Owner;
    ///
    /// let me = Owner::this_process(Path::new("/proc")).expect("Linux has /proc");
    /// let name = format!(".virtomate-{}", me.name_tag());
    /// let owner = Owner::from_name_tag(name.strip_prefix(".virtomate-").unwrap());
    /// assert!(owner.is_some_and(|owner| !owner.is_dead()));
    /// ```
    pub fn name_tag(&self) -> String {
        let (boot, ns) = self.host();
        format!("{boot}.{ns}.{}.{}", self.pid, self.started)
    }

    /// The owner a [`name_tag`](Self::name_tag) names; `None` for
    /// anything else.
    pub fn from_name_tag(tag: &str) -> Option<Owner> {
        let parts: Vec<&str> = tag.split('.').collect();
        let [boot_id, pid_ns, pid, started] = parts[..] else {
            return None;
        };
        Owner::of_words(boot_id, pid_ns, pid, started)
    }

    /// Whether this owner is provably dead as this process sees it: see
    /// the [module](self) docs. `false` where `/proc` cannot tell.
    pub fn is_dead(&self) -> bool {
        let proc_root = Path::new("/proc");
        Owner::this_process(proc_root).is_some_and(|me| self.provably_dead(&me, proc_root))
    }

    /// Whether this owner is provably dead, as `me` sees it through
    /// `proc_root`: see the [module](self) docs.
    fn provably_dead(&self, me: &Owner, proc_root: &Path) -> bool {
        if self.host() != me.host() {
            return false;
        }
        start_time(proc_root.join(format!("{}/stat", self.pid))) != Some(self.started)
    }

    /// The boot and the pid namespace, written alike whether read from a
    /// tag or a name tag.
    fn host(&self) -> (String, String) {
        let boot = self.boot_id.replace('-', "");
        let ns = self.pid_ns.chars().filter(char::is_ascii_digit).collect();
        (boot, ns)
    }
}

/// The directories of `listing` (the script's output) whose owners are
/// provably dead, [`MOST_SWEPT`] at most: their names, checked to be what
/// [`Follow::new_name`] makes, whatever the guest wrote.
fn dead_owners(listing: &str, me: &Owner, proc_root: &Path) -> Vec<String> {
    listing
        .lines()
        .filter_map(|line| line.split_once(' '))
        .filter(|(name, _)| name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit()))
        .filter(|(_, tag)| Owner::parse(tag).is_some_and(|owner| owner.provably_dead(me, proc_root)))
        .map(|(name, _)| name.to_owned())
        .take(MOST_SWEPT)
        .collect()
}

/// Sweeps the directories of `listing` (what [`Follow::other_owners`]
/// lists) whose owners are provably dead as `me` sees them
/// ([`MOST_SWEPT`] at most: the next run sweeps more); returns their
/// names.
pub async fn sweep_dead<C: Connector>(
    channel: &mut Channel<C>,
    listing: &str,
    me: &Owner,
) -> Result<Vec<String>, Error> {
    let dead = dead_owners(listing, me, Path::new("/proc"));
    for name in &dead {
        let swept = Follow::sweep(channel, name).await?;
        tracing::info!(name, swept, "the private directory of a dead virtomate swept");
    }
    Ok(dead)
}

/// Makes the private directory named after `name` (with the named pipe
/// when `stdin_pipe`), as [`Follow::prepare_named`] does, tagged with this
/// process where `/proc` tells it, so that should this process die the
/// next run from this host sweeps it. The directories of dead owners the
/// setup listed are swept by [`sweep_beside`], once the caller keeps the
/// [`Follow`] where its own give-up finds it.
///
/// ```no_run
/// # use virtomate_protocol::follow::{Follow, FollowOptions};
/// # use virtomate_protocol::leftovers;
/// # async fn demo(channel: &mut virtomate_protocol::Channel<virtomate_protocol::SocketConnector>) {
/// let name = Follow::new_name().unwrap();
/// match leftovers::prepare_tagged(channel, FollowOptions::default(), false, &name).await {
///     Ok(follow) => {
///         leftovers::sweep_beside(channel, &follow).await;
///         println!("output goes to {}", follow.dir());
///     }
///     Err(error) => eprintln!("{error}"),
/// }
/// # }
/// ```
pub async fn prepare_tagged<C: Connector>(
    channel: &mut Channel<C>,
    options: FollowOptions,
    stdin_pipe: bool,
    name: &str,
) -> Result<Follow, FollowError> {
    let tag = Owner::this_process(Path::new("/proc")).map(|owner| owner.tag());
    Follow::prepare_named(channel, options, stdin_pipe, name, tag.as_deref()).await
}

/// Sweeps the directories of dead owners that the setup of `follow` listed
/// beside its own. Best effort: a sweep that fails, or that a hostile
/// guest drags out past [`SWEPT_WITHIN`], leaves what it found (said in
/// the log), and the caller goes on.
pub async fn sweep_beside<C: Connector>(channel: &mut Channel<C>, follow: &Follow) {
    let Some(owner) = Owner::this_process(Path::new("/proc")) else {
        return;
    };
    let sweep = sweep_dead(channel, follow.other_owners(), &owner);
    match tokio::time::timeout(SWEPT_WITHIN, sweep).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::warn!(%error, "the directories of dead runs were not swept"),
        Err(_) => tracing::warn!("the directories of dead runs were not swept in time"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Owner {
        Owner::this_process(Path::new("/proc")).expect("Linux has /proc")
    }

    #[test]
    fn a_tag_names_its_owner_and_nothing_else_parses() {
        let me = me();
        assert_eq!(Owner::parse(&me.tag()), Some(me.clone()));
        for bad in [
            "",
            "virtomate-owner-2 a b 1 2",
            "virtomate-owner-1 a b x 2",
            "virtomate-owner-1 a b 1",
        ] {
            assert_eq!(Owner::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_an_owner_of_this_boot_and_namespace_whose_pid_is_gone_or_reused_is_dead() {
        let me = me();
        let proc_root = Path::new("/proc");
        let parent = std::os::unix::process::parent_id();
        let live = Owner {
            pid: parent,
            started: start_time(format!("/proc/{parent}/stat")).unwrap(),
            ..me.clone()
        };
        assert!(!live.provably_dead(&me, proc_root), "a live process");
        assert!(!me.provably_dead(&me, proc_root), "this process");
        let reused = Owner {
            started: live.started + 1,
            ..live.clone()
        };
        assert!(
            reused.provably_dead(&me, proc_root),
            "the pid of another process now"
        );
        // Far above any pid_max.
        let gone = Owner {
            pid: u32::MAX - 1,
            ..me.clone()
        };
        assert!(gone.provably_dead(&me, proc_root));
        let other_boot = Owner {
            boot_id: "another".to_owned(),
            ..gone.clone()
        };
        assert!(!other_boot.provably_dead(&me, proc_root));
        let other_ns = Owner {
            pid_ns: "pid:[1]".to_owned(),
            ..gone.clone()
        };
        assert!(!other_ns.provably_dead(&me, proc_root));
        let earlier_me = Owner {
            started: me.started - 1,
            ..me.clone()
        };
        assert!(
            earlier_me.provably_dead(&me, proc_root),
            "this pid's earlier process"
        );
    }

    #[test]
    fn a_name_tag_names_the_same_owner_as_a_tag() {
        let me = me();
        let named = Owner::from_name_tag(&me.name_tag()).unwrap();
        assert_eq!(named.host(), me.host());
        assert!(!named.provably_dead(&me, Path::new("/proc")));
        assert!(!named.name_tag().contains('-'), "{}", named.name_tag());
        let gone = Owner {
            pid: u32::MAX - 1,
            ..named
        };
        assert!(gone.is_dead());
        for bad in ["", "a.b.1", "a.b.x.2", "a.b.1.2.3", "a.b.1.-2"] {
            assert_eq!(Owner::from_name_tag(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_well_formed_names_of_dead_owners_are_swept() {
        let me = me();
        let gone = Owner {
            pid: u32::MAX - 1,
            ..me.clone()
        };
        let name = "0123456789abcdef0123456789abcdef";
        let listing = format!(
            "{name} {}\n../etc {}\n{} {}\nffffffffffffffffffffffffffffffff {}\nno tag\n",
            gone.tag(),
            gone.tag(),
            name.replace('0', "/"),
            gone.tag(),
            me.tag()
        );
        assert_eq!(dead_owners(&listing, &me, Path::new("/proc")), [name]);
        let many = format!("{name} {}\n", gone.tag()).repeat(10);
        assert_eq!(dead_owners(&many, &me, Path::new("/proc")).len(), MOST_SWEPT);
    }
}
