//! QMP commands through libvirtd, for a domain whose monitor libvirtd
//! holds: the same answers and errors as from [`QmpClient`](crate::QmpClient).

use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixStream;

use super::{LibvirtClient, RemoteDomain};
use crate::qmp::Command;
use crate::wire::envelope::{parse_reply, ReplyFor, ReplyId, Request};
use crate::{ClientOptions, Deadline, Error};

/// QEMU's monitor of one domain, reached through libvirtd's RPC socket
/// (what `virsh qemu-monitor-command` does).
///
/// libvirtd marks the domain tainted (`custom-monitor`) on the first
/// command. Events do not come this way: libvirtd keeps them.
///
/// ```no_run
/// use virtomate_protocol::libvirt::LibvirtMonitor;
/// use virtomate_protocol::qmp::QueryStatus;
/// use virtomate_protocol::ClientOptions;
///
/// # async fn demo() -> Result<(), virtomate_protocol::Error> {
/// let socket = std::path::Path::new("/run/libvirt/libvirt-sock");
/// let options = ClientOptions::default();
/// let mut qemu = LibvirtMonitor::connect(socket, "qemu:///system", "web1", &options).await?;
/// let status = qemu.execute(&QueryStatus {}).await?;
/// println!("{} (running: {})", status.status, status.running);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct LibvirtMonitor<S = UnixStream> {
    client: LibvirtClient<S>,
    domain: RemoteDomain,
    reply_timeout: Duration,
}

impl LibvirtMonitor<UnixStream> {
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
        Ok(LibvirtMonitor::new(client, domain, options))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> LibvirtMonitor<S> {
    /// The monitor of `domain`, on a connection already open: for a
    /// stream other than libvirtd's UNIX socket (see
    /// [`LibvirtClient::handshake`]). Replies are awaited for
    /// [`ClientOptions::reply_timeout`].
    pub fn new(client: LibvirtClient<S>, domain: RemoteDomain, options: &ClientOptions) -> Self {
        LibvirtMonitor {
            client,
            domain,
            reply_timeout: options.reply_timeout,
        }
    }

    /// The connection back, e.g. to [`close`](LibvirtClient::close) it.
    pub fn into_client(self) -> LibvirtClient<S> {
        self.client
    }

    /// Sends `command` and returns its reply's `return`, within
    /// [`ClientOptions::reply_timeout`]. An error reply becomes
    /// [`Error::Agent`], as from [`QmpClient::execute`](crate::QmpClient::execute).
    pub async fn execute<C: Command>(&mut self, command: &C) -> Result<C::Output, Error> {
        self.exchange(C::NAME, Some(command)).await
    }

    /// Sends the command `name`, with `arguments` (an object) if given, and
    /// returns its reply's `return` as it came, within
    /// [`ClientOptions::reply_timeout`]. An error reply becomes
    /// [`Error::Agent`], as from [`QmpClient::execute_json`](crate::QmpClient::execute_json).
    pub async fn execute_json(&mut self, name: &str, arguments: Option<&Value>) -> Result<Value, Error> {
        self.exchange(name, arguments).await
    }

    async fn exchange<A: Serialize + ?Sized, T: DeserializeOwned>(
        &mut self,
        name: &str,
        arguments: Option<&A>,
    ) -> Result<T, Error> {
        let request = Request::new(name, arguments).to_json();
        let deadline = Deadline::after(self.reply_timeout);
        let reply = self
            .client
            .monitor_command(&self.domain, &request, deadline)
            .await?;
        match parse_reply(name, reply.as_bytes(), ReplyId::Any)? {
            ReplyFor::Us(output) => Ok(output),
            _ => Err(Error::Malformed {
                command: name.to_owned(),
                reason: "libvirtd returned an event instead of a reply".to_owned(),
            }),
        }
    }
}
