//! What runs guest agent commands: a direct channel ([`QgaClient`]) or
//! libvirtd ([`LibvirtAgent`]), behind one trait, and [`AnyAgent`] for a
//! caller that learns only at run time which one it has.

use std::future::Future;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::libvirt::LibvirtAgent;
use crate::qga::{Both, Command, GuestExec, GuestExecReply};
use crate::{Error, QgaClient, RequestProgress};

/// Runs agent commands, whatever carries them.
///
/// ```no_run
/// use virtomate_protocol::qga::GuestPing;
/// use virtomate_protocol::{Agent, ClientOptions, QgaClient};
///
/// async fn alive(agent: &mut impl Agent) -> bool {
///     agent.execute(&GuestPing {}).await.is_ok()
/// }
///
/// # async fn demo() -> Result<(), virtomate_protocol::Error> {
/// let mut agent = QgaClient::connect("/run/vm/qga.sock", ClientOptions::default()).await?;
/// assert!(alive(&mut agent).await);
/// # Ok(()) }
/// ```
pub trait Agent {
    /// Sends `command` and returns its reply; an error reply becomes
    /// [`Error::Agent`].
    fn execute<C: Command>(&mut self, command: &C) -> impl Future<Output = Result<C::Output, Error>>;

    /// Sends the command `name` with `arguments` (an object), if any, and
    /// returns its `return` untyped: for the commands this crate does not
    /// type.
    ///
    /// ```
    /// use virtomate_protocol::{Agent, Error};
    ///
    /// async fn host_name(agent: &mut impl Agent) -> Result<String, Error> {
    ///     let reply = agent.execute_json("guest-get-host-name", None).await?;
    ///     Ok(reply["host-name"].as_str().unwrap_or_default().to_owned())
    /// }
    /// ```
    fn execute_json(
        &mut self,
        name: &str,
        arguments: Option<&Value>,
    ) -> impl Future<Output = Result<Value, Error>>;

    /// Sends a command that does not reply on success (`guest-shutdown`,
    /// `guest-suspend-*`): silence or a closed channel within `grace` is
    /// success, and so is a reply; an error reply is still an error.
    fn execute_without_reply(
        &mut self,
        name: &str,
        arguments: Option<&Value>,
        grace: Duration,
    ) -> impl Future<Output = Result<(), Error>>;

    /// Starts a program. Where the carrier allows it, its input is encoded
    /// to Base64 while it is sent, so a big input takes no second copy in
    /// memory; otherwise this is [`execute`](Agent::execute).
    fn guest_exec(&mut self, exec: &GuestExec) -> impl Future<Output = Result<GuestExecReply, Error>> {
        self.execute(exec)
    }

    /// Runs `first`, then `second` whatever came of it, and returns both
    /// replies, each its own result; a failure of the exchange itself (a
    /// timeout, a connection lost) is the whole call's. Over a direct
    /// channel both go out together, one round trip for two (see
    /// [`QgaClient::execute_both`]); otherwise one after the other.
    fn execute_both<A: Command, B: Command>(
        &mut self,
        first: &A,
        second: &B,
    ) -> impl Future<Output = Result<Both<A, B>, Error>> {
        async move {
            let first_reply = self.execute(first).await;
            if !matches!(first_reply, Ok(_) | Err(Error::Agent { .. })) {
                return Err(first_reply.err().expect("not a reply"));
            }
            let second_reply = self.execute(second).await;
            if !matches!(second_reply, Ok(_) | Err(Error::Agent { .. })) {
                return Err(second_reply.err().expect("not a reply"));
            }
            Ok((first_reply, second_reply))
        }
    }

