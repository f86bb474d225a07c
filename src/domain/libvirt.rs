//! libvirt-managed domains, found without libvirt: the status file that
//! libvirt keeps for every running domain holds its pid, its QMP monitor
//! and its agent channels.

use std::fs;
use std::path::{Path, PathBuf};

use super::model::{sort_by_port_number, Channel, AGENT_PORT_PREFIX};

/// Where one libvirt daemon keeps its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibvirtDirs {
    /// `qemu:///system` or `qemu:///session`, for messages.
    pub uri: &'static str,
    /// Status files of running domains (`NAME.xml`).
    pub status: PathBuf,
    /// Definitions of persistent domains (`NAME.xml`), running or not.
    pub config: PathBuf,
    /// Where the daemon's RPC sockets are.
    pub sockets: PathBuf,
}

impl LibvirtDirs {
    pub fn system() -> LibvirtDirs {
        LibvirtDirs {
            uri: "qemu:///system",
            status: "/run/libvirt/qemu".into(),
            config: "/etc/libvirt/qemu".into(),
            sockets: "/run/libvirt".into(),
        }
    }

    /// The session daemon of the current user, if its directories can be
    /// named (`XDG_RUNTIME_DIR`, `XDG_CONFIG_HOME` or `HOME`).
    pub fn session() -> Option<LibvirtDirs> {
        let runtime = std::env::var_os("XDG_RUNTIME_DIR")?;
        let config = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".config")))?;
        Some(LibvirtDirs {
            uri: "qemu:///session",
            status: Path::new(&runtime).join("libvirt/qemu/run"),
            config: config.join("libvirt/qemu"),
            sockets: Path::new(&runtime).join("libvirt"),
        })
    }
}

impl LibvirtDirs {
    /// The daemon's RPC socket: virtqemud's where the modular daemons run,
    /// else libvirtd's.
    pub fn rpc_socket(&self) -> PathBuf {
        let modular = self.sockets.join("virtqemud-sock");
        if modular.exists() {
            modular
        } else {
            self.sockets.join("libvirt-sock")
        }
    }
}

/// A running libvirt domain, as its status file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibvirtDomain {
    pub name: String,
    pub uuid: String,
    pub pid: Option<u32>,
    /// The QMP socket, which libvirtd itself holds.
    pub monitor: Option<PathBuf>,
    /// Agent channels (`<channel type='unix'>` with an agent port as
    /// target), `org.qemu.guest_agent.0` first.
    pub agent_channels: Vec<Channel>,
    /// `<domstatus state=… reason=…>`: libvirt's record of the run state.
    pub state: Option<(String, String)>,
}

/// What looking a domain up in one daemon's files found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Running(LibvirtDomain),
    /// Defined (persistent) but not running.
    Stopped,
    Unknown,
}

/// Finds a domain by name or UUID.
pub fn lookup(dirs: &LibvirtDirs, name_or_uuid: &str) -> Lookup {
    let running = status_files(&dirs.status)
        .filter_map(|path| parse_status(&fs::read_to_string(path).ok()?).ok())
        .find(|domain| domain.name == name_or_uuid || domain.uuid.eq_ignore_ascii_case(name_or_uuid));
    if let Some(domain) = running {
        return Lookup::Running(domain);
    }
    let defined = status_files(&dirs.config).any(|path| {
        fs::read_to_string(path)
            .ok()
            .and_then(|xml| definition_identity(&xml))
            .is_some_and(|(name, uuid)| name == name_or_uuid || uuid.eq_ignore_ascii_case(name_or_uuid))
    });
    if defined {
        Lookup::Stopped
    } else {
        Lookup::Unknown
    }
}

/// Every running domain of one daemon.
pub fn running_domains(dirs: &LibvirtDirs) -> Vec<LibvirtDomain> {
    let mut domains: Vec<LibvirtDomain> = status_files(&dirs.status)
        .filter_map(|path| parse_status(&fs::read_to_string(path).ok()?).ok())
        .collect();
    domains.sort_by(|a, b| a.name.cmp(&b.name));
    domains
}

