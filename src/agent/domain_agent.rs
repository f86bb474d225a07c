//! Reaching the agent of a domain, whichever way it is reached, with the
//! socket it was reached on so that errors can name it.

use std::path::PathBuf;

use std::time::Duration;

use serde_json::Value;
use virtomate_protocol::feed::{DIRECT_CHUNK, LIBVIRT_CHUNK};
use virtomate_protocol::follow::{DIRECT_READ_COUNT, LIBVIRT_READ_COUNT};
use virtomate_protocol::qga::Command;
use virtomate_protocol::session::{Failure, RunRequest, Session, SessionOptions};
use virtomate_protocol::{
    wait_for_exit_on, Agent, Channel, ClientOptions, Finished, HoldPolicy, PollSchedule, SocketConnector,
};

use super::connector::DomainConnector;
use super::context::Context;
use super::errors::{AgentErrors, RunFront};
use super::route_errors::{RouteErrors, RouteTaken};
use super::silence::Silence;
use crate::domain::{self, Domain, Handback, Route, Scope};
use crate::error::CliError;
use crate::master::{persist_setting, route_to_running_master, MasterConnector, MasterRun};

/// The agent of a domain, synchronised and ready. Its channel is held for
/// one exchange at a time where others may want it (see
/// [`DomainAgent::wait_for_exit`]).
pub struct DomainAgent {
    session: Session<DomainConnector>,
    errors: RouteErrors,
    /// What was found, to ask QEMU why the agent went silent.
    silence: Silence,
}

impl DomainAgent {
    pub async fn connect(domain: &str, context: &Context) -> Result<DomainAgent, CliError> {
        DomainAgent::connect_with(domain, &context.scope, context.options.clone()).await
    }

    pub async fn connect_with(
        domain: &str,
        scope: &Scope,
        options: ClientOptions,
    ) -> Result<DomainAgent, CliError> {
        let mut agent = DomainAgent::open(domain, scope, options)?;
        agent.connect_now(scope).await?;
        Ok(agent)
    }

    /// The agent of `domain`, found and its route chosen, not connected
    /// yet: `session` connects when the first request comes.
    pub fn open(domain: &str, scope: &Scope, options: ClientOptions) -> Result<DomainAgent, CliError> {
        let found = domain::find(domain, scope)?;
        let persist = persist_setting();
        let route = match persist.and_then(|_| route_to_running_master(&found)) {
            // A master started on a libvirt domain's channel while libvirtd
            // was down is passed by once libvirtd holds the channel again:
            // its connections would only queue behind libvirtd's, and fill
            // QEMU's backlog ("Resource temporarily unavailable").
            Some(route) if !found.handback(&route).is_some_and(|handback| handback.taken()) => route,
            _ => found.agent_route()?,
        };
        let handback = found.handback(&route);
        Ok(DomainAgent::over(
            &found, route, scope, options, persist, handback,
        ))
    }

    /// Over `route`; a direct one through the socket's control master
    /// where `persist` asks for one, or through libvirtd once it takes the
    /// channel back where `handback` tells when.
    fn over(
        found: &Domain,
        route: Route,
        scope: &Scope,
        options: ClientOptions,
        persist: Option<Duration>,
        handback: Option<Handback>,
    ) -> DomainAgent {
        let silence = Silence::new(found, scope, options.clone());
        let taken = RouteTaken::default();
        let (connector, socket) = match route {
            Route::Direct(socket) if persist.is_some() => {
                let persist = persist.expect("matched");
                match MasterConnector::new(&socket, persist, options.clone()) {
                    Some(master) => {
                        tracing::debug!(master = %master.socket().display(), "through the control master");
                        (DomainConnector::Master(master), socket)
                    }
                    None => (
                        DomainConnector::Direct(SocketConnector::new(&socket, options), silence.listener()),
                        socket,
                    ),
                }
            }
            Route::Direct(socket) => {
                tracing::debug!(
                    socket = %socket.display(),
                    source = ?found.source,
                    "the agent of {}",
                    found.name
                );
                let direct = SocketConnector::new(&socket, options.clone());
                let connector = match handback {
                    Some(handback) => DomainConnector::LibvirtsChannel {
                        direct,
                        handback,
                        options,
                        taken: taken.clone(),
                    },
                    None => DomainConnector::Direct(direct, silence.listener()),
                };
                (connector, socket)
            }
            Route::Libvirt { socket, uri } => {
                tracing::info!(
                    socket = %socket.display(),
                    "libvirtd holds the agent channel: going through libvirtd"
                );
                let connector = DomainConnector::Libvirt {
                    socket: socket.clone(),
                    uri,
                    domain: found.name.clone(),
                    options,
                    channel: found.libvirts_channel(),
                    taken: taken.clone(),
                };
                (connector, socket)
            }
        };
        let through_libvirtd = matches!(connector, DomainConnector::Libvirt { .. });
        let libvirt_sized = connector.libvirt_sized();
        let master = match &connector {
            DomainConnector::Master(master) => Some(master.socket().to_owned()),
            _ => None,
        };
        DomainAgent {
            session: Session::new(connector, run_options(libvirt_sized)),
            errors: RouteErrors::new(
                AgentErrors {
                    socket,
                    through_libvirtd,
                    master,
                },
                taken,
            ),
            silence,
        }
    }

