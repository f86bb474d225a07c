//! Printing answers and errors as JSON on stdout.
//!
//! The output is byte for byte what the original tool's Python
//! `json.dumps(value, sort_keys=True)` prints (with `indent=2` for `-p`):
//! keys come out sorted (structs declare their fields in that order), and
//! every character outside printable ASCII (0x20-0x7E) is escaped — the
//! controls and DEL (0x7F) as `\u00XX`, or `\n` and the like where JSON
//! has a short escape, everything beyond ASCII as `\uXXXX`, UTF-16
//! surrogate pairs above U+FFFF — so the output is plain ASCII whatever
//! the guest sent.

use std::io::{self, Write};

use serde::Serialize;
use serde_json::ser::{CompactFormatter, Formatter, PrettyFormatter};

/// Writes `value` and a newline to stdout.
pub fn print_json<T: Serialize>(value: &T, pretty: bool) -> io::Result<()> {
    let mut out = io::BufWriter::with_capacity(64 << 10, io::stdout().lock());
    write_json(&mut out, value, pretty)?;
    out.flush()
}

/// Writes `value` and a newline to `out`, as [`print_json`] does.
pub fn write_json<W: Write, T: Serialize>(out: &mut W, value: &T, pretty: bool) -> io::Result<()> {
    if pretty {
        let formatter = PythonAscii(PrettyFormatter::with_indent(b"  "));
        value.serialize(&mut serde_json::Serializer::with_formatter(&mut *out, formatter))?;
    } else {
        value.serialize(&mut serde_json::Serializer::with_formatter(
            &mut *out,
            PythonAscii(CompactFormatter),
        ))?;
    }
    out.write_all(b"\n")
}

/// A formatter laid out as `F`, escaping strings as Python's `json.dumps`
/// does with `ensure_ascii=True`.
///
/// serde_json already escapes `"`, `\` and the controls below 0x20 as
/// Python does (the same short escapes, lowercase hex): what reaches
/// [`Formatter::write_string_fragment`] is the rest of a string, where
/// only DEL and non-ASCII remain to escape.
///
/// This replaced a byte-level `Write` adapter that re-validated serde's
/// output as UTF-8 and kept characters split across writes (issue 9): it
/// is simpler, and faster. Measured once, to decide, by a throwaway
/// program outside the tree (the adapter is gone, so no bench here can
/// compare them again): serialising a run result with 16 MiB of stdout
/// into /dev/null, release build, 2-core Debian 12 machine, three runs
/// each under `/usr/bin/time -f '%M KiB %e s'`:
///   16 MiB of ASCII: adapter 10-35 ms, formatter 5-6 ms
///   16 MiB of `é`:   adapter 290-335 ms, formatter 88-135 ms
///   peak RSS 18 MiB for both (the 16 MiB string itself).
struct PythonAscii<F>(F);

impl<F: Formatter> Formatter for PythonAscii<F> {
    fn write_string_fragment<W: ?Sized + Write>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()> {
        let mut rest = fragment;
        // Fragments hold no byte below 0x20: serde_json escapes those.
        while let Some(pos) = first_to_escape(rest.as_bytes()) {
            writer.write_all(&rest.as_bytes()[..pos])?;
            let c = rest[pos..].chars().next().expect("a character starts at pos");
            writer.write_all(escape(c, &mut [0; 12]))?;
            rest = &rest[pos + c.len_utf8()..];
        }
        writer.write_all(rest.as_bytes())
    }

    // The layout is F's.

    fn begin_array<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.begin_array(writer)
    }

    fn end_array<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.end_array(writer)
    }

    fn begin_array_value<W: ?Sized + Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        self.0.begin_array_value(writer, first)
    }

    fn end_array_value<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.end_array_value(writer)
    }

    fn begin_object<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.begin_object(writer)
    }

    fn end_object<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.end_object(writer)
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        self.0.begin_object_key(writer, first)
    }

    fn end_object_key<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.end_object_key(writer)
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.begin_object_value(writer)
    }

    fn end_object_value<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.end_object_value(writer)
    }
}

/// The offset of the first byte of DEL or of a non-ASCII character. Looked
/// for 64 bytes at a time, a loop the compiler vectorizes: a byte-by-byte
/// search took twice as long on 16 MiB of ASCII.
fn first_to_escape(bytes: &[u8]) -> Option<usize> {
    let escaped = |b: &u8| *b >= 0x7F;
    let mut offset = 0;
    for chunk in bytes.chunks(64) {
        if chunk.iter().fold(false, |any, b| any | escaped(b)) {
            return chunk.iter().position(escaped).map(|pos| offset + pos);
        }
        offset += chunk.len();
    }
    None
}

