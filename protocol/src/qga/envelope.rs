//! The JSON around every request and reply, the same for QGA and QMP.

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::Command;
use crate::Error;

#[derive(Serialize)]
struct Request<'a, A: ?Sized> {
    execute: &'a str,
    // QMP refuses `"arguments": null`: a command without any leaves it out.
    #[serde(skip_serializing_if = "Option::is_none")]
    arguments: Option<&'a A>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
}

/// Serializes `command` as one request line, `id` included.
pub(crate) fn request_bytes<C: Command>(command: &C, id: u64) -> Vec<u8> {
    request_line(C::NAME, Some(command), id)
}

/// Serializes a request for the command `name` as one line, `id` included.
pub(crate) fn request_line<A: Serialize + ?Sized>(name: &str, arguments: Option<&A>, id: u64) -> Vec<u8> {
    let mut bytes = request_json(name, arguments, Some(id));
    bytes.push(b'\n');
    bytes
}

/// Serializes a request for the command `name` without id or newline: for
/// libvirtd, which adds an id of its own and refuses a request with one.
pub(crate) fn request_without_id<A: Serialize + ?Sized>(name: &str, arguments: Option<&A>) -> String {
    let bytes = request_json(name, arguments, None);
    String::from_utf8(bytes).expect("serde_json writes UTF-8")
}

fn request_json<A: Serialize + ?Sized>(name: &str, arguments: Option<&A>, id: Option<u64>) -> Vec<u8> {
    let request = Request {
        execute: name,
        arguments,
        id,
    };
    serde_json::to_vec(&request).expect("commands always serialize")
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "return", borrow)]
    ret: Option<&'a RawValue>,
    error: Option<ErrorBody>,
    id: Option<serde_json::Value>,
    event: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct ErrorBody {
    class: String,
    desc: String,
}

/// Whose reply a line is.
#[derive(Debug)]
pub(crate) enum ReplyFor<T> {
    /// The reply to the request with our id (or a reply without any id).
    Us(T),
    /// A reply to some other request: stale, to be skipped.
    Other,
    /// No reply at all but an asynchronous QMP event, which may arrive
    /// between any two lines; the caller decodes it from the line.
    Event,
}

/// Decodes one reply line to `command` sent with `id`.
pub(crate) fn parse_reply<C: Command>(line: &[u8], id: u64) -> Result<ReplyFor<C::Output>, Error> {
    parse_reply_to(C::NAME, line, id)
}

/// Decodes one reply line to the command `command` sent with `id`, whose
/// `return` is a `T`.
pub(crate) fn parse_reply_to<T: DeserializeOwned>(
    command: &str,
    line: &[u8],
    id: u64,
) -> Result<ReplyFor<T>, Error> {
    parse_envelope(command, line, Some(id))
}

/// Decodes a reply known to answer `command` whatever its id: one that
/// libvirtd fetched for us, with the id libvirtd chose.
pub(crate) fn parse_reply_ignoring_id<T: DeserializeOwned>(
    command: &str,
    line: &[u8],
) -> Result<ReplyFor<T>, Error> {
    parse_envelope(command, line, None)
}

