//! The private directories of copies that were killed (SIGKILL, a host
//! that lost power): the name of each carries its maker, so that a later
//! copy into the same guest directory can tell one whose process is gone
//! from one still in use, and remove it.
//!
//! A directory's name is `.virtomate-RANDOM-BOOT.NS.PID.START`: its maker
//! as [`Owner::name_tag`] writes it (the host's boot id, the pid namespace,
//! and the process's pid and start time), the owner a followed run's
//! directory names in a tag file. One is stale when its owner is provably
//! dead ([`Owner::is_dead`]); another host's, another boot's or another
//! namespace's is never judged, nor is one without such a tag (virtomate's
//! older names): they are left.
//!
//! Copies out of the guest write a temporary beside the destination on
//! the host, `.NAME.virtomate-RANDOM-BOOT.NS.PID.START` (a file, or a
//! directory for `copy -r`), tagged alike; a later copy into the same host
//! directory removes those of killed copies ([`remove_stale_local`]).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::OnceLock;

use virtomate_protocol::leftovers::Owner;

/// This process's tag, when `/proc` tells it (see [`Owner::name_tag`]).
pub fn own_tag() -> Option<&'static str> {
    static TAG: OnceLock<Option<String>> = OnceLock::new();
    TAG.get_or_init(|| Owner::this_process(Path::new("/proc")).map(|me| me.name_tag()))
        .as_deref()
}

/// Whether the directory `name` is a private directory of a copy of this
/// host, boot and pid namespace whose process is gone.
pub fn is_stale(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(".virtomate-") else {
        return false;
    };
    let Some((random, tag)) = rest.split_once('-') else {
        return false;
    };
    if random.len() != 32 || !random.bytes().all(|b| b.is_ascii_hexdigit()) {
        return false;
    }
    Owner::from_name_tag(tag).is_some_and(|owner| owner.is_dead())
}

/// The longest file name Linux file systems take.
const NAME_MAX: usize = 255;

/// The name of a host temporary for the destination `name`:
/// `.NAME.virtomate-RANDOM-TAG` (untagged where `/proc` does not tell),
/// NAME cut short where the whole would not fit in a file name.
pub fn local_temp_name(name: &OsStr, random: &str) -> OsString {
    let suffix = match own_tag() {
        Some(tag) => format!(".virtomate-{random}-{tag}"),
        None => format!(".virtomate-{random}"),
    };
    let room = NAME_MAX.saturating_sub(1 + suffix.len());
    let name = &name.as_bytes()[..name.len().min(room)];
    let mut temp = OsString::from(".");
    temp.push(OsStr::from_bytes(name));
    temp.push(suffix);
    temp
}

/// Removes from the host directory `parent` the temporaries of copies out
/// that were killed there (see [`local_temp_name`], [`is_stale`]): only
/// this user's, open to nobody else, as copy makes them; a link is never
/// followed. Best effort: what cannot be removed stays, said in the log.
pub fn remove_stale_local(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let user = nix::unistd::geteuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !is_stale_local(&name) {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.uid() != user || meta.mode() & 0o077 != 0 || meta.file_type().is_symlink() {
            continue;
        }
        let removed = match meta.is_dir() {
            true => std::fs::remove_dir_all(&path),
            false => std::fs::remove_file(&path),
        };
        match removed {
            Ok(()) => tracing::info!("removed what a killed copy left: {}", path.display()),
            Err(error) => tracing::warn!("{error}; {} may be left", path.display()),
        }
    }
}

/// Whether `name` is a host temporary, `.NAME.virtomate-RANDOM-TAG`, of a
/// copy whose process is gone.
fn is_stale_local(name: &OsStr) -> bool {
    let name = name.as_bytes();
    let marker = b".virtomate-";
    let Some(at) = name.windows(marker.len()).rposition(|w| w == marker) else {
        return false;
    };
    at > 0 && name[0] == b'.' && std::str::from_utf8(&name[at..]).is_ok_and(is_stale)
}

/// Lists the directories in `$2` that may be temporaries of copies (after
/// removing `$1`, the copy's own, now empty).
pub const RMDIR_AND_LIST: &str = r#"rmdir -- "$1" || exit 1
cd -- "$2" || exit 0
for d in .virtomate-*-*.*.*.*; do [ -d "$d" ] && [ ! -h "$d" ] && printf '%s\n' "$d"; done
exit 0"#;

