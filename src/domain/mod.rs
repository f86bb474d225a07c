//! Turning the DOMAIN argument into a domain and its agent socket.
//!
//! In order: a socket path (anything with a `/`, or an existing socket in
//! the current directory), then a libvirt domain (by name or UUID, from
//! libvirt's status files), then the `-name` of a running bare QEMU
//! process. `-c URI` limits the search to one libvirt daemon.

mod libvirt;
mod procfs;
mod qemu_args;
pub mod socket_holders;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::CliError;
use libvirt::{LibvirtDirs, Lookup};
use socket_holders::Holder;

/// A UNIX socket channel to an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    /// The virtio port name, e.g. `org.qemu.guest_agent.0`, where known.
    pub port_name: Option<String>,
    pub path: PathBuf,
    /// Whether the guest has opened its end of the port, where the VM's
    /// manager records it (libvirt does, in the status file); `None`
    /// when unknown.
    pub guest_connected: Option<bool>,
}

/// How a domain was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// DOMAIN was the socket path itself.
    Socket,
    /// A bare QEMU process, by its `-name`.
    Qemu,
    /// A libvirt domain, by its status file.
    Libvirt,
}

/// A running domain and the ways to reach it.
#[derive(Debug, Clone)]
pub struct Domain {
    pub name: String,
    pub uuid: Option<String>,
    pub pid: Option<u32>,
    pub source: Source,
    pub agent_channels: Vec<Channel>,
    /// QMP sockets (for libvirt: the monitor, which libvirtd holds).
    pub qmp_sockets: Vec<PathBuf>,
    /// For libvirt domains: the daemon's URI and RPC socket.
    pub libvirt_daemon: Option<(&'static str, PathBuf)>,
}

/// How to reach a domain's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Straight over this agent socket.
    Direct(PathBuf),
    /// Through libvirtd's RPC socket, which holds the agent's channel.
    Libvirt { socket: PathBuf, uri: &'static str },
}

/// Where to look for domains.
#[derive(Debug, Clone)]
pub struct Scope {
    libvirt: Vec<LibvirtDirs>,
    bare_qemu: bool,
    proc_root: PathBuf,
}

impl Scope {
    /// Everything on this host, or only the libvirt daemon that `uri`
    /// (`-c`, else `LIBVIRT_DEFAULT_URI`) names.
    pub fn new(uri: Option<&str>) -> Result<Scope, CliError> {
        // As libvirt does, an empty URI (`-c ''`, `LIBVIRT_DEFAULT_URI=`) is no URI.
        let given = |uri: &&str| !uri.is_empty();
        let from_env = std::env::var("LIBVIRT_DEFAULT_URI").ok();
        let (libvirt, bare_qemu) = match uri.filter(given).or(from_env.as_deref().filter(given)) {
            None => (std::iter::once(LibvirtDirs::system()).chain(LibvirtDirs::session()).collect(), true),
            Some("qemu:///system") => (vec![LibvirtDirs::system()], false),
            Some("qemu:///session") => (
                vec![LibvirtDirs::session().ok_or_else(|| {
                    CliError::Usage("qemu:///session needs XDG_RUNTIME_DIR to find the session daemon".into())
                })?],
                false,
            ),
            Some(other) => {
                return Err(CliError::Usage(format!(
                    "unsupported connection URI '{other}': virtomate works on this host only, with qemu:///system or qemu:///session"
                )))
            }
        };
        Ok(Scope {
            libvirt,
            bare_qemu,
            proc_root: "/proc".into(),
        })
    }
}

/// Finds DOMAIN: a socket path, a libvirt domain, or a bare QEMU process.
pub fn find(domain: &str, scope: &Scope) -> Result<Domain, CliError> {
    if looks_like_socket_path(domain) {
        return Ok(Domain {
            name: domain.to_owned(),
            uuid: None,
            pid: None,
            source: Source::Socket,
            agent_channels: vec![Channel {
                port_name: None,
                path: domain.into(),
                guest_connected: None,
            }],
            qmp_sockets: Vec::new(),
            libvirt_daemon: None,
        });
    }
    // A running domain wins over one that is only defined, whichever
    // daemon or process it is found in.
    let mut stopped_in = None;
    for dirs in &scope.libvirt {
        match libvirt::lookup(dirs, domain) {
            Lookup::Running(found) => return Ok(from_libvirt(found, dirs)),
            Lookup::Stopped => stopped_in = stopped_in.or(Some(dirs.uri)),
            Lookup::Unknown => {}
        }
    }
    let mut matches: Vec<Domain> = match scope.bare_qemu {
        true => qemu_domains(scope)
            .into_iter()
            .filter(|found| {
                found.name == domain
                    || found
                        .uuid
                        .as_deref()
                        .is_some_and(|u| u.eq_ignore_ascii_case(domain))
            })
            .collect(),
        false => Vec::new(),
    };
    match (matches.len(), stopped_in) {
        (0, Some(uri)) => Err(CliError::IllegalState(format!(
            "Domain '{domain}' is not running ({uri}); start it, e.g. virsh -c {uri} start {domain}"
        ))),
        (0, None) => Err(CliError::NotFound(domain.to_owned())),
        (1, _) => Ok(matches.remove(0)),
        _ => {
            let pids: Vec<String> = matches
                .iter()
                .filter_map(|d| d.pid)
                .map(|p| p.to_string())
                .collect();
            Err(CliError::Ambiguous {
                name: domain.to_owned(),
                pids: pids.join(", "),
            })
        }
    }
}

/// Every running domain in scope: libvirt's, then bare QEMU processes
/// that libvirt does not manage.
pub fn list(scope: &Scope) -> Vec<Domain> {
    let mut domains: Vec<Domain> = scope
        .libvirt
        .iter()
        .flat_map(|dirs| {
            libvirt::running_domains(dirs)
                .into_iter()
                .map(|d| from_libvirt(d, dirs))
        })
        .collect();
    if scope.bare_qemu {
        let libvirt_pids: Vec<Option<u32>> = domains.iter().map(|d| d.pid).collect();
        domains.extend(
            qemu_domains(scope)
                .into_iter()
                .filter(|d| !libvirt_pids.contains(&d.pid)),
        );
    }
    domains
}

/// Named QEMU processes not started by libvirt, with socket paths made
/// absolute against each process's working directory.
fn qemu_domains(scope: &Scope) -> Vec<Domain> {
    procfs::qemu_processes(&scope.proc_root)
        .into_iter()
        .filter_map(|process| {
            let absolute = |path: PathBuf| match &process.cwd {
                Some(cwd) if path.is_relative() => cwd.join(path),
                _ => path,
            };
            Some(Domain {
                name: process.args.name?,
                uuid: process.args.uuid,
                pid: Some(process.pid),
                source: Source::Qemu,
                agent_channels: process
                    .args
                    .agent_channels
                    .into_iter()
                    .map(|channel| Channel {
                        path: absolute(channel.path),
                        ..channel
                    })
                    .collect(),
                qmp_sockets: process.args.qmp_sockets.into_iter().map(absolute).collect(),
                libvirt_daemon: None,
            })
        })
        .collect()
}

fn from_libvirt(found: libvirt::LibvirtDomain, dirs: &LibvirtDirs) -> Domain {
    Domain {
        name: found.name,
        uuid: Some(found.uuid),
        pid: found.pid,
        source: Source::Libvirt,
        agent_channels: found.agent_channels,
        qmp_sockets: found.monitor.into_iter().collect(),
        libvirt_daemon: Some((dirs.uri, dirs.rpc_socket())),
    }
}

impl Domain {
    /// How to reach the agent, looking at who holds each agent channel.
    pub fn agent_route(&self) -> Result<Route, CliError> {
        let seen: Vec<SeenChannel> = self
            .agent_channels
            .iter()
            .map(|channel| SeenChannel {
                channel,
                holders: socket_holders::holders(&channel.path),
                is_socket: is_socket(&channel.path),
            })
            .collect();
        self.choose_route(&seen)
    }

