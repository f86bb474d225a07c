//! The master's hub: one task that owns the connection to the agent and
//! routes every reply, by the master's id in it, to the client that
//! asked. It lets go of the agent when others want it, and decides when
//! the master ends.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use virtomate_protocol::{ChannelLock, Deadline, Error};

use super::client_conn::ClientEvent;
use super::link::{Link, LinkEvent};
use super::paths::{MasterPaths, SocketKey};
use super::wire::{self, AgentLine, LinkFailure, MasterInfo};
use crate::domain::socket_holders;

/// What the master is started with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub paths: MasterPaths,
    /// How long it stays once the last client has left.
    pub persist: Duration,
    /// For a connection to the agent that no client's attach asked for.
    pub handshake_timeout: Duration,
    pub max_reply_len: usize,
}

/// How often the hub looks whether others wait for the channel, whether
/// requests timed out, whether it should end.
const TICK: Duration = Duration::from_millis(100);

/// A busy master that others wait for stops sending after this long
/// connected, lets its requests finish and the channel go.
const SHARE_AFTER: Duration = Duration::from_secs(1);

/// Requests still unanswered this long after the channel should go are
/// given up: their clients are dropped.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// At most this many unanswered requests per client.
const PENDING_PER_CLIENT: usize = 64;

/// How long an unanswered request is remembered: longer than any reply
/// timeout a client is likely to set.
const PENDING_LIMIT: Duration = Duration::from_secs(600);

/// Commands that do not reply on success: remembered briefly, for the
/// error reply they may get.
const NO_REPLY: [&str; 4] = [
    "guest-shutdown",
    "guest-suspend-disk",
    "guest-suspend-ram",
    "guest-suspend-hybrid",
];

struct Pending {
    client: u64,
    client_id: Option<String>,
    sent: Instant,
    limit: Duration,
}

struct Held {
    client: u64,
    id: u64,
    client_id: Option<String>,
    name: String,
    line: Vec<u8>,
    written: oneshot::Sender<()>,
}

/// A connection to the agent being made: its own future, polled beside
/// the clients' events, so that a slow or silent agent keeps no client
/// waiting for the master's other answers (`control check`, `exit`).
type Attempt = Pin<Box<dyn Future<Output = Result<Link, Error>> + Send>>;

pub struct Hub {
    settings: Settings,
    lock: Option<Arc<ChannelLock>>,
    link: Option<Link>,
    /// A connection is wanted, by this deadline, and none is being made.
    link_wanted: Option<Deadline>,
    /// Attaches waiting for the connection being made.
    waiters: Vec<oneshot::Sender<Result<(), LinkFailure>>>,
    generation: u64,
    link_tx: mpsc::UnboundedSender<LinkEvent>,
    link_rx: mpsc::UnboundedReceiver<LinkEvent>,
    clients: HashMap<u64, mpsc::UnboundedSender<Vec<u8>>>,
    pending: HashMap<u64, Pending>,
    /// Requests kept back while the channel is let go for others.
    held: VecDeque<Held>,
    draining_since: Option<Instant>,
    linked_at: Instant,
    last_activity: Instant,
    /// Looks in a row, while not connected, that found nothing listening
    /// on the agent's socket.
    unheard: u32,
    requests: u64,
    /// Whole runs of clients begun.
    runs: u64,
    started: SystemTime,
    /// The big request on its way to the agent, noted beside the channel's
    /// lock for the next client should the master die or let go before
    /// its reply (see the protocol crate's `RequestInFlight`).
    noted: Option<u64>,
}

/// Why the master ends.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    Idle,
    Asked,
    SocketGone,
    /// Nothing listens on the agent's socket any more: its VM has died.
    AgentGone,
}

/// Looks (a second apart) finding nobody listening on the agent's socket
/// before the master ends: `qemu-ga -m unix-listen` stops listening for a
/// moment after each client.
const UNHEARD_LIMIT: u32 = 3;

