//! libvirt's RPC messages on the byte stream: a 4-byte length (counting
//! itself), a 24-byte header, the XDR payload.
//!
//! The length word is the only thing a peer needs to send to make a naive
//! reader allocate gigabytes; [`PacketCodec`] refuses any length above its
//! bound before it reads (or allocates) a byte of the message, and grows its
//! buffer only as bytes arrive.
//!
//! ```
//! use virtomate_protocol::libvirt::packet::{
//!     encode, Header, HEADER_LEN, LEN_WORD, REMOTE_PROC_CONNECT_GET_LIB_VERSION, REMOTE_PROGRAM,
//! };
//!
//! let bytes = encode(&Header::call(REMOTE_PROGRAM, REMOTE_PROC_CONNECT_GET_LIB_VERSION, 1), &[])?;
//! assert_eq!(bytes.len(), LEN_WORD + HEADER_LEN);
//! assert_eq!(bytes[..4], 28u32.to_be_bytes()); // the length counts itself
//! assert_eq!(bytes[4..8], REMOTE_PROGRAM.to_be_bytes());
//! # Ok::<(), virtomate_protocol::Error>(())
//! ```

use bytes::{Buf, BytesMut};
use tokio_util::codec;

use super::xdr::{Decoder, Encoder, XdrError};
use super::MESSAGE_MAX;
use crate::framing::READ_CHUNK;
use crate::Error;

/// libvirt's main program: connections, domains, authentication.
pub const REMOTE_PROGRAM: u32 = 0x2000_8086;

/// libvirt's QEMU-specific program, home of the agent and monitor commands.
pub const QEMU_PROGRAM: u32 = 0x2000_8087;

/// The keepalive program (`"keep"`), pings and pongs.
pub const KEEPALIVE_PROGRAM: u32 = 0x6b65_6570;

/// The version of each of the programs above.
pub const PROGRAM_VERSION: u32 = 1;

/// `REMOTE_PROC_CONNECT_OPEN`: open a hypervisor connection by URI.
pub const REMOTE_PROC_CONNECT_OPEN: i32 = 1;

/// `REMOTE_PROC_CONNECT_CLOSE`: close it; libvirtd then closes the socket.
pub const REMOTE_PROC_CONNECT_CLOSE: i32 = 2;

/// `REMOTE_PROC_DOMAIN_LOOKUP_BY_NAME`.
pub const REMOTE_PROC_DOMAIN_LOOKUP_BY_NAME: i32 = 23;

/// `REMOTE_PROC_DOMAIN_LOOKUP_BY_UUID`.
pub const REMOTE_PROC_DOMAIN_LOOKUP_BY_UUID: i32 = 24;
/// `REMOTE_PROC_DOMAIN_GET_STATE`.
pub const REMOTE_PROC_DOMAIN_GET_STATE: i32 = 212;

/// `REMOTE_PROC_DOMAIN_INTERFACE_ADDRESSES`.
pub const REMOTE_PROC_DOMAIN_INTERFACE_ADDRESSES: i32 = 353;

/// `REMOTE_PROC_AUTH_LIST`: the authentication libvirtd wants; must be
/// the first call on a connection.
pub const REMOTE_PROC_AUTH_LIST: i32 = 66;

/// `REMOTE_PROC_CONNECT_GET_LIB_VERSION`.
pub const REMOTE_PROC_CONNECT_GET_LIB_VERSION: i32 = 157;

/// `QEMU_PROC_DOMAIN_MONITOR_COMMAND` (in [`QEMU_PROGRAM`]): what `virsh
/// qemu-monitor-command` calls.
pub const QEMU_PROC_DOMAIN_MONITOR_COMMAND: i32 = 1;

/// `QEMU_PROC_DOMAIN_AGENT_COMMAND` (in [`QEMU_PROGRAM`]).
pub const QEMU_PROC_DOMAIN_AGENT_COMMAND: i32 = 3;

/// Keepalive `PING` (in [`KEEPALIVE_PROGRAM`]).
pub const KEEPALIVE_PROC_PING: i32 = 1;

/// Keepalive `PONG`, the answer to a ping.
pub const KEEPALIVE_PROC_PONG: i32 = 2;

