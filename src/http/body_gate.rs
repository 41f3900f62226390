//! Bounds what a slow request body can hold: each body must arrive within
//! [`BODY_DEADLINE`], and one address may have at most [`MAX_UNREAD_BODIES`]
//! requests waiting for their body at once. Headers are bounded by actix's own
//! request-head timeout; without these two, a client that announces a body and sends
//! it a byte at a time keeps a connection (and a file descriptor) per request for as
//! long as it likes, and the per-address rate limit, which needs the body first, never
//! runs.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::address::address_group;
use crate::background::lock;

/// How long a request body may take to arrive, from the end of the headers.
pub const BODY_DEADLINE: Duration = Duration::from_secs(10);

/// Requests from one address (IPv6 by /64) whose body is still being read. A browser
/// sends its tiny body with the headers, so a legitimate client is hardly ever seen here.
pub const MAX_UNREAD_BODIES: u32 = 8;

/// Counts, per address, the requests whose body is being read.
#[derive(Clone, Default)]
pub struct BodyGate {
    reading: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

/// One body being read; dropping it frees the place.
pub struct BodyPermit {
    gate: BodyGate,
    address: IpAddr,
}

impl BodyGate {
    /// A place for one more body from `ip`, or `None` when the address holds all of
    /// its places already.
    pub fn enter(&self, ip: IpAddr) -> Option<BodyPermit> {
        let address = address_group(ip);
        let mut reading = lock(&self.reading);
        let count = reading.entry(address).or_insert(0);
        if *count >= MAX_UNREAD_BODIES {
            return None;
        }
        *count += 1;
        Some(BodyPermit {
            gate: self.clone(),
            address,
        })
    }

    #[cfg(test)]
    fn reading(&self, ip: IpAddr) -> u32 {
        lock(&self.reading)
            .get(&address_group(ip))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for BodyPermit {
    fn drop(&mut self) {
        let mut reading = lock(&self.gate.reading);
        if let Some(count) = reading.get_mut(&self.address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                reading.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_places_back_when_bodies_are_read() {
        let gate = BodyGate::default();
        let ip: IpAddr = "203.0.113.5".parse().unwrap();
        let other: IpAddr = "203.0.113.6".parse().unwrap();
        let held: Vec<_> = (0..MAX_UNREAD_BODIES)
            .map(|_| gate.enter(ip).expect("a place"))
            .collect();
        assert!(gate.enter(ip).is_none(), "the cap holds");
        assert!(
            gate.enter(other).is_some(),
            "other addresses are not affected"
        );
        drop(held);
        assert_eq!(gate.reading(ip), 0);
        assert!(gate.enter(ip).is_some());
    }

    #[test]
    fn an_ipv6_host_counts_as_its_64() {
        let gate = BodyGate::default();
        let _held: Vec<_> = (0..MAX_UNREAD_BODIES)
            .map(|i| {
                gate.enter(format!("2001:db8::{i:x}").parse().unwrap())
                    .unwrap()
            })
            .collect();
        assert!(gate.enter("2001:db8::ffff".parse().unwrap()).is_none());
    }
}
