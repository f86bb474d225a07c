//! Choosing how to reach a domain's agent: which of its agent channels, or
//! libvirtd, by looking at who holds each channel before connecting.
//!
//! A channel serves one client at a time, and a second client is connected
//! but never answered: looking first turns a hang into a choice, or into an
//! error that names the holder.

use std::path::PathBuf;

use super::model::{is_socket, Channel, ChannelKind, Domain, Route, Source};
use super::socket_holders::{self, Holder};
use crate::error::{CliError, ErrorKind};

/// The agent port that libvirtd connects to and keeps.
const LIBVIRT_AGENT_PORT: &str = "org.qemu.guest_agent.0";

/// What was seen of one agent channel before connecting.
struct SeenChannel<'a> {
    channel: &'a Channel,
    /// Other processes connected to it (see [`socket_holders::holders`]).
    holders: Vec<Holder>,
    is_socket: bool,
}

impl Domain {
    /// How to reach the agent, looking at who holds each agent channel.
    ///
    /// virtomate processes hold a channel for one exchange at a time, a
    /// few milliseconds: one may close its connection between the moment
    /// it is seen and the moment its process is looked for.
    /// [`socket_holders::holders`] asks again about such a client and
    /// leaves it out once gone; one still seen that no process holds (its
    /// socket outliving its file descriptor for a moment) is looked at
    /// again a few times here before it counts.
    pub fn agent_route(&self) -> Result<Route, CliError> {
        // Never looked at: a relative path would be taken relative to our
        // own directory.
        if let Some(error) = self.unusable_channels_error() {
            return Err(error);
        }
        const LOOKS: usize = 5;
        const PAUSE: std::time::Duration = std::time::Duration::from_millis(20);
        for _ in 1..LOOKS {
            let seen = self.look();
            let fleeting = seen.iter().flat_map(|s| &s.holders).any(|h| h.pid.is_none());
            match self.choose_route(&seen) {
                Err(_) if fleeting => std::thread::sleep(PAUSE),
                chosen => return chosen,
            }
        }
        self.choose_route(&self.look())
    }