/// Bytes of the length word (`VIR_NET_MESSAGE_LEN_MAX`).
pub const LEN_WORD: usize = 4;

/// Bytes of the header (`VIR_NET_MESSAGE_HEADER_MAX`).
pub const HEADER_LEN: usize = 24;

/// The largest value of the length word libvirtd accepts or sends: the
/// length word itself plus [`MESSAGE_MAX`].
pub const MAX_PACKET_LEN: usize = LEN_WORD + MESSAGE_MAX;

/// What a message is (`virNetMessageType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// A call from the client (0).
    Call,
    /// The reply to a call, with the call's serial (1).
    Reply,
    /// An unsolicited message: events, keepalive pings (2).
    Message,
    /// Stream data (3).
    Stream,
    /// A call passing file descriptors (4).
    CallWithFds,
    /// A reply passing file descriptors (5).
    ReplyWithFds,
    /// A hole in a sparse stream (6).
    StreamHole,
    /// A type this crate does not know.
    Other(u32),
}

impl MessageType {
    /// The type for its number on the wire.
    pub fn from_u32(value: u32) -> MessageType {
        match value {
            0 => MessageType::Call,
            1 => MessageType::Reply,
            2 => MessageType::Message,
            3 => MessageType::Stream,
            4 => MessageType::CallWithFds,
            5 => MessageType::ReplyWithFds,
            6 => MessageType::StreamHole,
            other => MessageType::Other(other),
        }
    }

    /// The type's number on the wire.
    pub fn to_u32(self) -> u32 {
        match self {
            MessageType::Call => 0,
            MessageType::Reply => 1,
            MessageType::Message => 2,
            MessageType::Stream => 3,
            MessageType::CallWithFds => 4,
            MessageType::ReplyWithFds => 5,
            MessageType::StreamHole => 6,
            MessageType::Other(other) => other,
        }
    }
}

/// How a call went (`virNetMessageStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Success; also what calls and messages carry (0).
    Ok,
    /// Failure: the payload is a `remote_error` (1).
    Error,
    /// More stream data follows (2).
    Continue,
    /// A status this crate does not know.
    Other(u32),
}

impl Status {
    /// The status for its number on the wire.
    pub fn from_u32(value: u32) -> Status {
        match value {
            0 => Status::Ok,
            1 => Status::Error,
            2 => Status::Continue,
            other => Status::Other(other),
        }
    }

    /// The status's number on the wire.
    pub fn to_u32(self) -> u32 {
        match self {
            Status::Ok => 0,
            Status::Error => 1,
            Status::Continue => 2,
            Status::Other(other) => other,
        }
    }
}

/// The header of every message (`virNetMessageHeader`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Program number, e.g. [`REMOTE_PROGRAM`].
    pub program: u32,
    /// Program version, always [`PROGRAM_VERSION`].
    pub version: u32,
    /// Procedure number within the program.
    pub procedure: i32,
    /// Call, reply, unsolicited message, ...
    pub kind: MessageType,
    /// Chosen by the client per call and echoed in the reply.
    pub serial: u32,
    /// Whether the call succeeded (replies only).
    pub status: Status,
}

impl Header {
    /// The header of a call.
    pub fn call(program: u32, procedure: i32, serial: u32) -> Header {
        Header {
            program,
            version: PROGRAM_VERSION,
            procedure,
            kind: MessageType::Call,
            serial,
            status: Status::Ok,
        }
    }

    /// Appends the header's 24 bytes.
    pub fn encode(&self, encoder: &mut Encoder) {
        encoder.u32(self.program);
        encoder.u32(self.version);
        encoder.i32(self.procedure);
        encoder.u32(self.kind.to_u32());
        encoder.u32(self.serial);
        encoder.u32(self.status.to_u32());
    }

    /// Reads a header; unknown types and statuses are kept as
    /// [`MessageType::Other`] and [`Status::Other`].
    pub fn decode(decoder: &mut Decoder<'_>) -> Result<Header, XdrError> {
        Ok(Header {
            program: decoder.u32()?,
            version: decoder.u32()?,
            procedure: decoder.i32()?,
            kind: MessageType::from_u32(decoder.u32()?),
            serial: decoder.u32()?,
            status: Status::from_u32(decoder.u32()?),
        })
    }
}

