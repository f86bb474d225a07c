//! `virtomate domain-iface-list`: a domain's network interfaces and their
//! addresses, as the original virtomate lists them: from the guest agent
//! for any domain, from libvirt's DHCP leases or the host's ARP table
//! (through libvirtd) for libvirt's domains.

use serde::Serialize;
use virtomate_protocol::libvirt::{AddressSource, DomainInterface, LibvirtClient};
use virtomate_protocol::qga::schema::{GuestIpAddressType, GuestNetworkGetInterfaces, GuestNetworkInterface};
use virtomate_protocol::Command;

use super::{Answer, Context};
use crate::agent::DomainAgent;
use crate::cli::IfaceSource;
use crate::domain::{self, Source};
use crate::error::{CliError, Peer};

/// One interface, key for key as the original prints it.
#[derive(Serialize)]
struct Interface {
    name: String,
    hwaddr: Option<String>,
    addresses: Vec<Address>,
}

#[derive(Serialize)]
struct Address {
    address: String,
    prefix: i64,
    /// `IPv4` or `IPv6`.
    #[serde(rename = "type")]
    kind: String,
}

pub async fn run(domain: &str, source: IfaceSource, context: &Context) -> Result<Answer, CliError> {
    let mut interfaces = match source {
        IfaceSource::Agent => from_agent(domain, context).await?,
        IfaceSource::Lease => from_libvirt(domain, AddressSource::Lease, context).await?,
        IfaceSource::Arp => from_libvirt(domain, AddressSource::Arp, context).await?,
    };
    // The original's order: by MAC address, then each one's addresses.
    for interface in &mut interfaces {
        interface.addresses.sort_by(|a, b| a.address.cmp(&b.address));
    }
    interfaces.sort_by(|a, b| {
        a.hwaddr
            .as_deref()
            .unwrap_or("")
            .cmp(b.hwaddr.as_deref().unwrap_or(""))
    });
    let json = serde_json::to_value(interfaces).expect("plain data always serializes");
    Ok(Answer::Json(json))
}

async fn from_agent(domain: &str, context: &Context) -> Result<Vec<Interface>, CliError> {
    let mut agent = DomainAgent::connect(domain, context).await?;
    agent.require(&[GuestNetworkGetInterfaces::NAME]).await?;
    let reply = agent.execute(&GuestNetworkGetInterfaces {}).await?;
    agent.close().await;
    Ok(reply.into_iter().map(agent_interface).collect())
}

/// An interface as the agent tells it; one without addresses has an
/// empty list (the original failed on it with a TypeError).
fn agent_interface(interface: GuestNetworkInterface) -> Interface {
    let addresses = interface
        .ip_addresses
        .unwrap_or_default()
        .into_iter()
        .map(|address| Address {
            address: address.ip_address,
            prefix: address.prefix,
            kind: match address.ip_address_type {
                GuestIpAddressType::Ipv4 => "IPv4".to_owned(),
                GuestIpAddressType::Ipv6 => "IPv6".to_owned(),
                GuestIpAddressType::Other(other) => other,
            },
        });
    Interface {
        name: interface.name,
        hwaddr: interface.hardware_address,
        addresses: addresses.collect(),
    }
}

/// Leases and ARP entries are libvirt's: asked of libvirtd, for its
/// domains only.
async fn from_libvirt(
    domain: &str,
    source: AddressSource,
    context: &Context,
) -> Result<Vec<Interface>, CliError> {
    let found = domain::find(domain, &context.scope)?;
    let (uri, socket) =
        match (&found.source, &found.libvirt_daemon) {
            (Source::Libvirt, Some(daemon)) => daemon.clone(),
            _ => {
                return Err(CliError::usage(format!(
                "--source {} needs a libvirt domain, whose addresses libvirt knows; {domain} is not one: \
                 use --source agent",
                if source == AddressSource::Lease { "lease" } else { "arp" }
            )))
            }
        };
    let failed = |e| CliError::from_libvirtd(e, &socket, Peer::Agent);
    let mut libvirt = LibvirtClient::connect(&socket, uri, &context.options)
        .await
        .map_err(failed)?;
    let remote = libvirt.lookup_domain_by_name(&found.name).await.map_err(failed)?;
    let interfaces = libvirt
        .interface_addresses(&remote, source)
        .await
        .map_err(failed)?;
    let _ = libvirt.close().await;
    Ok(interfaces.into_iter().map(libvirt_interface).collect())
}

fn libvirt_interface(interface: DomainInterface) -> Interface {
    let addresses = interface.addrs.into_iter().map(|address| Address {
        address: address.addr,
        prefix: i64::from(address.prefix),
        kind: if address.ipv6 { "IPv6" } else { "IPv4" }.to_owned(),
    });
    Interface {
        name: interface.name,
        hwaddr: interface.hwaddr,
        addresses: addresses.collect(),
    }
}
