//! Finding DOMAIN, and listing every running domain.
//!
//! In order: a socket path (anything with a `/`, an existing socket in the
//! current directory, or `@NAME` for an abstract socket), then a libvirt domain (by name or UUID, from
//! libvirt's status files), then the `-name` (or `-uuid`) of a running bare
//! QEMU process. `-c URI` limits the search to one libvirt daemon.

use std::path::{Path, PathBuf};

use super::libvirt::{self, LibvirtDirs, Lookup};
use super::model::{is_abstract, is_socket, Channel, ChannelKind, Domain, Source};
use super::procfs;
use crate::error::{CliError, ErrorKind};

/// Where to look for domains.
#[derive(Debug, Clone)]
pub struct Scope {
    libvirt: Vec<LibvirtDirs>,
    bare_qemu: bool,
    proc_root: PathBuf,
}

impl Scope {
    /// Everything on this host, or only the libvirt daemon that `uri`
    /// (`-c`) names. `LIBVIRT_DEFAULT_URI` (`env_uri`) picks the libvirt
    /// daemon too, as for `virsh`, but many hosts set it for virsh's sake:
    /// it does not hide bare QEMU processes, which only an explicit `-c`
    /// leaves out.
    pub fn new(uri: Option<&str>, env_uri: Option<&str>) -> Result<Scope, CliError> {
        // As libvirt does, an empty URI (`-c ''`, `LIBVIRT_DEFAULT_URI=`) is no URI.
        let given = |uri: &&str| !uri.is_empty();
        let (uri, bare_qemu) = match (uri.filter(given), env_uri.filter(given)) {
            (Some(explicit), _) => (Some(explicit), false),
            (None, from_env) => (from_env, true),
        };
        let libvirt = match uri {
            None => std::iter::once(LibvirtDirs::system())
                .chain(LibvirtDirs::session())
                .collect(),
            Some("qemu:///system") => vec![LibvirtDirs::system()],
            Some("qemu:///session") => match LibvirtDirs::session() {
                Some(dirs) => vec![dirs],
                // From the environment, a default that cannot apply here
                // still leaves the bare QEMU processes to look in.
                None if bare_qemu => Vec::new(),
                None => {
                    return Err(CliError::usage(
                        "qemu:///session needs XDG_RUNTIME_DIR to find the session daemon",
                    ))
                }
            },
            Some(other) => {
                return Err(CliError::usage(format!(
                    "unsupported connection URI '{other}': virtomate works on this host only, with \
                     qemu:///system or qemu:///session"
                )))
            }
        };
        Ok(Scope {
            libvirt,
            bare_qemu,
            proc_root: "/proc".into(),
        })
    }

