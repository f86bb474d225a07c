//! A copy's program in the guest (`tar`, `gzip`) followed as it writes:
//! its standard output is the data, its standard error what it said.

use virtomate_protocol::follow::{Follow, FollowError, FollowOptions, Stream};
use virtomate_protocol::{leftovers, Channel};

use crate::agent::DomainConnector;

/// Makes the private directory the program's output (and, with
/// `stdin_pipe`, its input) passes through, tagged with this process, so
/// that the next followed run or copy from this host sweeps it should
/// this one be killed; and sweeps those of dead ones it finds (see
/// [`leftovers`]).
pub async fn prepare(
    channel: &mut Channel<DomainConnector>,
    options: FollowOptions,
    stdin_pipe: bool,
) -> Result<Follow, FollowError> {
    let name = Follow::new_name()?;
    let follow = leftovers::prepare_tagged(channel, options, stdin_pipe, &name).await?;
    leftovers::sweep_beside(channel, &follow).await;
    Ok(follow)
}

/// One look at the program's output: what is new, or once it has
/// `ended`, the rest (up to the rotators' end marks); standard output
/// appended to `data`, standard error to `said` up to `said_max` bytes.
/// The bytes read and whether more may wait, as [`Follow::read_new`]
/// tells.
pub async fn look(
    follow: &mut Follow,
    channel: &mut Channel<DomainConnector>,
    ended: bool,
    data: &mut Vec<u8>,
    said: &mut Vec<u8>,
    said_max: usize,
) -> Result<(u64, bool), FollowError> {
    let mut sink = |stream: Stream, bytes: &[u8]| {
        match stream {
            Stream::Stdout => data.extend_from_slice(bytes),
            Stream::Stderr if said.len() < said_max => said.extend_from_slice(bytes),
            Stream::Stderr => {}
        }
        Ok(())
    };
    match ended {
        true => follow.drain(channel, &mut sink).await.map(|()| (0, false)),
        false => follow.read_new(channel, &mut sink).await,
    }
}
