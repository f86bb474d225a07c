//! Byte strings that travel as Base64 text (`input-data`, `out-data`, ...).
//!
//! Encoding writes straight into the request buffer and decoding reads
//! straight from the reply buffer, so a 16 MiB output is never held as an
//! intermediate `String` as well.

use std::fmt;

use base64::display::Base64Display;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::de::{self, Deserializer, Visitor};
use serde::Serializer;

pub fn serialize<S: Serializer>(data: &Option<Vec<u8>>, serializer: S) -> Result<S::Ok, S::Error> {
    match data {
        Some(bytes) => serializer.collect_str(&Base64Display::new(bytes, &STANDARD)),
        None => serializer.serialize_none(),
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<u8>>, D::Error> {
    deserializer.deserialize_option(OptionalBase64)
}

struct OptionalBase64;

impl<'de> Visitor<'de> for OptionalBase64 {
    type Value = Option<Vec<u8>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Base64 string")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        STANDARD
            .decode(text)
            .map(Some)
            .map_err(|e| E::custom(format_args!("invalid Base64: {e}")))
    }
}

/// The same for a member that is always there (`buf-b64`).
pub mod required {
    use base64::display::Base64Display;
    use base64::engine::general_purpose::STANDARD;
    use serde::de::{self, Deserializer};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(data: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&Base64Display::new(data, &STANDARD))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        match super::deserialize(deserializer)? {
            Some(bytes) => Ok(bytes),
            None => Err(de::Error::custom("a Base64 string, not null")),
        }
    }
}
