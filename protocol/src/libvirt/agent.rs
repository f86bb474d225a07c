//! Agent commands through libvirtd, for a domain whose agent channel
//! libvirtd holds: the same typed commands as on a direct channel.

use std::path::Path;
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixStream;

use super::{
    LibvirtClient, RemoteDomain, AGENT_COMMAND_MAX, ERR_AGENT_COMMAND_FAILED, ERR_AGENT_COMMAND_TIMEOUT,
    ERR_AGENT_UNRESPONSIVE, ERR_INTERNAL_ERROR, ERR_NO_DOMAIN, ERR_OPERATION_INVALID,
};
use crate::qga::Command;
use crate::wire::envelope::{decode, parse_reply, ReplyFor, ReplyId, Request};
use crate::{Agent, ClientOptions, Deadline, Error, RequestProgress};

/// One domain's guest agent, reached through libvirtd's RPC socket.
///
/// ```no_run
/// use virtomate_protocol::libvirt::LibvirtAgent;
/// use virtomate_protocol::qga::GuestPing;
/// use virtomate_protocol::{Agent, ClientOptions};
///
/// # async fn demo() -> Result<(), virtomate_protocol::Error> {
/// let socket = std::path::Path::new("/run/libvirt/libvirt-sock");
/// let mut agent = LibvirtAgent::connect(socket, "qemu:///system", "web1", &ClientOptions::default()).await?;
/// agent.execute(&GuestPing {}).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct LibvirtAgent<S = UnixStream> {
    client: LibvirtClient<S>,
    domain: RemoteDomain,
    reply_timeout: Duration,
    next_id: u64,
}

