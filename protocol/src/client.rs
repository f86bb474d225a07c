//! An async client for one agent connection.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::{timeout_at, Instant};

use crate::framing::{ReplyReader, DEFAULT_MAX_REPLY_LEN, SENTINEL};
use crate::qga::{
    guest_exec_request, parse_reply, parse_reply_to, request_bytes, request_line, Command, ExecStarted,
    GuestExec, GuestSyncDelimited, OutgoingRequest, ReplyFor,
};
use crate::{Direction, Error, Phase, Trace};

/// The most the agent's JSON parser accepts in one request
/// (`MAX_TOKEN_SIZE` in QEMU's `qobject/json-streamer.c`).
///
/// A longer request is refused with [`Error::RequestTooLarge`] before
/// sending: the agent would answer it with several parse errors.
///
/// ```
/// use virtomate_protocol::MAX_REQUEST_LEN;
///
/// // Base64 makes `input-data` a third longer than the input itself.
/// let stdin_len: usize = 47 << 20;
/// assert!(stdin_len.div_ceil(3) * 4 < MAX_REQUEST_LEN);
/// ```
pub const MAX_REQUEST_LEN: usize = 64 << 20;

/// Time limits and bounds of a [`QgaClient`].
///
/// ```
/// use std::time::Duration;
/// use virtomate_protocol::ClientOptions;
///
/// let options = ClientOptions {
///     handshake_timeout: Duration::from_secs(2),
///     ..ClientOptions::default()
/// };
/// assert_eq!(options.max_reply_len, virtomate_protocol::framing::DEFAULT_MAX_REPLY_LEN);
/// ```
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// One deadline for connecting and synchronising together.
    pub handshake_timeout: Duration,
    /// One deadline for each reply, however it trickles in.
    pub reply_timeout: Duration,
    /// Replies longer than this are refused ([`Error::ReplyTooLong`]).
    pub max_reply_len: usize,
    /// Sees every byte sent and received, e.g. for `--trace`.
    pub trace: Option<Trace>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            handshake_timeout: Duration::from_secs(5),
            reply_timeout: Duration::from_secs(30),
            max_reply_len: DEFAULT_MAX_REPLY_LEN,
            trace: None,
        }
    }
}

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
    conn: ReplyReader<S>,
    options: ClientOptions,
    next_id: u64,
    /// False from the moment a request is sent until its reply was read:
    /// an interrupted exchange leaves bytes in flight that must be skipped.
    in_sync: bool,
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
        let path = path.as_ref();
        let deadline = Instant::now() + options.handshake_timeout;
        let stream = connect_until(path, deadline, options.handshake_timeout).await?;
        let mut client = QgaClient::new(stream, options);
        client.sync_until(deadline).await?;
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
        let mut conn = ReplyReader::new(stream, options.max_reply_len);
        conn.set_trace(options.trace.clone());
        QgaClient {
            conn,
            options,
            next_id: random_id(),
            in_sync: false,
        }
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
    /// let options = ClientOptions { handshake_timeout: Duration::from_millis(50), ..ClientOptions::default() };
    /// let mut agent = QgaClient::new(stream, options);
    /// assert!(matches!(agent.sync().await, Err(Error::Timeout { phase: Phase::Handshake, .. })));
    /// # });
    /// ```
    pub async fn sync(&mut self) -> Result<(), Error> {
        self.sync_until(Instant::now() + self.options.handshake_timeout)
            .await
    }

    async fn sync_until(&mut self, deadline: Instant) -> Result<(), Error> {
        let timeout = self.options.handshake_timeout;
        within(deadline, timeout, Phase::Handshake, self.sync_exchange()).await
    }

    async fn sync_exchange(&mut self) -> Result<(), Error> {
        self.in_sync = false;
        let id = self.fresh_id();
        // A leading 0xFF makes the agent drop any half request a previous
        // client left behind; it answers with a parse error that we skip
        // along with everything else before the sentinel.
        let mut request = vec![SENTINEL];
        request.extend(request_bytes(&GuestSyncDelimited { id }, id));
        self.send(&request).await?;
        self.conn.skip_past_sentinel().await?;
        loop {
            let line = match self.conn.read_reply().await {
                Err(Error::ReplyTooLong { .. }) => continue,
                other => other?,
            };
            let after_sentinel = match memchr::memrchr(SENTINEL, &line) {
                Some(pos) => &line[pos + 1..],
                None => &line[..],
            };
            if let Ok(ReplyFor::Us(echoed)) = parse_reply::<GuestSyncDelimited>(after_sentinel, id) {
                if echoed == id {
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
    /// #     let error = "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Failed to execute child process\"}}\n";
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
        self.exchange(C::NAME, |id| OutgoingRequest::Whole(request_bytes(command, id)))
            .await
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
    pub async fn guest_exec(&mut self, exec: &GuestExec) -> Result<ExecStarted, Error> {
        self.exchange(GuestExec::NAME, |id| guest_exec_request(exec, id))
            .await
    }

    /// Sends any command by name and returns its `return` value untyped.
    ///
    /// ```no_run
    /// use virtomate_protocol::{ClientOptions, QgaClient};
    ///
    /// # async fn demo() -> Result<(), virtomate_protocol::Error> {
    /// let mut agent = QgaClient::connect("/run/vm/qga.sock", ClientOptions::default()).await?;
    /// let host_name = agent.execute_json("guest-get-host-name", None).await?;
    /// println!("{}", host_name["host-name"]);
    /// # Ok(()) }
    /// ```
    pub async fn execute_json(
        &mut self,
        name: &str,
        arguments: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, Error> {
        self.exchange(name, |id| {
            OutgoingRequest::Whole(request_line(name, arguments, id))
        })
        .await
    }

    /// Sends a command that does not reply on success (`guest-shutdown`,
    /// `guest-suspend-*`): silence or a closed channel within `grace` is
    /// success, as the protocol has it (and so is a reply, should an agent
    /// send one); an error reply is still an error.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use virtomate_protocol::{ClientOptions, QgaClient};
    ///
    /// # async fn demo() -> Result<(), virtomate_protocol::Error> {
    /// let mut agent = QgaClient::connect("/run/vm/qga.sock", ClientOptions::default()).await?;
    /// agent.execute_without_reply("guest-shutdown", None, Duration::from_secs(1)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn execute_without_reply(
        &mut self,
        name: &str,
        arguments: Option<&serde_json::Value>,
        grace: Duration,
    ) -> Result<(), Error> {
        let grace_options = ClientOptions {
            reply_timeout: grace,
            ..self.options.clone()
        };
        let options = std::mem::replace(&mut self.options, grace_options);
        let outcome = self
            .exchange::<serde_json::Value>(name, |id| {
                OutgoingRequest::Whole(request_line(name, arguments, id))
            })
            .await;
        self.options = options;
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

    async fn exchange<'r, T: serde::de::DeserializeOwned>(
        &mut self,
        name: &str,
        build_request: impl FnOnce(u64) -> OutgoingRequest<'r>,
    ) -> Result<T, Error> {
        if !self.in_sync {
            self.sync().await?;
        }
        let id = self.fresh_id();
        let request = build_request(id);
        if request.len() > MAX_REQUEST_LEN {
            return Err(Error::RequestTooLarge {
                len: request.len(),
                limit: MAX_REQUEST_LEN,
            });
        }
        self.in_sync = false;
        let timeout = self.options.reply_timeout;
        // A big request takes a while to cross a virtio port: the reply
        // timeout starts once it is sent, and sending may take the timeout
        // plus a second per MiB, however slowly the guest reads.
        let send_allowance = timeout + Duration::from_secs((request.len() >> 20) as u64);
        let sending = Phase::Sending(name.to_owned());
        within(
            Instant::now() + send_allowance,
            send_allowance,
            sending,
            self.send_request(&request),
        )
        .await?;
        drop(request);
        let phase = Phase::Reply(name.to_owned());
        let output = within(Instant::now() + timeout, timeout, phase, async {
            loop {
                let line = self.conn.read_reply().await?;
                if let ReplyFor::Us(output) = parse_reply_to::<T>(name, &line, id)? {
                    return Ok(output);
                }
            }
        })
        .await;
        // An agent error reply still ends the exchange cleanly.
        if matches!(output, Ok(_) | Err(Error::Agent { .. })) {
            self.in_sync = true;
        }
        output
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), Error> {
        send_traced(&mut self.conn, self.options.trace.as_ref(), bytes).await
    }

    async fn send_request(&mut self, request: &OutgoingRequest<'_>) -> Result<(), Error> {
        for piece in request.pieces() {
            self.send(&piece).await?;
        }
        Ok(())
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id = (self.next_id + 1) & ID_MASK;
        self.next_id
    }
}

/// Ids stay below 2^53 so that every JSON implementation keeps them exact.
const ID_MASK: u64 = (1 << 53) - 1;

/// The id with the most digits a client sends.
pub(crate) const LONGEST_ID: u64 = ID_MASK;

fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS once per process and varied per
    // instance: enough to tell our replies from a previous client's.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish() & ID_MASK
}

/// Connects to the UNIX socket at `path` by `deadline` (`allowed` after
/// the start, for the error).
pub(crate) async fn connect_until(
    path: &Path,
    deadline: Instant,
    allowed: Duration,
) -> Result<UnixStream, Error> {
    within(deadline, allowed, Phase::Connecting, async {
        UnixStream::connect(path).await.map_err(|source| Error::Connect {
            path: path.to_owned(),
            source,
        })
    })
    .await
}

/// Writes `bytes` to the stream under `conn`, showing them to `trace`.
pub(crate) async fn send_traced<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut ReplyReader<S>,
    trace: Option<&Trace>,
    bytes: &[u8],
) -> Result<(), Error> {
    if let Some(trace) = trace {
        trace.record(Direction::Sent, bytes);
    }
    let stream = conn.get_mut();
    stream.write_all(bytes).await.map_err(Error::from_io)?;
    stream.flush().await.map_err(Error::from_io)
}

/// Runs `work` until `deadline`; past it, a timeout in `phase` after
/// `allowed`.
pub(crate) async fn within<T>(
    deadline: Instant,
    allowed: Duration,
    phase: Phase,
    work: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    timeout_at(deadline, work).await.unwrap_or(Err(Error::Timeout {
        phase,
        after: allowed,
    }))
}

/// Checked by the compiler: the futures stay `Send`, for multi-threaded
/// runtimes.
#[cfg(test)]
#[allow(dead_code)]
fn futures_are_send(client: &mut QgaClient, exec: &GuestExec) {
    fn send<T: Send>(_: T) {}
    send(client.guest_exec(exec));
}
