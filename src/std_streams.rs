//! Standard streams that another process may have made non-blocking: a
//! pipe's flags are shared by both ends' users, and rsync, for one, sets
//! `O_NONBLOCK` on the pipe it runs its remote shell (`rsync -e`) over.
//! A read or write that would block then waits until the stream is ready,
//! rather than failing with "Resource temporarily unavailable".

use std::io::{self, Read, Write};
use std::os::fd::AsFd;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Writes all of `bytes` to `stream` and flushes it, waiting whenever it
/// is full.
pub fn write_all_waiting<W: Write + AsFd>(stream: &mut W, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => bytes = &bytes[written..],
            Err(error) => wait_unless_fatal(stream, error, PollFlags::POLLOUT)?,
        }
    }
    loop {
        match stream.flush() {
            Ok(()) => return Ok(()),
            Err(error) => wait_unless_fatal(stream, error, PollFlags::POLLOUT)?,
        }
    }
}

/// Reads what `stream` has, up to `buf`'s length, waiting while it has
/// nothing yet; 0 at its end.
pub fn read_waiting<R: Read + AsFd>(stream: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match stream.read(buf) {
            Ok(read) => return Ok(read),
            Err(error) => wait_unless_fatal(stream, error, PollFlags::POLLIN)?,
        }
    }
}

/// Waits until `stream` is ready for `ready` after a call that would
/// have blocked, returns at once after an interrupted one; any other
/// error is passed on.
fn wait_unless_fatal(stream: &impl AsFd, error: io::Error, ready: PollFlags) -> io::Result<()> {
    match error.kind() {
        io::ErrorKind::Interrupted => Ok(()),
        io::ErrorKind::WouldBlock => {
            let mut fds = [PollFd::new(stream.as_fd(), ready)];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
                Err(errno) => Err(errno.into()),
            }
        }
        _ => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_non_blocking_stream_is_waited_for_not_failed() {
        let (mut writer, mut reader) = UnixStream::pair().unwrap();
        writer.set_nonblocking(true).unwrap();
        reader.set_nonblocking(true).unwrap();
        let data: Vec<u8> = (0..4 << 20).map(|i: u32| i as u8).collect();
        let expected = data.clone();
        let sender = std::thread::spawn(move || write_all_waiting(&mut writer, &data));
        let mut got = Vec::new();
        let mut buf = vec![0; 65536];
        loop {
            match read_waiting(&mut reader, &mut buf).unwrap() {
                0 => break,
                n => got.extend_from_slice(&buf[..n]),
            }
        }
        sender.join().unwrap().unwrap();
        assert!(got == expected, "{} of {} bytes", got.len(), expected.len());
    }
}
