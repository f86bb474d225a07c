//! An async client for one agent connection.

use std::path::Path;
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixStream;

use super::{guest_exec_request, Command, GuestExec, GuestExecReply, GuestSyncDelimited, OutgoingRequest};
use crate::framing::{LineCodec, SENTINEL};
use crate::wire::envelope::{decode, parse_reply, ReplyFor, ReplyId, Request, MAX_REQUEST_LEN};
use crate::wire::scan;
use crate::wire::transport::connect;
use crate::{ClientOptions, Connection, Deadline, Error, Phase, RequestProgress};

/// A connection to a QEMU Guest Agent, synchronised and ready for commands.
///
/// ```no_run
/// use virtomate_protocol::{ClientOptions, QgaClient};
/// use virtomate_protocol::qga::GuestPing;
///
/// # async fn demo() -> Result<(), virtomate_protocol::Error> {
/// let mut agent = QgaClient::connect("/run/vm/qga.sock", ClientOptions::default()).await?;
/// agent.execute(&GuestPing {}).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct QgaClient<S = UnixStream> {
    conn: Connection<S, LineCodec>,
    options: ClientOptions,
    next_id: u64,
    /// False from the moment a request is sent until its reply was read:
    /// an interrupted exchange leaves bytes in flight that must be skipped.
    in_sync: bool,
    /// How far the last request got, for a caller whose exchange was cut
    /// short.
    progress: RequestProgress,
    /// Told of each big request on its way, if anyone is.
    watch: Option<Box<dyn BigRequestWatch>>,
    /// A big request was sent whose reply (or a later sync's) has not
    /// come yet.
    big_in_flight: bool,
}

