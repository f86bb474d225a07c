//! A channel to an agent held for one exchange at a time: connected when an
//! exchange needs it, let go between exchanges when others want it.
//!
//! An agent socket serves one client at a time. A client that holds it for
//! a whole run makes every other client wait for as long as its program
//! runs; one that connects afresh for every exchange pays the agent's
//! wake-up each time (qemu-ga in a guest looks at its port every 100 ms
//! once it has seen the host side closed). [`wait_for_exit_on`] holds the
//! channel between polls and lets go as soon as another client wants it,
//! so that the next one connects while the agent is still awake: while the
//! program is young (when a poll soon after the last is likely to see it
//! end) only for a client that should not wait ([`Connector::contended`]),
//! later for any ([`Connector::waited_for`]), and at least once every
//! [`HoldPolicy::share_after`], for clients that cannot say that they
//! wait (a socat, libvirtd, another tool).

pub(crate) mod in_flight;
pub(crate) mod lock;
pub(crate) mod settling;
pub(crate) mod sweep;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::{sleep, Instant};

use self::in_flight::{RequestInFlight, RequestNote};
use self::settling::Settling;
use crate::qga::{Both, Command, GuestExec, GuestExecReply};
use crate::{Agent, ChannelLock, ClientOptions, Deadline, Error, Phase, QgaClient, RequestProgress, Turn};

/// While a connection is held between polls, how often to ask whether
/// another client waits.
pub(crate) const LOOK_FOR_WAITERS: Duration = Duration::from_millis(10);

/// How long a client that lets go of the channel for a waiter keeps its
/// connection open after giving up the turn: long enough for the waiter,
/// which looks every millisecond, to take the turn and connect.
const HANDOVER: Duration = Duration::from_millis(3);

/// How long a refused connection is tried again (see
/// [`SocketConnector`]'s `connect`).
const REFUSED_GRACE: Duration = Duration::from_secs(1);

/// How soon an exchange whose connection dropped under a go-between that
/// went away (see [`Connector::outlives_disconnect`]) is made again: the
/// go-between may be back, or the agent's channel free, within that.
pub(crate) const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// The most exchanges in a row whose connection drops under a go-between
/// before the work they serve is given up on as the connection lost: a
/// restart drops one or two, a go-between in a crash loop every one.
pub(crate) const MOST_REPLIES_LOST: u32 = 5;

/// Where connections to an agent come from.
///
/// ```
/// use virtomate_protocol::{Connector, Error, QgaClient};
///
/// /// A connector that hands out one ready connection.
/// struct Once(Option<QgaClient>);
///
/// impl Connector for Once {
///     type Agent = QgaClient;
///     async fn connect(&mut self) -> Result<QgaClient, Error> {
///         self.0.take().ok_or(Error::Disconnected)
///     }
/// }
/// ```
pub trait Connector {
    /// What the connections are.
    type Agent: Agent;

    /// Opens a synchronised connection, after taking the turn on the
    /// channel where other clients share it.
    fn connect(&mut self) -> impl Future<Output = Result<Self::Agent, Error>>;

    /// Ends a connection, and the turn on the channel.
    fn disconnect(&mut self, agent: Self::Agent) -> impl Future<Output = ()> {
        async move { drop(agent) }
    }

    /// Whether another client waits for the channel, so that it should be
    /// let go at the next pause.
    fn contended(&self) -> bool {
        false
    }

    /// Whether another client waits for the channel at all, patiently
    /// or not (see [`ChannelLock::waited_for`]); by default, as
    /// [`contended`](Self::contended).
    fn waited_for(&self) -> bool {
        self.contended()
    }

    /// Whether a connection keeps every other client out of the channel,
    /// as a direct one does; through libvirtd it does not, and is kept
    /// between polls.
    fn exclusive(&self) -> bool {
        true
    }

    /// Whether the agent, and the programs it runs, outlive a connection
    /// that drops: `true` where the connection is to a go-between that
    /// may go away on its own (libvirtd, restarted under a run), so that
    /// the next exchange may connect anew and go on polling the same
    /// programs; `false` by default, where a dropped connection may mean
    /// an agent restarted, which knows none of them.
    fn outlives_disconnect(&self) -> bool {
        false
    }

