//! An async client for libvirtd's RPC socket, with just the calls that
//! running guest agent and QEMU monitor commands takes.

use std::io;
use std::path::Path;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixStream;

use super::interfaces::{decode_interfaces, AddressSource, DomainInterface};
use super::packet::{
    self, Header, MessageType, Packet, PacketCodec, Status, KEEPALIVE_PROC_PING, KEEPALIVE_PROC_PONG,
    KEEPALIVE_PROGRAM, LEN_WORD, PROGRAM_VERSION, QEMU_PROC_DOMAIN_AGENT_COMMAND,
    QEMU_PROC_DOMAIN_MONITOR_COMMAND, QEMU_PROGRAM, REMOTE_PROC_AUTH_LIST, REMOTE_PROC_CONNECT_CLOSE,
    REMOTE_PROC_CONNECT_GET_LIB_VERSION, REMOTE_PROC_CONNECT_OPEN, REMOTE_PROC_DOMAIN_GET_STATE,
    REMOTE_PROC_DOMAIN_INTERFACE_ADDRESSES, REMOTE_PROC_DOMAIN_LOOKUP_BY_NAME,
    REMOTE_PROC_DOMAIN_LOOKUP_BY_UUID, REMOTE_PROGRAM,
};
use super::remote::{decode_error, RemoteDomain};
use super::xdr::{Decoder, Encoder, XdrError};
use super::{DomainState, AUTH_TYPE_LIST_MAX, STRING_MAX};
use crate::wire::transport::connect;
use crate::{ClientOptions, Connection, Deadline, Error, Phase, RequestProgress};

/// `remote_auth_type` values.
const AUTH_NONE: u32 = 0;
const AUTH_SASL: u32 = 1;
const AUTH_POLKIT: u32 = 2;

/// Names of the calls in timeouts and errors.
const AUTH_LIST: &str = "libvirt auth-list";
const CONNECT_OPEN: &str = "libvirt connect-open";
const CONNECT_CLOSE: &str = "libvirt connect-close";
const LOOKUP_BY_NAME: &str = "libvirt domain-lookup-by-name";
const LOOKUP_BY_UUID: &str = "libvirt domain-lookup-by-uuid";
const GET_LIB_VERSION: &str = "libvirt connect-get-lib-version";
const INTERFACE_ADDRESSES: &str = "libvirt domain-interface-addresses";
const GET_STATE: &str = "libvirt domain-get-state";

/// A connection to libvirtd's RPC socket, authenticated and opened to a
/// hypervisor URI, ready for agent and monitor commands.
///
/// Calls are matched to replies by serial number; unsolicited messages
/// (events, keepalive pings) and late replies to calls that timed out are
/// skipped. An error reply becomes [`Error::Libvirt`].
#[derive(Debug)]
pub struct LibvirtClient<S = UnixStream> {
    conn: Connection<S, PacketCodec>,
    options: ClientOptions,
    next_serial: u32,
    /// True while a message is being written. If that is cut short (a
    /// timeout, a dropped future) libvirtd holds half a message and would
    /// read our next one as its rest, so the connection is unusable.
    writing: bool,
    /// True from the moment a call is sent whole until its reply was read.
    awaiting: bool,
}

