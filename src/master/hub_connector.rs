//! The master's own connections to the agent, for the runs it makes whole:
//! an in-process client of the hub, one end of an in-memory pipe served
//! as any client is, so that the run engine's requests are routed, shared
//! and let go of with every other client's. A pipe in memory, not a
//! socket pair: a run's requests then cost no system calls on their way
//! to the hub (38 a run against 66, about 80 µs of the master's CPU).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use virtomate_protocol::{ClientOptions, Connector, Deadline, Error, Phase, QgaClient};

use super::client_conn::{attach, serve_client, ClientEvent};
use super::wire;

/// Opens in-process connections to the hub.
pub struct HubConnector {
    hub: mpsc::UnboundedSender<ClientEvent>,
    ids: Arc<AtomicU64>,
    options: ClientOptions,
    /// A connection attached already, for the first connect.
    ready: Option<DuplexStream>,
}

/// How many bytes the pipe holds before a writer waits: a few of the
/// agent's replies to a followed run's reads, and room for big requests
/// to go through in a few pieces.
const PIPE_CAPACITY: usize = 256 << 10;

impl HubConnector {
    /// Connections to `hub`, numbered from `ids` (as clients and requests
    /// are), whose agent is waited for as `options` say.
    pub fn new(hub: mpsc::UnboundedSender<ClientEvent>, ids: Arc<AtomicU64>, options: ClientOptions) -> Self {
        HubConnector {
            hub,
            ids,
            options,
            ready: None,
        }
    }

    /// Attaches a first connection by `deadline`: the hub's answer, as a
    /// client's attach gets it (the connection is kept for the first
    /// connect where it says ready).
    pub async fn attach_first(&mut self, deadline: Deadline) -> Result<Vec<u8>, Error> {
        let answer = self.attach(deadline).await?;
        if wire::attach_outcome(&answer).is_ok() {
            self.ready = Some(self.open()?);
        }
        Ok(answer)
    }

    /// Asks the hub itself, not through a connection: the same answer, a
    /// round trip through the socket pair less in every run.
    async fn attach(&self, deadline: Deadline) -> Result<Vec<u8>, Error> {
        let attached = deadline.run(Phase::Handshake, async {
            attach(&self.hub, deadline.remaining(), None)
                .await
                .ok_or(Error::Disconnected)
        });
        attached.await
    }

    fn open(&self) -> Result<DuplexStream, Error> {
        let (ours, hubs) = tokio::io::duplex(PIPE_CAPACITY);
        let client = self.ids.fetch_add(1, Ordering::Relaxed);
        let (ids, hub) = (self.ids.clone(), self.hub.clone());
        tokio::spawn(async move {
            // Nothing of ours asks for a whole run on it.
            let _ = serve_client(tokio::io::split(hubs), client, ids, hub).await;
        });
        Ok(ours)
    }
}

impl Connector for HubConnector {
    type Agent = QgaClient<DuplexStream>;

    async fn connect(&mut self) -> Result<QgaClient<DuplexStream>, Error> {
        let stream = match self.ready.take() {
            Some(stream) => stream,
            None => {
                let answer = self
                    .attach(Deadline::after(self.options.handshake_timeout))
                    .await?;
                wire::attach_outcome(&answer).map_err(wire::LinkFailure::into_error)?;
                self.open()?
            }
        };
        Ok(QgaClient::synchronised(stream, self.options.clone()))
    }

    /// The hub lets go of the agent's channel for others itself.
    fn exclusive(&self) -> bool {
        false
    }
}