/// Builds a whole message: length word, header, `payload`.
///
/// A message longer than libvirtd accepts ([`MAX_PACKET_LEN`]) is refused
/// with [`Error::RequestTooLarge`]; libvirtd would drop the connection.
pub fn encode(header: &Header, payload: &[u8]) -> Result<Vec<u8>, Error> {
    let len = LEN_WORD + HEADER_LEN + payload.len();
    if len > MAX_PACKET_LEN {
        return Err(Error::RequestTooLarge {
            len,
            limit: MAX_PACKET_LEN,
        });
    }
    let mut encoder = Encoder::new();
    // len <= MAX_PACKET_LEN, far below u32::MAX.
    encoder.u32(len as u32);
    header.encode(&mut encoder);
    let mut bytes = encoder.into_bytes();
    bytes.extend_from_slice(payload);
    Ok(bytes)
}

/// One message as received.
///
/// ```
/// use virtomate_protocol::libvirt::packet::{encode, Header, PacketCodec, REMOTE_PROGRAM};
/// use virtomate_protocol::Connection;
///
/// # tokio_test::block_on(async {
/// let bytes = encode(&Header::call(REMOTE_PROGRAM, 157, 3), &[0, 0, 0, 1])?;
/// let packet = Connection::new(&bytes[..], PacketCodec::new(1024), None).read_frame().await?;
/// assert_eq!(packet.header.serial, 3);
/// assert_eq!(packet.payload(), [0, 0, 0, 1]);
/// # Ok::<(), virtomate_protocol::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// The decoded header.
    pub header: Header,
    /// The whole message, length word and header included.
    bytes: Vec<u8>,
}

impl Packet {
    /// The XDR payload after the header.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[LEN_WORD + HEADER_LEN..]
    }

    /// The whole message as it was on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Splits a byte stream into messages of at most `max_len` bytes each
/// (length word included), for a [`Connection`](crate::Connection).
///
/// A message over the bound yields `Err(`[`Error::ReplyTooLong`]`)` as an
/// item as soon as its length word is read; its bytes are then dropped as
/// they arrive and the next item is the message after it. A length word
/// too short for a header yields [`Error::Malformed`], for good: libvirtd
/// itself drops such a connection, as nothing after it can be framed.
///
/// ```
/// use virtomate_protocol::Error;
/// use virtomate_protocol::Connection;
/// use virtomate_protocol::libvirt::packet::PacketCodec;
///
/// # tokio_test::block_on(async {
/// // A length word of 4 GiB - 1 is refused before anything is allocated.
/// let hostile: &[u8] = &[0xff, 0xff, 0xff, 0xff];
/// let mut conn = Connection::new(hostile, PacketCodec::new(1 << 20), None);
/// assert!(matches!(conn.read_frame().await, Err(Error::ReplyTooLong { .. })));
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct PacketCodec {
    max_len: usize,
    /// Bytes of an over-long message still to be dropped as they arrive.
    discard: usize,
    /// Set once a length word made no sense: where the next message starts
    /// is unknown from then on.
    lost: bool,
}

impl PacketCodec {
    /// A codec for messages of at most `max_len` bytes, capped at
    /// [`MAX_PACKET_LEN`].
    pub fn new(max_len: usize) -> Self {
        PacketCodec {
            max_len: max_len.min(MAX_PACKET_LEN),
            discard: 0,
            lost: false,
        }
    }

