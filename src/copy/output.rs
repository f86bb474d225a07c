//! A copy's program in the guest (`tar`, `gzip`) followed as it writes:
//! its standard output is the data, its standard error what it said.

use std::time::Duration;

use tokio::time::sleep;
use virtomate_protocol::follow::{Follow, FollowError, FollowOptions, Stream};
use virtomate_protocol::{leftovers, Channel, Connector as _, Error};

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
/// tells. Where the connection drops under it and the agent outlives that
/// (libvirtd went away: see `Connector::outlives_disconnect`), it looks
/// again on a new connection, from where it was, a few times.
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
    let mut lost = 0;
    loop {
        let looked = match ended {
            true => follow.drain(channel, &mut sink).await.map(|()| (0, false)),
            false => follow.read_new(channel, &mut sink).await,
        };
        match looked {
            Err(FollowError::Agent(Error::Disconnected))
                if channel.connector().outlives_disconnect() && lost < MOST_LOOKS_LOST =>
            {
                tracing::info!("the connection dropped under reading the output: reading again on a new one");
                lost += 1;
                sleep(RECONNECT_PAUSE).await;
            }
            looked => return looked,
        }
    }
}

/// How many looks in a row may lose their connection before the copy
/// fails: a restart of libvirtd drops one or two.
const MOST_LOOKS_LOST: u32 = 5;

/// How soon a look whose connection dropped is made again: libvirtd may
/// be back, or the agent's channel free, within that.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
