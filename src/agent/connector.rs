//! Connections to a domain's agent over the route chosen for it: straight
//! to its socket, taking turns with other virtomate processes, or through
//! libvirtd.

use std::path::PathBuf;
use std::time::Duration;

use virtomate_protocol::libvirt::LibvirtAgent;
use virtomate_protocol::{AnyAgent, ClientOptions, Connector, Error, Phase, SocketConnector};

use super::errors::AgentErrors;
use super::route_errors::RouteTaken;
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
    /// Through libvirtd's RPC socket, which holds the agent's channel;
    /// straight over that channel (as [`LibvirtsChannel`](Self::LibvirtsChannel))
    /// from the first connect that finds libvirtd gone, where `channel`
    /// tells the way, so that a run goes on polling the same program.
    Libvirt {
        socket: PathBuf,
        uri: &'static str,
        domain: String,
        options: ClientOptions,
        channel: Option<Handback>,
        /// Told the errors of the channel once it is taken.
        taken: RouteTaken,
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
        taken: RouteTaken,
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

    /// Connects straight, on a direct route: `None` on another, and where
    /// libvirtd has taken its channel back (see [`Handback`]), seen before
    /// connecting (libvirtd runs and holds it), while a connection waits
    /// (in QEMU's queue behind libvirtd, or for its turn behind another
    /// virtomate that does), or after one that waited until its time was
    /// up; from then on the route is through libvirtd. Each kind of
    /// connect is called from one place only: each is big once inlined.
    async fn connect_direct(&mut self) -> Option<Result<AnyAgent, Error>> {
        let (direct, listener, handback) = match self {
            DomainConnector::Direct(direct, listener) => (direct, listener.as_ref(), None),
            DomainConnector::LibvirtsChannel { direct, handback, .. } => (direct, None, Some(&*handback)),
            _ => return None,
        };
        let taken = |handback: Option<&Handback>| handback.is_some_and(Handback::taken);
        if !taken(handback) {
            // Looked at again while the connection waits: for its turn
            // behind another virtomate, or in QEMU's queue behind libvirtd.
            let taken_meanwhile = async {
                if handback.is_none() {
                    return std::future::pending().await;
                }
                loop {
                    tokio::time::sleep(LOOK_AGAIN).await;
                    if taken(handback) {
                        return;
                    }
                }
            };
            tokio::select! {
                connected = direct.connect() => match connected {
                    Err(error) if kept_waiting(&error) && taken(handback) => {}
                    connected => {
                        return Some(connected.map(|mut client| {
                            if let Some(listener) = listener {
                                listener.note(client.listener_pid());
                            }
                            AnyAgent::Direct(client)
                        }))
                    }
                },
                () = taken_meanwhile => {}
            }
        }
        self.hand_back();
        None
    }

    /// Goes through libvirtd from now on, and says so to whoever words the
    /// errors.
    fn hand_back(&mut self) {
        let DomainConnector::LibvirtsChannel {
            handback,
            options,
            taken,
            ..
        } = self
        else {
            return;
        };
        let (domain, uri, socket) = handback.through_libvirtd();
        tracing::info!(
            socket = %socket.display(),
            "libvirtd has taken the agent channel back: going through libvirtd"
        );
        taken.set(AgentErrors {
            socket: socket.to_owned(),
            through_libvirtd: true,
            master: None,
        });
        *self = DomainConnector::Libvirt {
            socket: socket.to_owned(),
            uri,
            domain: domain.to_owned(),
            options: options.clone(),
            channel: Some(handback.clone()),
            taken: taken.clone(),
        };
    }

    /// Goes straight over libvirtd's channel from now on, where libvirtd
    /// could not be reached and does not hold the channel (it has gone
    /// away, or is restarting and not yet back on it); says so to whoever
    /// words the errors. Whether it does.
    fn go_around_libvirtd(&mut self) -> bool {
        let DomainConnector::Libvirt {
            channel: Some(handback),
            options,
            taken,
            ..
        } = self
        else {
            return false;
        };
        if handback.taken() {
            return false;
        }
        let channel = handback.channel().to_owned();
        tracing::info!(
            socket = %channel.display(),
            "libvirtd is gone: going straight to the agent channel it kept"
        );
        taken.set(AgentErrors {
            socket: channel.clone(),
            through_libvirtd: false,
            master: None,
        });
        *self = DomainConnector::LibvirtsChannel {
            direct: SocketConnector::new(channel, options.clone()),
            handback: handback.clone(),
            options: options.clone(),
            taken: taken.clone(),
        };
        true
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

    /// Around libvirtd at most once a connect, where libvirtd could not
    /// be reached: a channel taken back meanwhile leaves libvirtd's error
    /// as it was.
    async fn connect(&mut self) -> Result<AnyAgent, Error> {
        let mut went_around = false;
        loop {
            if let Some(connected) = self.connect_direct().await {
                return connected;
            }
            let connected = match self {
                DomainConnector::Master(master) => return master.connect().await.map(AnyAgent::Direct),
                DomainConnector::Libvirt {
                    socket,
                    uri,
                    domain,
                    options,
                    ..
                } => LibvirtAgent::connect(socket, uri, domain, options)
                    .await
                    .map(AnyAgent::Libvirt),
                DomainConnector::Direct(..) | DomainConnector::LibvirtsChannel { .. } => {
                    unreachable!("connected straight, or handed back to libvirtd")
                }
            };
            // Only where libvirtd itself is not there: its word on the
            // domain (not found, not running) stands.
            let libvirtd_gone = matches!(
                connected,
                Err(Error::Connect { .. } | Error::Disconnected | Error::Io(_))
            );
            if !libvirtd_gone || went_around || !self.go_around_libvirtd() {
                return connected;
            }
            went_around = true;
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

    /// libvirtd may go away (restarted, stopped) under a run while the
    /// agent goes on.
    fn outlives_disconnect(&self) -> bool {
        matches!(self, DomainConnector::Libvirt { .. })
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
