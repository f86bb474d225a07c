//! The master's own connections to the agent, for the runs it makes whole:
//! an in-process client of the hub, one end of a socket pair served as
//! any client is, so that the run engine's requests are routed, shared and
//! let go of with every other client's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::UnixStream;
use tokio::sync::mpsc;
use virtomate_protocol::{ClientOptions, Connector, Deadline, Error, QgaClient};

use super::client_conn::{serve_client, ClientEvent};
use super::connector::attach_over;

/// Opens in-process connections to the hub.
pub struct HubConnector {
    hub: mpsc::UnboundedSender<ClientEvent>,
    ids: Arc<AtomicU64>,
    options: ClientOptions,
}

impl HubConnector {
    /// Connections to `hub`, numbered from `ids` (as clients and requests
    /// are), whose agent is waited for as `options` say.
    pub fn new(hub: mpsc::UnboundedSender<ClientEvent>, ids: Arc<AtomicU64>, options: ClientOptions) -> Self {
        HubConnector { hub, ids, options }
    }
}

impl Connector for HubConnector {
    type Agent = QgaClient;

    async fn connect(&mut self) -> Result<QgaClient, Error> {
        let (mut ours, hubs) = UnixStream::pair().map_err(Error::Io)?;
        let client = self.ids.fetch_add(1, Ordering::Relaxed);
        let (ids, hub) = (self.ids.clone(), self.hub.clone());
        tokio::spawn(async move {
            // Nothing of ours asks for a whole run on it.
            let _ = serve_client(hubs, client, ids, hub).await;
        });
        attach_over(&mut ours, Deadline::after(self.options.handshake_timeout)).await?;
        Ok(QgaClient::synchronised(ours, self.options.clone()))
    }

    /// The hub lets go of the agent's channel for others itself.
    fn exclusive(&self) -> bool {
        false
    }
}