impl LibvirtClient<UnixStream> {
    /// Connects to libvirtd's socket (`/run/libvirt/libvirt-sock` for
    /// `qemu:///system`), authenticates and opens `uri`, all within
    /// [`ClientOptions::handshake_timeout`].
    ///
    /// Only the UNIX socket without authentication is supported, which
    /// libvirtd grants to root (its default `polkit` is waived for uid 0);
    /// other users get an [`Error::Connect`] naming the authentication
    /// libvirtd wants.
    pub async fn connect(socket: &Path, uri: &str, options: &ClientOptions) -> Result<Self, Error> {
        let deadline = Deadline::after(options.handshake_timeout);
        let stream = connect(socket, deadline).await?;
        Self::handshake_by(stream, socket, uri, options, deadline).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> LibvirtClient<S> {
    /// Authenticates and opens `uri` on a connected `stream`, within
    /// [`ClientOptions::handshake_timeout`]; `socket` is what `stream` is
    /// connected to, for errors.
    ///
    /// [`LibvirtClient::connect`] does this for a UNIX socket; this is for
    /// any other stream, e.g. an in-memory one in tests.
    pub async fn handshake(
        stream: S,
        socket: &Path,
        uri: &str,
        options: &ClientOptions,
    ) -> Result<Self, Error> {
        Self::handshake_by(
            stream,
            socket,
            uri,
            options,
            Deadline::after(options.handshake_timeout),
        )
        .await
    }

    async fn handshake_by(
        stream: S,
        socket: &Path,
        uri: &str,
        options: &ClientOptions,
        deadline: Deadline,
    ) -> Result<Self, Error> {
        // The bound applies to payloads; the reader's bound includes the
        // length word and header (and is capped at libvirt's maximum).
        let max_len = options
            .max_reply_len
            .saturating_add(LEN_WORD + packet::HEADER_LEN);
        let conn = Connection::new(stream, PacketCodec::new(max_len), options.trace.clone());
        let mut client = LibvirtClient {
            conn,
            options: options.clone(),
            next_serial: 0,
            writing: false,
            awaiting: false,
        };

        // libvirtd refuses every other call before this one ("authentication
        // required"), also from root; the reply marks the connection
        // authenticated when no authentication is needed.
        let reply = client
            .call(REMOTE_PROGRAM, REMOTE_PROC_AUTH_LIST, AUTH_LIST, &[], deadline)
            .await?;
        let types = decode(AUTH_LIST, reply.payload(), |d| {
            let count = d.array_len(AUTH_TYPE_LIST_MAX, 4)?;
            (0..count).map(|_| d.u32()).collect::<Result<Vec<_>, _>>()
        })?;
        // An empty list means no authentication either.
        if !types.is_empty() && !types.contains(&AUTH_NONE) {
            return Err(Error::Connect {
                path: socket.to_owned(),
                source: io::Error::new(io::ErrorKind::PermissionDenied, auth_refusal(&types)),
            });
        }

        let mut args = Encoder::new();
        args.optional_string(Some(uri), STRING_MAX)
            .map_err(request_error)?;
        // Flags 0: read-write; libvirtd refuses agent commands on a
        // read-only connection.
        args.u32(0);
        let reply = client
            .call(
                REMOTE_PROGRAM,
                REMOTE_PROC_CONNECT_OPEN,
                CONNECT_OPEN,
                &args.into_bytes(),
                deadline,
            )
            .await?;
        decode(CONNECT_OPEN, reply.payload(), |_| Ok(()))?;
        Ok(client)
    }

    /// Looks a domain up by name, within [`ClientOptions::reply_timeout`].
    ///
    /// An unknown name is [`Error::Libvirt`] with code
    /// [`ERR_NO_DOMAIN`](super::ERR_NO_DOMAIN).
    pub async fn lookup_domain_by_name(&mut self, name: &str) -> Result<RemoteDomain, Error> {
        let mut args = Encoder::new();
        args.string(name, STRING_MAX).map_err(request_error)?;
        self.lookup(
            REMOTE_PROC_DOMAIN_LOOKUP_BY_NAME,
            LOOKUP_BY_NAME,
            &args.into_bytes(),
        )
        .await
    }

    /// Looks a domain up by UUID, within [`ClientOptions::reply_timeout`].
    pub async fn lookup_domain_by_uuid(&mut self, uuid: &[u8; 16]) -> Result<RemoteDomain, Error> {
        let mut args = Encoder::new();
        args.opaque_fixed(uuid);
        self.lookup(
            REMOTE_PROC_DOMAIN_LOOKUP_BY_UUID,
            LOOKUP_BY_UUID,
            &args.into_bytes(),
        )
        .await
    }

    async fn lookup(&mut self, procedure: i32, label: &str, args: &[u8]) -> Result<RemoteDomain, Error> {
        let deadline = self.reply_deadline();
        let reply = self
            .call(REMOTE_PROGRAM, procedure, label, args, deadline)
            .await?;
        decode(label, reply.payload(), RemoteDomain::decode)
    }

    /// libvirt's version as `major * 1_000_000 + minor * 1000 + micro`,
    /// within [`ClientOptions::reply_timeout`].
    ///
    /// ```no_run
    /// # use virtomate_protocol::libvirt::LibvirtClient;
    /// # async fn demo(libvirt: &mut LibvirtClient) -> Result<(), virtomate_protocol::Error> {
    /// let version = libvirt.lib_version().await?;
    /// println!("libvirt {}.{}.{}", version / 1_000_000, version / 1000 % 1000, version % 1000);
    /// # Ok(()) }
    /// ```
    pub async fn lib_version(&mut self) -> Result<u64, Error> {
        let deadline = self.reply_deadline();
        let reply = self
            .call(
                REMOTE_PROGRAM,
                REMOTE_PROC_CONNECT_GET_LIB_VERSION,
                GET_LIB_VERSION,
                &[],
                deadline,
            )
            .await?;
        decode(GET_LIB_VERSION, reply.payload(), |d| d.u64())
    }

    /// The run state of `domain` as libvirtd knows it now, within
    /// [`ClientOptions::reply_timeout`]: libvirt's `virDomainState` and
    /// its reason (a number whose meaning depends on the state), as
    /// `virsh domstate --reason` shows them. A transient domain that
    /// stopped is gone: [`Error::Libvirt`] with code
    /// [`ERR_NO_DOMAIN`](super::ERR_NO_DOMAIN).
    pub async fn domain_state(&mut self, domain: &RemoteDomain) -> Result<(DomainState, i32), Error> {
        let mut args = Encoder::new();
        domain.encode(&mut args).map_err(request_error)?;
        args.u32(0);
        let deadline = self.reply_deadline();
        let reply = self
            .call(
                REMOTE_PROGRAM,
                REMOTE_PROC_DOMAIN_GET_STATE,
                GET_STATE,
                &args.into_bytes(),
                deadline,
            )
            .await?;
        let (state, reason) = decode(GET_STATE, reply.payload(), |d| Ok((d.i32()?, d.i32()?)))?;
        Ok((DomainState::from_code(state), reason))
    }

    /// The network interfaces of `domain` and their addresses, from
    /// `source`, within [`ClientOptions::reply_timeout`] (as `virsh
    /// domifaddr --source`). libvirtd fails the call with
    /// [`Error::Libvirt`] when the domain does not run, or (for
    /// [`AddressSource::Agent`]) its agent does not answer.
    pub async fn interface_addresses(
        &mut self,
        domain: &RemoteDomain,
        source: AddressSource,
    ) -> Result<Vec<DomainInterface>, Error> {
        let mut args = Encoder::new();
        domain.encode(&mut args).map_err(request_error)?;
        args.u32(source.code());
        args.u32(0);
        let deadline = self.reply_deadline();
        let reply = self
            .call(
                REMOTE_PROGRAM,
                REMOTE_PROC_DOMAIN_INTERFACE_ADDRESSES,
                INTERFACE_ADDRESSES,
                &args.into_bytes(),
                deadline,
            )
            .await?;
        decode(INTERFACE_ADDRESSES, reply.payload(), decode_interfaces)
    }

    /// Runs a guest agent command (the JSON request, as `virsh
    /// qemu-agent-command` takes it) in `domain` through libvirtd and
    /// returns the agent's JSON reply, by `deadline`.
    ///
    /// `timeout_seconds` is libvirtd's own wait for the agent:
    /// [`AGENT_TIMEOUT_DEFAULT`](super::AGENT_TIMEOUT_DEFAULT) (what virsh
    /// sends), [`AGENT_TIMEOUT_BLOCK`](super::AGENT_TIMEOUT_BLOCK),
    /// [`AGENT_TIMEOUT_NOWAIT`](super::AGENT_TIMEOUT_NOWAIT) or seconds;
    /// `deadline` should leave it room. libvirtd synchronises with the agent
    /// itself, and fails the call with [`Error::Libvirt`] when the agent is
    /// not connected (code [`ERR_AGENT_UNRESPONSIVE`](super::ERR_AGENT_UNRESPONSIVE)),
    /// the domain does not run, or the agent answers with an error.
    ///
    /// A command longer than [`STRING_MAX`] is refused before
    /// sending ([`Error::RequestTooLarge`]); libvirt 9.0 stalls on any over
    /// [`AGENT_COMMAND_MAX`](super::AGENT_COMMAND_MAX), which
    /// [`LibvirtAgent`](super::LibvirtAgent) refuses. Replies are bounded
    /// by libvirt: see [`AGENT_RESPONSE_MAX`](super::AGENT_RESPONSE_MAX).
    pub async fn agent_command(
        &mut self,
        domain: &RemoteDomain,
        command_json: &str,
        timeout_seconds: i32,
        deadline: Deadline,
    ) -> Result<Option<String>, Error> {
        let label = command_label(command_json, "an agent command");
        let mut args = qemu_command_args(domain, command_json)?;
        args.i32(timeout_seconds);
        args.u32(0);
        let reply = self
            .qemu_call(QEMU_PROC_DOMAIN_AGENT_COMMAND, &label, args, deadline)
            .await?;
        decode(&label, reply.payload(), |d| {
            Ok(d.optional_string(STRING_MAX)?.map(str::to_owned))
        })
    }

    /// Sends a QMP command (the JSON request, as `virsh
    /// qemu-monitor-command` takes it) to QEMU's monitor of `domain` through
    /// libvirtd and returns QEMU's whole reply, by `deadline`.
    ///
    /// libvirtd holds the monitor of every domain it runs; this is its way
    /// in for others. libvirtd then marks the domain tainted
    /// (`custom-monitor`, in the domain's log), as for virsh: it no longer
    /// vouches for state changed behind its back.
    ///
    /// libvirtd gives each command its own `id` (e.g. `"libvirt-42"`, which
    /// the reply carries) and fails a command that has one already. A QMP
    /// error reply is no failure of the call: it comes back like any reply,
    /// `{"id":...,"error":{"class":...,"desc":...}}`. The call fails with
    /// [`Error::Libvirt`] when the domain does not run or libvirtd cannot
    /// send the command.
    ///
    /// A command longer than [`STRING_MAX`] is refused before sending
    /// ([`Error::RequestTooLarge`]); libvirtd fails a call whose reply is
    /// longer, as for agent commands.
    pub async fn monitor_command(
        &mut self,
        domain: &RemoteDomain,
        command_json: &str,
        deadline: Deadline,
    ) -> Result<String, Error> {
        let label = command_label(command_json, "a monitor command");
        let mut args = qemu_command_args(domain, command_json)?;
        // Flags 0: QMP, not the human monitor.
        args.u32(0);
        let reply = self
            .qemu_call(QEMU_PROC_DOMAIN_MONITOR_COMMAND, &label, args, deadline)
            .await?;
        decode(&label, reply.payload(), |d| Ok(d.string(STRING_MAX)?.to_owned()))
    }

    /// Closes the hypervisor connection (libvirtd then closes the socket),
    /// within [`ClientOptions::reply_timeout`].
    ///
    /// Dropping the client without closing is harmless too: libvirtd
    /// cleans up when the socket closes.
    pub async fn close(mut self) -> Result<(), Error> {
        let deadline = self.reply_deadline();
        let reply = self
            .call(
                REMOTE_PROGRAM,
                REMOTE_PROC_CONNECT_CLOSE,
                CONNECT_CLOSE,
                &[],
                deadline,
            )
            .await?;
        decode(CONNECT_CLOSE, reply.payload(), |_| Ok(()))
    }

    fn reply_deadline(&self) -> Deadline {
        Deadline::after(self.options.reply_timeout)
    }

    /// A call of the QEMU program (agent and monitor commands).
    async fn qemu_call(
        &mut self,
        procedure: i32,
        label: &str,
        args: Encoder,
        deadline: Deadline,
    ) -> Result<Packet, Error> {
        self.call(QEMU_PROGRAM, procedure, label, &args.into_bytes(), deadline)
            .await
    }

    /// Sends one call and waits for its reply, both by `deadline`;
    /// `label` names the call in errors.
    async fn call(
        &mut self,
        program: u32,
        procedure: i32,
        label: &str,
        args: &[u8],
        deadline: Deadline,
    ) -> Result<Packet, Error> {
        if self.writing {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::NotConnected,
                "an earlier call to libvirtd was cut short while it was being sent; connect again",
            )));
        }
        let serial = self.next_serial;
        self.next_serial = self.next_serial.wrapping_add(1);
        let message = packet::encode(&Header::call(program, procedure, serial), args)?;
        deadline
            .run(Phase::Sending(label.to_owned()), self.send(&message))
            .await?;
        drop(message);
        self.awaiting = true;
        let reply = deadline
            .run(
                Phase::Reply(label.to_owned()),
                self.reply_to(program, procedure, serial),
            )
            .await
            .map_err(|e| match e {
                Error::Malformed { reason, .. } => malformed(label, reason),
                other => other,
            })?;
        self.awaiting = false;
        match reply.header.status {
            Status::Ok => Ok(reply),
            Status::Error => Err(decode_error(reply.payload()).map_err(|e| malformed(label, e))?),
            other => Err(malformed(label, format!("unexpected reply status {other:?}"))),
        }
    }

    /// Reads messages until the reply with `serial`.
    async fn reply_to(&mut self, program: u32, procedure: i32, serial: u32) -> Result<Packet, Error> {
        loop {
            let packet = self.conn.read_frame().await?;
            let header = packet.header;
            match header.kind {
                MessageType::Reply if header.serial == serial => {
                    if header.program != program || header.procedure != procedure {
                        return Err(Error::Malformed {
                            command: String::new(),
                            reason: format!(
                                "the reply with serial {serial} is for program {:#x} procedure {}",
                                header.program, header.procedure
                            ),
                        });
                    }
                    return Ok(packet);
                }
                MessageType::Message
                    if header.program == KEEPALIVE_PROGRAM && header.procedure == KEEPALIVE_PROC_PING =>
                {
                    // libvirtd pings only clients that announced keepalive
                    // support, which this one does not; answering anyway
                    // costs one small message and keeps such a connection.
                    let pong = packet::encode(
                        &Header {
                            program: KEEPALIVE_PROGRAM,
                            version: PROGRAM_VERSION,
                            procedure: KEEPALIVE_PROC_PONG,
                            kind: MessageType::Message,
                            serial: 0,
                            status: Status::Ok,
                        },
                        &[],
                    )?;
                    self.send(&pong).await?;
                }
                _ => tracing::debug!(?header, "skipping a libvirt message that is not our reply"),
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.writing = true;
        self.conn.send(bytes).await?;
        self.writing = false;
        Ok(())
    }

    /// How far the last call got, for a caller whose call was cut short:
    /// libvirtd (and so the agent) acts only on a whole message.
    pub fn request_progress(&self) -> RequestProgress {
        match (self.writing, self.awaiting) {
            (true, _) => RequestProgress::PartlySent,
            (false, true) => RequestProgress::Sent,
            (false, false) => RequestProgress::Idle,
        }
    }
}

/// Decodes a reply payload with `read`, which must use all of it.
fn decode<'a, T>(
    label: &str,
    payload: &'a [u8],
    read: impl FnOnce(&mut Decoder<'a>) -> Result<T, XdrError>,
) -> Result<T, Error> {
    let mut decoder = Decoder::new(payload);
    let value = read(&mut decoder).map_err(|e| malformed(label, e))?;
    decoder.finish().map_err(|e| malformed(label, e))?;
    Ok(value)
}

fn malformed(label: &str, reason: impl ToString) -> Error {
    Error::Malformed {
        command: label.to_owned(),
        reason: reason.to_string(),
    }
}

/// An argument that does not fit libvirt's limits.
fn request_error(e: XdrError) -> Error {
    match e {
        XdrError::TooLong { len, max } => Error::RequestTooLarge { len, limit: max },
        // The encoder fails in no other way.
        other => Error::Io(io::Error::new(io::ErrorKind::InvalidInput, other)),
    }
}

/// The arguments both QEMU commands start with: the domain and the
/// command's JSON, which is refused before sending when longer than
/// libvirt takes.
fn qemu_command_args(domain: &RemoteDomain, command_json: &str) -> Result<Encoder, Error> {
    if command_json.len() > STRING_MAX {
        return Err(Error::RequestTooLarge {
            len: command_json.len(),
            limit: STRING_MAX,
        });
    }
    let mut args = Encoder::new();
    domain.encode(&mut args).map_err(request_error)?;
    args.string(command_json, STRING_MAX).map_err(request_error)?;
    Ok(args)
}

/// Names a command in errors by its `execute` member, e.g. `guest-ping
/// through libvirt`; by `unnamed` when it has none.
fn command_label(command_json: &str, unnamed: &str) -> String {
    #[derive(Deserialize)]
    struct Execute<'a> {
        #[serde(borrow)]
        execute: Option<std::borrow::Cow<'a, str>>,
    }
    match serde_json::from_str::<Execute>(command_json) {
        Ok(Execute { execute: Some(name) }) => format!("{name} through libvirt"),
        _ => format!("{unnamed} through libvirt"),
    }
}

fn auth_refusal(types: &[u32]) -> String {
    let names: Vec<String> = types
        .iter()
        .map(|&t| match t {
            AUTH_SASL => "SASL".to_owned(),
            AUTH_POLKIT => "polkit".to_owned(),
            other => format!("unknown type {other}"),
        })
        .collect();
    format!(
        "libvirtd asks for {} authentication, but virtomate only uses libvirtd's UNIX socket without \
         authentication, which libvirtd allows root: run virtomate as root",
        names.join(" or ")
    )
}