impl QgaClient<UnixStream> {
    /// Connects to the agent's UNIX socket and synchronises, both within
    /// [`ClientOptions::handshake_timeout`].
    ///
    /// ```no_run
    /// use virtomate_protocol::{ClientOptions, Error, Phase, QgaClient};
    ///
    /// # async fn demo() -> Result<(), Error> {
    /// match QgaClient::connect("/run/vm/qga.sock", ClientOptions::default()).await {
    ///     Ok(_agent) => println!("the agent answers"),
    ///     // Connected, but no answer: another client (libvirtd?) holds the
    ///     // channel, or no agent runs in the guest.
    ///     Err(Error::Timeout { phase: Phase::Handshake, .. }) => println!("the agent is busy or absent"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn connect(path: impl AsRef<Path>, options: ClientOptions) -> Result<Self, Error> {
        let deadline = Deadline::after(options.handshake_timeout);
        QgaClient::connect_by(path.as_ref(), options, deadline).await
    }

    /// The process listening on the socket this client connected to, as
    /// the kernel recorded it at the connect (`SO_PEERCRED`: the process
    /// that called `listen()`): a VM's QEMU, or an agent on the host.
    /// `None` where the kernel does not tell.
    pub fn listener_pid(&mut self) -> Option<u32> {
        let credentials = self.conn.get_mut().peer_cred().ok()?;
        credentials.pid().and_then(|pid| u32::try_from(pid).ok())
    }

    /// Connects and synchronises by `deadline`, which an earlier step
    /// (waiting for the turn on the channel) may have started.
    pub(crate) async fn connect_by(
        path: &Path,
        options: ClientOptions,
        deadline: Deadline,
    ) -> Result<Self, Error> {
        let stream = connect(path, deadline).await?;
        let mut client = QgaClient::new(stream, options);
        client.sync_by(deadline).await?;
        Ok(client)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> QgaClient<S> {
    /// Wraps a connected stream. Nothing is sent until the first command,
    /// which synchronises first.
    ///
    /// ```
    /// use tokio::io::AsyncReadExt;
    /// use virtomate_protocol::{ClientOptions, QgaClient};
    ///
    /// # tokio_test::block_on(async {
    /// // Any byte stream will do; here one end of an in-memory pipe.
    /// let (stream, mut agent_side) = tokio::io::duplex(1024);
    /// drop(QgaClient::new(stream, ClientOptions::default()));
    /// let mut sent = Vec::new();
    /// agent_side.read_to_end(&mut sent).await.unwrap();
    /// assert!(sent.is_empty());
    /// # });
    /// ```
    pub fn new(stream: S, options: ClientOptions) -> Self {
        let conn = Connection::new(
            stream,
            LineCodec::new(options.max_reply_len),
            options.trace.clone(),
        );
        QgaClient {
            conn,
            options,
            next_id: random_id(),
            in_sync: false,
            progress: RequestProgress::Idle,
            watch: None,
            big_in_flight: false,
        }
    }

    /// Tells `watch` of each big request until its reply came, for a
    /// later client should this one die before.
    pub(crate) fn watch_big_requests(&mut self, watch: Box<dyn BigRequestWatch>) {
        self.watch = Some(watch);
    }

    /// Wraps a connected stream whose peer needs no synchronising first:
    /// one that answered a handshake of the caller's own (a proxy in front
    /// of the agent, such as virtomate's control master, which has just
    /// said that it is ready). The first command goes out at once; one cut
    /// short still makes the next synchronise.
    ///
    /// ```
    /// use tokio::io::{AsyncBufReadExt, BufReader};
    /// use virtomate_protocol::qga::GuestPing;
    /// use virtomate_protocol::{ClientOptions, QgaClient};
    ///
    /// # tokio_test::block_on(async {
    /// let (stream, peer) = tokio::io::duplex(1024);
    /// let mut agent = QgaClient::synchronised(stream, ClientOptions::default());
    /// let ping = tokio::spawn(async move { agent.execute(&GuestPing {}).await.map(|_| ()) });
    /// let mut first = String::new();
    /// BufReader::new(peer).read_line(&mut first).await.unwrap();
    /// assert!(first.starts_with(r#"{"execute":"guest-ping""#), "no sync first: {first}");
    /// # ping.abort();
    /// # });
    /// ```
    pub fn synchronised(stream: S, options: ClientOptions) -> Self {
        let mut client = QgaClient::new(stream, options);
        client.in_sync = true;
        client
    }

    /// Synchronises with `guest-sync-delimited` within the handshake timeout.
    ///
    /// ```
    /// use std::time::Duration;
    /// use virtomate_protocol::{ClientOptions, Error, Phase, QgaClient};
    ///
    /// # tokio_test::block_on(async {
    /// // A peer that never answers, like a port the guest has not opened.
    /// let (stream, _silent_peer) = tokio::io::duplex(1024);
    /// let options = ClientOptions {
    ///     handshake_timeout: Duration::from_millis(50),
    ///     ..ClientOptions::default()
    /// };
    /// let mut agent = QgaClient::new(stream, options);
    /// assert!(matches!(agent.sync().await, Err(Error::Timeout { phase: Phase::Handshake, .. })));
    /// # });
    /// ```
    pub async fn sync(&mut self) -> Result<(), Error> {
        self.sync_by(Deadline::after(self.options.handshake_timeout))
            .await
    }

    async fn sync_by(&mut self, deadline: Deadline) -> Result<(), Error> {
        deadline.run(Phase::Handshake, self.sync_exchange()).await
    }

    async fn sync_exchange(&mut self) -> Result<(), Error> {
        self.in_sync = false;
        let id = self.fresh_id();
        // A leading 0xFF makes the agent drop any half request a previous
        // client left behind; it answers with a parse error that we skip
        // along with everything else before the sentinel.
        let mut request = vec![SENTINEL];
        request.extend(Request::of(&GuestSyncDelimited { id }).with_id(id).to_line());
        self.conn.send(&request).await?;
        self.conn.skip_past_sentinel().await?;
        loop {
            let line = match self.conn.read_reply().await {
                Err(Error::ReplyTooLong { .. }) => continue,
                other => other?,
            };
            let after_sentinel = match scan::rfind(SENTINEL, &line) {
                Some(pos) => &line[pos + 1..],
                None => &line[..],
            };
            let reply = parse_reply::<u64>(GuestSyncDelimited::NAME, after_sentinel, ReplyId::Is(id));
            if let Ok(ReplyFor::Us(echoed)) = reply {
                if echoed == id {
                    // The agent has read all that came before, a big
                    // request cut short included.
                    self.big_request_done();
                    self.in_sync = true;
                    return Ok(());
                }
            }
        }
    }

    /// Sends `command` and returns its reply, within the reply timeout.
    /// Synchronises first when an earlier exchange was cut short.
    ///
    /// An error reply becomes [`Error::Agent`].
    ///
    /// ```
    /// use virtomate_protocol::qga::GuestExec;
    /// use virtomate_protocol::{ClientOptions, Error, QgaClient};
    /// # use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    ///
    /// # tokio_test::block_on(async {
    /// # let (stream, peer) = tokio::io::duplex(4096);
    /// # tokio::spawn(async move {
    /// #     // A scripted agent: answers the handshake, then fails to start the program.
    /// #     let mut peer = BufReader::new(peer);
    /// #     let mut line = Vec::new();
    /// #     peer.read_until(b'\n', &mut line).await.unwrap();
    /// #     let sync: serde_json::Value = serde_json::from_slice(&line[1..]).unwrap();
    /// #     let echo = format!("{{\"return\": {}}}\n", sync["arguments"]["id"]);
    /// #     peer.write_all(&[0xFF]).await.unwrap();
    /// #     peer.write_all(echo.as_bytes()).await.unwrap();
    /// #     peer.read_until(b'\n', &mut line).await.unwrap();
    /// #     let error = "{\"error\": {\"class\": \"GenericError\", \
    /// #                  \"desc\": \"Failed to execute child process\"}}\n";
    /// #     peer.write_all(error.as_bytes()).await.unwrap();
    /// # });
    /// // `stream` leads to an agent (here a scripted one).
    /// let mut agent = QgaClient::new(stream, ClientOptions::default());
    /// match agent.execute(&GuestExec::new("/does/not/exist", [""; 0])).await {
    ///     Err(Error::Agent { class, desc, .. }) => println!("{class}: {desc}"),
    ///     other => panic!("{other:?}"),
    /// }
    /// # });
    /// ```
    pub async fn execute<C: Command>(&mut self, command: &C) -> Result<C::Output, Error> {
        let reply_timeout = self.options.reply_timeout;
        let id = self.fresh_id();
        let request = OutgoingRequest::Whole(Request::of(command).with_id(id).to_line());
        let reply = self.exchange(C::NAME, id, reply_timeout, request).await?;
        decode(C::NAME, &reply)
    }

    /// Starts a program, as [`execute`](Self::execute) does with `exec`,
    /// but encodes its `input_data` to Base64 while sending it rather than
    /// building the whole request first: the input is then all the memory
    /// a big request takes.
    ///
    /// ```no_run
    /// use virtomate_protocol::qga::GuestExec;
    /// use virtomate_protocol::{ClientOptions, QgaClient};
    ///
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut agent = QgaClient::connect("/run/vm/qga.sock", ClientOptions::default()).await?;
    /// let input = std::fs::read("disk-image.part")?;
    /// let exec = GuestExec::new("dd", ["of=/tmp/part"]).with_input(input);
    /// let started = agent.guest_exec(&exec).await?;
    /// println!("running as pid {}", started.pid);
    /// # Ok(()) }
    /// ```
    pub async fn guest_exec(&mut self, exec: &GuestExec) -> Result<GuestExecReply, Error> {
        let reply_timeout = self.options.reply_timeout;
        let id = self.fresh_id();
        let request = guest_exec_request(exec, id);
        let reply = self.exchange(GuestExec::NAME, id, reply_timeout, request).await?;
        decode(GuestExec::NAME, &reply)
    }

    /// Sends any command by name and returns its `return` value untyped.
    pub async fn execute_json(&mut self, name: &str, arguments: Option<&Value>) -> Result<Value, Error> {
        let reply_timeout = self.options.reply_timeout;
        let id = self.fresh_id();
        let request = OutgoingRequest::Whole(Request::new(name, arguments).with_id(id).to_line());
        let reply = self.exchange(name, id, reply_timeout, request).await?;
        decode(name, &reply)
    }

    /// Sends `first` and `second` together and reads both replies: one
    /// round trip for two commands, which the agent still runs in order,
    /// the second whatever came of the first. An error reply to either is
    /// its own result; a failure of the exchange (a timeout, a connection
    /// lost) is the whole call's, and the agent may then have run none,
    /// one or both.
    pub async fn execute_both<A: Command, B: Command>(
        &mut self,
        first: &A,
        second: &B,
    ) -> Result<Both<A, B>, Error> {
        if !self.in_sync {
            self.sync().await?;
        }
        let (first_id, second_id) = (self.fresh_id(), self.fresh_id());
        let mut lines = Request::of(first).with_id(first_id).to_line();
        let second_line = Request::of(second).with_id(second_id).to_line();
        let longest = lines.len().max(second_line.len());
        if longest > MAX_REQUEST_LEN {
            return Err(Error::RequestTooLarge {
                len: longest,
                limit: MAX_REQUEST_LEN,
            });
        }
        lines.extend(second_line);
        let reply_timeout = self.options.reply_timeout;
        self.in_sync = false;
        self.progress = RequestProgress::PartlySent;
        let send_allowance = reply_timeout + Duration::from_secs((lines.len() >> 20) as u64);
        Deadline::after(send_allowance)
            .run(Phase::Sending(A::NAME.to_owned()), self.conn.send(&lines))
            .await?;
        self.progress = RequestProgress::Sent;
        let first_reply = self.reply_to::<A::Output>(A::NAME, first_id, reply_timeout).await;
        if !matches!(first_reply, Ok(_) | Err(Error::Agent { .. })) {
            return Err(first_reply.err().expect("not a reply"));
        }
        let second_reply = self
            .reply_to::<B::Output>(B::NAME, second_id, reply_timeout)
            .await;
        if !matches!(second_reply, Ok(_) | Err(Error::Agent { .. })) {
            return Err(second_reply.err().expect("not a reply"));
        }
        self.in_sync = true;
        self.progress = RequestProgress::Idle;
        Ok((first_reply, second_reply))
    }

    /// Reads until the reply to the request `id`, within `reply_timeout`.
    async fn reply_to<T: serde::de::DeserializeOwned>(
        &mut self,
        name: &str,
        id: u64,
        reply_timeout: Duration,
    ) -> Result<T, Error> {
        let reading = async {
            loop {
                let line = self.conn.read_reply().await?;
                if let ReplyFor::Us(output) = parse_reply::<T>(name, &line, ReplyId::Is(id))? {
                    return Ok(output);
                }
            }
        };
        Deadline::after(reply_timeout)
            .run(Phase::Reply(name.to_owned()), reading)
            .await
    }

    /// Sends a command that does not reply on success (`guest-shutdown`,
    /// `guest-suspend-*`): silence or a closed channel within `grace` is
    /// success, as the protocol has it (and so is a reply, should an agent
    /// send one); an error reply is still an error.
    pub async fn execute_without_reply(
        &mut self,
        name: &str,
        arguments: Option<&Value>,
        grace: Duration,
    ) -> Result<(), Error> {
        let id = self.fresh_id();
        let request = OutgoingRequest::Whole(Request::new(name, arguments).with_id(id).to_line());
        let outcome = self.exchange(name, id, grace, request).await;
        match outcome {
            // An agent that does reply (`{"return": {}}`) is no worse.
            Ok(_) | Err(Error::Disconnected) => Ok(()),
            Err(Error::Timeout {
                phase: Phase::Reply(_),
                ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sends `request`, made with the fresh `id`, and reads until its
    /// reply, which may take `reply_timeout` once it is sent. Not generic
    /// over the reply's type, so that the binary holds one copy of it:
    /// callers type the reply with [`decode`].
    async fn exchange(
        &mut self,
        name: &str,
        id: u64,
        reply_timeout: Duration,
        request: OutgoingRequest<'_>,
    ) -> Result<Box<RawValue>, Error> {
        if !self.in_sync {
            self.sync().await?;
        }
        if request.len() > MAX_REQUEST_LEN {
            return Err(Error::RequestTooLarge {
                len: request.len(),
                limit: MAX_REQUEST_LEN,
            });
        }
        self.in_sync = false;
        if let Some(watch) = self.watch.as_ref().filter(|_| request.len() >= BIG_REQUEST) {
            watch.sending(request.len());
            self.big_in_flight = true;
        }
        // A big request takes a while to cross a virtio port: the reply
        // timeout starts once it is sent, and sending may take the timeout
        // plus a second per MiB, however slowly the guest reads.
        let send_allowance = reply_timeout + Duration::from_secs((request.len() >> 20) as u64);
        self.progress = RequestProgress::PartlySent;
        Deadline::after(send_allowance)
            .run(Phase::Sending(name.to_owned()), self.send_request(&request))
            .await?;
        self.progress = RequestProgress::Sent;
        drop(request);
        let reading = async {
            loop {
                let line = self.conn.read_reply().await?;
                if let ReplyFor::Us(output) = parse_reply(name, &line, ReplyId::Is(id))? {
                    return Ok(output);
                }
            }
        };
        let output = Deadline::after(reply_timeout)
            .run(Phase::Reply(name.to_owned()), reading)
            .await;
        // An agent error reply still ends the exchange cleanly.
        if matches!(output, Ok(_) | Err(Error::Agent { .. })) {
            self.in_sync = true;
            self.progress = RequestProgress::Idle;
            self.big_request_done();
        }
        output
    }

    /// How far the last request got: for a caller whose exchange was cut
    /// short (a timeout, a dropped future), whether the agent may have
    /// acted on it (see [`RequestProgress`]).
    pub fn request_progress(&self) -> RequestProgress {
        self.progress
    }

    async fn send_request(&mut self, request: &OutgoingRequest<'_>) -> Result<(), Error> {
        for piece in request.pieces() {
            self.conn.send(&piece).await?;
        }
        Ok(())
    }

    /// The agent has answered after the last big request: its note goes.
    fn big_request_done(&mut self) {
        if std::mem::take(&mut self.big_in_flight) {
            if let Some(watch) = &self.watch {
                watch.answered();
            }
        }
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id = (self.next_id + 1) & ID_MASK;
        self.next_id
    }
}

/// Requests at least this long are big: they keep the agent reading
/// long enough to matter to the next client, should their sender die.
/// Shorter ones keep even a slow agent (about 1 MB/s) busy for a second
/// or two, within any handshake's wait; a copy's default chunk of 1 MiB
/// (1.4 MB of Base64) is not big.
pub(crate) const BIG_REQUEST: usize = 2 << 20;

/// Told of the big requests a [`QgaClient`] sends: the channel notes them
/// for the next client (`channel::in_flight`).
pub(crate) trait BigRequestWatch: std::fmt::Debug + Send + Sync {
    /// A big request of `bytes` is about to be sent.
    fn sending(&self, bytes: usize);
    /// Its reply came.
    fn answered(&self);
}

/// The replies to two commands sent together
/// ([`QgaClient::execute_both`]), each its own result.
pub type Both<A, B> = (
    Result<<A as Command>::Output, Error>,
    Result<<B as Command>::Output, Error>,
);

/// Ids stay below 2^53 so that every JSON implementation keeps them exact.
const ID_MASK: u64 = (1 << 53) - 1;

/// The id with the most digits a client sends.
pub(crate) const LONGEST_ID: u64 = ID_MASK;

/// A first id unlike a previous client's, so that its replies are told
/// from ours; should the OS have no random bytes, 0 still works.
fn random_id() -> u64 {
    crate::random_bytes().map_or(0, u64::from_ne_bytes) & ID_MASK
}

/// Checked by the compiler: the futures stay `Send`, for multi-threaded
/// runtimes.
#[cfg(test)]
#[allow(dead_code)]
fn futures_are_send(client: &mut QgaClient, exec: &GuestExec) {
    fn send<T: Send>(_: T) {}
    send(client.guest_exec(exec));
}
