//! The two sides of `copy SRC DEST`: `DOMAIN:/PATH` in the guest, a local
//! path, or `-`.
//!
//! An argument is the guest's when it contains `:/`. DOMAIN is what comes
//! before the first `:/`, PATH the rest from its `/`: DOMAIN may itself
//! contain `:` (a QEMU `-name a:b`, a socket path `/run/a:b/qga.sock`),
//! just not `:/`; PATH may hold anything. A guest path is absolute, since
//! the agent has no working directory of the caller's to resolve a
//! relative one against.

use std::path::PathBuf;

use crate::error::CliError;

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `DOMAIN:/PATH`.
    Guest { domain: String, path: String },
    /// A path on this host.
    Local(PathBuf),
    /// `-`: standard input or output.
    Stdio,
}

impl Location {
    pub fn parse(text: &str) -> Location {
        if text == "-" {
            return Location::Stdio;
        }
        match text.find(":/") {
            Some(at) if at > 0 => Location::Guest {
                domain: text[..at].to_owned(),
                path: text[at + 1..].to_owned(),
            },
            _ => Location::Local(PathBuf::from(text)),
        }
    }
}

/// Which way a copy goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Direction {
    /// From the host (a file or standard input) into the guest.
    In {
        source: Location,
        domain: String,
        path: String,
    },
    /// From the guest to the host (a file or standard output).
    Out {
        domain: String,
        path: String,
        dest: Location,
    },
}

/// Exactly one of SRC and DEST is the guest's.
pub fn direction(source: &str, dest: &str) -> Result<Direction, CliError> {
    match (Location::parse(source), Location::parse(dest)) {
        (Location::Guest { .. }, Location::Guest { .. }) => Err(CliError::usage(
            "both SRC and DEST are DOMAIN:/PATH; one must be a local path or - (a local path that contains \
             ':/' cannot be given: rename it, or use - with a redirection)",
        )),
        (source, Location::Guest { domain, path }) => Ok(Direction::In { source, domain, path }),
        (Location::Guest { domain, path }, dest) => Ok(Direction::Out { domain, path, dest }),
        _ => {
            let relative = [source, dest].into_iter().find(|s| s.contains(':'));
            let mut message =
                "neither SRC nor DEST is DOMAIN:/PATH: one side must be a file in the guest".to_owned();
            if let Some(arg) = relative {
                message.push_str(&format!(
                    " ('{arg}' has a ':' but no absolute path after it: guest paths start with /)"
                ));
            }
            Err(CliError::usage(message))
        }
    }
}

/// The directory part of an absolute guest path (`/a/b` → `/a`, `/a` → `/`).
pub fn guest_parent(path: &str) -> &str {
    match path.trim_end_matches('/').rfind('/') {
        Some(0) | None => "/",
        Some(at) => &path[..at],
    }
}

/// The last component of a guest path, if it has one (`/a/b/` → `b`).
pub fn guest_name(path: &str) -> Option<&str> {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(domain: &str, path: &str) -> Location {
        Location::Guest {
            domain: domain.into(),
            path: path.into(),
        }
    }

    #[test]
    fn a_guest_side_splits_at_the_first_colon_slash() {
        assert_eq!(Location::parse("vm:/etc/hosts"), guest("vm", "/etc/hosts"));
        assert_eq!(Location::parse("a:b:/tmp/x:/y"), guest("a:b", "/tmp/x:/y"));
        assert_eq!(
            Location::parse("/run/vm/qga.sock:/tmp/f"),
            guest("/run/vm/qga.sock", "/tmp/f")
        );
        assert_eq!(
            Location::parse("0f4c1c5e-51b9-4d0d-9a1f-2b7e3f5f7a10:/f"),
            guest("0f4c1c5e-51b9-4d0d-9a1f-2b7e3f5f7a10", "/f")
        );
        assert_eq!(Location::parse("-"), Location::Stdio);
        assert_eq!(
            Location::parse("vm:relative"),
            Location::Local("vm:relative".into())
        );
        assert_eq!(Location::parse(":/x"), Location::Local(":/x".into()));
        assert_eq!(Location::parse("./file"), Location::Local("./file".into()));
    }

    #[test]
    fn exactly_one_side_is_the_guests() {
        assert!(matches!(direction("f", "vm:/tmp/f"), Ok(Direction::In { .. })));
        assert!(matches!(direction("vm:/tmp/f", "-"), Ok(Direction::Out { .. })));
        assert!(direction("a:/x", "b:/y").is_err());
        let error = direction("f", "vm:tmp/f").unwrap_err();
        assert!(error.to_string().contains("guest paths start with /"), "{error}");
        assert!(direction("f", "g").is_err());
    }

    #[test]
    fn guest_paths_split_into_directory_and_name() {
        assert_eq!(guest_parent("/a/b"), "/a");
        assert_eq!(guest_parent("/a"), "/");
        assert_eq!(guest_parent("/a/b/"), "/a");
        assert_eq!(guest_name("/a/b/"), Some("b"));
        assert_eq!(guest_name("/"), None);
    }
}
