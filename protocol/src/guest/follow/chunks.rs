//! Reading one stream's chunk files in turn, and the index that says which
//! are complete (see the [module](super) docs for the rotator in the guest
//! that writes them).

use crate::qga::{
    GuestFileClose, GuestFileFlush, GuestFileOpen, GuestFileRead, GuestFileSeek, GuestFileWrite, Whence,
};
use crate::{Channel, Connector};

use super::error::FollowError;
use super::stream::Stream;

/// The longest line an honest rotator writes to the index (`err
/// 18446744073709551615 fail`); a longer one is garbage.
const LINE_MAX: usize = 32;

/// How a stream's rotator said it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    /// End of file: the chunk it names is empty, and the last.
    End,
    /// Writing the chunk it names failed (no space left, most likely):
    /// that chunk holds what went in, and is the last.
    Failed,
}

/// An open file read from start to end, a read at a time.
#[derive(Debug, Default)]
pub(super) struct Reader {
    pub(super) handle: Option<i64>,
    /// Bytes read and passed on.
    offset: u64,
    /// A read was cut short (its future dropped): the agent's position
    /// may be past `offset`, so seek back before the next read.
    unsure: bool,
}

impl Reader {
    /// One read of at most `count` bytes, from where the last ended.
    async fn read<C: Connector>(
        &mut self,
        channel: &mut Channel<C>,
        count: u64,
    ) -> Result<Vec<u8>, FollowError> {
        let Some(handle) = self.handle else {
            return Ok(Vec::new());
        };
        if self.unsure {
            let offset = i64::try_from(self.offset).unwrap_or(i64::MAX);
            let seek = GuestFileSeek {
                handle,
                offset,
                whence: Whence::Set,
            };
            channel.execute(&seek).await?;
        }
        self.unsure = true;
        let reply = channel
            .execute(&GuestFileRead {
                handle,
                count: Some(count),
            })
            .await?;
        let data = reply.into_data(count)?;
        self.unsure = false;
        self.offset += data.len() as u64;
        Ok(data)
    }
}

/// Where reading one stream has got to.
#[derive(Debug)]
pub(super) struct Tail {
    pub(super) stream: Stream,
    /// The chunk being read, and the file it is read through.
    pub(super) chunk: u64,
    pub(super) file: Reader,
    /// The handle on the stream's credit pipe.
    pub(super) credit: Option<i64>,
    /// Bytes passed on, all chunks together.
    pub(super) total: u64,
    /// The chunks below this one are complete, says the index.
    complete_below: u64,
    /// The chunk the rotator ended at, and how.
    ending: Option<(u64, Ending)>,
    /// The last read of the current chunk came back short: at its end for
    /// now.
    pub(super) at_end: bool,
    /// Every byte of the stream has been passed on, or its rotator failed
    /// and what it wrote has.
    pub(super) finished: bool,
    /// What moving on to the current chunk still owes the guest, where a
    /// connection dropped under it (see [`Tail::settle`]).
    owed: Owed,
}

/// The credit for the chunk before the current one, that chunk's close
/// (not yet sent), and the current chunk's open, not yet known to have
/// been made.
#[derive(Debug, Default, Clone, Copy)]
struct Owed {
    credit: Option<u64>,
    close: Option<i64>,
    open: bool,
}

impl Tail {
    pub(super) fn new(stream: Stream) -> Tail {
        Tail {
            stream,
            chunk: 0,
            file: Reader::default(),
            credit: None,
            total: 0,
            complete_below: 0,
            ending: None,
            at_end: false,
            finished: false,
            owed: Owed::default(),
        }
    }

