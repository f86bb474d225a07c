//! Asking the kernel for the peer of every connected UNIX socket, which
//! leads from a connection the listener accepted to the client's socket.
//!
//! The netlink messages are built and read by the rust-netlink crates
//! (`netlink-packet-sock-diag` on `netlink-packet-core`, and `netlink-sys`
//! for the socket) rather than by hand. Measured on the release binary
//! (LTO, stripped): 1,654,984 bytes against 1,630,232 with the hand-written
//! codec it replaces (+24.8 KB, +1.5 %); `virtomate doctor` on a held
//! socket (three sock_diag dumps) took 8.3 ± 1.4 ms against 8.0 ± 1.2 ms,
//! within the noise (`hyperfine -N -w 10 -r 300`). Worth it for some 150
//! fewer lines of byte offsets to keep right.

use std::collections::HashMap;
use std::io;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_sock_diag::constants::UDIAG_SHOW_PEER;
use netlink_packet_sock_diag::unix::{ShowFlags, StateFlags, UnixRequest};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

/// The peer inode of every connected UNIX socket of our network namespace,
/// keyed by the socket's own inode.
pub(super) fn sock_diag_peers() -> io::Result<HashMap<u64, u64>> {
    let socket = Socket::new(NETLINK_SOCK_DIAG)?;
    // Port 0 is the kernel. A fresh socket of our own receives nothing but
    // the answers to our one request, so their sequence numbers need no
    // checking.
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&dump_request(), 0)?;
    let mut peers = HashMap::new();
    // The kernel's dump datagrams are at most 32 KiB; a cut one would show
    // as a message running past the end, and fail to parse.
    let mut datagram = Vec::with_capacity(64 * 1024);
    loop {
        datagram.clear();
        if socket.recv(&mut datagram, 0)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "sock_diag: empty reply",
            ));
        }
        if read_datagram(&datagram, &mut peers)? {
            return Ok(peers);
        }
    }
}

/// A dump of every UNIX socket in `TCP_ESTABLISHED` (accepted connections
/// among them; `udiag_states` counts in `TCP_*` states, not the `SS_*` of
/// `/proc/net/unix`), each with the inode of its peer.
fn dump_request() -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    // A dump of all sockets, not one looked up by inode (which would need
    // its cookie).
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::UnixRequest(UnixRequest {
            state_flags: StateFlags::ESTABLISHED,
            inode: 0,
            show_flags: ShowFlags::from_bits_truncate(UDIAG_SHOW_PEER),
            cookie: [0; 8],
        })
        .into(),
    );
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    bytes
}

/// Reads one datagram of netlink messages into `peers`; true once the dump
/// is done.
fn read_datagram(mut data: &[u8], peers: &mut HashMap<u64, u64>) -> io::Result<bool> {
    while !data.is_empty() {
        let message = NetlinkMessage::<SockDiagMessage>::deserialize(data)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {e}")))?;
        match message.payload {
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(error) => return Err(error.to_io()),
            NetlinkPayload::InnerMessage(SockDiagMessage::UnixResponse(response)) => {
                if let Some(peer) = response.peer() {
                    peers.insert(u64::from(response.header.inode), u64::from(peer));
                }
            }
            _ => {}
        }
        // Messages start on 4-byte boundaries.
        let next = (message.header.length as usize + 3) & !3;
        data = data.get(next..).unwrap_or_default();
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const UNIX_DIAG_NAME: u16 = 0;
    const UNIX_DIAG_PEER: u16 = 2;

    /// A netlink message as the kernel sends it: length, type, flags,
    /// sequence number and port id, then the payload, padded to 4 bytes.
    fn nlmsg(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut message = Vec::new();
        message.extend_from_slice(&(16 + payload.len() as u32).to_ne_bytes());
        message.extend_from_slice(&kind.to_ne_bytes());
        message.extend_from_slice(&0x2u16.to_ne_bytes()); // NLM_F_MULTI
        message.extend_from_slice(&1u32.to_ne_bytes());
        message.extend_from_slice(&4321u32.to_ne_bytes());
        message.extend_from_slice(payload);
        message.resize((message.len() + 3) & !3, 0);
        message
    }

    /// `struct unix_diag_msg` (family, type, state, pad, inode, cookie),
    /// then its attributes.
    fn diag_msg(inode: u32, attributes: &[(u16, &[u8])]) -> Vec<u8> {
        let mut payload = vec![nix::libc::AF_UNIX as u8, 1, 1, 0];
        payload.extend_from_slice(&inode.to_ne_bytes());
        payload.extend_from_slice(&[0xff; 8]);
        for (kind, value) in attributes {
            payload.extend_from_slice(&(4 + value.len() as u16).to_ne_bytes());
            payload.extend_from_slice(&kind.to_ne_bytes());
            payload.extend_from_slice(value);
            payload.resize((payload.len() + 3) & !3, 0);
        }
        payload
    }

    /// Other attributes are skipped. (We do not ask for names; the kernel
    /// sends a path with its NUL, as the crate expects.)
    #[test]
    fn reads_the_peers_of_every_message_in_a_datagram() {
        let mut datagram = nlmsg(
            SOCK_DIAG_BY_FAMILY,
            &diag_msg(
                101,
                &[
                    (UNIX_DIAG_NAME, b"/run/qga\0"),
                    (UNIX_DIAG_PEER, &102u32.to_ne_bytes()),
                ],
            ),
        );
        // No peer: not connected to anything (any more).
        datagram.extend(nlmsg(
            SOCK_DIAG_BY_FAMILY,
            &diag_msg(103, &[(UNIX_DIAG_NAME, b"\0abstract")]),
        ));
        datagram.extend(nlmsg(
            SOCK_DIAG_BY_FAMILY,
            &diag_msg(105, &[(UNIX_DIAG_PEER, &106u32.to_ne_bytes())]),
        ));
        let mut peers = HashMap::new();
        assert!(!read_datagram(&datagram, &mut peers).unwrap());
        assert_eq!(peers, HashMap::from([(101, 102), (105, 106)]));

        let done = nlmsg(NLMSG_DONE, &0i32.to_ne_bytes());
        assert!(read_datagram(&done, &mut peers).unwrap());
    }

    #[test]
    fn sock_diag_errors_and_garbage_are_errors() {
        let mut error = (-nix::libc::EINVAL).to_ne_bytes().to_vec();
        error.extend(dump_request());
        let error = read_datagram(&nlmsg(NLMSG_ERROR, &error), &mut HashMap::new()).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(nix::libc::EINVAL));

        let mut cut = nlmsg(SOCK_DIAG_BY_FAMILY, &diag_msg(101, &[]));
        cut.truncate(cut.len() - 4);
        assert!(read_datagram(&cut, &mut HashMap::new()).is_err());
    }

    #[test]
    fn the_request_has_the_kernels_layout() {
        let request = dump_request();
        let u32_at = |at: usize| u32::from_ne_bytes(request[at..at + 4].try_into().unwrap());
        let u16_at = |at: usize| u16::from_ne_bytes(request[at..at + 2].try_into().unwrap());
        assert_eq!(request.len(), 40);
        assert_eq!(u32_at(0), 40);
        assert_eq!(u16_at(4), SOCK_DIAG_BY_FAMILY);
        assert_eq!(u16_at(6), 0x301); // NLM_F_REQUEST | NLM_F_DUMP
        assert_eq!(request[16], nix::libc::AF_UNIX as u8);
        assert_eq!(u32_at(20), 1 << 1); // TCP_ESTABLISHED
        assert_eq!(u32_at(28), UDIAG_SHOW_PEER);
    }
}