    /// How long the next connects wait for the channel before they ask
    /// its holder to let go (see [`ChannelLock::acquire_patiently`]):
    /// zero by default; a status poll of a program that has run for a
    /// while can wait, so that a holder whose program is young keeps the
    /// channel. A connector that shares nothing ignores it.
    fn set_patience(&mut self, patience: Duration) {
        let _ = patience;
    }
}

/// Connections straight to an agent's socket, taking turns with the
/// other processes of this host through a [`ChannelLock`] (where there is
/// a safe place for one: see [`ChannelLock::for_socket`]).
#[derive(Debug)]
pub struct SocketConnector {
    path: PathBuf,
    options: ClientOptions,
    lock: Option<ChannelLock>,
    turn: Option<Turn>,
    patience: Duration,
}

impl SocketConnector {
    /// Connections to the socket at `path`. Without a lock (no safe
    /// directory for it, the socket missing), connecting still works; the
    /// kernel then queues a client behind the one holding the channel.
    pub fn new(path: impl Into<PathBuf>, options: ClientOptions) -> SocketConnector {
        let path = path.into();
        let lock = ChannelLock::for_socket(&path)
            .inspect_err(|error| tracing::debug!(%error, "no channel lock: connecting without one"))
            .ok();
        SocketConnector {
            path,
            options,
            lock,
            turn: None,
            patience: Duration::ZERO,
        }
    }

    /// The lock it takes turns by, if there is one.
    pub fn lock(&self) -> Option<&ChannelLock> {
        self.lock.as_ref()
    }
}

impl Connector for SocketConnector {
    type Agent = QgaClient;

    async fn connect(&mut self) -> Result<QgaClient, Error> {
        // Waiting for the turn and connecting share the handshake's time.
        let deadline = Deadline::after(self.options.handshake_timeout);
        // A turn still held here is that of a connect cut short (a time
        // limit, a signal) after the turn was taken: not connected, it is
        // stale, and a new flock would wait for it, our own, till the end.
        self.turn = None;
        if let Some(lock) = &self.lock {
            self.turn = Some(lock.acquire_patiently(deadline, self.patience).await?);
        }
        // `qemu-ga -m unix-listen` stops listening while it serves a
        // client and listens again once it has left; after a client killed
        // mid-exchange, refused connections were seen for about 400 ms.
        // A client taking its turn then is refused for a moment.
        let refused_until = tokio::time::Instant::now() + REFUSED_GRACE;
        let connected = loop {
            match QgaClient::connect_by(&self.path, self.options.clone(), deadline).await {
                Err(Error::Connect { ref source, .. })
                    if source.kind() == std::io::ErrorKind::ConnectionRefused
                        && tokio::time::Instant::now() < refused_until.min(deadline.at()) =>
                {
                    sleep(Duration::from_millis(5)).await;
                }
                other => break other,
            }
        };
        if connected.is_err() {
            self.turn = None;
        }
        let note = self.lock.as_ref().map(RequestNote::beside);
        match (connected, note) {
            (Ok(mut agent), Some(note)) => {
                // Answered: the agent has read whatever came before.
                note.remove();
                agent.watch_big_requests(Box::new(note));
                Ok(agent)
            }
            (
                Err(Error::Timeout {
                    phase: Phase::Handshake,
                    after,
                }),
                Some(note),
            ) => match note.read().filter(RequestInFlight::may_still_be_read) {
                Some(request) => Err(Error::BusyWithEarlierRequest {
                    path: self.path.clone(),
                    after,
                    request,
                }),
                None => Err(Error::Timeout {
                    phase: Phase::Handshake,
                    after,
                }),
            },
            (connected, _) => connected,
        }
    }

    async fn disconnect(&mut self, agent: QgaClient) {
        // A client that waits urgently gets the turn before the socket
        // closes, and connects at once: QEMU hands the port to its
        // waiting connection the moment this one closes, before the agent
        // in the guest has seen the close and gone to sleep for 100 ms.
        let handover = self.contended();
        self.turn = None;
        if handover {
            sleep(HANDOVER).await;
        }
        drop(agent);
    }

