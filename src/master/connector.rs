//! Connections to a domain's agent through its master: a plain
//! [`QgaClient`] on the master's socket, attached first so that a
//! failure to reach the agent is the error a lone client would get.

use std::time::Duration;

use tokio::net::UnixStream;

use virtomate_protocol::{ClientOptions, Connector, Deadline, Error, Phase, QgaClient};

use super::paths::MasterPaths;
use super::start::connect_or_start;
use super::wire;

/// How often a client tries a master that goes away before it answers.
/// A killed master's socket may take a connection still as the process
/// goes, and reset it then: a second try can meet the same master, a
/// third finds its socket closed and starts a new one.
pub(super) const MASTER_TRIES: usize = 3;

/// Opens connections to an agent through the master of its socket,
/// starting the master where none runs.
#[derive(Debug, Clone)]
pub struct MasterConnector {
    paths: MasterPaths,
    persist: Duration,
    options: ClientOptions,
}

impl MasterConnector {
    /// Through the master of the agent socket at `agent`, if it can have
    /// one (a socket file, a private directory for the master's).
    pub fn new(
        agent: &std::path::Path,
        persist: Duration,
        options: ClientOptions,
    ) -> Option<MasterConnector> {
        let paths = MasterPaths::for_agent(agent)
            .inspect_err(|error| tracing::info!(%error, "no master for this agent: connecting directly"))
            .ok()?;
        Some(MasterConnector {
            paths,
            persist,
            options,
        })
    }

    /// The master's socket.
    pub fn socket(&self) -> &std::path::Path {
        &self.paths.socket
    }

    /// A connection to the master, started where none runs.
    pub(super) async fn reach(&self, deadline: Deadline) -> Result<UnixStream, Error> {
        connect_or_start(
            &self.paths,
            self.persist,
            self.options.handshake_timeout,
            deadline.at(),
        )
        .await
        .map_err(|source| Error::Connect {
            path: self.paths.socket.clone(),
            source,
        })
    }

    async fn attach(&self, deadline: Deadline) -> Result<UnixStream, Error> {
        let mut stream = self.reach(deadline).await?;
        let answer = attach_answer(&mut stream, deadline).await?;
        wire::attach_outcome(&answer).map_err(wire::LinkFailure::into_error)?;
        Ok(stream)
    }

    /// A connection to the master, attached: its agent is connected and
    /// synchronised, or the error says why not, as a lone client's would.
    pub async fn attached(&self) -> Result<UnixStream, Error> {
        let deadline = Deadline::after(self.options.handshake_timeout);
        let mut attached = self.attach(deadline).await;
        // A master that ended as we came (its time was up), or was
        // killed: again, which starts a new one.
        for _ in 1..MASTER_TRIES {
            if !matches!(attached, Err(Error::Disconnected)) {
                break;
            }
            attached = self.attach(deadline).await;
        }
        attached.map_err(|error| self.as_a_lone_client_says(error))
    }

    /// The master's own answer may come a moment after ours: the note of
    /// a big request is read here too, as a lone client does.
    pub(super) fn as_a_lone_client_says(&self, error: Error) -> Error {
        match error {
            Error::Timeout {
                phase: Phase::Handshake,
                after,
            } => self.busy_with_earlier_request(after).unwrap_or(Error::Timeout {
                phase: Phase::Handshake,
                after,
            }),
            other => other,
        }
    }

    /// The client's options: its timeouts.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }
}

/// Asks the master at the other end of `stream` to make sure it holds a
/// synchronised connection to the agent by `deadline`: its answer, ready
/// (`{}`) or why not (see [`wire::attach_outcome`]). The answer also says
/// that it is in step with us: the client then skips the handshake (one
/// exchange less for a fresh process).
pub(super) async fn attach_answer(stream: &mut UnixStream, deadline: Deadline) -> Result<Vec<u8>, Error> {
    // The master answers within the time it was given, or says why not.
    let request = format!(
        "{{\"execute\":\"{}\",\"arguments\":{{\"timeout_ms\":{}}}}}\n",
        wire::ATTACH,
        deadline.remaining().as_millis()
    );
    deadline
        .run(Phase::Handshake, exchange_line(stream, request.as_bytes()))
        .await
}

impl MasterConnector {
    /// The agent most likely still reads a big request another process
    /// sent: its note is fresh.
    fn busy_with_earlier_request(&self, after: Duration) -> Option<Error> {
        let lock = virtomate_protocol::ChannelLock::for_socket(&self.paths.agent).ok()?;
        let request = lock.request_still_read()?;
        Some(Error::BusyWithEarlierRequest {
            path: self.paths.agent.clone(),
            after,
            request,
        })
    }
}

/// The longest answer to an attach: a link failure's few fields.
const MAX_ATTACH_ANSWER: usize = 64 << 10;

/// Sends `request` and reads the one line that answers it. The master
/// sends nothing unasked, so nothing after the line is read with it.
async fn exchange_line(stream: &mut UnixStream, request: &[u8]) -> Result<Vec<u8>, Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request).await.map_err(Error::from)?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !answer.ends_with(b"\n") {
        let read = stream.read(&mut chunk).await.map_err(Error::from)?;
        if read == 0 {
            return Err(Error::Disconnected);
        }
        answer.extend_from_slice(&chunk[..read]);
        if answer.len() > MAX_ATTACH_ANSWER {
            return Err(Error::ReplyTooLong {
                limit: MAX_ATTACH_ANSWER,
            });
        }
    }
    Ok(answer)
}

impl Connector for MasterConnector {
    type Agent = QgaClient;

    async fn connect(&mut self) -> Result<QgaClient, Error> {
        let stream = self.attached().await?;
        Ok(QgaClient::synchronised(stream, self.options.clone()))
    }

    /// The master keeps the agent's channel and lets go of it for others:
    /// a connection to the master keeps nobody out.
    fn exclusive(&self) -> bool {
        false
    }
}

/// The time a master persists, from `--persist` or `VIRTOMATE_PERSIST`;
/// none (no master) when unset or zero.
pub fn persist_setting() -> Option<Duration> {
    let value = std::env::var("VIRTOMATE_PERSIST").ok()?;
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds > 0.0).then(|| Duration::from_secs_f64(seconds.min(1e9)))
}