    fn look(&self) -> Vec<SeenChannel<'_>> {
        self.agent_channels
            .iter()
            .filter(|channel| channel.is_usable())
            .map(|channel| SeenChannel {
                channel,
                holders: socket_holders::holders(&channel.path),
                // An abstract socket has no file to look at.
                is_socket: channel.kind == ChannelKind::Abstract || is_socket(&channel.path),
            })
            .collect()
    }

    /// When the domain has agent channels and virtomate can use none: why
    /// not, for the first of them.
    pub fn unusable_channels_error(&self) -> Option<CliError> {
        if self.agent_channels.iter().any(Channel::is_usable) {
            return None;
        }
        let first = self.agent_channels.first()?;
        first.unusable_error(&self.described())
    }

    /// `QEMU process 42 ('web')`, `libvirt domain 'web'`.
    pub fn described(&self) -> String {
        match self.source {
            Source::Libvirt => format!("libvirt domain '{}'", self.name),
            Source::Qemu => format!("QEMU process {} ('{}')", self.pid.unwrap_or_default(), self.name),
            Source::Socket => format!("'{}'", self.name),
        }
    }

    /// In order of preference: a channel nobody else holds whose guest end
    /// is (or may be) open; libvirtd, when it holds a channel; a free
    /// channel whose guest end is closed; a missing one, so that connecting
    /// names the problem. A channel held by another virtomate counts as
    /// free: it is served in turn; so does one held by a process whose
    /// command cannot be read, most often a virtomate that has just
    /// exited (see [`Holder::is_waited_for`]). One held by anything else would never
    /// answer, so with nothing better this fails at once, naming the holder.
    fn choose_route(&self, seen: &[SeenChannel]) -> Result<Route, CliError> {
        if seen.is_empty() {
            return Err(CliError::new(
                ErrorKind::AgentUnavailable,
                self.no_channel_advice(),
            ));
        }
        let free = |seen: &&SeenChannel| seen.holders.iter().all(Holder::is_waited_for);
        let direct = |seen: &SeenChannel| Ok(Route::Direct(seen.channel.path.clone()));
        let usable = seen.iter().filter(free).filter(|seen| seen.is_socket);
        if let Some(best) = usable
            .clone()
            .find(|seen| seen.channel.guest_connected != Some(false))
        {
            return direct(best);
        }
        if let Some((uri, socket)) = &self.libvirt_daemon {
            if seen.iter().any(|seen| self.held_by_libvirtd(seen)) {
                return Ok(Route::Libvirt {
                    socket: socket.clone(),
                    uri,
                });
            }
        }
        if let Some(fallback) = usable.clone().next().or(seen.iter().find(free)) {
            return direct(fallback);
        }
        let held: Vec<String> = seen
            .iter()
            .map(|seen| {
                format!(
                    "{} is {}",
                    seen.channel.path.display(),
                    socket_holders::describe(&seen.holders)
                )
            })
            .collect();
        Err(CliError::new(
            ErrorKind::AgentUnavailable,
            format!(
                "every agent channel of '{}' is held by another client: {}; \
                 stop that client or wait until it is done",
                self.name,
                held.join("; ")
            ),
        ))
    }

    fn held_by_libvirtd(&self, seen: &SeenChannel) -> bool {
        let libvirt_keeps_it =
            self.source == Source::Libvirt && seen.channel.port_name.as_deref() == Some(LIBVIRT_AGENT_PORT);
        socket_holders::held_by_libvirtd(&seen.holders, libvirt_keeps_it)
    }

    fn no_channel_advice(&self) -> String {
        match self.source {
            Source::Libvirt => format!(
                "libvirt domain '{}' has no guest agent channel; add <channel type='unix'>\
                 <target type='virtio' name='org.qemu.guest_agent.0'/></channel> to its devices",
                self.name
            ),
            _ => format!(
                "QEMU process {} ('{}') has no guest agent channel; start it with \
                 -chardev socket,path=PATH,server=on,wait=off,id=qga0 -device virtio-serial \
                 -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
                self.pid.unwrap_or_default(),
                self.name
            ),
        }
    }
}

/// The channel libvirtd keeps of a libvirt domain, reached straight while
/// libvirtd did not hold it (stopped, restarting). libvirtd takes it back as
/// it starts, connecting to the agent of each domain it finds running, and
/// QEMU's chardev serves one client at a time: from then on a direct
/// connection waits in QEMU's queue, unanswered, and the agent (the same
/// one, which still knows the programs it started) answers only through
/// libvirtd.
#[derive(Debug, Clone)]
pub struct Handback {
    channel: PathBuf,
    domain: String,
    uri: &'static str,
    daemon_socket: PathBuf,
}

impl Domain {
    /// For a direct `route` over the channel libvirtd keeps, how to tell
    /// that libvirtd has taken it back, and the way through it then.
    pub fn handback(&self, route: &Route) -> Option<Handback> {
        let Route::Direct(path) = route else {
            return None;
        };
        let channel = self.agent_channels.iter().find(|channel| channel.path == *path)?;
        let kept = self.source == Source::Libvirt && channel.port_name.as_deref() == Some(LIBVIRT_AGENT_PORT);
        let (uri, daemon_socket) = self.libvirt_daemon.clone().filter(|_| kept)?;
        Some(Handback {
            channel: path.clone(),
            domain: self.name.clone(),
            uri,
            daemon_socket,
        })
    }

    /// For a route through libvirtd, the channel it keeps, as a way to
    /// the agent should libvirtd go away (and back once it has taken the
    /// channel again).
    pub fn libvirts_channel(&self) -> Option<Handback> {
        let channel = self.agent_channels.iter().find(|channel| {
            channel.is_usable() && channel.port_name.as_deref() == Some(LIBVIRT_AGENT_PORT)
        })?;
        self.handback(&Route::Direct(channel.path.clone()))
    }
}