    fn contended(&self) -> bool {
        self.lock.as_ref().is_some_and(ChannelLock::contended)
    }

    fn waited_for(&self) -> bool {
        self.lock.as_ref().is_some_and(ChannelLock::waited_for)
    }

    fn set_patience(&mut self, patience: Duration) {
        self.patience = patience;
    }
}

/// A channel to an agent, connected for an exchange when it needs to be.
///
/// ```no_run
/// use virtomate_protocol::{Channel, ClientOptions, SocketConnector};
/// use virtomate_protocol::qga::GuestInfo;
///
/// # async fn demo() -> Result<(), virtomate_protocol::Error> {
/// let mut channel = Channel::new(SocketConnector::new("/run/vm/qga.sock", ClientOptions::default()));
/// println!("{}", channel.execute(&GuestInfo {}).await?.version); // connects
/// channel.release().await; // others may take their turn
/// println!("{}", channel.execute(&GuestInfo {}).await?.version); // connects again
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Channel<C: Connector> {
    connector: C,
    agent: Option<C::Agent>,
    /// When the open connection was made.
    connected_at: Option<Instant>,
    /// The step in flight whose reply a caller giving up must await.
    settling: Settling,
    /// Exchanges in a row whose connection dropped, since the last reply.
    drops_in_a_row: u32,
}

impl<C: Connector> Channel<C> {
    /// A channel that connects through `connector`, not yet connected.
    pub fn new(connector: C) -> Channel<C> {
        Channel {
            connector,
            agent: None,
            connected_at: None,
            settling: Settling::default(),
            drops_in_a_row: 0,
        }
    }

    /// The steps of the work on this channel whose reply a caller giving
    /// the work up must await (see [`Settling`]).
    pub fn settling(&self) -> Settling {
        self.settling.clone()
    }

    /// The connector, e.g. to ask whether the channel is contended.
    pub fn connector(&self) -> &C {
        &self.connector
    }

    /// The connector back, for a channel not connected (see
    /// [`release`](Self::release)): an open connection would be dropped
    /// without the connector's `disconnect`.
    pub fn into_connector(self) -> C {
        self.connector
    }

    /// How long the next connects wait before asking the channel's holder
    /// to let go (see [`Connector::set_patience`]).
    pub fn set_patience(&mut self, patience: Duration) {
        self.connector.set_patience(patience);
    }

    /// Whether a connection is open.
    pub fn is_connected(&self) -> bool {
        self.agent.is_some()
    }

    /// The connected agent, connecting first if need be.
    pub async fn agent(&mut self) -> Result<&mut C::Agent, Error> {
        if self.agent.is_none() {
            let connected = self.connector.connect().await;
            if matches!(connected, Err(Error::Disconnected)) {
                // A go-between that hangs up at once: a drop as any other.
                self.drops_in_a_row = self.drops_in_a_row.saturating_add(1);
            }
            self.agent = Some(connected?);
            self.connected_at = Some(Instant::now());
        }
        Ok(self.agent.as_mut().expect("connected just now"))
    }

    /// Closes the connection, if one is open, so that others may take
    /// their turn.
    pub async fn release(&mut self) {
        self.connected_at = None;
        if let Some(agent) = self.agent.take() {
            self.connector.disconnect(agent).await;
        }
    }

    /// Sends `command` over the channel, connecting first if need be. A
    /// connection the peer closed is let go, so that the next exchange
    /// connects afresh.
    pub async fn execute<T: Command>(&mut self, command: &T) -> Result<T::Output, Error> {
        let result = self.agent().await?.execute(command).await;
        self.after(result).await
    }

    /// Runs two commands in one round trip where the carrier allows it
    /// (see [`Agent::execute_both`]).
    pub async fn execute_both<A: Command, B: Command>(
        &mut self,
        first: &A,
        second: &B,
    ) -> Result<Both<A, B>, Error> {
        let result = self.agent().await?.execute_both(first, second).await;
        self.after(result).await
    }

