//! The client's address: the socket peer, unless that peer is a trusted proxy, in which case the
//! proxy's header says who the client is (nginx `set_real_ip_from` + `real_ip_recursive on`).
//! An untrusted peer can never choose its client address: its headers are not read at all.

use std::net::IpAddr;

use http::HeaderMap;

use crate::config::{Cidr, RealIpHeader, canonical_ip};

pub struct ClientIpResolver {
    trusted: Vec<Cidr>,
    header: RealIpHeader,
}

impl ClientIpResolver {
    pub fn new(trusted: Vec<Cidr>, header: RealIpHeader) -> Self {
        Self { trusted, header }
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(ip))
    }

    /// The client address for a request that arrived from `peer`.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical_ip(peer);
        if !self.is_trusted(peer) {
            return peer;
        }
        match self.header {
            RealIpHeader::XRealIp => headers
                .get("x-real-ip")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_entry)
                .map_or(peer, canonical_ip),
            RealIpHeader::XForwardedFor => self.walk_forwarded_for(peer, headers),
        }
    }

    /// Walks `X-Forwarded-For` from the right (the hop nearest to us), skipping trusted proxies;
    /// the first untrusted address is the client. A malformed entry stops the walk: nothing to its
    /// left can be trusted, so the last good hop is the answer.
    fn walk_forwarded_for(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer;
        // Several header lines are one comma-separated list, in order.
        let lines: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        for entry in lines.iter().rev().flat_map(|line| line.rsplit(',')) {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let Some(ip) = parse_entry(entry).map(canonical_ip) else {
                break;
            };
            client = ip;
            if !self.is_trusted(ip) {
                break;
            }
        }
        client
    }
}

/// One address as proxies write it: `192.0.2.1`, `2001:db8::1`, or with a port, `192.0.2.1:4711`
/// and `[2001:db8::1]:4711` (Azure and some load balancers append the client's port).
pub fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver(header: RealIpHeader) -> ClientIpResolver {
        ClientIpResolver::new(
            vec!["10.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()],
            header,
        )
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_cannot_spoof_its_address() {
        let r = resolver(RealIpHeader::XForwardedFor);
        assert_eq!(
            r.resolve(ip("203.0.113.9"), &xff(&["1.2.3.4"])),
            ip("203.0.113.9")
        );
        let mut h = HeaderMap::new();
        h.insert("x-real-ip", "1.2.3.4".parse().unwrap());
        assert_eq!(
            resolver(RealIpHeader::XRealIp).resolve(ip("203.0.113.9"), &h),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn trusted_peer_yields_rightmost_untrusted_hop() {
        let r = resolver(RealIpHeader::XForwardedFor);
        // The client forged "6.6.6.6"; the real client is the one our proxies saw.
        let h = xff(&["6.6.6.6, 198.51.100.7, 10.1.1.1"]);
        assert_eq!(r.resolve(ip("10.0.0.2"), &h), ip("198.51.100.7"));
    }

    #[test]
    fn multiple_header_lines_form_one_list() {
        let r = resolver(RealIpHeader::XForwardedFor);
        let h = xff(&["198.51.100.7", "10.1.1.1"]);
        assert_eq!(r.resolve(ip("10.0.0.2"), &h), ip("198.51.100.7"));
    }

    #[test]
    fn all_trusted_hops_yield_the_leftmost_and_garbage_stops_the_walk() {
        let r = resolver(RealIpHeader::XForwardedFor);
        assert_eq!(
            r.resolve(ip("10.0.0.2"), &xff(&["10.9.9.9, 10.1.1.1"])),
            ip("10.9.9.9")
        );
        assert_eq!(
            r.resolve(ip("10.0.0.2"), &xff(&["1.1.1.1, junk, 10.1.1.1"])),
            ip("10.1.1.1")
        );
        assert_eq!(r.resolve(ip("10.0.0.2"), &HeaderMap::new()), ip("10.0.0.2"));
    }

    #[test]
    fn entries_with_ports_are_read_as_their_address() {
        let r = resolver(RealIpHeader::XForwardedFor);
        let h = xff(&["198.51.100.7:4711, [2001:db8::5]:80, 10.1.1.1:443"]);
        assert_eq!(r.resolve(ip("10.0.0.2"), &h), ip("2001:db8::5"));
        let h = xff(&["198.51.100.7:4711, 10.1.1.1:443"]);
        assert_eq!(r.resolve(ip("10.0.0.2"), &h), ip("198.51.100.7"));
    }

    use proptest::prelude::*;

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
        ]
    }

    proptest! {
        /// An untrusted peer is its own client, whatever it sends.
        #[test]
        fn untrusted_peers_never_choose_their_address(
            peer in any_ip(),
            lines in proptest::collection::vec("[0-9a-f.:, \\[\\]]{0,40}", 0..4),
        ) {
            let r = resolver(RealIpHeader::XForwardedFor);
            prop_assume!(!r.is_trusted(peer));
            let mut h = HeaderMap::new();
            for l in &lines {
                if let Ok(v) = l.parse() {
                    h.append("x-forwarded-for", v);
                }
            }
            prop_assert_eq!(r.resolve(peer, &h), canonical_ip(peer));
        }

        /// Behind a trusted peer the answer is always an address from the list or the peer, and
        /// the client cannot put itself to the right of a proxy: a forged prefix never wins over
        /// the untrusted hop our proxy saw.
        #[test]
        fn trusted_walks_stop_at_the_first_untrusted_hop(
            forged in proptest::collection::vec(any_ip(), 0..4),
            real in any_ip(),
            proxies in proptest::collection::vec(0u8..255, 0..3),
        ) {
            let r = resolver(RealIpHeader::XForwardedFor);
            prop_assume!(!r.is_trusted(real));
            let mut list: Vec<String> = forged.iter().map(ToString::to_string).collect();
            list.push(real.to_string());
            list.extend(proxies.iter().map(|p| format!("10.0.0.{p}")));
            let h = xff(&[&list.join(", ")]);
            prop_assert_eq!(r.resolve(ip("10.0.0.2"), &h), canonical_ip(real));
        }

        #[test]
        fn parse_entry_never_panics(s in "\\PC{0,60}") {
            let _ = parse_entry(&s);
        }
    }

    #[test]
    fn x_real_ip_from_trusted_peer_and_mapped_addresses_are_normalised() {
        let r = resolver(RealIpHeader::XRealIp);
        let mut h = HeaderMap::new();
        h.insert("x-real-ip", "::ffff:198.51.100.7".parse().unwrap());
        assert_eq!(r.resolve(ip("::1"), &h), ip("198.51.100.7"));
        assert_eq!(
            r.resolve(ip("::ffff:10.0.0.5"), &HeaderMap::new()),
            ip("10.0.0.5")
        );
    }
}
