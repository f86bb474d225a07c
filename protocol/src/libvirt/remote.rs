//! The few structures of libvirt's remote protocol that agent commands
//! need: domains and errors.

use std::fmt;

use super::xdr::{Decoder, Encoder, XdrError};
use super::STRING_MAX;
use crate::Error;

/// A domain as libvirtd names it in calls (`remote_nonnull_domain`).
///
/// Look it up with [`LibvirtClient::lookup_domain_by_name`] or
/// [`LibvirtClient::lookup_domain_by_uuid`], then pass it to
/// [`LibvirtClient::agent_command`].
///
/// [`LibvirtClient::lookup_domain_by_name`]: super::LibvirtClient::lookup_domain_by_name
/// [`LibvirtClient::lookup_domain_by_uuid`]: super::LibvirtClient::lookup_domain_by_uuid
/// [`LibvirtClient::agent_command`]: super::LibvirtClient::agent_command
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteDomain {
    /// The domain's name.
    pub name: String,
    /// The domain's UUID, as 16 raw bytes.
    pub uuid: [u8; 16],
    /// The id of the running domain; -1 when it does not run.
    pub id: i32,
}

impl RemoteDomain {
    /// The UUID in its usual text form.
    pub fn uuid_string(&self) -> String {
        let mut text = String::with_capacity(36);
        for (i, byte) in self.uuid.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                text.push('-');
            }
            crate::wire::hex::push_hex(&mut text, &[*byte]);
        }
        text
    }

    /// Whether the domain was running when it was looked up.
    pub fn is_running(&self) -> bool {
        self.id != -1
    }

    pub(crate) fn encode(&self, encoder: &mut Encoder) -> Result<(), XdrError> {
        encoder.string(&self.name, STRING_MAX)?;
        encoder.opaque_fixed(&self.uuid);
        encoder.i32(self.id);
        Ok(())
    }

    pub(crate) fn decode(decoder: &mut Decoder<'_>) -> Result<RemoteDomain, XdrError> {
        Ok(RemoteDomain {
            name: decoder.string(STRING_MAX)?.to_owned(),
            uuid: decoder.opaque_fixed()?,
            id: decoder.i32()?,
        })
    }
}

impl fmt::Display for RemoteDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.uuid_string())
    }
}

