//! The private directories of copies that were killed (SIGKILL, a host
//! that lost power): the name of each carries its maker, so that a later
//! copy into the same guest directory can tell one whose process is gone
//! from one still in use, and remove it.
//!
//! A directory's name is `.virtomate-RANDOM-BOOT.NS.PID.START`: the host's
//! boot id, the pid namespace, and the process's pid and start time (in
//! clock ticks since boot, `/proc/PID/stat`). One is stale when BOOT and NS
//! are this process's and no process PID started at START runs. Another
//! host's, another boot's or another namespace's is never judged, nor is
//! one without such a tag (virtomate's older names): they are left.

use std::sync::OnceLock;

/// This process's tag, when `/proc` tells it.
pub fn own_tag() -> Option<&'static str> {
    static TAG: OnceLock<Option<String>> = OnceLock::new();
    TAG.get_or_init(|| {
        let (boot, ns) = host()?;
        let pid = std::process::id();
        Some(format!("{boot}.{ns}.{pid}.{}", start_time(pid)?))
    })
    .as_deref()
}

/// The boot id (without dashes) and the pid namespace's inode.
fn host() -> Option<(String, String)> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let ns: String = ns
        .to_string_lossy()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    Some((boot.trim().replace('-', ""), ns))
}

/// When process `pid` started, in clock ticks since boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command's name, which may hold anything, in parentheses.
    let fields = stat.rsplit_once(')')?.1;
    fields.split_whitespace().nth(19)?.parse().ok()
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
    let parts: Vec<&str> = tag.split('.').collect();
    let [boot, ns, pid, start] = parts[..] else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return false;
    };
    if random.len() != 32 || !random.bytes().all(|b| b.is_ascii_hexdigit()) {
        return false;
    }
    match host() {
        Some((own_boot, own_ns)) if own_boot == boot && own_ns == ns => start_time(pid) != Some(start),
        _ => false,
    }
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
}