fn status_files(dir: &Path) -> impl Iterator<Item = PathBuf> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "xml"))
}

/// Reads a status file: `<domstatus pid=…>` around the live `<domain>`.
pub fn parse_status(xml: &str) -> Result<LibvirtDomain, String> {
    let document = roxmltree::Document::parse(xml).map_err(|e| e.to_string())?;
    let root = document.root_element();
    if root.tag_name().name() != "domstatus" {
        return Err(format!("<{}> is not a status file", root.tag_name().name()));
    }
    let domain = child(root, "domain").ok_or("no <domain> in the status file")?;
    let text = |tag: &str| {
        child(domain, tag)
            .and_then(|n| n.text())
            .map(str::trim)
            .map(str::to_owned)
    };
    let agent_channels = child(domain, "devices")
        .into_iter()
        .flat_map(|devices| devices.children())
        .filter(|n| n.has_tag_name("channel") && n.attribute("type") == Some("unix"))
        .filter_map(|channel| {
            let target = child(channel, "target")?;
            let port_name = target.attribute("name")?;
            if target.attribute("type") != Some("virtio") || !port_name.starts_with(AGENT_PORT_PREFIX) {
                return None;
            }
            let path = child(channel, "source")?.attribute("path")?;
            // libvirt follows QEMU's VSERPORT_CHANGE events and saves them.
            let guest_connected = match target.attribute("state") {
                Some("connected") => Some(true),
                Some("disconnected") => Some(false),
                _ => None,
            };
            Some(Channel::socket(
                Some(port_name.to_owned()),
                path.into(),
                guest_connected,
            ))
        });
    let mut agent_channels: Vec<Channel> = agent_channels.collect();
    sort_by_port_number(&mut agent_channels);
    Ok(LibvirtDomain {
        name: text("name").ok_or("no <name>")?,
        uuid: text("uuid").unwrap_or_default(),
        pid: root.attribute("pid").and_then(|pid| pid.parse().ok()),
        monitor: child(root, "monitor")
            .and_then(|m| m.attribute("path"))
            .map(PathBuf::from),
        agent_channels,
        state: root.attribute("state").map(|state| {
            let reason = root.attribute("reason").unwrap_or("unknown");
            (state.to_owned(), reason.to_owned())
        }),
    })
}

fn child<'a, 'input>(node: roxmltree::Node<'a, 'input>, tag: &str) -> Option<roxmltree::Node<'a, 'input>> {
    node.children().find(|n| n.has_tag_name(tag))
}