    /// The bound on one message, in bytes, length word included.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    fn decode_packet(&mut self, buf: &mut BytesMut) -> Option<Result<Packet, Error>> {
        if self.lost {
            buf.clear();
            return Some(Err(malformed(
                "the connection is out of step after a malformed message",
            )));
        }
        if self.discard > 0 {
            let dropped = self.discard.min(buf.len());
            buf.advance(dropped);
            self.discard -= dropped;
        }
        if self.discard > 0 || buf.len() < LEN_WORD {
            return None;
        }
        let mut word = [0; LEN_WORD];
        word.copy_from_slice(&buf[..LEN_WORD]);
        let len = u32::from_be_bytes(word) as usize;
        if len < LEN_WORD + HEADER_LEN {
            self.lost = true;
            *buf = BytesMut::new();
            return Some(Err(malformed(&format!(
                "a message length of {len} bytes is shorter than a header"
            ))));
        }
        if len > self.max_len {
            self.discard = len;
            return Some(Err(Error::ReplyTooLong { limit: self.max_len }));
        }
        if buf.len() < len {
            return None;
        }
        // The (short) rest is copied, so that the message leaves as the
        // buffer's own allocation, without a copy.
        let rest = BytesMut::from(&buf[len..]);
        buf.truncate(len);
        let bytes = Vec::from(std::mem::replace(buf, rest));
        Some(
            Header::decode(&mut Decoder::new(&bytes[LEN_WORD..]))
                .map(|header| Packet { header, bytes })
                .map_err(|e| malformed(&e.to_string())),
        )
    }
}

