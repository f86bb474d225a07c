//! A domain's network interfaces and their addresses as libvirt knows
//! them (`virDomainInterfaceAddresses`): from its DHCP leases, the host's
//! ARP table, or the guest agent.

use super::xdr::{Decoder, XdrError};
use super::STRING_MAX;

/// `REMOTE_DOMAIN_INTERFACE_MAX` and `REMOTE_DOMAIN_IP_ADDR_MAX`: libvirt
/// sends at most this many interfaces, and addresses per interface.
const INTERFACES_MAX: usize = 2048;

/// Where libvirt takes the addresses from (`virDomainInterfaceAddressesSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressSource {
    /// The leases of libvirt's own DHCP server: static addresses and other
    /// DHCP servers' are missing.
    Lease,
    /// The guest agent (`guest-network-get-interfaces`), through libvirtd.
    Agent,
    /// The host's ARP table: may be incomplete or stale; prefixes are 0.
    Arp,
}

impl AddressSource {
    pub(crate) fn code(self) -> u32 {
        match self {
            AddressSource::Lease => 0,
            AddressSource::Agent => 1,
            AddressSource::Arp => 2,
        }
    }
}

/// One interface of a domain (`virDomainInterface`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInterface {
    /// Its name, as the source knows it (`vnet0` for leases, `eth0` in
    /// the guest).
    pub name: String,
    /// Its MAC address, when known.
    pub hwaddr: Option<String>,
    /// Its addresses; empty when it has none.
    pub addrs: Vec<DomainAddress>,
}

/// One address of a [`DomainInterface`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainAddress {
    /// True for IPv6 (`VIR_IP_ADDR_TYPE_IPV6`), false for IPv4.
    pub ipv6: bool,
    /// The address, in its usual text form.
    pub addr: String,
    /// The prefix length.
    pub prefix: u32,
}

/// Reads `remote_domain_interface_addresses_ret`.
pub(crate) fn decode_interfaces(decoder: &mut Decoder<'_>) -> Result<Vec<DomainInterface>, XdrError> {
    // A name and an absent hwaddr and address list take at least 12 bytes.
    let count = decoder.array_len(INTERFACES_MAX, 12)?;
    (0..count)
        .map(|_| {
            let name = decoder.string(STRING_MAX)?.to_owned();
            let hwaddr = decoder.optional_string(STRING_MAX)?.map(str::to_owned);
            // A type, an address and a prefix take at least 12 bytes.
            let addrs = decoder.array_len(INTERFACES_MAX, 12)?;
            let addrs = (0..addrs)
                .map(|_| {
                    Ok(DomainAddress {
                        ipv6: decoder.i32()? == 1,
                        addr: decoder.string(STRING_MAX)?.to_owned(),
                        prefix: decoder.u32()?,
                    })
                })
                .collect::<Result<_, XdrError>>()?;
            Ok(DomainInterface { name, hwaddr, addrs })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::libvirt::xdr::Encoder;

    proptest! {
        /// libvirtd's reply is read within its bytes: any bytes give
        /// interfaces or an error, never a panic or a huge allocation.
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut decoder = Decoder::new(&bytes);
            let _ = decode_interfaces(&mut decoder);
        }
    }

    #[test]
    fn interfaces_with_and_without_addresses_decode() {
        let mut encoder = Encoder::new();
        encoder.u32(2);
        encoder.string("vnet0", STRING_MAX).unwrap();
        encoder
            .optional_string(Some("52:54:00:aa:bb:cc"), STRING_MAX)
            .unwrap();
        encoder.u32(1);
        encoder.i32(0);
        encoder.string("192.168.122.5", STRING_MAX).unwrap();
        encoder.u32(24);
        encoder.string("vnet1", STRING_MAX).unwrap();
        encoder.optional_string(None, STRING_MAX).unwrap();
        encoder.u32(0);
        let bytes = encoder.into_bytes();
        let mut decoder = Decoder::new(&bytes);
        let interfaces = decode_interfaces(&mut decoder).unwrap();
        decoder.finish().unwrap();
        assert_eq!(interfaces[0].addrs[0].addr, "192.168.122.5");
        assert!(!interfaces[0].addrs[0].ipv6);
        assert_eq!(
            (interfaces[1].hwaddr.as_deref(), interfaces[1].addrs.len()),
            (None, 0)
        );
        // A count beyond what the bytes can hold is refused, not allocated.
        let mut decoder = Decoder::new(&[0, 0, 7, 255]);
        assert!(decode_interfaces(&mut decoder).is_err());
    }
}