impl LibvirtAgent<UnixStream> {
    /// Connects to libvirtd at `socket` (`uri` as libvirt clients name the
    /// daemon) and looks up the domain `name`.
    pub async fn connect(
        socket: &Path,
        uri: &str,
        name: &str,
        options: &ClientOptions,
    ) -> Result<Self, Error> {
        let mut client = LibvirtClient::connect(socket, uri, options).await?;
        let domain = client.lookup_domain_by_name(name).await?;
        Ok(LibvirtAgent::new(client, domain, options))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> LibvirtAgent<S> {
    /// The agent of `domain`, on a connection already open: for a stream
    /// other than libvirtd's UNIX socket (see [`LibvirtClient::handshake`]).
    /// Replies are awaited for [`ClientOptions::reply_timeout`].
    pub fn new(client: LibvirtClient<S>, domain: RemoteDomain, options: &ClientOptions) -> Self {
        LibvirtAgent {
            client,
            domain,
            reply_timeout: options.reply_timeout,
            next_id: 1,
        }
    }

    /// The connection back, e.g. to [`close`](LibvirtClient::close) it.
    pub fn into_client(self) -> LibvirtClient<S> {
        self.client
    }

    /// Sends any command by name and returns its `return` value untyped.
    pub async fn execute_json(&mut self, name: &str, arguments: Option<&Value>) -> Result<Value, Error> {
        let reply = self.exchange(name, arguments, self.reply_timeout).await?;
        decode(name, &reply)
    }

    /// Sends a command that does not reply on success (`guest-shutdown`,
    /// `guest-suspend-*`), as [`QgaClient::execute_without_reply`]
    /// does on a direct channel: libvirtd waits at most `grace` for an
    /// error reply. libvirt passes such commands on like any other, so its
    /// word that the agent went silent or away, or that the domain stopped,
    /// is the success; an agent error reply is the failure. A `guest-ping`
    /// goes first, as the handshake does on a direct channel, so that an
    /// agent that was never there (which libvirt reports in the same words)
    /// is no success.
    ///
    /// [`QgaClient::execute_without_reply`]: crate::QgaClient::execute_without_reply
    pub async fn execute_without_reply(
        &mut self,
        name: &str,
        arguments: Option<&Value>,
        grace: Duration,
    ) -> Result<(), Error> {
        self.exchange("guest-ping", None, self.reply_timeout).await?;
        match self.exchange(name, arguments, grace).await {
            Ok(_) => Ok(()),
            // rustfmt would join this or-pattern into one line over max_width.
            #[rustfmt::skip]
            Err(Error::Libvirt {
                code:
                    ERR_AGENT_UNRESPONSIVE
                    | ERR_AGENT_COMMAND_TIMEOUT
                    | ERR_OPERATION_INVALID
                    | ERR_NO_DOMAIN,
                ..
            }) => Ok(()),
            Err(Error::Timeout { .. }) => Ok(()),
            // The agent closed its port while libvirtd waited: the guest
            // is going down as asked. libvirt has no code of its own for
            // it, only this internal error's words.
            Err(Error::Libvirt {
                code: ERR_INTERNAL_ERROR,
                message,
                ..
            }) if message.contains(AGENT_WENT_AWAY) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn exchange(
        &mut self,
        name: &str,
        arguments: Option<&Value>,
        reply_timeout: Duration,
    ) -> Result<Box<RawValue>, Error> {
        self.next_id += 1;
        let id = self.next_id;
        // libvirt takes the JSON without its newline.
        let request = Request::new(name, arguments).with_id(id).to_json();
        if request.len() > AGENT_COMMAND_MAX {
            return Err(Error::RequestTooLarge {
                len: request.len(),
                limit: AGENT_COMMAND_MAX,
            });
        }
        // libvirtd waits for the agent itself; leave it a second to answer.
        let timeout_seconds = i32::try_from(reply_timeout.as_secs().max(1)).unwrap_or(i32::MAX);
        let deadline = Deadline::after(reply_timeout + Duration::from_secs(1));
        let reply = self
            .client
            .agent_command(&self.domain, &request, timeout_seconds, deadline)
            .await
            .map_err(agent_error_of)?;
        let malformed = |reason: &str| Error::Malformed {
            command: name.to_owned(),
            reason: reason.to_owned(),
        };
        let reply = reply.ok_or_else(|| malformed("libvirtd returned no reply"))?;
        match parse_reply(name, reply.as_bytes(), ReplyId::Is(id))? {
            ReplyFor::Us(output) => Ok(output),
            _ => Err(malformed("libvirtd returned a reply to another request")),
        }
    }
}

/// The `class` of an agent error reply that came through libvirtd, which
/// passes on only its description.
pub const CLASS_UNKNOWN_THROUGH_LIBVIRT: &str = "unknown (through libvirt)";

impl<S: AsyncRead + AsyncWrite + Unpin> Agent for LibvirtAgent<S> {
    async fn execute<C: Command>(&mut self, command: &C) -> Result<C::Output, Error> {
        let arguments = serde_json::to_value(command).expect("commands always serialize");
        let reply = self
            .exchange(C::NAME, Some(&arguments), self.reply_timeout)
            .await?;
        decode(C::NAME, &reply)
    }

    async fn execute_json(&mut self, name: &str, arguments: Option<&Value>) -> Result<Value, Error> {
        LibvirtAgent::execute_json(self, name, arguments).await
    }

    fn request_progress(&self) -> RequestProgress {
        self.client.request_progress()
    }

    async fn execute_without_reply(
        &mut self,
        name: &str,
        arguments: Option<&Value>,
        grace: Duration,
    ) -> Result<(), Error> {
        LibvirtAgent::execute_without_reply(self, name, arguments, grace).await
    }
}

/// libvirt's words when the agent's port closed under a command it waited
/// on (`qemuAgentIO` in `src/qemu/qemu_agent.c`).
const AGENT_WENT_AWAY: &str = "End of file from agent socket";

/// libvirt reports an agent's error reply as its own error (an internal
/// error up to libvirt 9, `VIR_ERR_AGENT_COMMAND_FAILED` from 10),
/// `unable to execute QEMU agent command 'NAME': DESC`: turned back into
/// [`Error::Agent`], a program that cannot start reads the same whichever
/// way the command went. libvirt drops the error class: it becomes
/// [`CLASS_UNKNOWN_THROUGH_LIBVIRT`].
fn agent_error_of(error: Error) -> Error {
    const PREFIX: &str = "unable to execute QEMU agent command '";
    let Error::Libvirt { code, message, .. } = &error else {
        return error;
    };
    let parsed = message
        .find(PREFIX)
        .map(|at| &message[at + PREFIX.len()..])
        .and_then(|rest| rest.split_once("': "));
    match parsed {
        Some((command, desc)) if matches!(*code, ERR_INTERNAL_ERROR | ERR_AGENT_COMMAND_FAILED) => {
            Error::Agent {
                command: command.to_owned(),
                class: CLASS_UNKNOWN_THROUGH_LIBVIRT.to_owned(),
                desc: desc.to_owned(),
            }
        }
        _ => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libvirts_wrapping_of_an_agent_error_is_undone() {
        let wrapped = Error::Libvirt {
            code: ERR_INTERNAL_ERROR,
            domain: 10,
            message: "internal error: unable to execute QEMU agent command 'guest-exec': \
                      Guest agent command failed, error was 'Failed to execute child process'"
                .to_owned(),
        };
        match agent_error_of(wrapped) {
            Error::Agent { command, desc, .. } => {
                assert_eq!(command, "guest-exec");
                assert_eq!(
                    desc,
                    "Guest agent command failed, error was 'Failed to execute child process'"
                );
            }
            other => panic!("{other:?}"),
        }
        let other = Error::Libvirt {
            code: 42,
            domain: 10,
            message: "Domain not found".to_owned(),
        };
        assert!(matches!(agent_error_of(other), Error::Libvirt { code: 42, .. }));
    }
}