/// Parses a UUID such as `ae1fa45e-9986-4911-a717-236321429e8c`: 32 hex
/// digits, with or without the usual dashes.
///
/// ```
/// use virtomate_protocol::libvirt::parse_uuid;
///
/// assert_eq!(parse_uuid("ae1fa45e99864911a717236321429e8c").unwrap()[0], 0xae);
/// assert_eq!(
///     parse_uuid("ae1fa45e-9986-4911-a717-236321429e8c"),
///     parse_uuid("AE1FA45E99864911A717236321429E8C")
/// );
/// assert_eq!(parse_uuid("virtomate-test"), None);
/// ```
pub fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let digits = text.as_bytes();
    let dashed = digits.len() == 36 && [8, 13, 18, 23].iter().all(|&i| digits[i] == b'-');
    let hex: Vec<u8> = if dashed {
        digits.iter().copied().filter(|&b| b != b'-').collect()
    } else {
        digits.to_vec()
    };
    // from_str_radix alone would also take a sign ("+e").
    if hex.len() != 32 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut uuid = [0; 16];
    for (byte, pair) in uuid.iter_mut().zip(hex.chunks(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(uuid)
}

/// Decodes the payload of an error reply (`remote_error`) into
/// [`Error::Libvirt`].
///
/// Only code, domain and message are used; the fields after them (level,
/// the format string's arguments) add nothing for a user and are not
/// required to be there, so that an odd error still reads as an error.
pub(crate) fn decode_error(payload: &[u8]) -> Result<Error, XdrError> {
    let mut decoder = Decoder::new(payload);
    let code = decoder.i32()?;
    let domain = decoder.i32()?;
    let message = if decoder.bool()? {
        // libvirt's messages can quote anything, e.g. file names: show
        // what cannot be shown as UTF-8 rather than fail on it.
        String::from_utf8_lossy(decoder.opaque(STRING_MAX)?).into_owned()
    } else {
        "libvirtd gave no error message".to_owned()
    };
    Ok(Error::Libvirt {
        code,
        domain,
        message,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use crate::wire::hex::unhex as hex;

    #[test]
    fn a_captured_domain_round_trips() {
        // The DOMAIN_LOOKUP_BY_NAME reply payload in docs/libvirt-notes.md.
        let bytes =
            hex("0000000e 766972746f6d6174652d74657374 0000 ae1fa45e99864911a717236321429e8c 00000001");
        let mut decoder = Decoder::new(&bytes);
        let domain = RemoteDomain::decode(&mut decoder).unwrap();
        decoder.finish().unwrap();
        assert_eq!(domain.name, "virtomate-test");
        assert_eq!(domain.uuid_string(), "ae1fa45e-9986-4911-a717-236321429e8c");
        assert_eq!(domain.id, 1);
        let mut encoder = Encoder::new();
        domain.encode(&mut encoder).unwrap();
        assert_eq!(encoder.into_bytes(), bytes);
    }

    /// The error reply to DOMAIN_LOOKUP_BY_NAME("nosuch") in
    /// docs/libvirt-notes.md, payload only.
    pub(crate) fn no_domain_error_payload() -> Vec<u8> {
        let mut e = Encoder::new();
        e.i32(42);
        e.i32(10);
        e.optional_string(
            Some("Domain not found: no domain with matching name 'nosuch'"),
            STRING_MAX,
        )
        .unwrap();
        e.i32(2);
        e.bool(false);
        e.optional_string(Some("Domain not found: %s"), STRING_MAX)
            .unwrap();
        e.optional_string(Some("no domain with matching name 'nosuch'"), STRING_MAX)
            .unwrap();
        e.optional_string(None, STRING_MAX).unwrap();
        e.i32(-1);
        e.i32(-1);
        e.bool(false);
        e.into_bytes()
    }

    #[test]
    fn an_error_reply_decodes() {
        let payload = no_domain_error_payload();
        // 200 bytes on the wire, as captured: 28 of them length and header.
        assert_eq!(payload.len(), 200 - 28);
        let error = decode_error(&payload).unwrap();
        assert!(matches!(
            error,
            Error::Libvirt {
                code: 42,
                domain: 10,
                ..
            }
        ));
        assert_eq!(
            error.to_string(),
            "libvirt: Domain not found: no domain with matching name 'nosuch' (error 42, error domain 10)"
        );
    }

    #[test]
    fn a_truncated_error_reply_is_an_xdr_error() {
        let payload = no_domain_error_payload();
        for len in 0..12 {
            assert!(decode_error(&payload[..len]).is_err(), "{len}");
        }
        // Everything after the message is optional to us.
        assert!(decode_error(&payload[..72]).is_ok());
    }

    #[test]
    fn a_domain_shows_its_name_and_uuid() {
        let domain = RemoteDomain {
            name: "virtomate-test".into(),
            uuid: parse_uuid("ae1fa45e-9986-4911-a717-236321429e8c").unwrap(),
            id: 1,
        };
        assert_eq!(
            domain.to_string(),
            "virtomate-test (ae1fa45e-9986-4911-a717-236321429e8c)"
        );
        assert!(domain.is_running());
        let off = RemoteDomain { id: -1, ..domain };
        assert!(!off.is_running());
    }

    #[test]
    fn uuids_parse_only_when_well_formed() {
        assert!(parse_uuid("ae1fa45e-9986-4911-a717-236321429e8").is_none());
        assert!(parse_uuid("ae1fa45e-9986-4911-a717-236321429e8cc").is_none());
        assert!(parse_uuid("ae1fa45e99864911a717236321429e8g").is_none());
        assert!(parse_uuid("ae1fa45e9-986-4911-a717-236321429e8c").is_none());
        assert!(parse_uuid("+e1fa45e99864911a717236321429e8c").is_none());
        assert!(parse_uuid("").is_none());
        assert!(parse_uuid("é1fa45e99864911a717236321429e8c").is_none());
    }
}
