//! The JSON around every request and reply, the same for QGA and QMP:
//! `{"execute": NAME, "arguments": {...}, "id": ID}` out,
//! `{"return": ...}` or `{"error": {"class", "desc"}}` back.

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{Command, Error};

/// The most the agent's JSON parser accepts in one request
/// (`MAX_TOKEN_SIZE` in QEMU's `qobject/json-streamer.c`).
///
/// A longer request is refused with [`Error::RequestTooLarge`] before
/// sending: the agent would answer it with several parse errors.
pub const MAX_REQUEST_LEN: usize = 64 << 20;

/// A request, ready to be serialized: for a direct channel as a line with
/// an id ([`Request::to_line`]), for libvirtd as JSON without either
/// ([`Request::to_json`]), since libvirtd adds an id of its own and refuses
/// a request that has one.
#[derive(Serialize)]
pub(crate) struct Request<'a, A: ?Sized> {
    execute: &'a str,
    // QMP refuses `"arguments": null`: a command without any leaves it out.
    #[serde(skip_serializing_if = "Option::is_none")]
    arguments: Option<&'a A>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
}

impl<'a, A: Serialize + ?Sized> Request<'a, A> {
    /// The command `name` with `arguments` (an object), if any.
    pub(crate) fn new(name: &'a str, arguments: Option<&'a A>) -> Self {
        Request {
            execute: name,
            arguments,
            id: None,
        }
    }

    pub(crate) fn with_id(self, id: u64) -> Self {
        Request { id: Some(id), ..self }
    }

    /// One line: the JSON and its `\n`.
    pub(crate) fn to_line(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec(self).expect("requests always serialize");
        bytes.push(b'\n');
        bytes
    }

    /// The JSON alone.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).expect("requests always serialize")
    }
}

impl<'a, C: Command> Request<'a, C> {
    /// A typed command: its name, and itself as the arguments.
    pub(crate) fn of(command: &'a C) -> Self {
        Request::new(C::NAME, Some(command))
    }
}

/// Which replies a parse takes for the one awaited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplyId {
    /// A reply with this id, or with none (the agent echoes ids, but an
    /// error about a request it could not parse has none).
    Is(u64),
    /// Any: a reply libvirtd fetched for us, carrying the id libvirtd chose.
    Any,
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

/// The `return` of a reply to `command` as a `T`. Replies are read whole
/// as [`RawValue`] by the exchanges, which are not generic (one copy of
/// each in the binary, whatever the command), and typed here.
pub(crate) fn decode<T: DeserializeOwned>(command: &str, ret: &RawValue) -> Result<T, Error> {
    serde_json::from_str(ret.get()).map_err(|e| Error::Malformed {
        command: command.to_owned(),
        reason: format!("unexpected return value: {e}"),
    })
}

/// Decodes one reply line to `command`, whose `return` is a `T`; a reply
/// that `id` does not take is [`ReplyFor::Other`], an error reply
/// [`Error::Agent`].
pub(crate) fn parse_reply<T: DeserializeOwned>(
    command: &str,
    line: &[u8],
    id: ReplyId,
) -> Result<ReplyFor<T>, Error> {
    let malformed = |reason: String| Error::Malformed {
        command: command.to_owned(),
        reason,
    };
    let envelope: Envelope =
        serde_json::from_slice(line).map_err(|e| malformed(format!("not a JSON reply: {e}")))?;
    if let (ReplyId::Is(id), Some(got)) = (id, &envelope.id) {
        if got.as_u64() != Some(id) {
            return Ok(ReplyFor::Other);
        }
    }
    match (envelope.ret, envelope.error, envelope.event) {
        (Some(ret), None, _) => decode(command, ret).map(ReplyFor::Us),
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
    use crate::qga::{GuestExecStatus, GuestExecStatusReply, GuestPing};

    fn status(line: &str) -> Result<ReplyFor<GuestExecStatusReply>, Error> {
        parse_reply(GuestExecStatus::NAME, line.as_bytes(), ReplyId::Is(9))
    }

    #[test]
    fn a_request_with_47_mib_of_input_fits() {
        // Base64 makes `input-data` a third longer than the input itself.
        let stdin_len: usize = 47 << 20;
        assert!(stdin_len.div_ceil(3) * 4 < MAX_REQUEST_LEN);
    }

    #[test]
    fn request_line_carries_name_arguments_and_id() {
        let line = Request::of(&GuestPing {}).with_id(3).to_line();
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
        let request = Request::<()>::new("query-status", None).to_json();
        assert_eq!(request, r#"{"execute":"query-status"}"#);
    }

    #[test]
    fn a_reply_through_libvirtd_is_ours_whatever_its_id() {
        let reply = r#"{"return": {"exited": false}, "id": "libvirt-411"}"#;
        assert!(matches!(
            parse_reply::<GuestExecStatusReply>("guest-exec-status", reply.as_bytes(), ReplyId::Any),
            Ok(ReplyFor::Us(_))
        ));
        assert!(matches!(status(reply), Ok(ReplyFor::Other)));
    }

    #[test]
    fn request_without_arguments_leaves_them_out() {
        let line = Request::<()>::new("query-status", None).with_id(4).to_line();
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
