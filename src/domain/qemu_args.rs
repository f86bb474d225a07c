//! Reading a QEMU command line: the VM's name and its agent sockets.
//!
//! QEMU accepts `-opt` and `--opt`, options as `key=value,...` lists (with
//! `,,` for a literal comma and an implied first key) and, for `-device`,
//! JSON objects. All of these are understood here.

use std::collections::HashMap;
use std::path::PathBuf;

use super::model::{sort_by_port_number, Channel, ChannelKind, AGENT_PORT_PREFIX};

/// What a QEMU command line says about the VM.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct QemuArgs {
    /// The `-name` (`guest=` key), if any.
    pub name: Option<String>,
    /// The `-uuid`, if any.
    pub uuid: Option<String>,
    /// Agent channels, `org.qemu.guest_agent.0` first; paths as written
    /// on the command line (may be relative), `@NAME` for abstract sockets.
    pub agent_channels: Vec<Channel>,
    /// The QMP sockets (`-qmp unix:P`, or `-mon chardev=X,mode=control`).
    pub qmp_sockets: Vec<PathBuf>,
    /// `-daemonize`: QEMU changed its working directory to `/` once set
    /// up, after binding its sockets.
    pub daemonize: bool,
}

/// What a `-chardev` is, as far as reaching an agent goes.
#[derive(Debug, Clone)]
enum Chardev {
    /// A UNIX socket at this path.
    Path(PathBuf),
    /// An abstract UNIX socket of this name.
    Abstract(String),
    /// Anything else, by its backend (`pty`, `file`, `TCP socket`...).
    Other(String),
}

impl QemuArgs {
    pub fn parse(argv: &[String]) -> QemuArgs {
        let mut name = None;
        let mut uuid = None;
        let mut socket_chardevs = HashMap::new();
        let mut ports = Vec::new();
        let mut qmp_sockets = Vec::new();
        let mut monitor_chardevs = Vec::new();
        let mut daemonize = false;
        let mut args = argv.iter().skip(1);
        while let Some(arg) = args.next() {
            let option = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'));
            if option == Some("daemonize") {
                daemonize = true;
                continue;
            }
            let (Some(option), Some(value)) = (option, args.clone().next()) else {
                continue;
            };
            match option {
                "name" => name = opts_value(value, "guest", "guest"),
                "uuid" => uuid = Some(value.clone()),
                "chardev" => {
                    if let Some((id, chardev)) = chardev(value) {
                        socket_chardevs.insert(id, chardev);
                    }
                }
                "device" => ports.extend(agent_port(value)),
                "qmp" | "qmp-pretty" => qmp_sockets.extend(qmp_unix_path(value)),
                "mon" => {
                    let opts: HashMap<String, String> = parse_opts(value, "chardev").into_iter().collect();
                    if opts.get("mode").map(String::as_str) == Some("control") {
                        monitor_chardevs.extend(opts.get("chardev").cloned());
                    }
                }
                _ => continue,
            }
            args.next();
        }
        let mut agent_channels: Vec<Channel> = ports
            .into_iter()
            .filter_map(|(chardev, port_name)| {
                let (path, kind) = match socket_chardevs.get(&chardev)?.clone() {
                    Chardev::Path(path) => (path, ChannelKind::Socket),
                    Chardev::Abstract(name) => (format!("@{name}").into(), ChannelKind::Abstract),
                    Chardev::Other(backend) => (PathBuf::new(), ChannelKind::NotASocket(backend)),
                };
                Some(Channel {
                    port_name: Some(port_name),
                    path,
                    kind,
                    guest_connected: None,
                })
            })
            .collect();
        sort_by_port_number(&mut agent_channels);
        qmp_sockets.extend(
            monitor_chardevs
                .iter()
                .filter_map(|id| match socket_chardevs.get(id) {
                    Some(Chardev::Path(path)) => Some(path.clone()),
                    _ => None,
                }),
        );
        QemuArgs {
            name,
            uuid,
            agent_channels,
            qmp_sockets,
            daemonize,
        }
    }
}

/// Splits a QemuOpts string into (key, value) pairs; a first element
/// without `=` belongs to `implied_key`.
fn parse_opts(text: &str, implied_key: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    let mut elements = Vec::new();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                current.push(',');
            } else {
                elements.push(std::mem::take(&mut current));
            }
        } else {
            current.push(c);
        }
    }
    elements.push(current);
    for (i, element) in elements.into_iter().enumerate() {
        match element.split_once('=') {
            Some((key, value)) => pairs.push((key.to_owned(), value.to_owned())),
            None if i == 0 => pairs.push((implied_key.to_owned(), element)),
            None => pairs.push((element, "on".to_owned())),
        }
    }
    pairs
}

