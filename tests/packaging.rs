//! What `scripts/package.sh` ships beside the binary (issue 10): the man
//! pages and shell completions of `virtomate --generate DIR`, one page per
//! command clap knows, each rendered by `man` without a warning, and
//! completions that bash, zsh and fish load and that complete commands.
//!
//! Nothing here lists the commands: they are read from `virtomate --help`,
//! so a new command is checked as soon as clap has it.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::support::{run, run_command, virtomate, Outcome};

/// `virtomate --generate` into a fresh directory.
fn generated() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = run_command(virtomate().arg("--generate").arg(dir.path()), None);
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("", ""));
    dir
}

/// The commands `virtomate --help` lists, under their headings between
/// the usage and the options, `help` left out.
fn commands() -> Vec<String> {
    let out = run(&["--help"], None);
    assert_eq!(out.status, 0, "{out:?}");
    let commands: Vec<String> = out
        .stdout
        .lines()
        .skip_while(|line| !line.starts_with("Usage:"))
        .take_while(|line| *line != "Options:")
        .filter(|line| line.starts_with("  "))
        .map(|line| line.split_whitespace().next().unwrap().to_owned())
        .filter(|command| command != "help")
        .collect();
    assert!(
        commands.iter().any(|c| c == "guest-run"),
        "no commands found in --help: {}",
        out.stdout
    );
    commands
}

/// The files of `dir`, sorted by name.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn completion(dir: &TempDir, name: &str) -> PathBuf {
    dir.path().join("completions").join(name)
}

/// A shell command line run to its end, which must succeed and write
/// nothing on stderr; its stdout.
fn shell(command: &mut Command) -> String {
    let out: Outcome = run_command(command.env("LC_ALL", "C.UTF-8"), None);
    assert!(out.status == 0 && out.stderr.is_empty(), "{command:?}: {out:?}");
    out.stdout
}

#[test]
fn a_man_page_per_command_and_a_completion_per_shell() {
    let dir = generated();
    let commands = commands();
    let pages = files(&dir.path().join("man"));
    let mut expected: Vec<String> = commands
        .iter()
        .map(|command| format!("virtomate-{command}.1"))
        .collect();
    expected.push("virtomate.1".to_owned());
    // Each command's page, and no other page but those of commands of
    // commands, should one have some (`virtomate-COMMAND-SUB.1`).
    let stray: Vec<&String> = pages
        .iter()
        .filter(|page| {
            !expected.contains(page)
                && !commands
                    .iter()
                    .any(|command| page.starts_with(&format!("virtomate-{command}-")))
        })
        .collect();
    let missing: Vec<&String> = expected.iter().filter(|page| !pages.contains(page)).collect();
    assert!(
        stray.is_empty() && missing.is_empty(),
        "pages {pages:?}: missing {missing:?}, not of a command {stray:?}"
    );
    assert_eq!(
        files(&dir.path().join("completions")),
        ["_virtomate", "virtomate.bash", "virtomate.fish"]
    );
    // Each page carries what `--help` says of its command.
    for command in commands {
        let page = dir.path().join(format!("man/virtomate-{command}.1"));
        let page = std::fs::read_to_string(&page).unwrap();
        let help = run(&[&command, "--help"], None);
        let about = help.stdout.lines().next().unwrap();
        assert!(
            page.contains(&about.replace('-', "\\-").replace('\'', "\\*(Aq")),
            "virtomate-{command}.1 lacks {about:?}:\n{page}"
        );
    }
}

#[test]
fn generate_takes_one_directory() {
    for args in [&["--generate"][..], &["--generate", "a", "b"]] {
        let out = run(args, None);
        assert_eq!(out.status, 2, "{args:?}: {out:?}");
        assert_eq!(out.stderr, "usage: virtomate --generate DIR\n");
    }
    // Anywhere but first, it is no option of virtomate's.
    let out = run(&["-p", "--generate", "x"], None);
    assert_eq!(out.status, 2, "{out:?}");
    assert!(out.stderr.contains("unexpected argument '--generate'"), "{out:?}");
}

#[test]
#[ignore = "needs man-db and groff"]
fn man_renders_every_page_without_warnings() {
    let dir = generated();
    for page in files(&dir.path().join("man")) {
        let path = dir.path().join("man").join(&page);
        let text = shell(
            Command::new("man")
                .args(["-l", "--warnings"])
                .arg(&path)
                .env("MANWIDTH", "80"),
        );
        let title = page.trim_end_matches(".1");
        assert!(text.contains("NAME") && text.contains(title), "{page}:\n{text}");
    }
}

#[test]
#[ignore = "needs bash"]
fn bash_sources_the_completion_and_completes_commands() {
    let dir = generated();
    // What bash-completion does when the user types `virtomate guest-p<TAB>`.
    let script = r#"
        source "$1"
        spec=$(complete -p virtomate)
        echo "$spec"
        function=${spec#*-F }
        function=${function%% *}
        COMP_WORDS=(virtomate guest-p)
        COMP_CWORD=1
        COMP_LINE="virtomate guest-p"
        COMP_POINT=${#COMP_LINE}
        "$function" virtomate guest-p virtomate
        printf 'reply: %s\n' "${COMPREPLY[@]}"
    "#;
    let out = shell(
        Command::new("bash")
            .args(["--norc", "--noprofile", "-c", script, "bash"])
            .arg(completion(&dir, "virtomate.bash")),
    );
    let mut lines = out.lines();
    let spec = lines.next().unwrap();
    assert!(
        spec.starts_with("complete ") && spec.contains(" -F ") && spec.ends_with(" virtomate"),
        "{out}"
    );
    assert_eq!(lines.collect::<Vec<_>>(), ["reply: guest-ping"], "{out}");
}

#[test]
#[ignore = "needs zsh"]
fn zsh_reads_the_completion() {
    let dir = generated();
    let file = completion(&dir, "_virtomate");
    shell(Command::new("zsh").arg("-n").arg(&file));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("#compdef virtomate\n"), "{text}");
}

#[test]
#[ignore = "needs fish"]
fn fish_reads_the_completion_and_completes_commands() {
    let dir = generated();
    let file = completion(&dir, "virtomate.fish");
    shell(Command::new("fish").arg("--no-execute").arg(&file));
    let out = shell(
        Command::new("fish")
            .args([
                "--no-config",
                "-c",
                "source $argv[1]; complete -C 'virtomate guest-p'",
            ])
            .arg(&file),
    );
    let completed: Vec<&str> = out.lines().map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(completed, ["guest-ping"], "{out}");
}