    /// In order of preference: a channel nobody else holds whose guest end
    /// is (or may be) open; libvirtd, when it holds a channel; a free
    /// channel whose guest end is closed; a missing one, so that connecting
    /// names the problem. A channel held by another virtomate counts as
    /// free: it is served in turn. One held by anything else would never
    /// answer, so with nothing better this fails at once, naming the holder.
    fn choose_route(&self, seen: &[SeenChannel]) -> Result<Route, CliError> {
        if seen.is_empty() {
            return Err(CliError::AgentUnavailable(self.no_channel_advice()));
        }
        let free = |seen: &&SeenChannel| seen.holders.iter().all(Holder::is_virtomate);
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
        Err(CliError::AgentUnavailable(format!(
            "every agent channel of '{}' is held by another client: {}; stop that client or wait until it is done",
            self.name,
            held.join("; ")
        )))
    }

    fn held_by_libvirtd(&self, seen: &SeenChannel) -> bool {
        let libvirt_keeps_it =
            self.source == Source::Libvirt && seen.channel.port_name.as_deref() == Some(LIBVIRT_AGENT_PORT);
        socket_holders::held_by_libvirtd(&seen.holders, libvirt_keeps_it)
    }

    fn no_channel_advice(&self) -> String {
        match self.source {
            Source::Libvirt => format!(
                "libvirt domain '{}' has no guest agent channel; add <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel> to its devices",
                self.name
            ),
            _ => format!(
                "QEMU process {} ('{}') has no guest agent channel; start it with -chardev socket,path=PATH,server=on,wait=off,id=qga0 -device virtio-serial -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
                self.pid.unwrap_or_default(),
                self.name
            ),
        }
    }
}

/// Agent channels by port number: `org.qemu.guest_agent.2` before `.10`.
fn sort_by_port_number(channels: &mut [Channel]) {
    channels.sort_by_key(|channel| {
        let number = channel
            .port_name
            .as_deref()
            .and_then(|name| name.strip_prefix(qemu_args::AGENT_PORT_PREFIX));
        let number = number.and_then(|n| n.parse::<u32>().ok()).unwrap_or(u32::MAX);
        (number, channel.port_name.clone())
    });
}

/// What was seen of one agent channel before connecting.
struct SeenChannel<'a> {
    channel: &'a Channel,
    /// Other processes connected to it (see [`socket_holders::holders`]).
    holders: Vec<Holder>,
    is_socket: bool,
}

