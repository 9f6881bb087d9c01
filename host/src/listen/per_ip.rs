//! `max_connections_per_ip`: one client address cannot take every connection slot.
//!
//! Counted per canonical address (IPv4-mapped IPv6 is IPv4). Peers in `trusted_proxies` are not
//! counted: a reverse proxy in front of the gateway carries every client on its own address.
//! Memory is one map entry per address with a connection open; an entry is removed with its last
//! connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::config::{Cidr, canonical_ip};

pub struct PerIpLimit {
    max: usize,
    exempt: Vec<Cidr>,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One counted connection; released on drop.
pub struct IpPermit {
    limit: Arc<PerIpLimit>,
    ip: IpAddr,
}

impl PerIpLimit {
    /// `max` = 0 turns the cap off.
    pub fn new(max: usize, exempt: Vec<Cidr>) -> Self {
        Self {
            max,
            exempt,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A permit for a new connection from `ip`, or `None` if that address is at its cap.
    /// Uncounted peers get `Some(None)`.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<Option<IpPermit>> {
        let ip = canonical_ip(ip);
        if self.max == 0 || self.exempt.iter().any(|net| net.contains(ip)) {
            return Some(None);
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Some(IpPermit {
            limit: self.clone(),
            ip,
        }))
    }
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        let mut open = self.limit.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_capped_and_released_but_trusted_proxies_are_exempt() {
        let limit = Arc::new(PerIpLimit::new(2, vec!["10.0.0.0/8".parse().unwrap()]));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = limit.acquire(ip).unwrap();
        let _b = limit.acquire("::ffff:192.0.2.1".parse().unwrap()).unwrap();
        assert!(limit.acquire(ip).is_none(), "third connection refused");
        assert!(limit.acquire("192.0.2.2".parse().unwrap()).is_some());
        drop(a);
        assert!(limit.acquire(ip).is_some(), "a slot is free again");
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        for _ in 0..10 {
            assert!(matches!(limit.acquire(proxy), Some(None)));
        }
    }
}
