//! `max_connections_per_ip`: one client address cannot take every connection slot; and
//! `new_connections_per_ip`: nor open connections faster than a rate (a GCRA bucket per address,
//! burst = the rate's count, at most [`MAX_RATE_KEYS`] addresses tracked, least recent forgotten).
//!
//! Counted per canonical address (IPv4-mapped IPv6 is IPv4). Peers in `trusted_proxies` are not
//! counted: a reverse proxy in front of the gateway carries every client on its own address.
//! Memory is one map entry per address with a connection open; an entry is removed with its last
//! connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::config::{Cidr, Rate, canonical_ip};
use crate::state::{Gcra, LocalBuckets, Op};

pub struct PerIpLimit {
    max: usize,
    exempt: Vec<Cidr>,
    open: Mutex<HashMap<IpAddr, usize>>,
    rate: Option<(Gcra, LocalBuckets)>,
}

/// Addresses whose connection rate is tracked at once.
pub const MAX_RATE_KEYS: usize = 100_000;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections_per_ip`.
    TooMany,
    /// `new_connections_per_ip`.
    TooFast,
}

/// One counted connection; released on drop.
pub struct IpPermit {
    limit: Arc<PerIpLimit>,
    ip: IpAddr,
}

impl PerIpLimit {
    /// `max` = 0 turns the cap off.
    pub fn new(max: usize, exempt: Vec<Cidr>, rate: Option<Rate>) -> Self {
        Self {
            max,
            exempt,
            open: Mutex::new(HashMap::new()),
            rate: rate.map(|r| {
                let g = Gcra::new(r.count, r.period.as_micros() as u64, r.count - 1);
                (g, LocalBuckets::new(MAX_RATE_KEYS))
            }),
        }
    }

    /// A permit for a new connection from `ip`, or `None` if that address is at its cap.
    /// Uncounted peers get `Some(None)`.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Option<IpPermit>, Refusal> {
        let ip = canonical_ip(ip);
        if self.exempt.iter().any(|net| net.contains(ip)) {
            return Ok(None);
        }
        if let Some((gcra, buckets)) = &self.rate {
            let key = match ip {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            };
            if !buckets.apply(&key, gcra, Op::Take(1)).allowed {
                return Err(Refusal::TooFast);
            }
        }
        if self.max == 0 {
            return Ok(None);
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return Err(Refusal::TooMany);
        }
        *n += 1;
        Ok(Some(IpPermit {
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

/// Turns a refused connection away: on plain TCP with a best-effort HTTP/1.1 429 (OpenAI error
/// shape, `Connection: close`) written without reading the request, so a client sees why; on TLS
/// (no handshake is spent on it) by closing. Logged at debug: a flood must not flood the log.
pub fn refuse(tcp: tokio::net::TcpStream, peer: std::net::SocketAddr, why: Refusal, tls: bool) {
    let (setting, message) = match why {
        Refusal::TooMany => (
            "max_connections_per_ip",
            "too many connections from this address",
        ),
        Refusal::TooFast => (
            "new_connections_per_ip",
            "this address opens connections too fast",
        ),
    };
    tracing::debug!(peer = %peer, setting, "connection refused");
    if !tls {
        let body = crate::error::error_body(message, "requests", "connection_limit_exceeded");
        let answer = format!(
            "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        // Never waits: a client that does not read gets nothing.
        let _ = tcp.try_write(answer.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_capped_and_released_but_trusted_proxies_are_exempt() {
        let limit = Arc::new(PerIpLimit::new(
            2,
            vec!["10.0.0.0/8".parse().unwrap()],
            None,
        ));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = limit.acquire(ip).unwrap();
        let _b = limit.acquire("::ffff:192.0.2.1".parse().unwrap()).unwrap();
        assert_eq!(
            limit.acquire(ip).err(),
            Some(Refusal::TooMany),
            "third connection refused"
        );
        assert!(limit.acquire("192.0.2.2".parse().unwrap()).is_ok());
        drop(a);
        assert!(limit.acquire(ip).is_ok(), "a slot is free again");
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        for _ in 0..10 {
            assert!(matches!(limit.acquire(proxy), Ok(None)));
        }
    }

    #[test]
    fn new_connections_are_rate_limited_per_address() {
        let limit = Arc::new(PerIpLimit::new(0, vec![], Some("3/m".parse().unwrap())));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(limit.acquire(ip).is_ok());
        }
        assert_eq!(limit.acquire(ip).err(), Some(Refusal::TooFast));
        assert_eq!(
            limit.acquire("::ffff:192.0.2.1".parse().unwrap()).err(),
            Some(Refusal::TooFast),
            "the same address in IPv4-mapped form"
        );
        assert!(limit.acquire("192.0.2.2".parse().unwrap()).is_ok());
    }
}