    /// The name of the stream in the guest: its files' and the index's.
    pub(super) fn name(&self) -> &'static str {
        stream_name(self.stream)
    }

    /// Whether the current chunk will grow no more.
    fn chunk_complete(&self) -> bool {
        self.chunk < self.complete_below || self.ending.is_some_and(|(at, _)| at <= self.chunk)
    }

    /// Whether its end mark was read: all of the stream came.
    pub(super) fn finished(&self) -> bool {
        self.finished
    }

    /// Whether all of the stream came, up to its end mark.
    pub(super) fn ended_well(&self) -> bool {
        self.finished && !self.failed()
    }

    /// Whether its rotator failed.
    pub(super) fn failed(&self) -> bool {
        matches!(self.ending, Some((_, Ending::Failed)))
    }

    /// Whether only the index can say if the current chunk is complete: it
    /// is at its end for now, and not empty (an empty one can only be the
    /// end of the stream, which matters once the program has ended).
    pub(super) fn needs_index(&self, ended: bool) -> bool {
        !self.finished && self.at_end && !self.chunk_complete() && (ended || self.file.offset > 0)
    }

    /// One read of the current chunk, handed to `sink`; at the end of a
    /// complete chunk, moves on to the next. Returns the bytes read and
    /// whether more may wait now.
    pub(super) async fn look<C: Connector>(
        &mut self,
        channel: &mut Channel<C>,
        dir: &str,
        count: u64,
        sink: &mut impl FnMut(Stream, &[u8]) -> std::io::Result<()>,
    ) -> Result<(u64, bool), FollowError> {
        self.settle(channel, dir).await?;
        if self.finished {
            return Ok((0, false));
        }
        if self.ending == Some((self.chunk, Ending::End)) {
            // Nothing in it, and nothing after it.
            self.finished = true;
            return Ok((0, false));
        }
        // Known complete before the read: then a short read is its end.
        let complete = self.chunk_complete();
        let data = self.file.read(channel, count).await?;
        let read = data.len() as u64;
        self.total += read;
        if !data.is_empty() {
            sink(self.stream, &data).map_err(FollowError::Sink)?;
        }
        self.at_end = read < count;
        if read == count {
            return Ok((read, true));
        }
        if !complete {
            return Ok((read, false));
        }
        self.next_chunk(channel, dir).await?;
        Ok((read, !self.finished))
    }

    /// The current chunk is read to its end: it is closed and credited
    /// (the rotator may then remove it and start the one after next), and
    /// the next one opened, unless the stream ended.
    async fn next_chunk<C: Connector>(
        &mut self,
        channel: &mut Channel<C>,
        dir: &str,
    ) -> Result<(), FollowError> {
        let done = self.chunk;
        self.chunk += 1;
        self.at_end = false;
        let last = match self.ending {
            Some((at, Ending::End)) => at <= self.chunk,
            Some((at, Ending::Failed)) => at <= done,
            None => false,
        };
        self.finished = last;
        self.owed = Owed {
            credit: (!last && self.credit.is_some()).then_some(done),
            close: self.file.handle.take(),
            open: !last,
        };
        self.file = Reader::default();
        self.settle(channel, dir).await
    }

    /// Makes what moving on to the current chunk owes: the credit, then
    /// the last chunk's close and the current chunk's open, together.
    /// Where the connection drops under them and the agent outlives that
    /// (libvirtd went away: see [`Connector::outlives_disconnect`]), what
    /// is still owed is made again by the next look on a new connection:
    /// a credit sent twice is skipped by the rotator, and an open made
    /// twice leaves the first handle unused. A close is sent once,
    /// whatever becomes of it: the agent keeps a handle whose close failed,
    /// and a second close would use a freed `FILE` (so a close lost that
    /// way may leave the chunk's handle open in the agent).
    ///
    /// [`Connector::outlives_disconnect`]: crate::Connector::outlives_disconnect
    async fn settle<C: Connector>(&mut self, channel: &mut Channel<C>, dir: &str) -> Result<(), FollowError> {
        if let (Some(done), Some(handle)) = (self.owed.credit, self.credit) {
            let write = GuestFileWrite {
                handle,
                buf: format!("{done}\n").into_bytes(),
            };
            let (written, flushed) = channel.execute_both(&write, &GuestFileFlush { handle }).await?;
            written?;
            flushed?;
            self.owed.credit = None;
        }
        let open = || GuestFileOpen::new(chunk_path(dir, self.stream, self.chunk), "r");
        let close = self.owed.close.take().map(|handle| GuestFileClose { handle });
        match (close, self.owed.open) {
            (Some(close), true) => {
                let (closed, opened) = channel.execute_both(&close, &open()).await?;
                if let Ok(handle) = opened {
                    // Kept as soon as known, for the clean-up to close.
                    self.file.handle = Some(handle);
                    self.owed.open = false;
                }
                closed?;
                opened?;
            }
            (Some(close), false) => {
                channel.execute(&close).await?;
            }
            (None, true) => {
                self.file.handle = Some(channel.execute(&open()).await?);
                self.owed.open = false;
            }
            (None, false) => {}
        }
        Ok(())
    }

    /// The handles this stream holds open in the agent, taken for the
    /// clean-up to close: its chunk's, its credit pipe's, and a chunk's
    /// whose close was not sent yet.
    pub(super) fn take_handles(&mut self) -> [Option<i64>; 3] {
        [
            self.file.handle.take(),
            self.credit.take(),
            self.owed.close.take(),
        ]
    }

    /// Takes in what one index line says of this stream: `N` (chunk N is
    /// complete), `N end` or `N fail`. Lines come in order, each chunk once.
    fn told(&mut self, chunk: u64, how: Option<Ending>) -> Result<(), String> {
        if self.ending.is_some() || chunk != self.complete_below {
            return Err(format!(
                "{} {chunk} where {} was due",
                self.name(),
                self.complete_below
            ));
        }
        match how {
            None => self.complete_below += 1,
            Some(how) => self.ending = Some((chunk, how)),
        }
        // An honest rotator is at most two complete chunks ahead.
        if self.complete_below > self.chunk + 3 {
            return Err(format!(
                "{} {chunk} while chunk {} is read",
                self.name(),
                self.chunk
            ));
        }
        Ok(())
    }
}