/// Decodes a line; with `id`, a reply with another id is [`ReplyFor::Other`].
fn parse_envelope<T: DeserializeOwned>(
    command: &str,
    line: &[u8],
    id: Option<u64>,
) -> Result<ReplyFor<T>, Error> {
    let malformed = |reason: String| Error::Malformed {
        command: command.to_owned(),
        reason,
    };
    let envelope: Envelope =
        serde_json::from_slice(line).map_err(|e| malformed(format!("not a JSON reply: {e}")))?;
    if let (Some(id), Some(got)) = (id, &envelope.id) {
        if got.as_u64() != Some(id) {
            return Ok(ReplyFor::Other);
        }
    }
    match (envelope.ret, envelope.error, envelope.event) {
        (Some(ret), None, _) => serde_json::from_str(ret.get())
            .map(ReplyFor::Us)
            .map_err(|e| malformed(format!("unexpected return value: {e}"))),
        (None, Some(error), _) => Err(Error::Agent {
            command: command.to_owned(),
            class: error.class,
            desc: error.desc,
        }),
        (None, None, Some(_)) => Ok(ReplyFor::Event),
        _ => Err(malformed(
            "a reply needs exactly one of `return` and `error`".to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qga::{ExecStatus, GuestExecStatus, GuestPing};

    fn status(line: &str) -> Result<ReplyFor<ExecStatus>, Error> {
        parse_reply::<GuestExecStatus>(line.as_bytes(), 9)
    }

    #[test]
    fn request_line_carries_name_arguments_and_id() {
        let line = request_bytes(&GuestPing {}, 3);
        assert_eq!(line, b"{\"execute\":\"guest-ping\",\"arguments\":{},\"id\":3}\n");
    }

    #[test]
    fn reply_with_our_id_or_none_is_ours() {
        assert!(matches!(
            status(r#"{"return": {"exited": false}, "id": 9}"#),
            Ok(ReplyFor::Us(_))
        ));
        assert!(matches!(
            status(r#"{"return": {"exited": false}}"#),
            Ok(ReplyFor::Us(_))
        ));
    }

    #[test]
    fn reply_with_another_id_is_skipped() {
        assert!(matches!(status(r#"{"return": 5, "id": 8}"#), Ok(ReplyFor::Other)));
        assert!(matches!(
            status(r#"{"return": 5, "id": "x"}"#),
            Ok(ReplyFor::Other)
        ));
    }

    #[test]
    fn error_reply_carries_class_and_desc() {
        let err =
            status(r#"{"error": {"class": "GenericError", "desc": "Invalid parameter 'pid'"}, "id": 9}"#)
                .unwrap_err();
        match err {
            Error::Agent { command, class, desc } => {
                assert_eq!(command, "guest-exec-status");
                assert_eq!(class, "GenericError");
                assert_eq!(desc, "Invalid parameter 'pid'");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn malformed_replies_are_typed_errors() {
        for line in [
            "garbage",
            "[1, 2]",
            r#"{"id": 9}"#,
            r#"{"return": {}, "error": {"class": "a", "desc": "b"}}"#,
            r#"{"return": {"exited": "yes"}}"#,
            r#"{"return": {"exited": true, "exitcode": 4294967296}}"#,
            r#"{"return": {"exited": true, "out-data": "not base64!"}}"#,
            r#"{"error": {"class": "GenericError"}}"#,
        ] {
            assert!(matches!(status(line), Err(Error::Malformed { .. })), "{line}");
        }
    }

    #[test]
    fn a_request_for_libvirtd_has_no_id() {
        let request = request_without_id::<()>("query-status", None);
        assert_eq!(request, r#"{"execute":"query-status"}"#);
    }

    #[test]
    fn a_reply_through_libvirtd_is_ours_whatever_its_id() {
        let reply = r#"{"return": {"exited": false}, "id": "libvirt-411"}"#;
        assert!(matches!(
            parse_reply_ignoring_id::<ExecStatus>("guest-exec-status", reply.as_bytes()),
            Ok(ReplyFor::Us(_))
        ));
        assert!(matches!(status(reply), Ok(ReplyFor::Other)));
    }

    #[test]
    fn request_without_arguments_leaves_them_out() {
        let line = request_line::<()>("query-status", None, 4);
        assert_eq!(line, b"{\"execute\":\"query-status\",\"id\":4}\n");
    }

    #[test]
    fn event_line_is_told_apart_from_replies() {
        let stop = r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}"#;
        assert!(matches!(status(stop), Ok(ReplyFor::Event)));
        // A reply stays a reply whatever else it carries.
        assert!(matches!(
            status(r#"{"return": {"exited": false}, "event": "X", "id": 9}"#),
            Ok(ReplyFor::Us(_))
        ));
    }

    #[test]
    fn output_is_decoded_from_base64() {
        let Ok(ReplyFor::Us(s)) = status(
            r#"{"return": {"exited": true, "exitcode": 1, "err-data": "b29wcw==", "err-truncated": true}}"#,
        ) else {
            panic!()
        };
        assert_eq!(s.exitcode, Some(1));
        assert_eq!(s.err_data.as_deref(), Some(&b"oops"[..]));
        assert!(s.err_truncated);
        assert_eq!(s.out_data, None);
    }
}
