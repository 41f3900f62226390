//! Client addresses grouped the way the service counts them: an IPv4 address (or an
//! IPv4-mapped IPv6 one) alone, an IPv6 address by its /64, since one host usually
//! holds a whole /64 and could otherwise rotate through it.

use std::net::IpAddr;

/// The address group `ip` is counted in: itself for IPv4, its /64 prefix for IPv6.
pub fn address_group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}
