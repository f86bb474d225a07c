//! Connections to a domain's agent over the route chosen for it: straight
//! to its socket, taking turns with other virtomate processes, or through
//! libvirtd.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use virtomate_protocol::libvirt::LibvirtAgent;
use virtomate_protocol::{AnyAgent, ClientOptions, Connector, Error, Phase, SocketConnector};

use super::errors::AgentErrors;
use super::silence::QemuListener;
use crate::domain::Handback;
use crate::master::MasterConnector;

/// Opens connections to one domain's agent, for a
/// [`Channel`](virtomate_protocol::Channel).
#[derive(Debug)]
pub enum DomainConnector {
    /// Straight over the agent's socket; for a VM given by that socket,
    /// noting the QEMU that listens on it.
    Direct(SocketConnector, Option<QemuListener>),
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
        /// Told the errors of the route through libvirtd once it is taken.
        handed_back: Arc<OnceLock<AgentErrors>>,
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
    /// it), while a connection waits, or after one that waited until its
    /// time was up. From then on this connector goes through libvirtd.
    async fn direct_unless_handed_back(&mut self) -> Result<AnyAgent, Error> {
        let DomainConnector::LibvirtsChannel {
            direct,
            handback,
            options,
            handed_back,
        } = self
        else {
            unreachable!("only a channel libvirtd keeps is handed back");
        };
        if !handback.taken() {
            // Looked at again while the connection waits: for its turn
            // behind another virtomate, or in QEMU's queue behind libvirtd.
            let taken_meanwhile = async {
                loop {
                    tokio::time::sleep(LOOK_AGAIN).await;
                    if handback.taken() {
                        return;
                    }
                }
            };
            tokio::select! {
                connected = direct.connect() => match connected {
                    Err(error) if kept_waiting(&error) && handback.taken() => {}
                    connected => return connected.map(AnyAgent::Direct),
                },
                () = taken_meanwhile => {}
            }
        }
        let (domain, uri, socket) = handback.through_libvirtd();
        tracing::info!(
            socket = %socket.display(),
            "libvirtd has taken the agent channel back: going through libvirtd"
        );
        let (socket, domain, options) = (socket.to_owned(), domain.to_owned(), options.clone());
        let _ = handed_back.set(AgentErrors {
            socket: socket.clone(),
            through_libvirtd: true,
            master: None,
        });
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

/// How often a connection over libvirtd's channel that waits looks
/// whether libvirtd has taken the channel back: one that has will never
/// be served. (A look is a netlink dump while libvirtd is down.)
const LOOK_AGAIN: Duration = Duration::from_millis(300);

/// A connection that got no answer to its handshake, or whose turn never
/// came: on libvirtd's own channel, one that sat in QEMU's queue behind
/// libvirtd, or waited for another virtomate that did.
fn kept_waiting(error: &Error) -> bool {
    matches!(
        error,
        Error::Timeout {
            phase: Phase::Handshake,
            ..
        } | Error::BusyWithEarlierRequest { .. }
            | Error::Busy { .. }
    )
}

impl Connector for DomainConnector {
    type Agent = AnyAgent;

    async fn connect(&mut self) -> Result<AnyAgent, Error> {
        match self {
            DomainConnector::Direct(direct, listener) => {
                let mut client = direct.connect().await?;
                if let Some(listener) = listener {
                    listener.note(client.listener_pid());
                }
                Ok(AnyAgent::Direct(client))
            }
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
            (DomainConnector::Direct(direct, _), AnyAgent::Direct(client)) => direct.disconnect(client).await,
            (DomainConnector::LibvirtsChannel { direct, .. }, AnyAgent::Direct(client)) => {
                direct.disconnect(client).await
            }
            (_, agent) => agent.close().await,
        }
    }

    fn contended(&self) -> bool {
        match self {
            DomainConnector::Direct(direct, _) | DomainConnector::LibvirtsChannel { direct, .. } => {
                direct.contended()
            }
            DomainConnector::Libvirt { .. } | DomainConnector::Master(_) => false,
        }
    }

    fn waited_for(&self) -> bool {
        match self {
            DomainConnector::Direct(direct, _) | DomainConnector::LibvirtsChannel { direct, .. } => {
                direct.waited_for()
            }
            DomainConnector::Libvirt { .. } | DomainConnector::Master(_) => false,
        }
    }

    fn set_patience(&mut self, patience: std::time::Duration) {
        if let DomainConnector::Direct(direct, _) | DomainConnector::LibvirtsChannel { direct, .. } = self {
            direct.set_patience(patience);
        }
    }

    /// Each agent command through libvirtd is a call of its own, which
    /// keeps nobody out: the connection to libvirtd is kept; so is one to
    /// the master, which lets go of the channel for others itself.
    fn exclusive(&self) -> bool {
        matches!(
            self,
            DomainConnector::Direct(..) | DomainConnector::LibvirtsChannel { .. }
        )
    }
}