    /// Starts a program (see [`Agent::guest_exec`]).
    pub async fn guest_exec(&mut self, exec: &GuestExec) -> Result<GuestExecReply, Error> {
        let result = self.agent().await?.guest_exec(exec).await;
        self.after(result).await
    }

    /// How far the last request got (see [`Agent::request_progress`]);
    /// `Idle` while not connected, since nothing was sent then.
    pub fn request_progress(&self) -> RequestProgress {
        self.agent
            .as_ref()
            .map_or(RequestProgress::Idle, |agent| agent.request_progress())
    }

    /// How many exchanges in a row, the last one included, found the
    /// connection dropped (or could not make one for that reason): any
    /// reply, an error from the agent too, ends the row. Work that goes on
    /// through drops (see [`Connector::outlives_disconnect`]) gives up on
    /// a long row, not on drops that each came after some progress.
    pub(crate) fn drops_in_a_row(&self) -> u32 {
        self.drops_in_a_row
    }

    async fn after<T>(&mut self, result: Result<T, Error>) -> Result<T, Error> {
        match &result {
            Ok(_) | Err(Error::Agent { .. }) => self.drops_in_a_row = 0,
            Err(Error::Disconnected) => self.drops_in_a_row = self.drops_in_a_row.saturating_add(1),
            Err(_) => {}
        }
        if matches!(result, Err(Error::Disconnected | Error::Io(_))) {
            // Nothing more will come over this connection: drop it without
            // a word, the turn with it.
            self.release().await;
        }
        result
    }

    /// Lets go of the channel if it is held by a connection that keeps
    /// others out and `hold` no longer applies: another client waits, or
    /// the time to hold it is over.
    pub async fn let_go_unless(&mut self, hold: bool) {
        if self.agent.is_some() && self.connector.exclusive() && (!hold || self.connector.contended()) {
            self.release().await;
        }
    }

    /// Lets go of the channel between polls of a program as `hold` says:
    /// for a `young` one only when a client waits that should not
    /// ([`Connector::contended`]); for an older one when any client
    /// waits ([`Connector::waited_for`]) or once the connection has been
    /// held for [`HoldPolicy::share_after`].
    pub async fn share(&mut self, young: bool, hold: HoldPolicy) {
        let Some(connected_at) = self.connected_at else {
            return;
        };
        if !self.connector.exclusive() {
            return;
        }
        let others = match young {
            true => self.connector.contended(),
            false => self.connector.waited_for() || connected_at.elapsed() >= hold.share_after,
        };
        if others {
            self.release().await;
        }
    }
}

/// How a run holds the channel between polls: while the program is
/// younger than `young`, unless another client waits that should not;
/// later, unless any client waits, and for `share_after` at most at a
/// time. Polls of an older program wait up to `patience` before they ask
/// a holder to let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldPolicy {
    /// A program younger than this keeps the channel between polls.
    pub young: Duration,
    /// How long a poll of a program older than `young` waits for the
    /// channel before it asks the holder to let go (see
    /// [`Connector::set_patience`]).
    pub patience: Duration,
    /// The longest a connection is held for polls of a program older
    /// than `young`: then it is let go, so that a client that cannot say
    /// that it waits gets its turn.
    pub share_after: Duration,
}

