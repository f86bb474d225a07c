//! Printing answers and errors as JSON on stdout.
//!
//! Keys come out sorted (structs declare their fields in that order), the
//! layout is compact or indented by two spaces, and every non-ASCII
//! character is written as a `\uXXXX` escape, as the original tool's
//! Python `json.dumps` does: the output is plain ASCII whatever the guest
//! sent.

use std::io::{self, Write};

use serde::Serialize;

/// Writes `value` and a newline to stdout.
pub fn print_json<T: Serialize>(value: &T, pretty: bool) -> io::Result<()> {
    let stdout = io::stdout().lock();
    let mut out = AsciiEscaper::new(io::BufWriter::with_capacity(64 << 10, stdout));
    if pretty {
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b"  ");
        value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, formatter))?;
    } else {
        serde_json::to_writer(&mut out, value)?;
    }
    out.write_all(b"\n")?;
    out.flush()
}

/// Passes ASCII through and turns every other character into JSON
/// `\uXXXX` escapes (UTF-16 surrogate pairs above U+FFFF).
///
/// Only correct for JSON text, where non-ASCII can only occur inside
/// strings, and where the text is valid UTF-8 — serde_json's output is.
struct AsciiEscaper<W> {
    inner: W,
    /// The first bytes of a character split across two writes.
    pending: Vec<u8>,
}

impl<W: Write> AsciiEscaper<W> {
    fn new(inner: W) -> Self {
        AsciiEscaper {
            inner,
            pending: Vec::new(),
        }
    }

    fn write_text(&mut self, text: &str) -> io::Result<()> {
        let mut rest = text;
        while let Some(pos) = rest.find(|c: char| !c.is_ascii()) {
            self.inner.write_all(&rest.as_bytes()[..pos])?;
            let c = rest[pos..].chars().next().expect("found a char at pos");
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(self.inner, "\\u{unit:04x}")?;
            }
            rest = &rest[pos + c.len_utf8()..];
        }
        self.inner.write_all(rest.as_bytes())
    }
}

impl<W: Write> Write for AsciiEscaper<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let joined;
        let bytes = if self.pending.is_empty() {
            buf
        } else {
            self.pending.extend_from_slice(buf);
            joined = std::mem::take(&mut self.pending);
            &joined[..]
        };
        let valid = match std::str::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) if e.error_len().is_none() => {
                // A character cut in two: keep its start for the next write.
                self.pending = bytes[e.valid_up_to()..].to_vec();
                std::str::from_utf8(&bytes[..e.valid_up_to()]).expect("checked prefix")
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        };
        self.write_text(valid)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escape(pieces: &[&[u8]]) -> String {
        let mut out = AsciiEscaper::new(Vec::new());
        for piece in pieces {
            out.write_all(piece).unwrap();
        }
        String::from_utf8(out.inner).unwrap()
    }

    #[test]
    fn non_ascii_becomes_lowercase_escapes_like_python() {
        assert_eq!(escape(&["“x” é".as_bytes()]), r"\u201cx\u201d \u00e9");
    }

    #[test]
    fn characters_beyond_the_bmp_become_surrogate_pairs() {
        assert_eq!(escape(&["🦀".as_bytes()]), r"\ud83e\udd80");
    }

    #[test]
    fn a_character_split_across_writes_is_kept_whole() {
        let bytes = "a“b".as_bytes();
        assert_eq!(escape(&[&bytes[..2], &bytes[2..]]), r"a\u201cb");
    }
}