    /// Connects to the agent of `found` over `route`, as chosen by
    /// [`Domain::agent_route`] or, for `doctor`, the channel it examined:
    /// never through a control master, nor libvirtd where it was not
    /// chosen, which would hide what it examines.
    pub async fn connect_to(
        found: &Domain,
        route: Route,
        scope: &Scope,
        options: ClientOptions,
    ) -> Result<DomainAgent, CliError> {
        let mut agent = DomainAgent::over(found, route, scope, options, None, None);
        agent.connect_now(scope).await?;
        Ok(agent)
    }

    /// Connects, if not connected; an error names the socket, and for a
    /// QMP socket given by mistake, the agent sockets of its VM.
    pub async fn connect_now(&mut self, scope: &Scope) -> Result<(), CliError> {
        let Err(e) = self.session.channel().agent().await.map(|_| ()) else {
            return Ok(());
        };
        Err(self.connection_error(e, scope).await)
    }

    /// Connects for a run of `domain`: where a control master serves its
    /// agent and `whole` is a run it runs whole, gives it the run as `id`,
    /// which goes on there once the master says it is ready
    /// ([`MasterRun::ready`]); else connects as [`connect`](Self::connect)
    /// does.
    pub async fn connect_for_run(
        domain: &str,
        context: &Context,
        whole: Option<(Value, &RunRequest)>,
    ) -> Result<(DomainAgent, Option<MasterRun>), CliError> {
        let mut agent = DomainAgent::open(domain, &context.scope, context.options.clone())?;
        let started = match (agent.session.channel().connector(), whole) {
            (DomainConnector::Master(master), Some((id, run))) => {
                Some(MasterRun::send(master, id, run).await)
            }
            _ => None,
        };
        match started {
            Some(Ok(run)) => Ok((agent, Some(run))),
            Some(Err(e)) => Err(agent.connection_error(e, &context.scope).await),
            None => agent.connect_now(&context.scope).await.map(|()| (agent, None)),
        }
    }

    /// The error for a connection that failed: naming the socket, and for
    /// a QMP socket given by mistake, the agent sockets of its VM.
    pub async fn connection_error(&self, e: virtomate_protocol::Error, scope: &Scope) -> CliError {
        let monitor = matches!(e, virtomate_protocol::Error::NotAnAgent { .. });
        let error = self.error(e);
        match monitor
            .then(|| agent_sockets_beside(self.socket(), scope))
            .flatten()
        {
            Some(agents) => error.with_hint(format!("the agent socket of that VM: {agents}")),
            None => self.explain_silence(error).await,
        }
    }

    pub async fn execute<C: Command>(&mut self, command: &C) -> Result<C::Output, CliError> {
        let result = self.session.channel().execute(command).await;
        result.map_err(|e| self.error(e))
    }

    /// Any command by name. For the few that never reply on success,
    /// `without_reply` is how long an error reply may take (see `guest-cmd`)
    /// and the answer is `null`.
    pub async fn execute_json(
        &mut self,
        name: &str,
        arguments: Option<&Value>,
        without_reply: Option<Duration>,
    ) -> Result<Value, virtomate_protocol::Error> {
        let agent = self.session.channel().agent().await?;
        match without_reply {
            Some(grace) => agent
                .execute_without_reply(name, arguments, grace)
                .await
                .map(|()| Value::Null),
            None => agent.execute_json(name, arguments).await,
        }
    }

    /// Ends the session: the connection closes (through libvirtd, as
    /// libvirt's clients close it) and the channel is free.
    pub async fn close(mut self) {
        self.session.channel().release().await;
    }

    /// Polls until the program `pid` has ended, holding the channel while
    /// the program is young and nobody else waits, and letting go of it
    /// between later polls, so that other runs on the same VM go on in
    /// the meantime (see [`HoldPolicy`]).
    pub async fn wait_for_exit(&mut self, pid: i64) -> Result<Finished, CliError> {
        let result = wait_for_exit_on(
            self.session.channel(),
            pid,
            PollSchedule::default(),
            HoldPolicy::default(),
        )
        .await;
        match result {
            Ok(finished) => Ok(finished),
            Err(e) => {
                let error = self.errors().error_while_running(e, pid);
                Err(self.explain_silence(error).await)
            }
        }
    }

    /// The channel itself, for the protocol crate's drivers that need it
    /// (following output: [`virtomate_protocol::follow`]).
    pub fn channel(&mut self) -> &mut Channel<DomainConnector> {
        self.session.channel()
    }

