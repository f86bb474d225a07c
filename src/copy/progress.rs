//! The progress bar of a copy, on stderr: bytes, rate and time left.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

/// Whether to show progress: by default when stderr is a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Auto,
    Always,
    Never,
}

impl Show {
    /// Whether a bar will be drawn.
    pub fn shows(self) -> bool {
        match self {
            Show::Auto => std::io::stderr().is_terminal(),
            Show::Always => true,
            Show::Never => false,
        }
    }
}

/// A bar, or nothing.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn new(show: Show, total: Option<u64>) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let target = match (show, terminal) {
            (Show::Never, _) | (Show::Auto, false) => return Progress { bar: None },
            (_, true) => ProgressDrawTarget::stderr(),
            // Forced onto a file or pipe: plain lines, a few a second.
            (Show::Always, false) => ProgressDrawTarget::term_like_with_hz(Box::new(PlainStderr), 2),
        };
        // Off a terminal, plain lines: no bar, no spinner.
        let (with_total, without_total) = match terminal {
            true => (
                "{bytes}/{total_bytes} [{wide_bar}] {binary_bytes_per_sec} ETA {eta}",
                "{spinner} {bytes} {binary_bytes_per_sec} {elapsed}",
            ),
            false => (
                "{bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                "{bytes} {binary_bytes_per_sec} {elapsed}",
            ),
        };
        let (total, template) = match total {
            Some(total) => (Some(total), with_total),
            None => (None, without_total),
        };
        let style = ProgressStyle::with_template(template).expect("a valid template");
        let bar = ProgressBar::with_draw_target(total, target).with_style(style);
        bar.enable_steady_tick(Duration::from_millis(500));
        Progress { bar: Some(bar) }
    }

    pub fn advance(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    /// Leaves the final figures on screen.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }

    /// Takes the bar away, e.g. before an error is printed.
    pub fn abandon(&self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        }
    }
}

/// Progress for a stderr that is no terminal: each redraw a line, without
/// cursor movements.
#[derive(Debug)]
struct PlainStderr;

impl TermLike for PlainStderr {
    fn width(&self) -> u16 {
        80
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.write_str(s)
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        // The padding that blanks a line on a terminal is no line here.
        let s = s.trim_end();
        if s.is_empty() {
            return Ok(());
        }
        writeln!(std::io::stderr(), "{s}")
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
