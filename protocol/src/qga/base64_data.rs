//! Byte strings that travel as Base64 text: the agent's `input-data`,
//! `out-data` and `buf-b64`, a session's `stdin` and a copy's `data`; for
//! `#[serde(with = "...")]` or `deserialize_with`.
//!
//! Encoding writes straight into the request buffer and decoding reads
//! straight from the reply buffer, so a 16 MiB output is never held as an
//! intermediate `String` as well.
//!
//! An error says what is wrong without naming the member, for a caller
//! that puts the key in front: [`NOT_A_STRING`], or `is not Base64: ...`.
//!
//! ```
//! use serde::Deserialize;
//! use virtomate_protocol::qga::base64_data;
//!
//! #[derive(Deserialize)]
//! struct Line {
//!     #[serde(default, deserialize_with = "base64_data::deserialize")]
//!     data: Option<Vec<u8>>,
//! }
//! let line: Line = serde_json::from_str(r#"{"data": "aGk="}"#).unwrap();
//! assert_eq!(line.data.as_deref(), Some(&b"hi"[..]));
//! let bad = serde_json::from_str::<Line>(r#"{"data": 1}"#).err().unwrap();
//! assert!(bad.to_string().starts_with(base64_data::NOT_A_STRING));
//! ```

use std::fmt;

use base64::display::Base64Display;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Serializer;

/// The error for a value that is no string (nor `null`, where that may be).
pub const NOT_A_STRING: &str = "must be a Base64 string";

/// Writes `Some` bytes as Base64 text, `None` as `null`.
pub fn serialize<S: Serializer>(data: &Option<Vec<u8>>, serializer: S) -> Result<S::Ok, S::Error> {
    match data {
        Some(bytes) => serializer.collect_str(&Base64Display::new(bytes, &STANDARD)),
        None => serializer.serialize_none(),
    }
}

/// Reads Base64 text, or `null` as `None` (with `#[serde(default)]`, a
/// missing member too).
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<u8>>, D::Error> {
    match deserializer.deserialize_option(Base64Text)? {
        Found::Null => Ok(None),
        Found::Bytes(bytes) => Ok(Some(bytes)),
        Found::Wrong(message) => Err(de::Error::custom(message)),
    }
}

/// Reads Base64 text, `null` refused: for a member that may be missing
/// (`#[serde(default)]`) but, when there, holds bytes.
pub fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<u8>>, D::Error> {
    required::deserialize(deserializer).map(Some)
}

/// What a member held.
enum Found {
    Null,
    Bytes(Vec<u8>),
    Wrong(String),
}

struct Base64Text;

impl<'de> Visitor<'de> for Base64Text {
    type Value = Found;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Base64 string")
    }

    fn visit_none<E: de::Error>(self) -> Result<Found, E> {
        Ok(Found::Null)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Found, E> {
        Ok(Found::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Found, E> {
        Ok(match STANDARD.decode(text) {
            Ok(bytes) => Found::Bytes(bytes),
            Err(e) => Found::Wrong(format!("is not Base64: {e}")),
        })
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Found, E> {
        Ok(not_a_string())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Found, E> {
        Ok(not_a_string())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Found, E> {
        Ok(not_a_string())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Found, E> {
        Ok(not_a_string())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Found, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(not_a_string())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(not_a_string())
    }
}

fn not_a_string() -> Found {
    Found::Wrong(NOT_A_STRING.to_owned())
}

/// The same for a member that is always there (`buf-b64`).
pub mod required {
    use base64::display::Base64Display;
    use base64::engine::general_purpose::STANDARD;
    use serde::de::{self, Deserializer};
    use serde::Serializer;

    /// Writes the bytes as Base64 text.
    pub fn serialize<S: Serializer>(data: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&Base64Display::new(data, &STANDARD))
    }

    /// Reads Base64 text; `null` is [`NOT_A_STRING`](super::NOT_A_STRING).
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        match super::deserialize(deserializer)? {
            Some(bytes) => Ok(bytes),
            None => Err(de::Error::custom(super::NOT_A_STRING)),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    fn decoded(value: Value) -> Result<Option<Vec<u8>>, String> {
        super::deserialize(value).map_err(|e| e.to_string())
    }

    #[test]
    fn text_null_and_the_rest() {
        assert_eq!(decoded(json!("aGk=")), Ok(Some(b"hi".to_vec())));
        assert_eq!(decoded(json!(null)), Ok(None));
        for wrong in [
            json!(1),
            json!(-1),
            json!(1.5),
            json!(true),
            json!([1]),
            json!({"a": 1}),
        ] {
            assert_eq!(decoded(wrong), Err(super::NOT_A_STRING.to_owned()));
        }
        assert!(decoded(json!("@@")).unwrap_err().starts_with("is not Base64: "));
        let required = super::required::deserialize(json!(null)).map_err(|e| e.to_string());
        assert_eq!(required, Err(super::NOT_A_STRING.to_owned()));
    }

    #[test]
    fn from_text_a_wrong_value_is_read_past_whole() {
        #[derive(serde::Deserialize, Debug)]
        struct Line {
            #[serde(deserialize_with = "super::deserialize")]
            _data: Option<Vec<u8>>,
        }
        for wrong in [r#"{"_data": [1, [2, {}]]}"#, r#"{"_data": {"a": [1]}}"#] {
            let error = serde_json::from_str::<Line>(wrong).unwrap_err().to_string();
            assert!(error.starts_with(super::NOT_A_STRING), "{error}");
        }
    }
}
