//! `virtomate guest-facts`: what the agent tells of its guest, one section
//! per kind of fact, each from the command that gives it. A section the
//! agent cannot give holds `{"error": {...}}` saying why; the others are
//! still given.

use serde::Serialize;
use serde_json::{json, Map, Value};
use virtomate_protocol::qga::schema::{
    GuestGetCpustats, GuestGetDisks, GuestGetDiskstats, GuestGetFsinfo, GuestGetHostName, GuestGetLoad,
    GuestGetOsinfo, GuestGetTime, GuestGetTimezone, GuestGetUsers, GuestGetVcpus, GuestNetworkGetInterfaces,
    GuestNetworkGetRoute,
};
use virtomate_protocol::qga::GuestInfoReply;
use virtomate_protocol::Command;

use super::{Answer, Context};
use crate::agent::{unavailable, DomainAgent};
use crate::error::{CliError, ErrorJson};

/// Each section and the command it comes from, in the order printed.
const SECTIONS: &[(&str, &str)] = &[
    ("os", GuestGetOsinfo::NAME),
    ("hostname", GuestGetHostName::NAME),
    ("timezone", GuestGetTimezone::NAME),
    ("time", GuestGetTime::NAME),
    ("users", GuestGetUsers::NAME),
    ("filesystems", GuestGetFsinfo::NAME),
    ("disks", GuestGetDisks::NAME),
    ("interfaces", GuestNetworkGetInterfaces::NAME),
    ("routes", GuestNetworkGetRoute::NAME),
    ("vcpus", GuestGetVcpus::NAME),
    ("load", GuestGetLoad::NAME),
    ("cpu_stats", GuestGetCpustats::NAME),
    ("disk_stats", GuestGetDiskstats::NAME),
];

pub async fn run(domain: &str, context: &Context) -> Result<Answer, CliError> {
    let mut agent = DomainAgent::connect(domain, context).await?;
    let info = agent.guest_info().await?;
    let mut facts = Map::new();
    facts.insert("agent".to_owned(), json!({"version": info.version}));
    for &(section, command) in SECTIONS {
        let value = match section_value(&mut agent, &info, section, command).await {
            Ok(value) => value,
            Err(error) => json!({ "error": ErrorJson::from(&error) }),
        };
        facts.insert(section.to_owned(), value);
    }
    agent.close().await;
    Ok(Answer::Json(Value::Object(facts)))
}

async fn section_value(
    agent: &mut DomainAgent,
    info: &GuestInfoReply,
    section: &str,
    command: &str,
) -> Result<Value, CliError> {
    if let Some(error) = unavailable(info, command) {
        return Err(agent.unless_frozen(info, error).await);
    }
    match section {
        "os" => fetch(agent, &GuestGetOsinfo {}).await,
        // The name alone: the reply's one member says nothing more.
        "hostname" => Ok(Value::String(
            agent.execute(&GuestGetHostName {}).await?.host_name,
        )),
        "timezone" => fetch(agent, &GuestGetTimezone {}).await,
        "time" => fetch(agent, &GuestGetTime {}).await,
        "users" => fetch(agent, &GuestGetUsers {}).await,
        "filesystems" => fetch(agent, &GuestGetFsinfo {}).await,
        "disks" => fetch(agent, &GuestGetDisks {}).await,
        "interfaces" => fetch(agent, &GuestNetworkGetInterfaces {}).await,
        "routes" => fetch(agent, &GuestNetworkGetRoute {}).await,
        "vcpus" => fetch(agent, &GuestGetVcpus {}).await,
        "load" => fetch(agent, &GuestGetLoad {}).await,
        "cpu_stats" => fetch(agent, &GuestGetCpustats {}).await,
        "disk_stats" => fetch(agent, &GuestGetDiskstats {}).await,
        _ => unreachable!("every section of SECTIONS has its command"),
    }
}

/// The reply to `command`, read as the schema types it (leniently), as
/// JSON again.
async fn fetch<C>(agent: &mut DomainAgent, command: &C) -> Result<Value, CliError>
where
    C: Command,
    C::Output: Serialize,
{
    let reply = agent.execute(command).await?;
    Ok(serde_json::to_value(reply).expect("plain data always serializes"))
}
