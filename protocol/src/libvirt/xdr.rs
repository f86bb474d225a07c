//! XDR (RFC 4506), the encoding of every libvirt RPC message: big-endian
//! 4-byte integers, 8-byte hypers, and variable-length data as a 4-byte
//! length, the bytes and zero padding to a multiple of 4.
//!
//! Only what libvirt's remote protocol needs is here. The [`Decoder`] reads
//! bytes from libvirtd, which we do not trust to be well-formed: every
//! length is checked against the bytes that are left and against the limit
//! the protocol declares for it before anything is allocated, so a broken
//! or hostile peer gets an [`XdrError`], never a panic or a huge buffer.
//!
//! ```
//! use virtomate_protocol::libvirt::xdr::{Decoder, Encoder};
//!
//! let mut encoder = Encoder::new();
//! encoder.string("web", 256)?;
//! encoder.u32(7);
//! let bytes = encoder.into_bytes();
//! assert_eq!(bytes, [0, 0, 0, 3, b'w', b'e', b'b', 0, 0, 0, 0, 7]);
//! let mut decoder = Decoder::new(&bytes);
//! assert_eq!((decoder.string(256)?, decoder.u32()?), ("web", 7));
//! decoder.finish()?;
//! # Ok::<(), virtomate_protocol::libvirt::xdr::XdrError>(())
//! ```

/// Why bytes could not be decoded (or a value could not be encoded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XdrError {
    /// The data ends before the value does.
    #[error("truncated: {needed} more bytes needed, {left} left")]
    Truncated {
        /// Bytes the next value takes.
        needed: usize,
        /// Bytes that were left.
        left: usize,
    },
    /// A length or element count beyond what the protocol allows.
    #[error("a length of {len} exceeds the limit of {max}")]
    TooLong {
        /// The length found (or given).
        len: usize,
        /// The protocol's limit for it.
        max: usize,
    },
    /// A boolean (or optional-data discriminant) other than 0 or 1.
    #[error("{0} is not a boolean (0 or 1)")]
    NotBool(u32),
    /// A string that is not UTF-8.
    #[error("a string is not valid UTF-8")]
    NotUtf8,
    /// Bytes left over after the last value.
    #[error("{0} unexpected bytes after the end")]
    TrailingBytes(usize),
}

/// Bytes of padding after `len` bytes of variable-length data.
fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Builds XDR data.
#[derive(Debug, Default, Clone)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    /// An empty encoder.
    pub fn new() -> Encoder {
        Encoder::default()
    }

    /// Appends an `unsigned int`.
    pub fn u32(&mut self, value: u32) {
        self.buf.extend_from_slice(&value.to_be_bytes());
    }

    /// Appends an `int`.
    pub fn i32(&mut self, value: i32) {
        self.buf.extend_from_slice(&value.to_be_bytes());
    }

    /// Appends an `unsigned hyper`.
    pub fn u64(&mut self, value: u64) {
        self.buf.extend_from_slice(&value.to_be_bytes());
    }

    /// Appends a `bool` (4 bytes, 0 or 1).
    pub fn bool(&mut self, value: bool) {
        self.u32(u32::from(value));
    }

    /// Appends fixed-length opaque data (`opaque[N]`): the bytes and
    /// padding, no length.
    pub fn opaque_fixed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.buf.resize(self.buf.len() + padding(bytes.len()), 0);
    }

    /// Appends variable-length opaque data of at most `max` bytes
    /// (`opaque<max>`).
    pub fn opaque(&mut self, bytes: &[u8], max: usize) -> Result<(), XdrError> {
        if bytes.len() > max {
            return Err(XdrError::TooLong {
                len: bytes.len(),
                max,
            });
        }
        // max never exceeds u32::MAX for the protocol's types; a larger
        // length could not be represented and is refused just the same.
        let len = u32::try_from(bytes.len()).map_err(|_| XdrError::TooLong {
            len: bytes.len(),
            max: u32::MAX as usize,
        })?;
        self.u32(len);
        self.opaque_fixed(bytes);
        Ok(())
    }

    /// Appends a `string<max>`: length, bytes (no NUL), padding.
    pub fn string(&mut self, text: &str, max: usize) -> Result<(), XdrError> {
        self.opaque(text.as_bytes(), max)
    }

    /// Appends an optional string (`string<max> *`): a 0, or a 1 and the
    /// string.
    pub fn optional_string(&mut self, text: Option<&str>, max: usize) -> Result<(), XdrError> {
        match text {
            None => {
                self.bool(false);
                Ok(())
            }
            Some(text) => {
                self.bool(true);
                self.string(text, max)
            }
        }
    }

    /// Bytes encoded so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing was encoded yet.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The encoded bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads XDR data from a byte slice, front to back.