impl codec::Decoder for PacketCodec {
    type Item = Result<Packet, Error>;
    type Error = Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, Error> {
        let packet = self.decode_packet(buf);
        if packet.is_none() {
            if self.discard > 0 && buf.capacity() > 2 * READ_CHUNK {
                // Dropping a message: no need to keep a big buffer around.
                *buf = BytesMut::new();
            }
            buf.reserve(READ_CHUNK);
        }
        Ok(packet)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, Error> {
        // A message cut short by the end of the stream is none: the caller
        // sees the end, as `Error::Disconnected`.
        self.decode(buf)
    }
}

fn malformed(reason: &str) -> Error {
    Error::Malformed {
        command: "libvirt RPC".to_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::pieces;
    use crate::{Connection, Direction, Trace};

    use crate::wire::hex::unhex as hex;

    #[test]
    fn types_and_statuses_keep_their_numbers() {
        for n in 0..10 {
            assert_eq!(MessageType::from_u32(n).to_u32(), n);
            assert_eq!(Status::from_u32(n).to_u32(), n);
        }
        assert_eq!(MessageType::from_u32(0), MessageType::Call);
        assert_eq!(MessageType::from_u32(2), MessageType::Message);
        assert_eq!(MessageType::from_u32(9), MessageType::Other(9));
        assert_eq!(Status::from_u32(1), Status::Error);
        assert_eq!(Status::from_u32(7), Status::Other(7));
        // A keepalive message: unsolicited, its header decoded all the same.
        let bytes = hex("6b6565700000000100000001000000020000000000000000");
        let header = Header::decode(&mut Decoder::new(&bytes)).unwrap();
        assert_eq!(
            (header.program, header.kind),
            (KEEPALIVE_PROGRAM, MessageType::Message)
        );
    }

    #[test]
    fn a_codec_bound_is_capped_at_what_libvirtd_accepts() {
        assert_eq!(PacketCodec::new(100).max_len(), 100);
        assert_eq!(PacketCodec::new(usize::MAX).max_len(), MAX_PACKET_LEN);
    }

    #[test]
    fn a_call_is_encoded_as_virsh_sends_it() {
        // AUTH_LIST as captured from virsh (docs/libvirt-notes.md).
        let bytes = encode(&Header::call(REMOTE_PROGRAM, REMOTE_PROC_AUTH_LIST, 0), &[]).unwrap();
        assert_eq!(
            bytes,
            hex("0000001c200080860000000100000042000000000000000000000000")
        );
    }

    #[tokio::test]
    async fn a_captured_reply_is_decoded() {
        let reply = hex("000000242000808600000001000000420000000100000000000000000000000100000000");
        let packet = Connection::new(&reply[..], PacketCodec::new(MAX_PACKET_LEN), None)
            .read_frame()
            .await
            .unwrap();
        assert_eq!(
            packet.header,
            Header {
                program: REMOTE_PROGRAM,
                version: 1,
                procedure: REMOTE_PROC_AUTH_LIST,
                kind: MessageType::Reply,
                serial: 0,
                status: Status::Ok,
            }
        );
        assert_eq!(packet.payload(), [0, 0, 0, 1, 0, 0, 0, 0]);
    }

    #[tokio::test]
    async fn messages_split_and_joined_across_reads() {
        let a = encode(&Header::call(1, 1, 1), b"aaaa").unwrap();
        let b = encode(&Header::call(1, 1, 2), b"bbbbbbbb").unwrap();
        let mut joined = a.clone();
        joined.extend_from_slice(&b[..3]);
        let byte_by_byte: Vec<&[u8]> = b[3..].chunks(1).collect();
        let mut parts: Vec<&[u8]> = vec![&joined];
        parts.extend(byte_by_byte);
        let mut r = Connection::new(pieces(&parts), PacketCodec::new(1024), None);
        assert_eq!(r.read_frame().await.unwrap().as_bytes(), &a[..]);
        assert_eq!(r.read_frame().await.unwrap().as_bytes(), &b[..]);
        assert!(matches!(r.read_frame().await, Err(Error::Disconnected)));
    }

    #[tokio::test]
    async fn a_huge_length_word_is_refused_without_allocating() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut r = Connection::new(rx, PacketCodec::new(usize::MAX), None);
        tokio::io::AsyncWriteExt::write_all(&mut tx, &[0xff, 0xff, 0xff, 0xff, 0x20])
            .await
            .unwrap();
        assert!(matches!(
            r.read_frame().await,
            Err(Error::ReplyTooLong {
                limit: MAX_PACKET_LEN
            })
        ));
        assert!(
            r.read_buffer_capacity() <= 2 * READ_CHUNK,
            "{}",
            r.read_buffer_capacity()
        );
    }

    #[test]
    fn the_largest_message_libvirtd_accepts_is_the_bound() {
        // libvirtd 9.0.0 takes a length word of 33554436 and drops the
        // connection at 33554437.
        assert_eq!(MAX_PACKET_LEN, 33554436);
        let payload = vec![0; MAX_PACKET_LEN - 28];
        assert_eq!(
            encode(&Header::call(1, 1, 1), &payload).unwrap().len(),
            MAX_PACKET_LEN
        );
        assert!(matches!(
            encode(&Header::call(1, 1, 1), &[&payload[..], &[0]].concat()),
            Err(Error::RequestTooLarge {
                len: 33554437,
                limit: MAX_PACKET_LEN
            })
        ));
    }

    #[tokio::test]
    async fn an_over_long_message_is_dropped_and_the_next_one_read() {
        let long = encode(&Header::call(1, 1, 1), &[7; 200]).unwrap();
        let short = encode(&Header::call(1, 1, 2), &[]).unwrap();
        let mut r = Connection::new(
            pieces(&[&long[..50], &long[50..], &short]),
            PacketCodec::new(100),
            None,
        );
        assert!(matches!(
            r.read_frame().await,
            Err(Error::ReplyTooLong { limit: 100 })
        ));
        assert_eq!(r.read_frame().await.unwrap().header.serial, 2);
    }

    #[tokio::test]
    async fn a_length_shorter_than_a_header_loses_the_connection() {
        let mut bytes = hex("0000001b");
        bytes.extend(encode(&Header::call(1, 1, 1), &[]).unwrap());
        let mut r = Connection::new(&bytes[..], PacketCodec::new(1024), None);
        assert!(matches!(r.read_frame().await, Err(Error::Malformed { .. })));
        assert!(matches!(r.read_frame().await, Err(Error::Malformed { .. })));
    }

    #[tokio::test]
    async fn the_end_of_the_stream_inside_a_message_is_a_disconnect() {
        let bytes = encode(&Header::call(1, 1, 1), b"abcd").unwrap();
        let mut r = Connection::new(&bytes[..30], PacketCodec::new(1024), None);
        assert!(matches!(r.read_frame().await, Err(Error::Disconnected)));
    }

    #[tokio::test]
    async fn received_bytes_are_traced() {
        let bytes = encode(&Header::call(1, 1, 1), &[]).unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        let trace = Trace::new(move |d, b| sink.lock().unwrap().push((d, b.to_vec())));
        let mut r = Connection::new(&bytes[..], PacketCodec::new(1024), Some(trace));
        r.read_frame().await.unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![(Direction::Received, bytes)]);
    }
}
