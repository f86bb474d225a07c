//! A `guest-exec` request whose `input-data` is Base64-encoded while it is
//! sent, a piece at a time, instead of being built whole in memory first:
//! 48 MiB of input would otherwise take 64 MiB more for its request.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::GuestExec;
use crate::wire::envelope::Request;
use crate::Command;

/// Raw bytes encoded per piece: a multiple of 3, so that the pieces' Base64
/// joins up without padding in between.
const RAW_PIECE: usize = 48 * 1024;

/// A request line, ready to send, whole or in pieces.
#[derive(Debug)]
pub(crate) enum OutgoingRequest<'a> {
    Whole(Vec<u8>),
    /// `head`, then the Base64 of `input`, then `tail`.
    WithInput {
        head: Vec<u8>,
        input: &'a [u8],
        tail: Vec<u8>,
    },
}

impl OutgoingRequest<'_> {
    /// The line's length in bytes, newline included.
    pub(crate) fn len(&self) -> usize {
        match self {
            OutgoingRequest::Whole(line) => line.len(),
            OutgoingRequest::WithInput { head, input, tail } => {
                head.len() + input.len().div_ceil(3) * 4 + tail.len()
            }
        }
    }

    /// The line in the order it is sent; input pieces are encoded as they
    /// are asked for.
    pub(crate) fn pieces(&self) -> Box<dyn Iterator<Item = Cow<'_, [u8]>> + Send + '_> {
        match self {
            OutgoingRequest::Whole(line) => Box::new(std::iter::once(Cow::Borrowed(line.as_slice()))),
            OutgoingRequest::WithInput { head, input, tail } => Box::new(
                std::iter::once(Cow::Borrowed(head.as_slice()))
                    .chain(
                        input
                            .chunks(RAW_PIECE)
                            .map(|piece| Cow::Owned(STANDARD.encode(piece).into_bytes())),
                    )
                    .chain(std::iter::once(Cow::Borrowed(tail.as_slice()))),
            ),
        }
    }
}

/// `exec` as a request with `id`: with `input-data` first among the
/// arguments, to be encoded while sending, when there is input.
pub(crate) fn guest_exec_request(exec: &GuestExec, id: u64) -> OutgoingRequest<'_> {
    let Some(input) = exec.input_data.as_deref() else {
        return OutgoingRequest::Whole(Request::of(exec).with_id(id).to_line());
    };
    let without_input = GuestExec {
        path: exec.path.clone(),
        arg: exec.arg.clone(),
        env: exec.env.clone(),
        input_data: None,
        capture_output: exec.capture_output,
    };
    let arguments = serde_json::to_vec(&without_input).expect("commands always serialize");
    let mut head = br#"{"execute":"#.to_vec();
    head.extend(serde_json::to_vec(GuestExec::NAME).expect("a name serializes"));
    head.extend_from_slice(br#","arguments":{"input-data":""#);
    // `","` then the other arguments, whose object's `{` the head opened.
    let mut tail = br#"","#.to_vec();
    tail.extend_from_slice(&arguments[1..]);
    tail.extend_from_slice(format!(r#","id":{id}}}"#).as_bytes());
    tail.push(b'\n');
    OutgoingRequest::WithInput { head, input, tail }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn request_bytes(exec: &GuestExec, id: u64) -> Vec<u8> {
        Request::of(exec).with_id(id).to_line()
    }

    fn sent(request: &OutgoingRequest<'_>) -> Vec<u8> {
        request.pieces().flat_map(|piece| piece.into_owned()).collect()
    }

    #[test]
    fn the_streamed_request_is_the_whole_one_with_input_data_moved_first() {
        for len in [
            0,
            1,
            2,
            3,
            4,
            RAW_PIECE - 1,
            RAW_PIECE,
            RAW_PIECE + 1,
            3 * RAW_PIECE + 2,
        ] {
            let input: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            let mut exec = GuestExec::new("wc", ["-c"]).with_input(input);
            exec.env = Some(vec!["A=\"quoted\"".into()]);
            let request = guest_exec_request(&exec, 42);
            let streamed = sent(&request);
            assert_eq!(streamed.len(), request.len(), "input of {len} bytes");
            assert_eq!(streamed.last(), Some(&b'\n'));
            assert_eq!(streamed.iter().filter(|&&b| b == b'\n').count(), 1);
            let whole: Value = serde_json::from_slice(&request_bytes(&exec, 42)).unwrap();
            let streamed: Value = serde_json::from_slice(&streamed).unwrap();
            assert_eq!(streamed, whole, "input of {len} bytes");
        }
    }

    #[test]
    fn without_input_the_request_is_sent_whole() {
        let exec = GuestExec::new("true", Vec::<String>::new());
        let request = guest_exec_request(&exec, 7);
        assert!(matches!(request, OutgoingRequest::Whole(_)));
        assert_eq!(sent(&request), request_bytes(&exec, 7));
    }
}