/// Removes the directories named after `$1` in it that are what a copy
/// makes: not a link, owned by the user the agent runs programs as, mode
/// 0700 (so that nobody else put anything in them).
pub const REMOVE_STALE: &str = r#"cd -- "$1" || exit 1; shift
for d; do
  [ -d "$d" ] && [ ! -h "$d" ] && [ -O "$d" ] && [ "$(stat -c %a -- "$d")" = 700 ] && rm -rf -- "$d"
done
exit 0"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_process_is_not_stale_and_a_gone_one_is() {
        let own = own_tag().expect("Linux's /proc");
        let random = "0123456789abcdef0123456789abcdef";
        assert!(!is_stale(&format!(".virtomate-{random}-{own}")));
        let (prefix, _) = own.rsplit_once('.').unwrap();
        assert!(is_stale(&format!(".virtomate-{random}-{prefix}.1")));
        for name in [
            format!(".virtomate-{random}"),
            format!(".virtomate-{random}-x.{own}"),
            format!(".virtomate-short-{prefix}.1"),
            format!(".virtomate-{random}-0.0.1.1"),
        ] {
            assert!(!is_stale(&name), "{name}");
        }
    }

    #[test]
    fn a_host_temporary_is_named_to_fit_and_told_stale_once_its_maker_is_gone() {
        let own = own_tag().expect("Linux's /proc");
        let random = "0123456789abcdef0123456789abcdef";
        let temp = local_temp_name(OsStr::new("f.txt"), random);
        assert_eq!(temp, OsString::from(format!(".f.txt.virtomate-{random}-{own}")));
        assert!(!is_stale_local(&temp), "this process lives");
        let long = local_temp_name(OsStr::new(&"n".repeat(300)), random);
        assert_eq!(long.len(), NAME_MAX);
        assert!(long.to_string_lossy().ends_with(own));
        let (prefix, _) = own.rsplit_once('.').unwrap();
        let gone = format!("{prefix}.1");
        assert!(is_stale_local(OsStr::new(&format!(
            ".f.virtomate-{random}-{gone}"
        ))));
        assert!(is_stale_local(OsStr::new(&format!(
            ".a.virtomate-b.virtomate-{random}-{gone}"
        ))));
        for name in [
            format!(".virtomate-{random}-{gone}"),
            format!("f.virtomate-{random}-{gone}"),
            format!(".f.virtomate-{random}"),
            format!(".f.virtomate-{random}-{gone}.x"),
        ] {
            assert!(!is_stale_local(OsStr::new(&name)), "{name}");
        }
    }

    #[test]
    fn only_a_killed_copys_private_temporaries_are_removed_from_a_host_directory() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let own = own_tag().expect("Linux's /proc");
        let random = "0123456789abcdef0123456789abcdef";
        let (prefix, _) = own.rsplit_once('.').unwrap();
        let gone = format!("{prefix}.1");
        let make_file = |name: &str, mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, b"half").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        };
        let stale_file = make_file(&format!(".f.virtomate-{random}-{gone}"), 0o600);
        let stale_dir = dir.path().join(format!(".t.virtomate-{random}-{gone}"));
        std::fs::create_dir(&stale_dir).unwrap();
        std::fs::write(stale_dir.join("inside"), b"x").unwrap();
        std::fs::set_permissions(&stale_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let live = make_file(&format!(".g.virtomate-{random}-{own}"), 0o600);
        let open = make_file(&format!(".h.virtomate-{random}-{gone}"), 0o644);
        let untagged = make_file(&format!(".i.virtomate-{random}"), 0o600);
        let target = make_file("target", 0o600);
        let link = dir.path().join(format!(".j.virtomate-{random}-{gone}"));
        std::os::unix::fs::symlink(&target, &link).unwrap();
        remove_stale_local(dir.path());
        assert!(!stale_file.exists() && !stale_dir.exists());
        for kept in [&live, &open, &untagged, &target] {
            assert!(kept.exists(), "{}", kept.display());
        }
        assert!(std::fs::symlink_metadata(&link).is_ok(), "a link is left");
    }
}