/// `\\uXXXX` in lowercase hex, as Python writes it, for each UTF-16 unit
/// of `c` (two for a character beyond the BMP), in `buf`. Formatted by
/// hand: `write!` per character is slower by half on 16 MiB of `é`.
fn escape(c: char, buf: &mut [u8; 12]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut units = [0u16; 2];
    let units = c.encode_utf16(&mut units);
    for (unit, out) in units.iter().zip(buf.chunks_exact_mut(6)) {
        out[..2].copy_from_slice(b"\\u");
        for (digit, shift) in out[2..].iter_mut().zip([12, 8, 4, 0]) {
            *digit = HEX[usize::from(*unit >> shift & 0xF)];
        }
    }
    &buf[..6 * units.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(value: &impl Serialize, pretty: bool) -> String {
        let mut out = Vec::new();
        write_json(&mut out, value, pretty).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn non_ascii_becomes_lowercase_escapes_like_python() {
        assert_eq!(json(&"“x” é", false), "\"\\u201cx\\u201d \\u00e9\"\n");
    }

    #[test]
    fn characters_beyond_the_bmp_become_surrogate_pairs() {
        assert_eq!(json(&"🦀", false), "\"\\ud83e\\udd80\"\n");
    }

    #[test]
    fn del_and_controls_are_escaped_printable_ascii_is_not() {
        assert_eq!(
            json(&"a\u{7f}b\u{1}\n\t\"\\/ ~", false),
            "\"a\\u007fb\\u0001\\n\\t\\\"\\\\/ ~\"\n"
        );
    }

    #[test]
    fn escapes_are_found_wherever_they_are() {
        for len in [0, 1, 63, 64, 65, 127, 128, 129, 1000] {
            let ascii = "a".repeat(len);
            assert_eq!(
                json(&format!("{ascii}\u{7f}{ascii}"), false),
                format!("\"{ascii}\\u007f{ascii}\"\n")
            );
            assert_eq!(json(&format!("{ascii}é"), false), format!("\"{ascii}\\u00e9\"\n"));
            assert_eq!(json(&ascii, false), format!("\"{ascii}\"\n"));
        }
    }

    #[test]
    fn pretty_is_pythons_indent_2() {
        let value = serde_json::json!({"a": [], "b": {}, "c": [1, {"d": null}], "e": "\u{e9}"});
        assert_eq!(
            json(&value, true),
            concat!(
                "{\n  \"a\": [],\n  \"b\": {},\n  \"c\": [\n    1,\n    {\n      \"d\": null\n    }\n  ],\n",
                "  \"e\": \"\\u00e9\"\n}\n"
            )
        );
        assert_eq!(
            json(&value, false),
            "{\"a\":[],\"b\":{},\"c\":[1,{\"d\":null}],\"e\":\"\\u00e9\"}\n"
        );
    }

    /// Every character from U+0000 to U+00FF, and some beyond: the edges
    /// of UTF-8's lengths and of the BMP, and surrogate pairs.
    fn every_kind_of_character() -> String {
        let mut text: String = (0u32..=0xFF).map(|c| char::from_u32(c).unwrap()).collect();
        text.extend([
            '\u{100}',
            '\u{7FF}',
            '\u{800}',
            '\u{2028}',
            '\u{D7FF}',
            '\u{E000}',
            '\u{FFFF}',
            '\u{10000}',
            '\u{1F600}',
            '\u{10FFFF}',
        ]);
        text
    }

    /// `json.dumps({"a": [TEXT, {"b": TEXT}], "c": null}, sort_keys=True)`,
    /// as python3 writes it, compact or with `indent=2`; `None` without
    /// python3 (a failure under CI=true).
    fn python_dumps(text: &str, pretty: bool) -> Option<String> {
        use std::process::{Command, Stdio};
        let script = r#"
import json, sys
text = sys.stdin.buffer.read().decode("utf-8")
layout = {"indent": 2} if sys.argv[1] == "pretty" else {"separators": (",", ":")}
sys.stdout.write(json.dumps({"c": None, "a": [text, {"b": text}]}, sort_keys=True, **layout) + "\n")
"#;
        let child = Command::new("python3")
            .args(["-c", script, if pretty { "pretty" } else { "compact" }])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn();
        let mut child = match child {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "python3 is missing");
                eprintln!("python3 is missing: not compared with json.dumps");
                return None;
            }
            other => other.unwrap(),
        };
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "python3: {out:?}");
        Some(String::from_utf8(out.stdout).unwrap())
    }

    #[test]
    fn every_character_comes_out_as_pythons_json_dumps_writes_it() {
        let text = every_kind_of_character();
        let value = serde_json::json!({"c": null, "a": [text, {"b": text}]});
        for pretty in [false, true] {
            let Some(expected) = python_dumps(&text, pretty) else {
                return;
            };
            assert_eq!(json(&value, pretty), expected, "pretty: {pretty}");
        }
    }
}