impl Default for HoldPolicy {
    /// One second: most programs run through an agent end within it and
    /// are seen to end on the connection that started them; another
    /// client that waits to start or poll a young program makes the
    /// holder let go at its next poll anyway, so the hold costs others at
    /// most one exchange and one pause. A poll of an older program waits
    /// half a second first: a quick run beside a long one is not made to
    /// reconnect for each of its polls, and the long one's poll comes at
    /// most that much late. An older program's connection is let go
    /// every second at least: a client that cannot say that it waits
    /// waits no longer than that.
    fn default() -> Self {
        HoldPolicy {
            young: Duration::from_secs(1),
            patience: Duration::from_millis(500),
            share_after: Duration::from_secs(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A connector that only says whether a client waits urgently is
    /// taken to be waited for then too, and keeps others out.
    #[test]
    fn connector_defaults_follow_contended() {
        struct Busy(bool);
        impl Connector for Busy {
            type Agent = QgaClient;
            async fn connect(&mut self) -> Result<QgaClient, Error> {
                Err(Error::Disconnected)
            }
            fn contended(&self) -> bool {
                self.0
            }
        }
        assert!(Busy(true).waited_for());
        assert!(!Busy(false).waited_for());
        assert!(Busy(false).exclusive());
    }

    /// An agent that answers the handshake and then, on each connection,
    /// `guest-get-time` with a time, `guest-ping` by dropping the
    /// connection, anything else with an error.
    fn dropping_agent(socket: &std::path::Path) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).split(b'\n');
                while let Ok(Some(line)) = lines.next_segment().await {
                    let start = line.iter().position(|&b| b != 0xFF).unwrap_or(line.len());
                    let Ok(request) = serde_json::from_slice::<serde_json::Value>(&line[start..]) else {
                        continue;
                    };
                    let mut answer = match request["execute"].as_str() {
                        Some("guest-sync-delimited") => {
                            let mut sync = vec![0xFF];
                            sync.extend(format!("{{\"return\": {}}}", request["arguments"]["id"]).bytes());
                            sync
                        }
                        Some("guest-get-time") => br#"{"return": 5}"#.to_vec(),
                        Some("guest-ping") => break,
                        _ => br#"{"error": {"class": "GenericError", "desc": "no"}}"#.to_vec(),
                    };
                    answer.push(b'\n');
                    if write.write_all(&answer).await.is_err() {
                        break;
                    }
                }
            }
        });
    }

    /// Drops count in a row, connecting again for each exchange; any
    /// reply, an agent's error too, ends the row.
    #[tokio::test]
    async fn a_reply_ends_a_row_of_dropped_connections() {
        use crate::qga::schema::{GuestGetHostName, GuestGetTime};
        use crate::qga::GuestPing;
        struct Direct(std::path::PathBuf);
        impl Connector for Direct {
            type Agent = QgaClient;
            async fn connect(&mut self) -> Result<QgaClient, Error> {
                QgaClient::connect(&self.0, ClientOptions::default()).await
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qga.sock");
        dropping_agent(&socket);
        let mut channel = Channel::new(Direct(socket));
        for row in 1..=3 {
            assert!(matches!(
                channel.execute(&GuestPing {}).await,
                Err(Error::Disconnected)
            ));
            assert_eq!(channel.drops_in_a_row(), row);
        }
        assert_eq!(channel.execute(&GuestGetTime {}).await.unwrap(), 5);
        assert_eq!(channel.drops_in_a_row(), 0);
        let _ = channel.execute(&GuestPing {}).await;
        let refused = channel.execute(&GuestGetHostName {}).await;
        assert!(matches!(refused, Err(Error::Agent { .. })), "{refused:?}");
        assert_eq!(channel.drops_in_a_row(), 0);
    }

    /// A connect cut short after it took its turn (here: in the handshake
    /// with a silent agent) must not leave that turn for the next connect
    /// to wait for: it would wait for its own process, and call the
    /// channel busy.
    #[tokio::test]
    async fn a_connect_cut_short_leaves_no_turn_behind() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qga.sock");
        // Accepts, never answers: the handshake waits.
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let _silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let options = ClientOptions {
            handshake_timeout: Duration::from_millis(500),
            ..ClientOptions::default()
        };
        let mut connector = SocketConnector::new(&socket, options);
        if connector.lock().is_none() {
            // No safe runtime directory for locks here (not root, no
            // XDG_RUNTIME_DIR): nothing to leave behind.
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs as root, with /run/virtomate"
            );
            return;
        }
        let cut_short = tokio::time::timeout(Duration::from_millis(100), connector.connect()).await;
        assert!(cut_short.is_err(), "the handshake cannot have answered");
        match connector.connect().await {
            Err(Error::Timeout {
                phase: crate::Phase::Handshake,
                ..
            }) => {}
            other => panic!("the turn was taken again, the handshake timed out: {other:?}"),
        }
    }
}
