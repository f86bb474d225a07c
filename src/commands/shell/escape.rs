//! The escape out of `virtomate shell`, as ssh has it: `~.` at the start
//! of a line leaves; `~~` there sends one `~`; a `~` followed by anything
//! else is sent as typed. Everything else passes through untouched, so
//! Ctrl-C, Ctrl-Z and Ctrl-D reach the guest's terminal as bytes.

/// Where the typing is, across reads that may cut anywhere.
#[derive(Debug)]
pub struct Escape {
    /// The last byte passed on ended a line (or nothing was typed yet).
    line_start: bool,
    /// A `~` at the start of a line, held back until the next byte.
    tilde: bool,
}

impl Default for Escape {
    fn default() -> Self {
        Escape {
            line_start: true,
            tilde: false,
        }
    }
}

/// What a piece of typing comes to.
#[derive(Debug, PartialEq, Eq)]
pub struct Filtered {
    /// The bytes to send to the guest.
    pub bytes: Vec<u8>,
    /// `~.` was typed: leave (the bytes after it are dropped).
    pub leave: bool,
}

impl Escape {
    /// Filters one read of the keyboard.
    pub fn filter(&mut self, typed: &[u8]) -> Filtered {
        let mut bytes = Vec::with_capacity(typed.len() + 1);
        for &byte in typed {
            if std::mem::take(&mut self.tilde) {
                match byte {
                    b'.' => return Filtered { bytes, leave: true },
                    b'~' => {
                        bytes.push(b'~');
                        self.line_start = false;
                        continue;
                    }
                    _ => bytes.push(b'~'),
                }
            } else if self.line_start && byte == b'~' {
                self.tilde = true;
                continue;
            }
            bytes.push(byte);
            // Enter is `\r` in raw mode, `\n` in a line-mode shell.
            self.line_start = matches!(byte, b'\r' | b'\n');
        }
        Filtered { bytes, leave: false }
    }

    /// At the end of the keyboard's input: a `~` still held back.
    pub fn finish(&mut self) -> Vec<u8> {
        match std::mem::take(&mut self.tilde) {
            true => b"~".to_vec(),
            false => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(pieces: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut escape = Escape::default();
        let mut sent = Vec::new();
        for piece in pieces {
            let filtered = escape.filter(piece);
            sent.extend(filtered.bytes);
            if filtered.leave {
                return (sent, true);
            }
        }
        sent.extend(escape.finish());
        (sent, false)
    }

    #[test]
    fn tilde_dot_leaves_only_at_the_start_of_a_line() {
        assert_eq!(typed(&[b"~."]), (vec![], true));
        assert_eq!(typed(&[b"ls\r~.rest"]), (b"ls\r".to_vec(), true));
        assert_eq!(typed(&[b"echo\n", b"~", b".", b"x"]), (b"echo\n".to_vec(), true));
        assert_eq!(typed(&[b"a~."]), (b"a~.".to_vec(), false));
    }

    #[test]
    fn a_double_tilde_sends_one_and_others_pass_as_typed() {
        assert_eq!(typed(&[b"~~.\r"]), (b"~.\r".to_vec(), false));
        assert_eq!(typed(&[b"~", b"/x\r~"]), (b"~/x\r~".to_vec(), false));
        assert_eq!(typed(&[b"\x03\x1a\x04"]), (b"\x03\x1a\x04".to_vec(), false));
        // After `~~` the line has started: a `~.` then is text.
        assert_eq!(typed(&[b"~~~."]), (b"~~.".to_vec(), false));
    }
}
