//! Asking the kernel for the peer of every connected UNIX socket, which
//! leads from a connection the listener accepted to the client's socket.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};

// sock_diag, from linux/netlink.h, linux/sock_diag.h and linux/unix_diag.h.
// Everything is in native byte order.

/// `struct nlmsghdr`: length, type, flags, sequence number, port id.
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_ROOT | NLM_F_MATCH`: all sockets, not one looked up by inode
/// (which would need its cookie).
const NLM_F_DUMP: u16 = 0x300;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `struct unix_diag_req`: family, protocol, pad, states, inode, show,
/// cookie[2].
const UNIX_DIAG_REQ_LEN: usize = 24;
/// `struct unix_diag_msg`: family, type, state, pad, inode, cookie[2].
const UNIX_DIAG_MSG_LEN: usize = 16;
/// `udiag_states` is a bit mask of kernel socket states (`TCP_*` numbering,
/// not the `SS_*` of `/proc/net/unix`); accepted connections are in
/// `TCP_ESTABLISHED` (1).
const TCP_ESTABLISHED_BIT: u32 = 1 << 1;
const UDIAG_SHOW_PEER: u32 = 0x4;
/// The attribute carrying the peer's inode, a `u32`.
const UNIX_DIAG_PEER: u16 = 2;

/// The peer inode of every connected UNIX socket of our network namespace,
/// keyed by the socket's own inode.
pub(super) fn sock_diag_peers() -> io::Result<HashMap<u64, u64>> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?;
    // Plain write() and read() suffice: an unconnected netlink socket sends
    // to the kernel (port 0), and each read() returns one datagram.
    let mut socket = fs::File::from(fd);
    let seq = 1;
    socket.write_all(&dump_request(seq))?;
    let mut peers = HashMap::new();
    // The kernel's dump datagrams are at most 32 KiB; a cut one would show
    // as a message running past the end, and fail to parse.
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let len = socket.read(&mut buffer)?;
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "sock_diag: empty reply",
            ));
        }
        if parse_replies(&buffer[..len], seq, &mut peers)? {
            return Ok(peers);
        }
    }
}

fn dump_request(seq: u32) -> Vec<u8> {
    let len = NLMSG_HDRLEN + UNIX_DIAG_REQ_LEN;
    let mut request = Vec::with_capacity(len);
    request.extend_from_slice(&(len as u32).to_ne_bytes());
    request.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request.extend_from_slice(&seq.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    request.push(nix::libc::AF_UNIX as u8); // sdiag_family
    request.push(0); // sdiag_protocol
    request.extend_from_slice(&0u16.to_ne_bytes()); // pad
    request.extend_from_slice(&TCP_ESTABLISHED_BIT.to_ne_bytes()); // udiag_states
    request.extend_from_slice(&0u32.to_ne_bytes()); // udiag_ino: ignored in a dump
    request.extend_from_slice(&UDIAG_SHOW_PEER.to_ne_bytes()); // udiag_show
    request.extend_from_slice(&[0; 8]); // udiag_cookie: ignored in a dump
    request
}

/// Reads one datagram of netlink messages into `peers`; true once the dump
/// is done.
fn parse_replies(mut data: &[u8], seq: u32, peers: &mut HashMap<u64, u64>) -> io::Result<bool> {
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, "sock_diag: malformed reply");
    while data.len() >= NLMSG_HDRLEN {
        let len = u32_at(data, 0) as usize;
        let kind = u16_at(data, 4);
        let message_seq = u32_at(data, 8);
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(malformed());
        }
        let payload = &data[NLMSG_HDRLEN..len];
        data = &data[align4(len).min(data.len())..];
        if message_seq != seq {
            // Not an answer to our request; cannot happen on a fresh socket.
            continue;
        }
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                // A negative errno, then the request it answers.
                let errno = payload
                    .get(..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().unwrap()));
                return Err(match errno {
                    Some(errno) if errno < 0 => io::Error::from_raw_os_error(-errno),
                    _ => malformed(),
                });
            }
            SOCK_DIAG_BY_FAMILY => {
                if payload.len() < UNIX_DIAG_MSG_LEN {
                    return Err(malformed());
                }
                let inode = u32_at(payload, 4);
                if let Some(peer) = peer_attribute(&payload[UNIX_DIAG_MSG_LEN..]) {
                    peers.insert(u64::from(inode), u64::from(peer));
                }
            }
            _ => {}
        }
    }
    Ok(false)
}

/// The `UNIX_DIAG_PEER` value among the `struct rtattr`s (length and type
/// as `u16`s, then the value, padded to 4 bytes) following a message.
fn peer_attribute(mut attributes: &[u8]) -> Option<u32> {
    while attributes.len() >= 4 {
        let len = usize::from(u16_at(attributes, 0));
        let kind = u16_at(attributes, 2);
        if len < 4 || len > attributes.len() {
            return None;
        }
        if kind == UNIX_DIAG_PEER && len >= 8 {
            return Some(u32_at(attributes, 4));
        }
        attributes = &attributes[align4(len).min(attributes.len())..];
    }
    None
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

fn u16_at(data: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([data[at], data[at + 1]])
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nlmsg(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut message = Vec::new();
        message.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        message.extend_from_slice(&kind.to_ne_bytes());
        message.extend_from_slice(&0x2u16.to_ne_bytes()); // NLM_F_MULTI
        message.extend_from_slice(&seq.to_ne_bytes());
        message.extend_from_slice(&4321u32.to_ne_bytes());
        message.extend_from_slice(payload);
        message.resize(align4(message.len()), 0);
        message
    }

    fn diag_msg(inode: u32, attributes: &[(u16, &[u8])]) -> Vec<u8> {
        let mut payload = vec![nix::libc::AF_UNIX as u8, 1, 1, 0];
        payload.extend_from_slice(&inode.to_ne_bytes());
        payload.extend_from_slice(&[0xff; 8]);
        for (kind, value) in attributes {
            payload.extend_from_slice(&(4 + value.len() as u16).to_ne_bytes());
            payload.extend_from_slice(&kind.to_ne_bytes());
            payload.extend_from_slice(value);
            payload.resize(align4(payload.len()), 0);
        }
        payload
    }

    #[test]
    fn reads_peers_from_sock_diag_replies() {
        const UNIX_DIAG_NAME: u16 = 0;
        let mut datagram = nlmsg(
            SOCK_DIAG_BY_FAMILY,
            1,
            &diag_msg(
                101,
                &[
                    (UNIX_DIAG_NAME, b"/run/qga"),
                    (UNIX_DIAG_PEER, &102u32.to_ne_bytes()),
                ],
            ),
        );
        datagram.extend(nlmsg(
            SOCK_DIAG_BY_FAMILY,
            1,
            &diag_msg(103, &[(UNIX_DIAG_NAME, b"/x")]),
        ));
        datagram.extend(nlmsg(
            SOCK_DIAG_BY_FAMILY,
            9,
            &diag_msg(105, &[(UNIX_DIAG_PEER, &[6, 0, 0, 0])]),
        ));
        let mut peers = HashMap::new();
        assert!(!parse_replies(&datagram, 1, &mut peers).unwrap());
        assert_eq!(peers, HashMap::from([(101, 102)]));

        let done = nlmsg(NLMSG_DONE, 1, &0i32.to_ne_bytes());
        assert!(parse_replies(&done, 1, &mut peers).unwrap());
    }

    #[test]
    fn sock_diag_errors_and_garbage_are_errors() {
        let mut error = (-nix::libc::EINVAL).to_ne_bytes().to_vec();
        error.extend(dump_request(1));
        let error = parse_replies(&nlmsg(NLMSG_ERROR, 1, &error), 1, &mut HashMap::new()).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(nix::libc::EINVAL));

        let mut cut = nlmsg(SOCK_DIAG_BY_FAMILY, 1, &diag_msg(101, &[]));
        cut.truncate(cut.len() - 4);
        assert!(parse_replies(&cut, 1, &mut HashMap::new()).is_err());
    }

    #[test]
    fn the_request_has_the_kernels_layout() {
        let request = dump_request(7);
        assert_eq!(request.len(), 40);
        assert_eq!(u32_at(&request, 0), 40);
        assert_eq!(u16_at(&request, 4), 20);
        assert_eq!(u16_at(&request, 6), 0x301);
        assert_eq!(u32_at(&request, 8), 7);
        assert_eq!(request[16], 1); // AF_UNIX
        assert_eq!(u32_at(&request, 20), 1 << 1);
        assert_eq!(u32_at(&request, 28), UDIAG_SHOW_PEER);
    }
}
