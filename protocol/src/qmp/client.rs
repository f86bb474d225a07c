//! An async client for one QMP connection.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::path::Path;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixStream;

use super::events::{parse_event, EventStore};
use super::greeting::parse_greeting;
use super::{Command, Event, Greeting, QmpCapabilities};
use crate::framing::LineCodec;
use crate::wire::envelope::{parse_reply, ReplyFor, ReplyId, Request, MAX_REQUEST_LEN};
use crate::wire::transport::connect;
use crate::{ClientOptions, Connection, Deadline, Error, Phase};

/// A QMP connection past capabilities negotiation, ready for commands.
///
/// Replies are matched to requests by id, so a reply that comes after its
/// command timed out is skipped later rather than taken for the next one.
/// Events are read only while waiting for a reply; they are kept (within
/// [`MAX_STORED_EVENTS`](super::MAX_STORED_EVENTS) and
/// [`MAX_STORED_EVENT_BYTES`](super::MAX_STORED_EVENT_BYTES), oldest
/// dropped first) until [`take_events`](QmpClient::take_events).
///
/// QEMU serves one QMP client per socket at a time: while another is
/// connected, connecting succeeds but the greeting only comes once the
/// other leaves, so [`connect`](QmpClient::connect) times out.
///
/// ```no_run
/// use virtomate_protocol::{ClientOptions, QmpClient};
/// use virtomate_protocol::qmp::QueryChardev;
///
/// # async fn demo() -> Result<(), virtomate_protocol::Error> {
/// let mut qemu = QmpClient::connect("/run/vm/qmp.sock", ClientOptions::default()).await?;
/// for device in qemu.execute(&QueryChardev {}).await? {
///     println!("{}: {} (open: {})", device.label, device.filename, device.frontend_open);
/// }
/// qemu.execute_json("stop", None).await?;
/// qemu.execute_json("cont", None).await?;
/// for event in qemu.take_events() {
///     println!("{} at {}", event.event, event.timestamp);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct QmpClient<S = UnixStream> {
    conn: Connection<S, LineCodec>,
    options: ClientOptions,
    greeting: Greeting,
    /// The last id sent. Every connection starts a new session (QEMU greets
    /// anew), so no earlier client's replies can arrive and a counter will do.
    last_id: u64,
    events: EventStore,
}

impl QmpClient<UnixStream> {
    /// Connects to QEMU's QMP socket, reads the greeting and negotiates
    /// capabilities, all within [`ClientOptions::handshake_timeout`].
    pub async fn connect(path: impl AsRef<Path>, options: ClientOptions) -> Result<Self, Error> {
        let deadline = Deadline::after(options.handshake_timeout);
        let stream = connect(path.as_ref(), deadline).await?;
        QmpClient::handshake_by(stream, options, deadline).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> QmpClient<S> {
    /// Reads the greeting from a connected stream and negotiates
    /// capabilities, within [`ClientOptions::handshake_timeout`].
    pub async fn handshake(stream: S, options: ClientOptions) -> Result<Self, Error> {
        let deadline = Deadline::after(options.handshake_timeout);
        QmpClient::handshake_by(stream, options, deadline).await
    }

    async fn handshake_by(stream: S, options: ClientOptions, deadline: Deadline) -> Result<Self, Error> {
        let codec = LineCodec::new(options.max_reply_len);
        let mut conn = Connection::new(stream, codec, options.trace.clone());
        let greeting = deadline
            .run(Phase::Handshake, async {
                parse_greeting(&conn.read_reply().await?)
            })
            .await?;
        let mut client = QmpClient {
            conn,
            options,
            greeting,
            last_id: 0,
            events: EventStore::default(),
        };
        let _: <QmpCapabilities as Command>::Output = client
            .exchange(QmpCapabilities::NAME, Some(&QmpCapabilities {}), deadline)
            .await?;
        Ok(client)
    }

    /// What QEMU announced on connecting.
    pub fn greeting(&self) -> &Greeting {
        &self.greeting
    }

    /// Sends `command` and returns its reply's `return`, within
    /// [`ClientOptions::reply_timeout`]. An error reply becomes
    /// [`Error::Agent`].
    pub async fn execute<C: Command>(&mut self, command: &C) -> Result<C::Output, Error> {
        let deadline = Deadline::after(self.options.reply_timeout);
        self.exchange(C::NAME, Some(command), deadline).await
    }

    /// Sends the command `name`, with `arguments` (an object) if given, and
    /// returns its reply's `return` as it came, within
    /// [`ClientOptions::reply_timeout`]: for the commands this crate does
    /// not type. An error reply becomes [`Error::Agent`].
    pub async fn execute_json(&mut self, name: &str, arguments: Option<&Value>) -> Result<Value, Error> {
        let deadline = Deadline::after(self.options.reply_timeout);
        self.exchange(name, arguments, deadline).await
    }

    /// The events received so far, oldest first; they are forgotten here.
    pub fn take_events(&mut self) -> Vec<Event> {
        self.events.take()
    }

    /// How many events were dropped, over the connection's life, because
    /// more arrived than are kept between two [`take_events`](QmpClient::take_events).
    pub fn events_dropped(&self) -> u64 {
        self.events.dropped()
    }

    /// Sends the command `name` with `arguments` and reads until its reply,
    /// storing the events in between; both by `deadline`.
    async fn exchange<A: Serialize + ?Sized, T: DeserializeOwned>(
        &mut self,
        name: &str,
        arguments: Option<&A>,
        deadline: Deadline,
    ) -> Result<T, Error> {
        let id = self.fresh_id();
        let request = Request::new(name, arguments).with_id(id).to_line();
        // QMP parses requests with the same JSON streamer as the agent.
        if request.len() > MAX_REQUEST_LEN {
            return Err(Error::RequestTooLarge {
                len: request.len(),
                limit: MAX_REQUEST_LEN,
            });
        }
        deadline
            .run(Phase::Sending(name.to_owned()), self.conn.send(&request))
            .await?;
        let reading = async {
            loop {
                let line = self.conn.read_reply().await?;
                match parse_reply(name, &line, ReplyId::Is(id))? {
                    ReplyFor::Us(output) => return Ok(output),
                    ReplyFor::Event => self.events.push(parse_event(name, &line)?, line.len()),
                    // The late reply to a command that timed out earlier.
                    ReplyFor::Other => {}
                }
            }
        };
        deadline.run(Phase::Reply(name.to_owned()), reading).await
    }

    fn fresh_id(&mut self) -> u64 {
        self.last_id += 1;
        self.last_id
    }
}
