//! Client addresses grouped the way the service counts them: an IPv4 address (or an
//! IPv4-mapped IPv6 one) alone, an IPv6 address by its /64, since one host usually
//! holds a whole /64 and could otherwise rotate through it.

use std::net::{IpAddr, SocketAddr};

/// One `X-Forwarded-For` hop: `ip`, `ip:port` or `[v6]:port` (as proxies append them).
/// `None` for anything else, which ends the walk through the chain.
pub fn parse_forwarded_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = hop.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    // `[2001:db8::1]` without a port.
    hop.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse::<std::net::Ipv6Addr>().ok())
        .map(IpAddr::V6)
}

/// The client behind a chain of proxies: starting at the peer, walk the
/// `X-Forwarded-For` hops (all header values, in order) from the right while the
/// address reached so far is a trusted proxy. The first untrusted address is the
/// client; an unparsable hop stops the walk at the last trusted address, since
/// nothing left of it was written by a proxy the service believes.
pub fn forwarded_client<'a>(
    peer: IpAddr,
    header_values: impl IntoIterator<Item = &'a str>,
    is_trusted: impl Fn(&IpAddr) -> bool,
) -> IpAddr {
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = header_values
        .into_iter()
        .flat_map(|v| v.split(','))
        .collect();
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        match parse_forwarded_hop(hop) {
            Some(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            None => break,
        }
    }
    client
}

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
