//! Rules of the source itself that rustfmt states but does not enforce.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's root: this package's directory.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// rustfmt.toml's `max_width`, or rustfmt's default of 100.
fn max_width() -> usize {
    let config = fs::read_to_string(root().join("rustfmt.toml")).unwrap_or_default();
    config
        .lines()
        .filter_map(|line| line.split_once('='))
        .find(|(key, _)| key.trim() == "max_width")
        .map(|(_, value)| {
            value
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("rustfmt.toml: max_width = {value}: {e}"))
        })
        .unwrap_or(100)
}

/// The `.rs` files git knows of (tracked, or new and not ignored), fuzz's
/// own workspace included; outside a git checkout, those under the source
/// directories, `target/` left out.
fn rust_files() -> Vec<PathBuf> {
    let listed = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
            "--",
            "*.rs",
        ])
        .current_dir(root())
        .output();
    match listed {
        Ok(out) if out.status.success() => out
            .stdout
            .split(|&b| b == 0)
            .filter(|name| !name.is_empty())
            .map(|name| root().join(String::from_utf8_lossy(name).as_ref()))
            // Deleted in the worktree but not yet in the index.
            .filter(|path| path.is_file())
            .collect(),
        _ => {
            let mut files = Vec::new();
            for dir in ["src", "protocol", "tests", "benches", "fuzz/fuzz_targets"] {
                walk(&root().join(dir), &mut files);
            }
            files
        }
    }
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|name| name != "target") {
                walk(&path, files);
            }
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn no_line_of_rust_is_wider_than_rustfmts_110_columns() {
    let max = max_width();
    let files = rust_files();
    assert!(!files.is_empty(), "no .rs file found under {}", root().display());
    let mut wide = Vec::new();
    for path in &files {
        let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for (n, line) in text.lines().enumerate() {
            // Characters, not bytes, as rustfmt counts width.
            let width = line.chars().count();
            if width > max {
                let shown = path.strip_prefix(root()).unwrap_or(path);
                wide.push(format!("{}:{} ({width})", shown.display(), n + 1));
            }
        }
    }
    assert!(
        wide.is_empty(),
        "{} lines are wider than rustfmt.toml's max_width of {max} (rustfmt leaves long string \
         literals, macros and doc examples as they are: wrap them by hand):\n{}",
        wide.len(),
        wide.join("\n")
    );
}