impl Hub {
    pub fn new(settings: Settings) -> Hub {
        let lock = ChannelLock::for_socket(&settings.paths.agent)
            .inspect_err(|error| tracing::info!(%error, "no channel lock: holding the channel without one"))
            .ok()
            .map(Arc::new);
        let (link_tx, link_rx) = mpsc::unbounded_channel();
        Hub {
            settings,
            lock,
            link: None,
            link_wanted: None,
            waiters: Vec::new(),
            generation: 0,
            link_tx,
            link_rx,
            clients: HashMap::new(),
            pending: HashMap::new(),
            held: VecDeque::new(),
            draining_since: None,
            linked_at: Instant::now(),
            last_activity: Instant::now(),
            unheard: 0,
            requests: 0,
            runs: 0,
            started: SystemTime::now(),
            noted: None,
        }
    }

    pub async fn run(mut self, mut events: mpsc::UnboundedReceiver<ClientEvent>) -> End {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u64;
        let mut attempt: Option<Attempt> = None;
        let end = loop {
            if attempt.is_none() {
                attempt = self.attempt_wanted();
            }
            tokio::select! {
                connected = async { attempt.as_mut().expect("guarded").await }, if attempt.is_some() => {
                    attempt = None;
                    self.on_connected(connected).await;
                }
                event = events.recv() => match event {
                    Some(event) => {
                        if let Some(end) = self.on_client(event).await {
                            break end;
                        }
                    }
                    None => break End::Asked,
                },
                Some(event) = self.link_rx.recv() => self.on_link(event).await,
                _ = tick.tick() => {
                    ticks += 1;
                    if let Some(end) = self.on_tick(ticks).await {
                        break end;
                    }
                }
            }
        };
        if let Some(link) = self.link.take() {
            link.close(false).await;
        }
        end
    }

    async fn on_client(&mut self, event: ClientEvent) -> Option<End> {
        self.last_activity = Instant::now();
        match event {
            ClientEvent::Opened { client, replies } => {
                self.clients.insert(client, replies);
            }
            ClientEvent::Closed { client } => self.forget(client),
            ClientEvent::Attach { timeout, answer } => {
                if !self.agent_socket_is_ours() {
                    // A socket made since at its old device and inode (ext4
                    // hands a freed inode out again at once) names this
                    // master too. Ending unanswered, the client sees a
                    // master that ended as it came, and starts its own.
                    tracing::info!("a client came for a new agent socket at the old one's inode: ending");
                    drop(answer);
                    return Some(End::SocketGone);
                }
                if self.link.is_some() {
                    let _ = answer.send(Ok(()));
                } else {
                    self.waiters.push(answer);
                    self.want_link(timeout);
                }
            }
            ClientEvent::Request {
                client,
                id,
                client_id,
                name,
                line,
                written,
            } => {
                let held = Held {
                    client,
                    id,
                    client_id,
                    name,
                    line,
                    written,
                };
                if self.draining_since.is_some() {
                    self.held.push_back(held);
                } else {
                    self.forward(held).await;
                }
            }
            ClientEvent::Info { answer } => {
                let _ = answer.send(self.info());
            }
            ClientEvent::Run => self.runs += 1,
            ClientEvent::Exit => return Some(End::Asked),
        }
        None
    }

    fn forget(&mut self, client: u64) {
        self.clients.remove(&client);
        self.pending.retain(|_, p| p.client != client);
        self.held.retain(|h| h.client != client);
    }

    /// Whether the agent's socket is still the one this master was
    /// started for (the same device and inode).
    fn agent_socket_is_ours(&self) -> bool {
        SocketKey::of(&self.settings.paths.agent).ok() == Some(self.settings.paths.key)
    }

    /// Asks for a connection to the agent within `timeout`, unless one is
    /// wanted already or being made (which then serves this wish too).
    fn want_link(&mut self, timeout: Duration) {
        if self.link_wanted.is_none() {
            self.link_wanted = Some(Deadline::after(timeout));
        }
    }

    /// The connection to make now, if one is wanted and there is none.
    fn attempt_wanted(&mut self) -> Option<Attempt> {
        let deadline = self.link_wanted?;
        if self.link.is_some() {
            self.link_wanted = None;
            return None;
        }
        self.generation += 1;
        let agent = self.settings.paths.agent.clone();
        let lock = self.lock.clone();
        let (generation, max_reply_len) = (self.generation, self.settings.max_reply_len);
        let events = self.link_tx.clone();
        Some(Box::pin(async move {
            Link::connect(
                &agent,
                lock.as_deref(),
                deadline,
                generation,
                max_reply_len,
                events,
            )
            .await
        }))
    }