    /// How far the last request got, for a caller whose exchange was cut
    /// short: whether the agent may have acted on it.
    fn request_progress(&self) -> RequestProgress {
        RequestProgress::Unknown
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Agent for QgaClient<S> {
    fn execute<C: Command>(&mut self, command: &C) -> impl Future<Output = Result<C::Output, Error>> {
        QgaClient::execute(self, command)
    }

    fn execute_json(
        &mut self,
        name: &str,
        arguments: Option<&Value>,
    ) -> impl Future<Output = Result<Value, Error>> {
        QgaClient::execute_json(self, name, arguments)
    }

    fn execute_without_reply(
        &mut self,
        name: &str,
        arguments: Option<&Value>,
        grace: Duration,
    ) -> impl Future<Output = Result<(), Error>> {
        QgaClient::execute_without_reply(self, name, arguments, grace)
    }

    fn guest_exec(&mut self, exec: &GuestExec) -> impl Future<Output = Result<GuestExecReply, Error>> {
        QgaClient::guest_exec(self, exec)
    }

    fn execute_both<A: Command, B: Command>(
        &mut self,
        first: &A,
        second: &B,
    ) -> impl Future<Output = Result<Both<A, B>, Error>> {
        QgaClient::execute_both(self, first, second)
    }

    fn request_progress(&self) -> RequestProgress {
        QgaClient::request_progress(self)
    }
}

/// The agent of a domain, reached straight over its socket or through
/// libvirtd, which holds the agent's only channel of the domains it runs.
///
/// ```no_run
/// use std::path::Path;
/// use virtomate_protocol::libvirt::LibvirtAgent;
/// use virtomate_protocol::qga::GuestPing;
/// use virtomate_protocol::{Agent, AnyAgent, ClientOptions, QgaClient};
///
/// # async fn demo(held_by_libvirtd: bool) -> Result<(), virtomate_protocol::Error> {
/// let options = ClientOptions::default();
/// let mut agent = if held_by_libvirtd {
///     let socket = Path::new("/run/libvirt/libvirt-sock");
///     AnyAgent::Libvirt(LibvirtAgent::connect(socket, "qemu:///system", "web1", &options).await?)
/// } else {
///     AnyAgent::Direct(QgaClient::connect("/run/web1/qga.sock", options).await?)
/// };
/// agent.execute(&GuestPing {}).await?;
/// agent.close().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub enum AnyAgent {
    /// Straight over the agent's own socket.
    Direct(QgaClient),
    /// Through libvirtd.
    Libvirt(LibvirtAgent),
}

impl AnyAgent {
    /// Ends the session. Through libvirtd, the hypervisor connection is
    /// closed as libvirt's own clients close it, so that libvirtd does not
    /// log a client that vanished; a failure to close changes nothing that
    /// was done, so it is only logged.
    pub async fn close(self) {
        if let AnyAgent::Libvirt(agent) = self {
            if let Err(error) = agent.into_client().close().await {
                tracing::debug!(%error, "closing the connection to libvirtd");
            }
        }
    }
}

impl Agent for AnyAgent {
    async fn execute<C: Command>(&mut self, command: &C) -> Result<C::Output, Error> {
        match self {
            AnyAgent::Direct(agent) => agent.execute(command).await,
            AnyAgent::Libvirt(agent) => Agent::execute(agent, command).await,
        }
    }

    async fn execute_json(&mut self, name: &str, arguments: Option<&Value>) -> Result<Value, Error> {
        match self {
            AnyAgent::Direct(agent) => agent.execute_json(name, arguments).await,
            AnyAgent::Libvirt(agent) => agent.execute_json(name, arguments).await,
        }
    }

    async fn execute_without_reply(
        &mut self,
        name: &str,
        arguments: Option<&Value>,
        grace: Duration,
    ) -> Result<(), Error> {
        match self {
            AnyAgent::Direct(agent) => agent.execute_without_reply(name, arguments, grace).await,
            AnyAgent::Libvirt(agent) => agent.execute_without_reply(name, arguments, grace).await,
        }
    }

    async fn guest_exec(&mut self, exec: &GuestExec) -> Result<GuestExecReply, Error> {
        match self {
            AnyAgent::Direct(agent) => agent.guest_exec(exec).await,
            AnyAgent::Libvirt(agent) => agent.guest_exec(exec).await,
        }
    }

    async fn execute_both<A: Command, B: Command>(
        &mut self,
        first: &A,
        second: &B,
    ) -> Result<Both<A, B>, Error> {
        match self {
            AnyAgent::Direct(agent) => agent.execute_both(first, second).await,
            AnyAgent::Libvirt(agent) => Agent::execute_both(agent, first, second).await,
        }
    }

    fn request_progress(&self) -> RequestProgress {
        match self {
            AnyAgent::Direct(agent) => agent.request_progress(),
            AnyAgent::Libvirt(agent) => agent.request_progress(),
        }
    }
}