/// The file the rotators append a line to for each chunk they complete,
/// and what of it is read.
#[derive(Debug, Default)]
pub(super) struct Index {
    pub(super) file: Reader,
    /// The start of a line not yet whole.
    partial: Vec<u8>,
}

impl Index {
    /// Reads what is new in the index and tells the tails; returns whether
    /// anything was.
    pub(super) async fn read<C: Connector>(
        &mut self,
        channel: &mut Channel<C>,
        count: u64,
        tails: &mut [Tail; 2],
    ) -> Result<bool, FollowError> {
        let data = self.file.read(channel, count).await?;
        self.take(&data, tails)
            .map_err(|reason| FollowError::Index { reason })?;
        Ok(!data.is_empty())
    }

    /// Parses `data`, which follows what came before.
    fn take(&mut self, data: &[u8], tails: &mut [Tail; 2]) -> Result<(), String> {
        let mut rest = data;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&rest[..end]);
            rest = &rest[end + 1..];
            let line = std::mem::take(&mut self.partial);
            let line = String::from_utf8_lossy(&line);
            let mut words = line.split(' ');
            let (name, chunk, how) = (words.next(), words.next(), words.next());
            let tail = tails.iter_mut().find(|tail| Some(tail.name()) == name);
            let chunk = chunk.and_then(|c| c.parse::<u64>().ok());
            let how = match how {
                None => Some(None),
                Some("end") => Some(Some(Ending::End)),
                Some("fail") => Some(Some(Ending::Failed)),
                Some(_) => None,
            };
            match (tail, chunk, how, words.next()) {
                (Some(tail), Some(chunk), Some(how), None) => tail.told(chunk, how)?,
                _ => return Err(format!("the line {line:?}")),
            }
        }
        if self.partial.len() + rest.len() > LINE_MAX {
            return Err(format!("a line longer than {LINE_MAX} bytes"));
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }
}

/// The name of `stream`'s files in the guest.
pub(super) fn stream_name(stream: Stream) -> &'static str {
    match stream {
        Stream::Stdout => "out",
        Stream::Stderr => "err",
    }
}

/// The chunk file `chunk` of `stream` in the directory `dir`.
pub(super) fn chunk_path(dir: &str, stream: Stream, chunk: u64) -> String {
    format!("{dir}/{}.{chunk}", stream_name(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tails() -> [Tail; 2] {
        [Tail::new(Stream::Stdout), Tail::new(Stream::Stderr)]
    }

    #[test]
    fn index_lines_may_come_in_pieces() {
        let (mut index, mut tails) = (Index::default(), tails());
        index.take(b"out 0\ner", &mut tails).unwrap();
        assert_eq!(tails[0].complete_below, 1);
        index.take(b"r 0 end\nout 1", &mut tails).unwrap();
        assert_eq!(tails[1].ending, Some((0, Ending::End)));
        index.take(b" fail\n", &mut tails).unwrap();
        assert_eq!(tails[0].ending, Some((1, Ending::Failed)));
        assert!(tails[0].failed());
    }

    #[test]
    fn a_garbled_index_is_refused() {
        for garbage in [
            &b"out 1\n"[..],
            b"out 0\nout 0\n",
            b"in 0\n",
            b"out x\n",
            b"out 0 done\n",
            b"out 0 end\nout 1\n",
            b"out 0 0 0\n",
            b"out 0\nout 1\nout 2\nout 3\n",
            &[b'7'; 40],
        ] {
            let (mut index, mut tails) = (Index::default(), tails());
            assert!(index.take(garbage, &mut tails).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn a_chunk_is_complete_once_indexed_or_ended() {
        let mut tail = Tail::new(Stream::Stdout);
        tail.at_end = true;
        assert!(!tail.needs_index(false), "an empty chunk, the program running");
        assert!(tail.needs_index(true));
        tail.file.offset = 5;
        assert!(tail.needs_index(false));
        tail.told(0, None).unwrap();
        assert!(tail.chunk_complete() && !tail.needs_index(true));
    }
}
