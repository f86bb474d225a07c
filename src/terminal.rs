//! The host's terminal for `virtomate shell`: raw mode while the guest's
//! terminal does the line editing and the signals, restored on every way
//! out that runs code (a normal end, an error, a caught signal, a panic),
//! and its window size.

use std::io;
use std::sync::{Mutex, Once};

use rustix::termios::{tcgetattr, tcgetwinsize, tcsetattr, OptionalActions, Termios};

/// The settings to put back: read by the panic hook too, which runs where
/// no guard can (with `panic = "abort"`, no destructor runs after it).
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// Standard input's terminal in raw mode until this is dropped.
pub struct RawMode(());

impl RawMode {
    /// Puts standard input's terminal in raw mode: every byte typed goes
    /// on as it is, Ctrl-C and Ctrl-Z included, nothing echoed.
    pub fn enter() -> io::Result<RawMode> {
        let stdin = io::stdin();
        let saved = tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        raw.make_raw();
        install_panic_hook();
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
        tcsetattr(&stdin, OptionalActions::Now, &raw)?;
        Ok(RawMode(()))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

/// Puts the saved settings back, once; nothing to do if none were saved.
fn restore() {
    let saved = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(saved) = saved {
        // Nothing is left to tell if even this fails: the terminal is gone.
        let _ = tcsetattr(io::stdin(), OptionalActions::Now, &saved);
    }
}

fn install_panic_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// The window size of standard input's terminal: (rows, columns), or
/// `None` when it is no terminal or says 0×0 (a serial line may).
pub fn window_size() -> Option<(u16, u16)> {
    let size = tcgetwinsize(io::stdin()).ok()?;
    (size.ws_row > 0 && size.ws_col > 0).then_some((size.ws_row, size.ws_col))
}
