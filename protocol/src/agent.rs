//! What runs guest agent commands: a direct channel ([`QgaClient`]) or
//! libvirtd ([`LibvirtAgent`](crate::libvirt::LibvirtAgent)).

use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::qga::Command;
use crate::{Error, QgaClient};

/// Runs typed agent commands, whatever carries them.
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
    ///
    /// ```
    /// use virtomate_protocol::qga::GuestInfo;
    /// use virtomate_protocol::{Agent, Error};
    ///
    /// async fn agent_version(agent: &mut impl Agent) -> Result<String, Error> {
    ///     Ok(agent.execute(&GuestInfo {}).await?.version)
    /// }
    /// ```
    fn execute<C: Command>(&mut self, command: &C) -> impl Future<Output = Result<C::Output, Error>>;
}

impl<S: AsyncRead + AsyncWrite + Unpin> Agent for QgaClient<S> {
    fn execute<C: Command>(&mut self, command: &C) -> impl Future<Output = Result<C::Output, Error>> {
        QgaClient::execute(self, command)
    }
}