fn opts_value(text: &str, implied_key: &str, key: &str) -> Option<String> {
    parse_opts(text, implied_key)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// `unix:P,server=on,wait=off` (or `unix:P,server,nowait`) → P.
fn qmp_unix_path(value: &str) -> Option<PathBuf> {
    let (_, address) = parse_opts(value, "address").into_iter().next()?;
    address.strip_prefix("unix:").map(PathBuf::from)
}

/// `socket,id=X,path=P,...` (or the JSON form of `chardev-add`) → (X,
/// its socket); `abstract=on` makes P an abstract name; other backends
/// (`pty,id=X`) and TCP sockets are told by name.
fn chardev(value: &str) -> Option<(String, Chardev)> {
    if value.starts_with('{') {
        let json: serde_json::Value = serde_json::from_str(value).ok()?;
        let id = json["id"].as_str()?.to_owned();
        let backend = &json["backend"];
        let kind = backend["type"].as_str()?;
        if kind != "socket" {
            return Some((id, Chardev::Other(kind.to_owned())));
        }
        let addr = &backend["data"]["addr"];
        let data = if addr["data"].is_object() {
            &addr["data"]
        } else {
            addr
        };
        let Some(path) = data["path"].as_str() else {
            return Some((id, Chardev::Other("TCP socket".to_owned())));
        };
        let chardev = match data["abstract"].as_bool() {
            Some(true) => Chardev::Abstract(path.to_owned()),
            _ => Chardev::Path(path.into()),
        };
        return Some((id, chardev));
    }
    let opts: HashMap<String, String> = parse_opts(value, "backend").into_iter().collect();
    let id = opts.get("id")?.clone();
    let backend = opts.get("backend")?;
    if backend != "socket" {
        return Some((id, Chardev::Other(backend.clone())));
    }
    let Some(path) = opts.get("path") else {
        return Some((id, Chardev::Other("TCP socket".to_owned())));
    };
    let chardev = match opts.get("abstract").map(String::as_str) {
        Some("on" | "yes" | "true" | "y") => Chardev::Abstract(path.clone()),
        _ => Chardev::Path(path.into()),
    };
    Some((id, chardev))
}

/// `virtserialport,chardev=X,name=org.qemu.guest_agent.N` (or JSON) →
/// (X, port name).
fn agent_port(value: &str) -> Option<(String, String)> {
    let opts: HashMap<String, String> = if value.starts_with('{') {
        let json: serde_json::Map<String, serde_json::Value> = serde_json::from_str(value).ok()?;
        json.into_iter()
            .filter_map(|(k, v)| Some((k, v.as_str()?.to_owned())))
            .collect()
    } else {
        parse_opts(value, "driver").into_iter().collect()
    };
    let name = opts.get("name")?;
    if opts.get("driver").map(String::as_str) != Some("virtserialport")
        || !name.starts_with(AGENT_PORT_PREFIX)
    {
        return None;
    }
    Some((opts.get("chardev")?.clone(), name.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &[&str]) -> QemuArgs {
        let argv: Vec<String> = line.iter().map(|s| s.to_string()).collect();
        QemuArgs::parse(&argv)
    }

    fn channel(port: &str, path: &str) -> Channel {
        Channel::socket(Some(port.into()), path.into(), None)
    }

    #[test]
    fn qmp_sockets_from_qmp_and_mon_options() {
        let args = parse(&[
            "qemu",
            "-qmp",
            "unix:/run/a.qmp,server=on,wait=off",
            "--qmp",
            "unix:/run/b,,x.qmp,server,nowait",
            "-qmp",
            "tcp:localhost:4444,server",
            "-chardev",
            "socket,id=mon1,path=/run/c.qmp,server=on",
            "-mon",
            "chardev=mon1,mode=control",
            "-chardev",
            "socket,id=hmp,path=/run/hmp.sock",
            "-mon",
            "chardev=hmp",
        ]);
        assert_eq!(
            args.qmp_sockets,
            [
                PathBuf::from("/run/a.qmp"),
                "/run/b,x.qmp".into(),
                "/run/c.qmp".into()
            ]
        );
    }

    #[test]
    fn plain_name_and_keyvalue_options() {
        let args = parse(&[
            "qemu-system-x86_64",
            "-name",
            "vm1",
            "-uuid",
            "0766eb29-75b8-4805-ad22-aad5fcd186c4",
            "-chardev",
            "socket,path=/run/vm1/qga.sock,server=on,wait=off,id=qga0",
            "-device",
            "virtio-serial",
            "-device",
            "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        ]);
        assert_eq!(args.name.as_deref(), Some("vm1"));
        assert_eq!(args.uuid.as_deref(), Some("0766eb29-75b8-4805-ad22-aad5fcd186c4"));
        assert_eq!(
            args.agent_channels,
            vec![channel("org.qemu.guest_agent.0", "/run/vm1/qga.sock")]
        );
    }

    #[test]
    fn guest_key_double_dash_and_escaped_commas() {
        let args = parse(&[
            "qemu",
            "--name",
            "guest=my,,vm,process=qemu-my",
            "--chardev",
            "socket,id=a,path=/tmp/a,,b.sock,server=on",
            "--device",
            "virtserialport,name=org.qemu.guest_agent.0,chardev=a",
        ]);
        assert_eq!(args.name.as_deref(), Some("my,vm"));
        assert_eq!(
            args.agent_channels,
            vec![channel("org.qemu.guest_agent.0", "/tmp/a,b.sock")]
        );
    }

    #[test]
    fn implied_guest_key_with_more_options() {
        assert_eq!(
            parse(&["qemu", "-name", "vm2,debug-threads=on"]).name.as_deref(),
            Some("vm2")
        );
    }

    #[test]
    fn json_device_and_chardev() {
        let args = parse(&[
            "qemu",
            "-chardev",
            concat!(
                r#"{"id":"c1","backend":{"type":"socket","#,
                r#""data":{"addr":{"type":"unix","data":{"path":"/j.sock"}},"server":true}}}"#
            ),
            "-device",
            r#"{"driver":"virtserialport","bus":"vs.0","chardev":"c1","name":"org.qemu.guest_agent.1"}"#,
            "-chardev",
            "socket,id=c0,path=/k.sock",
            "-device",
            r#"{"driver":"virtserialport","chardev":"c0","name":"org.qemu.guest_agent.0"}"#,
        ]);
        assert_eq!(
            args.agent_channels,
            vec![
                channel("org.qemu.guest_agent.0", "/k.sock"),
                channel("org.qemu.guest_agent.1", "/j.sock")
            ]
        );
    }

    #[test]
    fn other_ports_are_not_agents() {
        let args = parse(&[
            "qemu",
            "-chardev",
            "socket,id=s,path=/s",
            "-device",
            "virtserialport,chardev=s,name=com.example.other",
            "-device",
            "virtconsole,chardev=s,name=org.qemu.guest_agent.2",
        ]);
        assert_eq!(args.agent_channels, vec![]);
        assert_eq!(args.name, None);
        assert!(!args.daemonize);
    }

    /// Abstract sockets are `@NAME`; a pty or TCP chardev is a channel
    /// too, one that virtomate cannot use, rather than no channel at all.
    #[test]
    fn abstract_pty_and_tcp_chardevs_are_told_apart() {
        let args = parse(&[
            "qemu",
            "-daemonize",
            "-chardev",
            "socket,id=a,abstract=on,path=qga-abs,server=on,wait=off",
            "-device",
            "virtserialport,chardev=a,name=org.qemu.guest_agent.0",
            "-chardev",
            "pty,id=p",
            "-device",
            "virtserialport,chardev=p,name=org.qemu.guest_agent.1",
            "-chardev",
            "socket,id=t,host=127.0.0.1,port=4444,server=on",
            "-device",
            "virtserialport,chardev=t,name=org.qemu.guest_agent.2",
            "-chardev",
            concat!(
                r#"{"id":"j","backend":{"type":"socket","#,
                r#""data":{"addr":{"type":"unix","data":{"path":"j-abs","abstract":true}},"server":true}}}"#
            ),
            "-device",
            "virtserialport,chardev=j,name=org.qemu.guest_agent.3",
            "-chardev",
            r#"{"id":"q","backend":{"type":"pty","data":{}}}"#,
            "-device",
            "virtserialport,chardev=q,name=org.qemu.guest_agent.4",
        ]);
        assert!(args.daemonize);
        let seen: Vec<(&str, ChannelKind)> = args
            .agent_channels
            .iter()
            .map(|c| (c.path.to_str().unwrap(), c.kind.clone()))
            .collect();
        assert_eq!(
            seen,
            [
                ("@qga-abs", ChannelKind::Abstract),
                ("", ChannelKind::NotASocket("pty".into())),
                ("", ChannelKind::NotASocket("TCP socket".into())),
                ("@j-abs", ChannelKind::Abstract),
                ("", ChannelKind::NotASocket("pty".into())),
            ]
        );
    }
}
