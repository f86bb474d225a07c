//! The schema's typed commands against the real qemu-ga, run on the host:
//! only those that read (never freeze, shut down or set anything on the
//! host), each reply read through the generated types.

use std::path::Path;

use crate::host_agent::HostAgent;
use virtomate_protocol::qga::schema::*;
use virtomate_protocol::{ClientOptions, Command as _, Error, QgaClient};

async fn client(socket: &Path) -> QgaClient {
    QgaClient::connect(socket, ClientOptions::default())
        .await
        .unwrap()
}

#[tokio::test]
#[ignore = "needs qemu-ga on the host"]
async fn every_read_only_command_the_host_agent_has_reads_into_its_type() {
    let agent = HostAgent::start();
    let mut qga = client(&agent.socket()).await;
    let info = qga.execute(&GuestInfo {}).await.unwrap();
    let has = |name: &str| {
        info.supported_commands
            .iter()
            .any(|c| c.name == name && c.enabled)
    };
    assert!(info
        .supported_commands
        .iter()
        .all(|c| c.success_response.is_some()));

    qga.execute(&GuestPing {}).await.unwrap();
    assert!(qga.execute(&GuestGetTime {}).await.unwrap() > 1_700_000_000_000_000_000);
    let zone = qga.execute(&GuestGetTimezone {}).await.unwrap();
    assert!(zone.offset.abs() <= 14 * 3600);
    let os = qga.execute(&GuestGetOsinfo {}).await.unwrap();
    assert_eq!(os.machine.as_deref(), Some(std::env::consts::ARCH));
    let name = qga.execute(&GuestGetHostName {}).await.unwrap();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(name.host_name, hostname.trim());
    qga.execute(&GuestGetUsers {}).await.unwrap();
    let filesystems = qga.execute(&GuestGetFsinfo {}).await.unwrap();
    assert!(filesystems.iter().all(|fs| fs.mountpoint.starts_with('/')));
    let interfaces = qga.execute(&GuestNetworkGetInterfaces {}).await.unwrap();
    let lo = interfaces.iter().find(|i| i.name == "lo").unwrap();
    let addresses = lo.ip_addresses.as_ref().unwrap();
    assert!(addresses
        .iter()
        .any(|a| a.ip_address_type == GuestIpAddressType::Ipv4));
    let vcpus = qga.execute(&GuestGetVcpus {}).await.unwrap();
    assert!(vcpus.iter().any(|vcpu| vcpu.online));
    let status = qga.execute(&GuestFsfreezeStatus {}).await.unwrap();
    assert_eq!(status, GuestFsfreezeStatusReply::Thawed);
    if has(GuestGetDisks::NAME) {
        qga.execute(&GuestGetDisks {}).await.unwrap();
    }
    let stats = qga.execute(&GuestGetCpustats {}).await.unwrap();
    assert!(stats.iter().all(|cpu| matches!(cpu, GuestCpuStats::Linux(_))));
    qga.execute(&GuestGetDiskstats {}).await.unwrap();
    // Memory blocks and keys may be missing on a host: then the agent
    // says so in an error reply, which is no failure to read.
    for result in [
        qga.execute(&GuestGetMemoryBlocks {}).await.map(|_| ()),
        qga.execute(&GuestGetMemoryBlockInfo {}).await.map(|_| ()),
        qga.execute(&GuestSshGetAuthorizedKeys {
            username: "root".into(),
        })
        .await
        .map(|_| ()),
    ] {
        assert!(matches!(result, Ok(()) | Err(Error::Agent { .. })), "{result:?}");
    }
}