    /// Where a lookup in this scope looks, for a domain not found: so that
    /// a typo can be told from a lookup that was limited.
    pub fn described(&self) -> String {
        let daemons: Vec<&str> = self.libvirt.iter().map(|dirs| dirs.uri).collect();
        let libvirt = match daemons.as_slice() {
            [] => "no libvirt daemon".to_owned(),
            [one] => format!("the libvirt domains of {one}"),
            several => format!("the libvirt domains of {}", several.join(" and ")),
        };
        if self.bare_qemu {
            format!("looked in {libvirt} and among running QEMU processes")
        } else {
            format!("looked in {libvirt} only: -c leaves out bare QEMU processes")
        }
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
                kind: match is_abstract(Path::new(domain)) {
                    true => ChannelKind::Abstract,
                    false => ChannelKind::Socket,
                },
                ..Channel::socket(None, domain.into(), None)
            }],
            qmp_sockets: Vec::new(),
            libvirt_daemon: None,
            libvirt_state: None,
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
                // As text, ignoring case, as libvirt's lookup below: there is
                // nothing to parse, so no `uuid` crate. (Parsing would also
                // let `0766eb2975b8…` without hyphens match, which it does
                // not today.)
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
        (0, Some(uri)) => Err(CliError::new(
            ErrorKind::IllegalState,
            format!("Domain '{domain}' is not running ({uri}); start it, e.g. virsh -c {uri} start {domain}"),
        )),
        (0, None) => Err(CliError::not_found(domain, &scope.described())),
        (1, _) => Ok(matches.remove(0)),
        _ => {
            let pids: Vec<String> = matches
                .iter()
                .filter_map(|d| d.pid)
                .map(|p| p.to_string())
                .collect();
            // What to pass instead: each candidate's agent socket.
            let candidates: Vec<String> = matches
                .iter()
                .map(|d| {
                    let sockets: Vec<String> = d
                        .agent_channels
                        .iter()
                        .map(|c| match (c.shown_path(), c.unusable()) {
                            (Some(path), None) => path,
                            (_, Some(why)) => why,
                            (None, None) => String::new(),
                        })
                        .collect();
                    match sockets.as_slice() {
                        [] => format!("pid {} has no agent channel", d.pid.unwrap_or_default()),
                        _ => format!("pid {}: {}", d.pid.unwrap_or_default(), sockets.join(", ")),
                    }
                })
                .collect();
            Err(CliError::ambiguous(
                domain,
                &pids.join(", "),
                &candidates.join("; "),
            ))
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
/// absolute against each process's working directory. A `-daemonize`d
/// QEMU has changed that to `/` after binding its sockets, so its relative
/// paths name nothing we can find: its agent channels say so, and its
/// relative QMP sockets are left out.
fn qemu_domains(scope: &Scope) -> Vec<Domain> {
    procfs::qemu_processes(&scope.proc_root)
        .into_iter()
        .filter_map(|process| {
            const DAEMONIZED: &str =
                "QEMU was started with -daemonize and has left the directory it was started in";
            const NO_CWD: &str = "the QEMU process's working directory (/proc/PID/cwd) cannot be read";
            let cwd = match process.args.daemonize {
                true => Err(DAEMONIZED),
                false => process.cwd.clone().ok_or(NO_CWD),
            };
            let absolute = |path: PathBuf| match &cwd {
                _ if path.is_absolute() => Ok(path),
                Ok(cwd) => Ok(cwd.join(path)),
                Err(why) => Err((path, *why)),
            };
            let channel = |channel: Channel| match channel.kind {
                ChannelKind::Socket => match absolute(channel.path) {
                    Ok(path) => Channel { path, ..channel },
                    Err((path, why)) => Channel {
                        path,
                        kind: ChannelKind::UnresolvedRelative(why),
                        ..channel
                    },
                },
                _ => channel,
            };
            Some(Domain {
                name: process.args.name?,
                uuid: process.args.uuid,
                pid: Some(process.pid),
                source: Source::Qemu,
                agent_channels: process.args.agent_channels.into_iter().map(channel).collect(),
                qmp_sockets: process
                    .args
                    .qmp_sockets
                    .into_iter()
                    .filter_map(|path| absolute(path).ok())
                    .collect(),
                libvirt_daemon: None,
                libvirt_state: None,
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
        libvirt_state: found.state,
    }
}

/// A path (with a `/`, or a socket in the current directory), or `@NAME`,
/// an abstract socket.
fn looks_like_socket_path(domain: &str) -> bool {
    domain.contains('/') || domain.starts_with('@') || is_socket(Path::new(domain))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Route;
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

    /// A daemonized QEMU is in `/` now: `vm/qga.sock` is not `/vm/qga.sock`.
    #[test]
    fn relative_sockets_of_a_daemonized_qemu_are_not_guessed() {
        let mut argv = VM.to_vec();
        argv.push("-daemonize");
        let proc_root = fake_proc(&[(42, &argv, "/")]);
        let domain = find("web", &bare_qemu_only(proc_root.path())).unwrap();
        let channel = &domain.agent_channels[0];
        assert_eq!(channel.path, Path::new("vm/qga.sock"));
        assert!(!channel.is_usable());
        assert_eq!(
            channel.unusable().unwrap(),
            "the relative path vm/qga.sock cannot be resolved: QEMU was started with -daemonize and has left \
             the directory it was started in"
        );
        assert_eq!(domain.qmp_sockets, Vec::<PathBuf>::new());
        let err = domain.agent_route().unwrap_err();
        assert_eq!(err.json_type(), "AgentUnavailable");
        assert_eq!(
            err.to_string(),
            "the org.qemu.guest_agent.0 socket of QEMU process 42 ('web') is at the relative path \
             vm/qga.sock, which cannot be resolved: QEMU was started with -daemonize and has left the \
             directory it was started in; pass the socket's path as DOMAIN (vm/qga.sock in the directory \
             QEMU was started in), or start QEMU with an absolute -chardev path"
        );
        // Ambiguous names list the problem instead of a path.
        let proc_root = fake_proc(&[(42, &argv, "/"), (43, VM, "/b")]);
        let err = find("web", &bare_qemu_only(proc_root.path())).unwrap_err();
        assert!(
            err.to_string().ends_with(
                "pid 42: the relative path vm/qga.sock cannot be resolved: QEMU was started with \
                            -daemonize and has left the directory it was started in; pid 43: /b/vm/qga.sock"
            ),
            "{err}"
        );
    }

    #[test]
    fn an_abstract_socket_is_reached_by_its_name() {
        let argv = [
            "qemu-system-x86_64",
            "-name",
            "web",
            "-chardev",
            "socket,abstract=on,path=web-qga,server=on,wait=off,id=qga0",
            "-device",
            "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        ];
        let proc_root = fake_proc(&[(42, &argv, "/srv")]);
        let domain = find("web", &bare_qemu_only(proc_root.path())).unwrap();
        assert_eq!(domain.agent_channels[0].shown_path().unwrap(), "@web-qga");
        assert_eq!(domain.agent_route().unwrap(), Route::Direct("@web-qga".into()));
        // As DOMAIN, too.
        let domain = find("@web-qga", &bare_qemu_only(proc_root.path())).unwrap();
        assert_eq!(domain.source, Source::Socket);
        assert_eq!(domain.agent_channels[0].kind, ChannelKind::Abstract);
    }

    #[test]
    fn a_pty_agent_channel_is_named_for_what_it_is() {
        let argv = [
            "qemu-system-x86_64",
            "-name",
            "web",
            "-chardev",
            "pty,id=qga0",
            "-device",
            "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        ];
        let proc_root = fake_proc(&[(42, &argv, "/srv")]);
        let domain = find("web", &bare_qemu_only(proc_root.path())).unwrap();
        assert_eq!(domain.agent_channels[0].shown_path(), None);
        let err = domain.agent_route().unwrap_err();
        assert_eq!(err.json_type(), "AgentUnavailable");
        assert!(
            err.to_string().starts_with(
                "the org.qemu.guest_agent.0 channel of QEMU process 42 ('web') is a pty chardev, \
                 which virtomate cannot use; give it a UNIX socket"
            ),
            "{err}"
        );
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
        assert_eq!(
            err.to_string(),
            "Domain 'db' does not exist; looked in no libvirt daemon and among running QEMU processes; \
             check the name (virtomate domain-list) or pass the agent's socket path"
        );
        assert_eq!(err.json_type(), "NotFoundError");
    }

    #[test]
    fn two_processes_with_one_name_are_ambiguous() {
        let proc_root = fake_proc(&[(42, VM, "/a"), (43, VM, "/b")]);
        let err = find("web", &bare_qemu_only(proc_root.path())).unwrap_err();
        assert_eq!(err.json_type(), "AmbiguousDomainError");
        assert!(err.to_string().contains("42, 43"), "{err}");
        // What to pass instead, since the name is what just failed.
        assert!(
            err.to_string().ends_with(
                "pass one of their agent sockets instead: pid 42: /a/vm/qga.sock; pid 43: /b/vm/qga.sock"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_vm_without_agent_channel_says_how_to_add_one() {
        let proc_root = fake_proc(&[(42, &["qemu-system-x86_64", "-name", "web"], "/")]);
        let domain = find("web", &bare_qemu_only(proc_root.path())).unwrap();
        let err = domain.agent_route().unwrap_err();
        assert_eq!(err.json_type(), "AgentUnavailable");
        assert!(err.to_string().contains("org.qemu.guest_agent.0"), "{err}");
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
        assert_eq!(err.json_type(), "IllegalStateError");
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
        assert!(!Scope::new(Some("qemu:///system"), None).unwrap().bare_qemu);
        let err = Scope::new(Some("qemu+ssh://host/system"), None).unwrap_err();
        assert!(err.to_string().contains("qemu:///system"), "{err}");
    }

    #[test]
    fn the_environments_default_uri_picks_the_daemon_but_keeps_bare_qemu() {
        let scope = Scope::new(None, Some("qemu:///system")).unwrap();
        assert!(scope.bare_qemu);
        assert_eq!(scope.libvirt.len(), 1);
        assert_eq!(scope.libvirt[0].uri, "qemu:///system");
        // An explicit -c wins over the environment, and limits.
        let scope = Scope::new(Some("qemu:///system"), Some("qemu:///session")).unwrap();
        assert!(!scope.bare_qemu);
        assert_eq!(scope.libvirt[0].uri, "qemu:///system");
        // Empty is none, both ways.
        let everywhere = Scope::new(Some(""), Some("")).unwrap();
        assert!(everywhere.bare_qemu);
        assert!(!everywhere.libvirt.is_empty());
    }
}
