//! Connections to a domain's agent over the route chosen for it: straight
//! to its socket, taking turns with other virtomate processes, or through
//! libvirtd.

use std::path::PathBuf;

use virtomate_protocol::libvirt::LibvirtAgent;
use virtomate_protocol::{AnyAgent, ClientOptions, Connector, Error, SocketConnector};

use crate::master::MasterConnector;

/// Opens connections to one domain's agent, for a
/// [`Channel`](virtomate_protocol::Channel).
#[derive(Debug)]
pub enum DomainConnector {
    /// Straight over the agent's socket.
    Direct(SocketConnector),
    /// Through the control master of the agent's socket
    /// (`VIRTOMATE_PERSIST`), which holds its channel.
    Master(MasterConnector),
    /// Through libvirtd's RPC socket, which holds the agent's channel.
    Libvirt {
        socket: PathBuf,
        uri: &'static str,
        domain: String,
        options: ClientOptions,
    },
}

impl Connector for DomainConnector {
    type Agent = AnyAgent;

    async fn connect(&mut self) -> Result<AnyAgent, Error> {
        match self {
            DomainConnector::Direct(direct) => direct.connect().await.map(AnyAgent::Direct),
            DomainConnector::Master(master) => master.connect().await.map(AnyAgent::Direct),
            DomainConnector::Libvirt {
                socket,
                uri,
                domain,
                options,
            } => LibvirtAgent::connect(socket, uri, domain, options)
                .await
                .map(AnyAgent::Libvirt),
        }
    }

    async fn disconnect(&mut self, agent: AnyAgent) {
        match (self, agent) {
            (DomainConnector::Direct(direct), AnyAgent::Direct(client)) => direct.disconnect(client).await,
            (_, agent) => agent.close().await,
        }
    }

    fn contended(&self) -> bool {
        match self {
            DomainConnector::Direct(direct) => direct.contended(),
            DomainConnector::Libvirt { .. } | DomainConnector::Master(_) => false,
        }
    }

    fn waited_for(&self) -> bool {
        match self {
            DomainConnector::Direct(direct) => direct.waited_for(),
            DomainConnector::Libvirt { .. } | DomainConnector::Master(_) => false,
        }
    }

    fn set_patience(&mut self, patience: std::time::Duration) {
        if let DomainConnector::Direct(direct) = self {
            direct.set_patience(patience);
        }
    }

    /// Each agent command through libvirtd is a call of its own, which
    /// keeps nobody out: the connection to libvirtd is kept; so is one to
    /// the master, which lets go of the channel for others itself.
    fn exclusive(&self) -> bool {
        matches!(self, DomainConnector::Direct(_))
    }
}