/// The agent port that libvirtd connects to and keeps.
const LIBVIRT_AGENT_PORT: &str = "org.qemu.guest_agent.0";

fn looks_like_socket_path(domain: &str) -> bool {
    domain.contains('/') || is_socket(Path::new(domain))
}

fn is_socket(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|meta| meta.file_type().is_socket())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn fake_proc(processes: &[(u32, &[&str], &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (pid, argv, cwd) in processes {
            let dir = root.path().join(pid.to_string());
            fs::create_dir(&dir).unwrap();
            let mut cmdline = argv.join("\0");
            cmdline.push('\0');
            fs::write(dir.join("cmdline"), cmdline).unwrap();
            std::os::unix::fs::symlink(cwd, dir.join("cwd")).unwrap();
        }
        fs::create_dir(root.path().join("self")).unwrap();
        root
    }

    fn bare_qemu_only(proc_root: &Path) -> Scope {
        Scope {
            libvirt: Vec::new(),
            bare_qemu: true,
            proc_root: proc_root.into(),
        }
    }

    const VM: &[&str] = &[
        "/usr/bin/qemu-system-x86_64",
        "-name",
        "web",
        "-chardev",
        "socket,path=vm/qga.sock,server=on,wait=off,id=qga0",
        "-device",
        "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        "-qmp",
        "unix:vm/qmp.sock,server=on,wait=off",
    ];

    #[test]
    fn name_of_a_qemu_process_gives_its_sockets_relative_to_its_cwd() {
        let proc_root = fake_proc(&[(42, VM, "/srv"), (7, &["bash", "-name", "web"], "/")]);
        let domain = find("web", &bare_qemu_only(proc_root.path())).unwrap();
        assert_eq!(domain.pid, Some(42));
        assert_eq!(domain.agent_channels[0].path, Path::new("/srv/vm/qga.sock"));
        assert_eq!(domain.qmp_sockets, [PathBuf::from("/srv/vm/qmp.sock")]);
    }

    #[test]
    fn a_qemu_process_is_found_by_its_uuid_too() {
        let mut argv = VM.to_vec();
        argv.extend(["-uuid", "0766eb29-75b8-4805-ad22-aad5fcd186c4"]);
        let proc_root = fake_proc(&[(42, &argv, "/srv")]);
        let domain = find(
            "0766EB29-75B8-4805-AD22-AAD5FCD186C4",
            &bare_qemu_only(proc_root.path()),
        )
        .unwrap();
        assert_eq!((domain.name.as_str(), domain.pid), ("web", Some(42)));
        assert_eq!(
            domain.uuid.as_deref(),
            Some("0766eb29-75b8-4805-ad22-aad5fcd186c4")
        );
    }

    #[test]
    fn unknown_name_is_not_found() {
        let proc_root = fake_proc(&[(42, VM, "/srv")]);
        let err = find("db", &bare_qemu_only(proc_root.path())).unwrap_err();
        assert_eq!(err.to_string(), "Domain 'db' does not exist");
        assert_eq!(err.kind(), "NotFoundError");
    }

    #[test]
    fn two_processes_with_one_name_are_ambiguous() {
        let proc_root = fake_proc(&[(42, VM, "/a"), (43, VM, "/b")]);
        let err = find("web", &bare_qemu_only(proc_root.path())).unwrap_err();
        assert_eq!(err.kind(), "AmbiguousDomainError");
        assert!(err.to_string().contains("42, 43"), "{err}");
    }

    #[test]
    fn a_vm_without_agent_channel_says_how_to_add_one() {
        let proc_root = fake_proc(&[(42, &["qemu-system-x86_64", "-name", "web"], "/")]);
        let domain = find("web", &bare_qemu_only(proc_root.path())).unwrap();
        let err = domain.agent_route().unwrap_err();
        assert_eq!(err.kind(), "AgentUnavailable");
        assert!(err.to_string().contains("org.qemu.guest_agent.0"), "{err}");
    }

    fn libvirt_domain(channels: &[(&str, Option<bool>)]) -> Domain {
        Domain {
            name: "web".into(),
            uuid: Some("1-2".into()),
            pid: Some(42),
            source: Source::Libvirt,
            agent_channels: channels
                .iter()
                .map(|(port, guest_connected)| Channel {
                    port_name: Some((*port).to_owned()),
                    path: format!("/run/{port}.sock").into(),
                    guest_connected: *guest_connected,
                })
                .collect(),
            qmp_sockets: Vec::new(),
            libvirt_daemon: Some(("qemu:///system", "/run/libvirt/libvirt-sock".into())),
        }
    }

    fn holder(pid: Option<u32>, command: &str) -> Holder {
        Holder {
            pid,
            command: pid.map(|_| command.to_owned()),
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
        assert_eq!(err.kind(), "AgentUnavailable");
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

    #[test]
    fn another_virtomate_is_waited_for() {
        let domain = libvirt_domain(&[("org.qemu.guest_agent.1", None)]);
        assert_eq!(
            route(&domain, &[(vec![holder(Some(7), "virtomate")], true)]).unwrap(),
            Route::Direct("/run/org.qemu.guest_agent.1.sock".into())
        );
    }

    #[test]
    fn a_running_domain_wins_over_a_defined_one_elsewhere() {
        let root = tempfile::tempdir().unwrap();
        let daemon = |name: &str| {
            let dirs = libvirt::LibvirtDirs {
                uri: if name == "system" {
                    "qemu:///system"
                } else {
                    "qemu:///session"
                },
                status: root.path().join(name).join("run"),
                config: root.path().join(name).join("config"),
                sockets: root.path().join(name),
            };
            fs::create_dir_all(&dirs.status).unwrap();
            fs::create_dir_all(&dirs.config).unwrap();
            dirs
        };
        let (system, session) = (daemon("system"), daemon("session"));
        let definition = "<domain type='qemu'><name>web</name><uuid>1-2</uuid></domain>";
        fs::write(system.config.join("web.xml"), definition).unwrap();
        let proc_root = fake_proc(&[(42, VM, "/srv")]);
        let scope = |libvirt: Vec<libvirt::LibvirtDirs>| Scope {
            libvirt,
            bare_qemu: true,
            proc_root: proc_root.path().into(),
        };

        // Defined under system, running as a bare QEMU process.
        let found = find("web", &scope(vec![system.clone()])).unwrap();
        assert_eq!(found.source, Source::Qemu);
        // Defined under system, running under session.
        let status = include_str!("../../tests/data/libvirt-status-two-channels.xml");
        fs::write(session.status.join("virtomate-test.xml"), status).unwrap();
        fs::write(
            system.config.join("virtomate-test.xml"),
            definition.replace("web", "virtomate-test"),
        )
        .unwrap();
        let found = find("virtomate-test", &scope(vec![system.clone(), session])).unwrap();
        assert_eq!(found.libvirt_daemon.unwrap().0, "qemu:///session");
        // Only defined: not running, naming the daemon.
        let err = find("virtomate-test", &scope(vec![system])).unwrap_err();
        assert_eq!(err.kind(), "IllegalStateError");
        assert!(err.to_string().contains("not running (qemu:///system)"), "{err}");
    }

    #[test]
    fn anything_with_a_slash_is_a_path() {
        let domain = find("./web", &bare_qemu_only(Path::new("/nonexistent"))).unwrap();
        assert_eq!(domain.source, Source::Socket);
        assert_eq!(domain.agent_route().unwrap(), Route::Direct("./web".into()));
    }

    #[test]
    fn connection_uris_choose_the_daemon() {
        assert!(!Scope::new(Some("qemu:///system")).unwrap().bare_qemu);
        let err = Scope::new(Some("qemu+ssh://host/system")).unwrap_err();
        assert!(err.to_string().contains("qemu:///system"), "{err}");
    }
}