    async fn on_connected(&mut self, connected: Result<Link, Error>) {
        self.link_wanted = None;
        let waiters = std::mem::take(&mut self.waiters);
        match connected {
            Ok(link) => {
                tracing::debug!(generation = self.generation, "connected to the agent");
                self.link = Some(link);
                self.linked_at = Instant::now();
                for waiter in waiters {
                    let _ = waiter.send(Ok(()));
                }
                self.forward_held().await;
            }
            Err(error) => {
                tracing::info!(%error, "cannot reach the agent");
                let failure = LinkFailure::from_error(&error);
                for waiter in waiters {
                    let _ = waiter.send(Err(failure.clone()));
                }
                // Their clients believed the master connected: they see
                // their connection end, and their next connect is told why.
                let dropped: Vec<u64> = self.held.iter().map(|h| h.client).collect();
                for client in dropped {
                    self.forget(client);
                }
            }
        }
    }

    /// Passes on the requests kept back, once connected and not letting
    /// go; asks for a connection when there is none.
    async fn forward_held(&mut self) {
        if self.draining_since.is_some() || self.held.is_empty() {
            return;
        }
        if self.link.is_none() {
            self.want_link(self.settings.handshake_timeout);
            return;
        }
        while let Some(request) = self.held.pop_front() {
            self.forward(request).await;
            if self.link.is_none() {
                break;
            }
        }
    }

    async fn forward(&mut self, request: Held) {
        if !self.clients.contains_key(&request.client) {
            return;
        }
        let mine = self
            .pending
            .values()
            .filter(|p| p.client == request.client)
            .count();
        if mine >= PENDING_PER_CLIENT {
            let desc = format!("more than {PENDING_PER_CLIENT} requests unanswered");
            self.reply(
                request.client,
                wire::own_error("GenericError", &desc, request.client_id.as_deref()),
            );
            return;
        }
        if self.link.is_none() {
            // Passed on once connected (or its client dropped, should that fail).
            self.held.push_back(request);
            self.want_link(self.settings.handshake_timeout);
            return;
        }
        let limit = match NO_REPLY.contains(&request.name.as_str()) {
            true => Duration::from_secs(10),
            false => PENDING_LIMIT,
        };
        self.pending.insert(
            request.id,
            Pending {
                client: request.client,
                client_id: request.client_id,
                sent: Instant::now(),
                limit,
            },
        );
        self.requests += 1;
        if let Some(lock) = &self.lock {
            if lock.note_request_sent(request.line.len()) {
                self.noted = Some(request.id);
            }
        }
        let link = self.link.as_ref().expect("connected just now");
        link.send(request.line, request.written);
    }

    fn reply(&mut self, client: u64, line: Vec<u8>) {
        if let Some(replies) = self.clients.get(&client) {
            let _ = replies.send(line);
        }
    }

    async fn on_link(&mut self, event: LinkEvent) {
        let current = self.link.as_ref().map(|link| link.generation);
        match event {
            LinkEvent::Line { generation, line } if Some(generation) == current => {
                let len = line.len();
                let Some(reply) = AgentLine::read(line) else {
                    tracing::debug!(len, "a line from the agent that is no reply: dropped");
                    return;
                };
                if reply.id().is_some() && reply.id() == self.noted {
                    self.answered_noted();
                }
                match reply.id().and_then(|id| self.pending.remove(&id)) {
                    Some(pending) => {
                        let line = reply.for_client(pending.client_id.as_deref());
                        self.reply(pending.client, line);
                    }
                    None => tracing::debug!(id = ?reply.id(), "a reply nobody waits for: dropped"),
                }
                if self.draining_since.is_some() && self.pending.is_empty() {
                    self.let_go_and_resume().await;
                }
            }
            LinkEvent::TooLong { generation } if Some(generation) == current => {
                // The agent answers in order: the oldest request's.
                let oldest = self.pending.iter().min_by_key(|(_, p)| p.sent).map(|(id, _)| *id);
                if oldest.is_some() && oldest == self.noted {
                    self.answered_noted();
                }
                if let Some(pending) = oldest.and_then(|id| self.pending.remove(&id)) {
                    let desc = format!(
                        "the reply exceeded {} bytes and was dropped",
                        self.settings.max_reply_len
                    );
                    let line = wire::own_error("GenericError", &desc, pending.client_id.as_deref());
                    self.reply(pending.client, line);
                }
            }
            LinkEvent::Closed { generation } if Some(generation) == current => {
                tracing::info!("the agent's connection ended: its clients are let go");
                if let Some(link) = self.link.take() {
                    link.close(false).await;
                }
                // Each sees the end of its connection, as it would have.
                self.clients.clear();
                self.pending.clear();
                self.held.clear();
                self.noted = None;
                self.draining_since = None;
            }
            _ => {}
        }
    }