    /// The run engine over this agent's channel.
    pub fn session(&mut self) -> &mut Session<DomainConnector> {
        &mut self.session
    }

    /// What a run's failure means, in guest-run's terms, with QEMU's run
    /// state where the agent went silent.
    pub async fn run_failure(&self, failure: Failure) -> CliError {
        self.silence
            .run_failure(failure, &self.errors(), RunFront::GuestRun)
            .await
    }

    /// The error for a whole run whose control master (its socket
    /// `master`) went away before the run's end.
    pub fn master_lost(&self, failure: Failure, master: &std::path::Path) -> CliError {
        self.errors().master_lost(failure, master)
    }

    /// The error for a run given up on a signal, saying what it left.
    pub fn abandoned(&self, left: virtomate_protocol::session::Left) -> CliError {
        self.errors().abandoned(left)
    }

    /// Whether the agent is reached through libvirtd, with its size limits.
    pub fn through_libvirtd(&self) -> bool {
        self.errors().through_libvirtd
    }

    /// Sends `command`, leaving the agent's error as it is: for callers
    /// that tell its cases apart (`copy`: a missing file, a stale handle).
    pub async fn execute_raw<C: Command>(
        &mut self,
        command: &C,
    ) -> Result<C::Output, virtomate_protocol::Error> {
        self.session.channel().execute(command).await
    }

    /// The socket the agent was first reached on (the agent's, or
    /// libvirtd's): what keys its files beside the channel's lock.
    pub fn socket(&self) -> &std::path::Path {
        &self.errors.first().socket
    }

    /// The socket the agent is reached on now, as its failures name it:
    /// the route taken at first, or since (see [`DomainAgent::errors`]).
    pub fn socket_now(&self) -> std::path::PathBuf {
        self.errors().socket
    }

    /// What names the agent's failures: the route taken at first, or
    /// libvirtd once it has taken the channel back (see
    /// [`DomainConnector::LibvirtsChannel`]).
    fn errors(&self) -> AgentErrors {
        self.errors.now()
    }

    /// An agent that does not answer in time may be in a VM that does not
    /// run: QEMU (or libvirt's record) knows, and the advice is then QEMU's
    /// state and what to do about it rather than to check the agent.
    async fn explain_silence(&self, error: CliError) -> CliError {
        self.silence.explain(error).await
    }

    /// What explains a silent agent, for a caller that keeps no
    /// `DomainAgent` (`session`).
    pub fn silence(&self) -> Silence {
        self.silence.clone()
    }

    pub fn error(&self, error: virtomate_protocol::Error) -> CliError {
        self.errors().error(error)
    }

    /// Like [`DomainAgent::error`], for a failure while the program `pid`
    /// runs in the guest (see [`AgentErrors::error_while_running`]).
    pub fn error_while_running(&self, error: virtomate_protocol::Error, pid: i64) -> CliError {
        self.errors().error_while_running(error, pid)
    }

    /// Like [`DomainAgent::error`], keeping the class of the agent's error reply,
    /// which the raw commands show.
    pub fn raw_error(&self, error: virtomate_protocol::Error) -> CliError {
        self.errors().raw_error(error)
    }

    /// How the engine runs programs over this agent's route (see
    /// [`run_options`]), for `session`, which drives the channel itself.
    pub fn run_options(&self) -> SessionOptions {
        run_options(self.session.connector().libvirt_sized())
    }

    /// The connector and what names its errors, for `session`, which
    /// drives the channel itself.
    pub fn into_parts(self) -> (DomainConnector, RouteErrors) {
        (self.session.into_channel().into_connector(), self.errors)
    }
}

/// The agent sockets of the running VM whose QMP socket is `monitor`, if
/// virtomate can find it: for a user who gave the monitor's path.
fn agent_sockets_beside(monitor: &std::path::Path, scope: &Scope) -> Option<String> {
    let same = |qmp: &PathBuf| std::fs::canonicalize(qmp).ok() == std::fs::canonicalize(monitor).ok();
    let vm = domain::list(scope)
        .into_iter()
        .find(|vm| vm.qmp_sockets.iter().any(same))?;
    let paths: Vec<String> = vm
        .agent_channels
        .iter()
        .filter(|c| c.unusable().is_none())
        .filter_map(|c| c.shown_path())
        .collect();
    (!paths.is_empty()).then(|| paths.join(", "))
}

/// How the engine runs a command's programs: followed output read, and
/// interactive input written, in pieces that libvirtd, where it carries
/// them, can take.
fn run_options(through_libvirtd: bool) -> SessionOptions {
    SessionOptions {
        follow_read_count: match through_libvirtd {
            true => LIBVIRT_READ_COUNT,
            false => DIRECT_READ_COUNT,
        },
        input_chunk: match through_libvirtd {
            true => LIBVIRT_CHUNK,
            false => DIRECT_CHUNK,
        },
        ..SessionOptions::default()
    }
}