#[derive(Debug, Clone)]
pub struct Decoder<'a> {
    rest: &'a [u8],
}

impl<'a> Decoder<'a> {
    /// A decoder over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Decoder<'a> {
        Decoder { rest: bytes }
    }

    /// Bytes not decoded yet.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], XdrError> {
        if len > self.rest.len() {
            return Err(XdrError::Truncated {
                needed: len,
                left: self.rest.len(),
            });
        }
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], XdrError> {
        let bytes = self.take(N)?;
        let mut array = [0; N];
        array.copy_from_slice(bytes);
        Ok(array)
    }

    /// Reads an `unsigned int`.
    pub fn u32(&mut self) -> Result<u32, XdrError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Reads an `int`.
    pub fn i32(&mut self) -> Result<i32, XdrError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    /// Reads an `unsigned hyper`.
    pub fn u64(&mut self) -> Result<u64, XdrError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Reads a `bool`; anything but 0 or 1 is an error.
    pub fn bool(&mut self) -> Result<bool, XdrError> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(XdrError::NotBool(other)),
        }
    }

    /// Reads `opaque[N]`: `N` bytes and their padding.
    ///
    /// ```
    /// let mut decoder = virtomate_protocol::libvirt::xdr::Decoder::new(&[7; 16]);
    /// assert_eq!(decoder.opaque_fixed::<16>()?, [7; 16]);
    /// # Ok::<(), virtomate_protocol::libvirt::xdr::XdrError>(())
    /// ```
    pub fn opaque_fixed<const N: usize>(&mut self) -> Result<[u8; N], XdrError> {
        let value = self.array::<N>()?;
        self.take(padding(N))?;
        Ok(value)
    }

    /// Reads `opaque<max>`: a length of at most `max`, then as many bytes
    /// and their padding, all of which must be there.
    ///
    /// The bytes are borrowed, not copied: nothing is allocated.
    pub fn opaque(&mut self, max: usize) -> Result<&'a [u8], XdrError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(XdrError::TooLong { len, max });
        }
        // Checked as a whole before taking anything, so that a length
        // larger than the rest fails the same way wherever it points.
        let padded = len.saturating_add(padding(len));
        if padded > self.rest.len() {
            return Err(XdrError::Truncated {
                needed: padded,
                left: self.rest.len(),
            });
        }
        let bytes = self.take(len)?;
        self.take(padding(len))?;
        Ok(bytes)
    }

    /// Reads a `string<max>`, which must be UTF-8.
    pub fn string(&mut self, max: usize) -> Result<&'a str, XdrError> {
        std::str::from_utf8(self.opaque(max)?).map_err(|_| XdrError::NotUtf8)
    }

    /// Reads an optional `string<max> *`.
    pub fn optional_string(&mut self, max: usize) -> Result<Option<&'a str>, XdrError> {
        if self.bool()? {
            self.string(max).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Reads the element count of an array (`T<max>`) whose elements take
    /// at least `min_element_len` bytes each; a count above `max` or one
    /// that cannot fit in the bytes left is refused, so the caller may
    /// allocate room for that many elements.
    ///
    /// ```
    /// use virtomate_protocol::libvirt::xdr::{Decoder, XdrError};
    ///
    /// let mut decoder = Decoder::new(&[0, 0, 0, 3, 0, 0, 0, 0]);
    /// assert_eq!(decoder.array_len(20, 4), Err(XdrError::Truncated { needed: 12, left: 4 }));
    /// ```
    pub fn array_len(&mut self, max: usize, min_element_len: usize) -> Result<usize, XdrError> {
        let count = self.u32()? as usize;
        if count > max {
            return Err(XdrError::TooLong { len: count, max });
        }
        let needed = count.saturating_mul(min_element_len);
        if needed > self.rest.len() {
            return Err(XdrError::Truncated {
                needed,
                left: self.rest.len(),
            });
        }
        Ok(count)
    }

    /// Checks that everything was decoded: libvirt's messages have a fixed
    /// layout per procedure, so leftover bytes mean the layout was wrong.
    pub fn finish(self) -> Result<(), XdrError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(XdrError::TrailingBytes(self.rest.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn integers_are_big_endian() {
        let mut e = Encoder::new();
        e.u32(0x0102_0304);
        e.i32(-2);
        e.u64(0x0102_0304_0506_0708);
        e.bool(false);
        assert_eq!(
            e.into_bytes(),
            [1, 2, 3, 4, 0xff, 0xff, 0xff, 0xfe, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0]
        );
    }

    #[test]
    fn strings_are_padded_to_four_bytes() {
        for (text, total) in [("", 4), ("a", 8), ("abcd", 8), ("abcde", 12)] {
            let mut e = Encoder::new();
            e.string(text, 100).unwrap();
            let bytes = e.into_bytes();
            assert_eq!(bytes.len(), total, "{text:?}");
            assert!(bytes[4 + text.len()..].iter().all(|&b| b == 0));
            let mut d = Decoder::new(&bytes);
            assert_eq!(d.string(100).unwrap(), text);
            d.finish().unwrap();
        }
    }

    #[test]
    fn a_string_over_its_limit_is_not_encoded() {
        let mut e = Encoder::new();
        assert_eq!(e.string("abcde", 4), Err(XdrError::TooLong { len: 5, max: 4 }));
        assert!(e.is_empty());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let mut e = Encoder::new();
        e.optional_string(Some("virtomate-test"), 64).unwrap();
        e.opaque_fixed(&[0xae; 16]);
        e.i32(1);
        e.u64(7);
        let bytes = e.into_bytes();
        let decode = |bytes: &[u8]| -> Result<(), XdrError> {
            let mut d = Decoder::new(bytes);
            d.optional_string(64)?;
            d.opaque_fixed::<16>()?;
            d.i32()?;
            d.u64()?;
            d.finish()
        };
        decode(&bytes).unwrap();
        for len in 0..bytes.len() {
            assert!(
                matches!(decode(&bytes[..len]), Err(XdrError::Truncated { .. })),
                "{len}"
            );
        }
    }

    #[test]
    fn a_length_beyond_the_data_or_the_limit_is_refused() {
        // 4 GiB - 1: neither allocated nor overflowing the padding.
        let huge = [0xff, 0xff, 0xff, 0xff, b'a', b'b', b'c', b'd'];
        assert_eq!(
            Decoder::new(&huge).string(usize::MAX),
            Err(XdrError::Truncated {
                needed: 0x1_0000_0000,
                left: 4
            })
        );
        assert_eq!(
            Decoder::new(&huge).string(4194304),
            Err(XdrError::TooLong {
                len: 0xffff_ffff,
                max: 4194304
            })
        );
        // The length fits, its padding does not.
        assert!(matches!(
            Decoder::new(b"\0\0\0\x03abc").opaque(8),
            Err(XdrError::Truncated { needed: 4, left: 3 })
        ));
    }

    #[test]
    fn bad_booleans_and_text_are_refused() {
        assert_eq!(
            Decoder::new(&[0, 0, 0, 2]).optional_string(8),
            Err(XdrError::NotBool(2))
        );
        assert_eq!(
            Decoder::new(b"\0\0\0\x01\xff\0\0\0").string(8),
            Err(XdrError::NotUtf8)
        );
    }

    #[test]
    fn exact_encodings() {
        let mut e = Encoder::new();
        e.optional_string(None, 16).unwrap();
        e.optional_string(Some("x"), 16).unwrap();
        assert_eq!(e.opaque(b"12345", 4), Err(XdrError::TooLong { len: 5, max: 4 }));
        e.opaque(b"12345", 8).unwrap();
        assert_eq!(e.len(), 4 + 12 + 12);
        assert_eq!(
            e.into_bytes(),
            b"\0\0\0\0\0\0\0\x01\0\0\0\x01x\0\0\0\0\0\0\x0512345\0\0\0"
        );
    }

    #[test]
    fn what_is_left_is_counted_and_refused_at_the_end() {
        let mut d = Decoder::new(&[0, 0, 0, 2, 0, 0]);
        assert_eq!(d.remaining(), 6);
        assert_eq!(d.bool(), Err(XdrError::NotBool(2)));
        assert_eq!(d.remaining(), 2);
        assert_eq!(d.finish(), Err(XdrError::TrailingBytes(2)));
    }

    #[test]
    fn array_counts_are_bounded() {
        // Three elements of at least 4 bytes cannot fit in 4 bytes.
        assert_eq!(
            Decoder::new(&[0, 0, 0, 3, 0, 0, 0, 0]).array_len(20, 4),
            Err(XdrError::Truncated { needed: 12, left: 4 })
        );
        assert_eq!(
            Decoder::new(&[0, 0, 0, 21]).array_len(20, 4),
            Err(XdrError::TooLong { len: 21, max: 20 })
        );
        let mut d = Decoder::new(&[0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2]);
        assert_eq!(d.array_len(20, 4), Ok(2));
        assert!(Decoder::new(&[0xff; 4])
            .array_len(usize::MAX, usize::MAX)
            .is_err());
    }

    proptest! {
        #[test]
        fn values_round_trip(
            a in any::<u32>(),
            b in any::<i32>(),
            c in any::<u64>(),
            flag in any::<bool>(),
            text in ".{0,40}",
            maybe in proptest::option::of(".{0,40}"),
            blob in proptest::collection::vec(any::<u8>(), 0..40),
            fixed in any::<[u8; 16]>(),
        ) {
            let mut e = Encoder::new();
            e.u32(a);
            e.i32(b);
            e.u64(c);
            e.bool(flag);
            e.string(&text, 1000).unwrap();
            e.optional_string(maybe.as_deref(), 1000).unwrap();
            e.opaque(&blob, 1000).unwrap();
            e.opaque_fixed(&fixed);
            let bytes = e.into_bytes();
            prop_assert_eq!(bytes.len() % 4, 0);
            let mut d = Decoder::new(&bytes);
            prop_assert_eq!(d.u32().unwrap(), a);
            prop_assert_eq!(d.i32().unwrap(), b);
            prop_assert_eq!(d.u64().unwrap(), c);
            prop_assert_eq!(d.bool().unwrap(), flag);
            prop_assert_eq!(d.string(1000).unwrap(), text.as_str());
            prop_assert_eq!(d.optional_string(1000).unwrap(), maybe.as_deref());
            prop_assert_eq!(d.opaque(1000).unwrap(), &blob[..]);
            prop_assert_eq!(d.opaque_fixed::<16>().unwrap(), fixed);
            prop_assert!(d.finish().is_ok());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut d = Decoder::new(&bytes);
            let _ = d.optional_string(16).and_then(|_| d.opaque(usize::MAX)).and_then(|_| d.array_len(20, 4));
        }
    }
}
