//! What `virtomate shell` runs in the guest: the probe for a way to make a
//! terminal, the program on that terminal (or in line mode without one),
//! and the change of its window size. All POSIX `sh`, busybox's included.

use virtomate_protocol::session::RunRequest;

/// A way the guest has to give the program a terminal (a pseudo-terminal
/// whose master end is copied to and from the program's pipes), in the
/// order they are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Maker {
    /// util-linux `script -qefc CMD /dev/null` (busybox's `script` has no
    /// `-e` to pass on the exit status, so it does not count).
    Script,
    /// `python3 -c 'import pty; pty.spawn(...)'`.
    Python,
}

/// One guest-exec that prints `script`, `python3` or `none`: the first way
/// found to make a terminal.
pub fn probe() -> RunRequest {
    RunRequest::new("sh", ["-c", PROBE_SCRIPT])
}

const PROBE_SCRIPT: &str = r#"case $(script -V 2>/dev/null) in
  *util-linux*) echo script; exit ;;
esac
if python3 -c 'import pty, termios' 2>/dev/null; then echo python3; else echo none; fi"#;

/// What the probe printed.
pub fn maker(probe_output: &[u8]) -> Option<Maker> {
    match probe_output.trim_ascii() {
        b"script" => Some(Maker::Script),
        b"python3" => Some(Maker::Python),
        _ => None,
    }
}

/// The window size and terminal type the program starts with.
#[derive(Debug, Clone)]
pub struct Window {
    pub rows: u16,
    pub cols: u16,
    pub term: String,
}

/// The program (`command`, or the guest's bash or sh when empty) on a
/// terminal that `maker` makes, sized as `window`. Before the program,
/// the shell on the terminal writes the terminal's name into the file
/// `shell-TOKEN` of the run's private directory (the directory of the
/// named pipe its standard input comes from), where [`resize`] finds it.
pub fn on_terminal(maker: Maker, window: &Window, token: &str, command: &[String]) -> RunRequest {
    let program = match command {
        [] => r#""$(command -v bash || command -v sh)""#.to_owned(),
        words => words.iter().map(|word| quote(word)).collect::<Vec<_>>().join(" "),
    };
    let inner = format!(
        "tty >\"$VIRTOMATE_SHELL_TTY\" 2>/dev/null; unset VIRTOMATE_SHELL_TTY; \
         stty rows {} cols {} 2>/dev/null; exec {program}",
        window.rows, window.cols
    );
    let maker = match maker {
        Maker::Script => "script",
        Maker::Python => "python3",
    };
    let args = [
        "-c",
        TERMINAL_SCRIPT,
        "virtomate-shell",
        maker,
        &window.term,
        token,
        &inner,
    ];
    RunRequest::new("sh", args)
}

/// `$1` the maker, `$2` the terminal type, `$3` the token, `$4` the
/// command for the shell on the terminal. Python's `pty.spawn` gives the
/// program's wait status: made an exit status as a shell would.
const TERMINAL_SCRIPT: &str = r#"d=$(readlink "/proc/$$/fd/0" 2>/dev/null) && d=${d%/in}
export TERM="$2" VIRTOMATE_SHELL_TTY="$d/shell-$3"
case $1 in
  script) exec script -qefc "$4" /dev/null ;;
  python3) exec python3 -c 'import os, pty, sys
s = pty.spawn(sys.argv[1:])
sys.exit(os.WEXITSTATUS(s) if os.WIFEXITED(s) else 128 + os.WTERMSIG(s))' sh -c "$4" ;;
esac"#;

/// The program (`command`, or an interactive `sh`) with no terminal:
/// its prompts, if any, go to standard error.
pub fn line_mode(command: &[String]) -> RunRequest {
    match command {
        [] => RunRequest::new("sh", ["-i"]),
        [program, args @ ..] => RunRequest::new(program.clone(), args.iter().cloned()),
    }
}

/// Sets the size of the terminal that the run marked with `token` wrote
/// down: the guest's kernel then sends SIGWINCH to the program in the
/// terminal's foreground. Finds the run by the processes whose standard
/// input is a run's named pipe; exits 1 if it has not written it yet.
pub fn resize(token: &str, rows: u16, cols: u16) -> RunRequest {
    let (rows, cols) = (rows.to_string(), cols.to_string());
    RunRequest::new(
        "sh",
        ["-c", RESIZE_SCRIPT, "virtomate-resize", token, &rows, &cols],
    )
}

const RESIZE_SCRIPT: &str = r#"for f in /proc/[0-9]*/fd/0; do
  d=$(readlink "$f" 2>/dev/null) || continue
  case $d in */virtomate-follow-*/in) ;; *) continue ;; esac
  t=${d%/in}/shell-$1
  [ -s "$t" ] || continue
  stty rows "$2" cols "$3" <"$(cat "$t")" && exit 0
done
exit 1"#;

/// `word` quoted for `sh`: in single quotes, each `'` as `'\''`.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_output_names_a_maker_or_none() {
        assert_eq!(maker(b"script\n"), Some(Maker::Script));
        assert_eq!(maker(b"python3\n"), Some(Maker::Python));
        assert_eq!(maker(b"none\n"), None);
        assert_eq!(maker(b"garbage"), None);
    }

    #[test]
    fn words_are_quoted_for_the_shell_on_the_terminal() {
        assert_eq!(quote("it's a $x"), r"'it'\''s a $x'");
        let window = Window {
            rows: 40,
            cols: 100,
            term: "xterm".into(),
        };
        let request = on_terminal(Maker::Script, &window, "t", &["ls".into(), "-l a".into()]);
        let inner = request.args.last().unwrap();
        assert!(
            inner.ends_with("stty rows 40 cols 100 2>/dev/null; exec 'ls' '-l a'"),
            "{inner}"
        );
    }
}