    async fn on_tick(&mut self, ticks: u64) -> Option<End> {
        let now = Instant::now();
        self.pending.retain(|_, p| now.duration_since(p.sent) < p.limit);
        if self.link.is_some() && self.others_wait(ticks) {
            if self.pending.is_empty() {
                tracing::debug!("others wait for the channel: letting go");
                self.let_go_and_resume().await;
            } else if self.draining_since.is_none() && self.linked_at.elapsed() >= SHARE_AFTER {
                self.draining_since = Some(now);
            }
        }
        if self
            .draining_since
            .is_some_and(|since| since.elapsed() >= DRAIN_LIMIT)
        {
            // Requests that do not end keep others out no longer.
            let stuck: Vec<u64> = self.pending.values().map(|p| p.client).collect();
            for client in stuck {
                self.forget(client);
            }
            self.let_go_and_resume().await;
        }
        if ticks % 10 == 0 {
            if !self.agent_socket_is_ours() {
                tracing::info!("the agent socket is gone or replaced: ending");
                return Some(End::SocketGone);
            }
            // While connected, the agent is there; `qemu-ga -m unix-listen`
            // does not listen while it serves.
            let listening = socket_holders::is_listening(&self.settings.paths.agent).unwrap_or(true);
            self.unheard = match self.link.is_some() || listening {
                true => 0,
                false => self.unheard + 1,
            };
            if self.unheard >= UNHEARD_LIMIT {
                tracing::info!("nothing listens on the agent socket (its VM has ended): ending");
                return Some(End::AgentGone);
            }
        }
        let idle = self.clients.is_empty() && self.pending.is_empty();
        if idle && self.last_activity.elapsed() >= self.settings.persist {
            tracing::info!("no request for {:?}: ending", self.settings.persist);
            return Some(End::Idle);
        }
        None
    }

    /// Whether another virtomate process waits for its turn, or (looked
    /// at every other tick) a foreign client waits in the listener's queue.
    fn others_wait(&self, ticks: u64) -> bool {
        if self
            .lock
            .as_ref()
            .is_some_and(|lock| lock.contended() || lock.waited_for())
        {
            return true;
        }
        ticks % 2 == 0 && socket_holders::queued_connections(&self.settings.paths.agent).is_ok_and(|n| n > 0)
    }

    async fn let_go_and_resume(&mut self) {
        if let Some(link) = self.link.take() {
            link.close(true).await;
        }
        // A note of a request still unanswered stays, for the next client.
        self.noted = None;
        self.draining_since = None;
        self.forward_held().await;
    }

    /// The noted big request was answered: the agent has read it.
    fn answered_noted(&mut self) {
        self.noted = None;
        if let Some(lock) = &self.lock {
            lock.clear_request_note();
        }
    }

    fn info(&self) -> MasterInfo {
        let since = self
            .started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        MasterInfo {
            pid: std::process::id(),
            since,
            requests: self.requests,
            runs: self.runs,
            clients: self.clients.len(),
            agent_socket: self.settings.paths.agent.clone(),
            socket: self.settings.paths.socket.clone(),
            log: self.settings.paths.log.clone(),
            connected: self.link.is_some(),
            persist_seconds: self.settings.persist.as_secs_f64(),
        }
    }
}