impl Handback {
    /// Whether libvirtd runs and holds the channel. Its RPC socket is
    /// looked at first (gone, or one netlink dump, where the channel's
    /// holders take a look through `/proc`); where that cannot be told,
    /// the holders are looked at anyway.
    pub fn taken(&self) -> bool {
        let listening = match socket_holders::is_listening(&self.daemon_socket) {
            Ok(listening) => listening,
            // libvirtd removes its socket as it stops.
            Err(error) => error.kind() != std::io::ErrorKind::NotFound,
        };
        listening && socket_holders::held_by_libvirtd(&socket_holders::holders(&self.channel), true)
    }

    /// The channel libvirtd keeps, reached straight.
    pub fn channel(&self) -> &std::path::Path {
        &self.channel
    }

    /// The domain's name, libvirtd's URI and its RPC socket.
    pub fn through_libvirtd(&self) -> (&str, &'static str, &std::path::Path) {
        (&self.domain, self.uri, &self.daemon_socket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn libvirt_domain(channels: &[(&str, Option<bool>)]) -> Domain {
        Domain {
            name: "web".into(),
            uuid: Some("1-2".into()),
            pid: Some(42),
            source: Source::Libvirt,
            agent_channels: channels
                .iter()
                .map(|(port, guest_connected)| {
                    Channel::socket(
                        Some((*port).to_owned()),
                        format!("/run/{port}.sock").into(),
                        *guest_connected,
                    )
                })
                .collect(),
            qmp_sockets: Vec::new(),
            libvirt_daemon: Some(("qemu:///system", "/run/libvirt/libvirt-sock".into())),
            libvirt_state: None,
        }
    }

    fn holder(pid: Option<u32>, command: &str) -> Holder {
        Holder {
            pid,
            command: pid.map(|_| command.to_owned()),
            foreign_uid: None,
        }
    }

    /// The route `domain` takes when its channels are seen as given: holders
    /// and whether the socket exists, per channel.
    fn route(domain: &Domain, seen: &[(Vec<Holder>, bool)]) -> Result<Route, CliError> {
        let seen: Vec<SeenChannel> = domain
            .agent_channels
            .iter()
            .zip(seen)
            .map(|(channel, (holders, is_socket))| SeenChannel {
                channel,
                holders: holders.clone(),
                is_socket: *is_socket,
            })
            .collect();
        domain.choose_route(&seen)
    }

    fn through_libvirtd(route: Result<Route, CliError>) -> bool {
        matches!(
            route,
            Ok(Route::Libvirt {
                uri: "qemu:///system",
                ..
            })
        )
    }

    #[test]
    fn a_free_second_channel_beats_libvirtd() {
        let domain = libvirt_domain(&[
            ("org.qemu.guest_agent.0", Some(true)),
            ("org.qemu.guest_agent.1", None),
        ]);
        let libvirtd = vec![holder(Some(500), "libvirtd")];
        assert_eq!(
            route(&domain, &[(libvirtd, true), (vec![], true)]).unwrap(),
            Route::Direct("/run/org.qemu.guest_agent.1.sock".into())
        );
    }

    #[test]
    fn libvirtd_beats_a_missing_channel_and_one_the_guest_never_opened() {
        let domain = libvirt_domain(&[
            ("org.qemu.guest_agent.0", Some(true)),
            ("org.qemu.guest_agent.1", None),
            ("org.qemu.guest_agent.2", Some(false)),
        ]);
        let libvirtd = vec![holder(Some(500), "virtqemud")];
        let seen = [(libvirtd, true), (vec![], false), (vec![], true)];
        assert!(through_libvirtd(route(&domain, &seen)));
    }

    #[test]
    fn an_unnamed_holder_of_libvirts_own_channel_is_taken_for_libvirtd() {
        let domain = libvirt_domain(&[("org.qemu.guest_agent.0", None)]);
        assert!(through_libvirtd(route(
            &domain,
            &[(vec![holder(None, "")], true)]
        )));
        // Not so on any other channel, nor for a process we can name.
        let domain = libvirt_domain(&[("org.qemu.guest_agent.1", None)]);
        let err = route(&domain, &[(vec![holder(None, "")], true)]).unwrap_err();
        assert_eq!(err.json_type(), "AgentUnavailable");
        let domain = libvirt_domain(&[("org.qemu.guest_agent.0", None)]);
        let err = route(&domain, &[(vec![holder(Some(9), "socat")], true)]).unwrap_err();
        assert!(err.to_string().contains("held by socat (pid 9)"), "{err}");
    }

    #[test]
    fn without_libvirtd_a_closed_guest_end_then_a_missing_socket_are_the_fallbacks() {
        let mut domain = libvirt_domain(&[
            ("org.qemu.guest_agent.0", Some(false)),
            ("org.qemu.guest_agent.1", None),
        ]);
        domain.libvirt_daemon = None;
        let held = || vec![holder(Some(9), "socat")];
        assert_eq!(
            route(&domain, &[(vec![], true), (vec![], false)]).unwrap(),
            Route::Direct("/run/org.qemu.guest_agent.0.sock".into())
        );
        assert_eq!(
            route(&domain, &[(held(), true), (vec![], false)]).unwrap(),
            Route::Direct("/run/org.qemu.guest_agent.1.sock".into())
        );
        let err = route(&domain, &[(held(), true), (held(), true)]).unwrap_err();
        assert!(
            err.to_string().contains("every agent channel of 'web' is held"),
            "{err}"
        );
    }

    /// A virtomate that exited between being found and being looked at
    /// leaves a pid whose command cannot be read: waited for, not blamed.
    #[test]
    fn a_holder_whose_command_cannot_be_read_is_waited_for() {
        let domain = libvirt_domain(&[("org.qemu.guest_agent.1", None)]);
        let gone = Holder {
            pid: Some(7),
            command: None,
            foreign_uid: None,
        };
        assert_eq!(
            route(&domain, &[(vec![gone], true)]).unwrap(),
            Route::Direct("/run/org.qemu.guest_agent.1.sock".into())
        );
    }

    /// Only libvirt's own channel, reached straight, is taken back by
    /// libvirtd: not a second channel, nor a bare QEMU's.
    #[test]
    fn libvirtd_takes_back_only_its_own_channel() {
        let mut domain = libvirt_domain(&[
            ("org.qemu.guest_agent.0", Some(true)),
            ("org.qemu.guest_agent.1", Some(true)),
        ]);
        let direct = |port: &str| Route::Direct(format!("/run/{port}.sock").into());
        let handback = domain.handback(&direct("org.qemu.guest_agent.0")).unwrap();
        let (name, uri, socket) = handback.through_libvirtd();
        assert_eq!((name, uri), ("web", "qemu:///system"));
        assert_eq!(socket, std::path::Path::new("/run/libvirt/libvirt-sock"));
        assert!(domain.handback(&direct("org.qemu.guest_agent.1")).is_none());
        let libvirt = Route::Libvirt {
            socket: "/run/libvirt/libvirt-sock".into(),
            uri: "qemu:///system",
        };
        assert!(domain.handback(&libvirt).is_none());
        domain.source = Source::Qemu;
        assert!(domain.handback(&direct("org.qemu.guest_agent.0")).is_none());
    }

    #[test]
    fn another_virtomate_is_waited_for() {
        let domain = libvirt_domain(&[("org.qemu.guest_agent.1", None)]);
        assert_eq!(
            route(&domain, &[(vec![holder(Some(7), "virtomate")], true)]).unwrap(),
            Route::Direct("/run/org.qemu.guest_agent.1.sock".into())
        );
    }
}
