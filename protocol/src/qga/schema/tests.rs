//! The generated types read what agents send, leniently.

use serde_json::json;

use super::*;
use crate::Command;

fn read<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).unwrap()
}

#[test]
fn every_command_of_the_schema_is_in_the_catalogue() {
    assert_eq!(COMMANDS.len(), 44);
    assert_eq!(GuestGetOsinfo::NAME, "guest-get-osinfo");
    let exec = command_spec("guest-exec").unwrap();
    assert_eq!(exec.since_version(), Some((2, 5)));
    assert!(exec
        .arguments
        .iter()
        .any(|a| a.name == "path" && a.ty == "str" && !a.optional));
    assert!(!command_spec("guest-shutdown").unwrap().success_response);
    assert!(argument_type("GuestFileWhence").is_some());
}

#[test]
fn unknown_members_and_enum_values_are_kept() {
    let address: GuestIpAddress =
        read(json!({"ip-address": "10.0.0.2", "ip-address-type": "ipv9", "prefix": 8, "scope": "link"}));
    assert_eq!(address.ip_address_type, GuestIpAddressType::Other("ipv9".into()));
    assert_eq!(address.extra["scope"], "link");
    let known: GuestIpAddressType = read(json!("ipv6"));
    assert_eq!(known, GuestIpAddressType::Ipv6);
    assert_eq!(
        serde_json::to_value(GuestIpAddressType::Other("x".into())).unwrap(),
        "x"
    );
}

#[test]
fn a_member_added_after_its_type_may_be_missing() {
    // `success-response` came with 1.7, after GuestAgentCommandInfo.
    let info: GuestAgentCommandInfo = read(json!({"name": "guest-ping", "enabled": true}));
    assert_eq!(info.success_response, None);
}

#[test]
fn unions_read_their_known_branches_and_keep_the_others() {
    let stats: Vec<GuestCpuStats> = read(json!([
        {"type": "linux", "cpu": 0, "user": 1, "nice": 2, "system": 3, "idle": 4},
        {"type": "windows", "cpu": 0}
    ]));
    assert!(matches!(&stats[0], GuestCpuStats::Linux(linux) if linux.idle == 4));
    assert!(matches!(&stats[1], GuestCpuStats::Other(other) if other["type"] == "windows"));
}

#[test]
fn newer_commands_read_replies_shaped_as_qemus_documentation() {
    let load: <GuestGetLoad as Command>::Output = read(json!({"load1m": 0.5, "load5m": 0.3, "load15m": 0.1}));
    assert_eq!((load.load1m, load.load5m, load.load15m), (0.5, 0.3, 0.1));
    let routes: <GuestNetworkGetRoute as Command>::Output = read(json!([
        {"iface": "eth0", "destination": "0.0.0.0", "metric": 100, "gateway": "10.0.2.2",
         "mask": "0.0.0.0", "irtt": 0, "flags": 3, "refcnt": 0, "use": 0, "window": 0, "mtu": 0,
         "version": 4},
        {"iface": "eth0", "destination": "fe80::", "metric": 256, "desprefixlen": "64",
         "source": "::", "srcprefixlen": "0", "nexthop": "::", "version": 6}
    ]));
    assert_eq!(routes[0].gateway.as_deref(), Some("10.0.2.2"));
    assert_eq!(routes[0].r#use, Some(0));
    assert_eq!(routes[1].desprefixlen.as_deref(), Some("64"));
}

#[test]
fn arguments_are_what_the_agent_reads() {
    let keys = GuestSshAddAuthorizedKeys {
        username: "alice".into(),
        keys: vec!["ssh-ed25519 AAAA alice".into()],
        reset: None,
    };
    assert_eq!(
        serde_json::to_value(keys).unwrap(),
        json!({"username": "alice", "keys": ["ssh-ed25519 AAAA alice"]})
    );
    let seek = GuestFileSeek {
        handle: 1,
        offset: 0,
        whence: GuestFileWhence::Name(QGASeek::End),
    };
    assert_eq!(
        serde_json::to_value(seek).unwrap(),
        json!({"handle": 1, "offset": 0, "whence": "end"})
    );
}