/// Name and UUID of a domain definition (`/etc/libvirt/qemu/NAME.xml`).
fn definition_identity(xml: &str) -> Option<(String, String)> {
    let document = roxmltree::Document::parse(xml).ok()?;
    let domain = document.root_element();
    let text = |tag: &str| {
        child(domain, tag)
            .and_then(|n| n.text())
            .map(|t| t.trim().to_owned())
    };
    domain.has_tag_name("domain").then_some(())?;
    Some((text("name")?, text("uuid").unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = include_str!("../../tests/data/libvirt-status-two-channels.xml");

    #[test]
    fn a_real_status_file_gives_pid_monitor_and_both_agent_channels() {
        let domain = parse_status(STATUS).unwrap();
        assert_eq!(domain.name, "virtomate-test");
        assert_eq!(domain.uuid, "0766eb29-75b8-4805-ad22-aad5fcd186c4");
        assert_eq!(domain.pid, Some(8532));
        assert_eq!(
            domain.monitor.as_deref(),
            Some(Path::new(
                "/var/lib/libvirt/qemu/domain-3-virtomate-test/monitor.sock"
            ))
        );
        let ports: Vec<&str> = domain
            .agent_channels
            .iter()
            .filter_map(|c| c.port_name.as_deref())
            .collect();
        assert_eq!(ports, ["org.qemu.guest_agent.0", "org.qemu.guest_agent.1"]);
        assert_eq!(
            domain.agent_channels[0].path,
            Path::new("/var/lib/libvirt/qemu/channel/target/domain-3-virtomate-test/org.qemu.guest_agent.0")
        );
        assert_eq!(domain.agent_channels[0].guest_connected, Some(true));
    }

    #[test]
    fn channels_come_in_the_order_of_their_port_numbers() {
        let status = STATUS
            .replace("org.qemu.guest_agent.0'", "org.qemu.guest_agent.10'")
            .replace("org.qemu.guest_agent.1'", "org.qemu.guest_agent.2'");
        let ports: Vec<String> = parse_status(&status)
            .unwrap()
            .agent_channels
            .into_iter()
            .filter_map(|c| c.port_name)
            .collect();
        assert_eq!(ports, ["org.qemu.guest_agent.2", "org.qemu.guest_agent.10"]);
    }

    #[test]
    fn the_guest_side_of_a_channel_is_as_libvirt_last_saw_it() {
        let state = |attribute: &str| {
            let status = STATUS.replacen(
                "name='org.qemu.guest_agent.0' state='connected'",
                &format!("name='org.qemu.guest_agent.0'{attribute}"),
                1,
            );
            parse_status(&status).unwrap().agent_channels[0].guest_connected
        };
        assert_eq!(state(" state='connected'"), Some(true));
        assert_eq!(state(" state='disconnected'"), Some(false));
        assert_eq!(state(""), None);
        assert_eq!(state(" state='whatever'"), None);
    }

    fn dirs_with(status: &[(&str, &str)], config: &[(&str, &str)]) -> (tempfile::TempDir, LibvirtDirs) {
        let root = tempfile::tempdir().unwrap();
        let dirs = LibvirtDirs {
            uri: "qemu:///session",
            status: root.path().join("run"),
            config: root.path().join("config"),
            sockets: root.path().to_owned(),
        };
        for (dir, files) in [(&dirs.status, status), (&dirs.config, config)] {
            fs::create_dir_all(dir).unwrap();
            for (name, xml) in files {
                fs::write(dir.join(name), xml).unwrap();
            }
        }
        (root, dirs)
    }

    #[test]
    fn lookup_by_name_or_uuid_in_session_directories() {
        let (_root, dirs) = dirs_with(&[("virtomate-test.xml", STATUS)], &[]);
        assert!(matches!(lookup(&dirs, "virtomate-test"), Lookup::Running(_)));
        assert!(matches!(
            lookup(&dirs, "0766EB29-75B8-4805-AD22-AAD5FCD186C4"),
            Lookup::Running(_)
        ));
        assert_eq!(lookup(&dirs, "other"), Lookup::Unknown);
    }

    #[test]
    fn a_defined_domain_without_status_file_is_stopped() {
        let definition = "<domain type='qemu'><name>idle</name><uuid>1-2</uuid></domain>";
        let (_root, dirs) = dirs_with(&[], &[("idle.xml", definition)]);
        assert_eq!(lookup(&dirs, "idle"), Lookup::Stopped);
        assert_eq!(lookup(&dirs, "1-2"), Lookup::Stopped);
    }

    #[test]
    fn the_rpc_socket_is_virtqemuds_where_the_modular_daemons_run() {
        let (root, dirs) = dirs_with(&[], &[]);
        assert_eq!(dirs.rpc_socket(), root.path().join("libvirt-sock"));
        fs::write(root.path().join("virtqemud-sock"), "").unwrap();
        assert_eq!(dirs.rpc_socket(), root.path().join("virtqemud-sock"));
    }

    #[test]
    fn garbage_is_not_a_status_file() {
        assert!(parse_status("<domain/>").is_err());
        assert!(parse_status("not xml").is_err());
        assert!(parse_status("<domstatus pid='1'/>").is_err());
    }
}
