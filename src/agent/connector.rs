//! Connections to a domain's agent over the route chosen for it: straight
//! to its socket, taking turns with other virtomate processes, or through
//! libvirtd.

use std::path::PathBuf;

use virtomate_protocol::libvirt::LibvirtAgent;
use virtomate_protocol::{AnyAgent, ClientOptions, Connector, Error, Phase, SocketConnector};

use crate::domain::Handback;
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
    /// Straight over the channel libvirtd keeps of a libvirt domain, while
    /// libvirtd does not hold it; through libvirtd from the first connect
    /// that finds it taken back (see [`Handback`]), so that a run goes on
    /// polling the same program there.
    LibvirtsChannel {
        direct: SocketConnector,
        handback: Handback,
        options: ClientOptions,
    },
}

impl DomainConnector {
    /// Whether what goes over it must fit libvirtd's messages: through
    /// libvirtd, or over a channel libvirtd may take back, from the start.
    pub fn libvirt_sized(&self) -> bool {
        matches!(
            self,
            DomainConnector::Libvirt { .. } | DomainConnector::LibvirtsChannel { .. }
        )
    }

    /// Connects straight over libvirtd's channel, or through libvirtd once
    /// it is seen to hold it: before connecting (libvirtd runs and holds
    /// it), or after a connection that waited in QEMU's queue until its
    /// time was up. From then on this connector goes through libvirtd.
    async fn direct_unless_handed_back(&mut self) -> Result<AnyAgent, Error> {
        let DomainConnector::LibvirtsChannel {
            direct,
            handback,
            options,
        } = self
        else {
            unreachable!("only a channel libvirtd keeps is handed back");
        };
        if !handback.taken() {
            match direct.connect().await {
                Err(error) if waited_in_the_queue(&error) && handback.taken() => {}
                connected => return connected.map(AnyAgent::Direct),
            }
        }
        let (domain, uri, socket) = handback.through_libvirtd();
        tracing::info!(
            socket = %socket.display(),
            "libvirtd has taken the agent channel back: going through libvirtd"
        );
        let (socket, domain, options) = (socket.to_owned(), domain.to_owned(), options.clone());
        let connected = LibvirtAgent::connect(&socket, uri, &domain, &options).await;
        *self = DomainConnector::Libvirt {
            socket,
            uri,
            domain,
            options,
        };
        connected.map(AnyAgent::Libvirt)
    }
}

/// A connection that got no answer to its handshake: on libvirtd's own
/// channel, one that sat in QEMU's queue behind libvirtd.
fn waited_in_the_queue(error: &Error) -> bool {
    matches!(
        error,
        Error::Timeout {
            phase: Phase::Handshake,
            ..
        } | Error::BusyWithEarlierRequest { .. }
    )
}

impl Connector for DomainConnector {
    type Agent = AnyAgent;

    async fn connect(&mut self) -> Result<AnyAgent, Error> {
        match self {
            DomainConnector::Direct(direct) => direct.connect().await.map(AnyAgent::Direct),
            DomainConnector::Master(master) => master.connect().await.map(AnyAgent::Direct),
            DomainConnector::LibvirtsChannel { .. } => self.direct_unless_handed_back().await,
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
            (DomainConnector::LibvirtsChannel { direct, .. }, AnyAgent::Direct(client)) => {
                direct.disconnect(client).await
            }
            (_, agent) => agent.close().await,
        }
    }

    fn contended(&self) -> bool {
        match self {
            DomainConnector::Direct(direct) | DomainConnector::LibvirtsChannel { direct, .. } => {
                direct.contended()
            }
            DomainConnector::Libvirt { .. } | DomainConnector::Master(_) => false,
        }
    }

    fn waited_for(&self) -> bool {
        match self {
            DomainConnector::Direct(direct) | DomainConnector::LibvirtsChannel { direct, .. } => {
                direct.waited_for()
            }
            DomainConnector::Libvirt { .. } | DomainConnector::Master(_) => false,
        }
    }

    fn set_patience(&mut self, patience: std::time::Duration) {
        if let DomainConnector::Direct(direct) | DomainConnector::LibvirtsChannel { direct, .. } = self {
            direct.set_patience(patience);
        }
    }

    /// Each agent command through libvirtd is a call of its own, which
    /// keeps nobody out: the connection to libvirtd is kept; so is one to
    /// the master, which lets go of the channel for others itself.
    fn exclusive(&self) -> bool {
        matches!(
            self,
            DomainConnector::Direct(_) | DomainConnector::LibvirtsChannel { .. }
        )
    }
}
