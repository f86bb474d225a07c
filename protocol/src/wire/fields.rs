//! The members of a session's lines, read by `#[derive(Deserialize)]`
//! types with `#[serde(deny_unknown_fields)]`: [`parse`] reads a line's
//! object so that each error names its key as the replies say it, and the
//! helpers here and in [`base64_data`](crate::qga::base64_data) are for
//! `deserialize_with`, their errors without the key.
//!
//! ```
//! use serde::Deserialize;
//! use serde_json::json;
//! use virtomate_protocol::fields;
//!
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Line {
//!     #[serde(default, deserialize_with = "fields::flag")]
//!     end: bool,
//! }
//! let object = |value: serde_json::Value| value.as_object().unwrap().clone();
//! assert!(fields::parse::<Line>(object(json!({"end": true})), "a data line").unwrap().end);
//! let bad = fields::parse::<Line>(object(json!({"end": 1})), "a data line");
//! assert_eq!(bad.err().unwrap(), "\"end\" must be true or false");
//! let bad = fields::parse::<Line>(object(json!({"last": true})), "a data line");
//! assert_eq!(bad.err().unwrap(), "unknown key \"last\" in a data line");
//! ```

use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, Error as _, IntoDeserializer, MapAccess};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Reads `object` as a `T`. A key `T` does not know is `unknown key "KEY"
/// in WHAT`; an error of a member's is `"KEY" ` and the helper's message
/// (or `"KEY": ...` when that begins with a colon).
pub fn parse<T: DeserializeOwned>(object: Map<String, Value>, what: &str) -> Result<T, String> {
    let members = Members {
        entries: object.into_iter(),
        value: None,
        what,
    };
    T::deserialize(MapAccessDeserializer::new(members)).map_err(|e| e.to_string())
}

/// The error for a key that `what` does not take, for a caller that
/// finds one itself.
///
/// ```
/// let message = virtomate_protocol::fields::unknown_key("data", "a copy_from request");
/// assert_eq!(message, "unknown key \"data\" in a copy_from request");
/// ```
pub fn unknown_key(key: &str, what: &str) -> String {
    format!("unknown key {key:?} in {what}")
}

/// `true` or `false`; `null`, or no member (`#[serde(default)]`), is false.
pub fn flag<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    let flag =
        Option::<bool>::deserialize(deserializer).map_err(|_| D::Error::custom("must be true or false"))?;
    Ok(flag.unwrap_or(false))
}

/// An object's members, each error put in terms of its key.
struct Members<'a> {
    entries: serde_json::map::IntoIter,
    value: Option<(String, Value)>,
    what: &'a str,
}

impl<'de> MapAccess<'de> for Members<'_> {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Self::Error> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        // A key that is no field's: `deny_unknown_fields` refuses it.
        let field = seed
            .deserialize(key.as_str().into_deserializer())
            .map_err(|_: Self::Error| Self::Error::custom(unknown_key(&key, self.what)))?;
        self.value = Some((key, value));
        Ok(Some(field))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Self::Error> {
        let (key, value) = self.value.take().expect("a key before its value");
        seed.deserialize(value).map_err(|e| {
            let message = e.to_string();
            let space = if message.starts_with(':') { "" } else { " " };
            Self::Error::custom(format!("{key:?}{space}{message}"))
        })
    }
}
