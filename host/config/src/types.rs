//! Value types for the config file: each parses and validates one kind of value, so the rest of the
//! host never sees a raw string where a duration, size, network or URL is meant.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::env::expand;

/// A config value written as a string (any string may also be a `${VAR}` reference).
macro_rules! string_schema {
    ($t:ty, $name:literal, $description:literal) => {
        impl schemars::JsonSchema for $t {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({"type": "string", "description": $description})
            }
        }
    };
}
pub(crate) use string_schema;

string_schema!(
    Duration,
    "Duration",
    "a duration such as \"10s\", \"250ms\" or \"5m\""
);
string_schema!(
    Cidr,
    "Cidr",
    "an IP address or network, e.g. 10.0.0.0/8 or 192.0.2.7"
);
string_schema!(
    Secret,
    "Secret",
    "a secret; use ${VAR} to keep it out of the file"
);
string_schema!(
    UpstreamUrl,
    "UpstreamUrl",
    "an http:// or https:// base URL"
);
string_schema!(
    ListenAddr,
    "ListenAddr",
    "host:port to listen on, e.g. 127.0.0.1:8317"
);

impl schemars::JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": ["string", "integer"],
            "minimum": 0,
            "description": "a size such as \"50MiB\" or \"512KiB\", or a number of bytes"
        })
    }
}

/// Deserializes through `FromStr` after `${VAR}` expansion; the parse error becomes the message.
pub(crate) fn parse_expanded<'de, D, T>(d: D, what: &str, example: &str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let raw = String::deserialize(d)?;
    let value = expand(&raw).map_err(D::Error::custom)?;
    value.parse().map_err(|e| {
        D::Error::custom(format!(
            "invalid {what} {value:?}: {e} (expected e.g. {example})"
        ))
    })
}

/// A duration written as `"10s"`, `"250ms"`, `"5m"`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let parsed: humantime::Duration = parse_expanded(d, "duration", "\"10s\" or \"250ms\"")?;
        Ok(Self(parsed.into()))
    }
}

/// A size written as `"50MiB"`, `"512KiB"`, or a plain number of bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ByteSize(pub u64);

/// Written back as a number of bytes (a stored key's `capture.max_bytes`).
impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize, serde::Serialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Ok(Self(n)),
            Raw::Text(t) => {
                let value = expand(&t).map_err(D::Error::custom)?;
                let parsed: bytesize::ByteSize = value.parse().map_err(|e| {
                    D::Error::custom(format!("invalid size {value:?} (e.g. \"50MiB\"): {e}"))
                })?;
                Ok(Self(parsed.as_u64()))
            }
        }
    }
}

/// An IP network; a bare address means that single host (`/32` or `/128`). IPv4-mapped IPv6
/// addresses are normalised to IPv4 so `::ffff:10.0.0.1` and `10.0.0.1` are the same client.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Cidr(pub ipnet::IpNet);

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&canonical_ip(ip))
    }
}

/// The one canonical form of an address: IPv4-mapped IPv6 becomes IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An address or a network as text, without allocating. An IPv4 address (nearly every client) is
/// written digit by digit: `Ipv4Addr`'s `Display` goes through the formatter and its padding
/// support, about 1,300 instructions, more than the rest of a request's forwarding headers.
pub struct IpText {
    buf: [u8; 50],
    len: usize,
}

impl IpText {
    pub fn new(ip: IpAddr) -> Self {
        let mut t = Self {
            buf: [0; 50],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.push(b'.');
                    }
                    t.push_number(octet);
                }
            }
            IpAddr::V6(v6) => {
                use std::io::Write;
                let size = t.buf.len();
                let mut out = &mut t.buf[..];
                // 45 bytes hold the longest IPv6 text (an IPv4-embedded address).
                let _ = write!(out, "{v6}");
                t.len = size - out.len();
            }
        }
        t
    }

    /// A network as text: its address, `/` and its prefix length (as `IpNet`'s `Display`).
    pub fn net(net: ipnet::IpNet) -> Self {
        let mut t = Self::new(net.addr());
        t.push(b'/');
        t.push_number(net.prefix_len());
        t
    }

    fn push_number(&mut self, n: u8) {
        if n >= 100 {
            self.push(b'0' + n / 100);
        }
        if n >= 10 {
            self.push(b'0' + n / 10 % 10);
        }
        self.push(b'0' + n % 10);
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(net) = s.parse::<ipnet::IpNet>() {
            return Ok(Self(net.trunc()));
        }
        s.parse::<IpAddr>()
            .map(|ip| Self(ipnet::IpNet::from(canonical_ip(ip))))
            .map_err(|_| "not an IP address or CIDR".to_owned())
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_expanded(d, "network", "10.0.0.0/8 or 192.0.2.7")
    }
}

/// A secret (API key, credential, HMAC key). `Debug` never prints it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<empty>"
        } else {
            "<redacted>"
        })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        expand(&raw).map(Self).map_err(D::Error::custom)
    }
}

/// An upstream base URL: `http` or `https`, with a host, no query or fragment. Its path (if any)
/// is prepended to every proxied request path, like nginx's `proxy_pass` with a URI.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct UpstreamUrl {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Base path without a trailing slash ("" for none).
    pub base_path: String,
}

impl FromStr for UpstreamUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let uri: http::Uri = s.parse().map_err(|e| format!("{e}"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or("missing scheme (http:// or https://)")?;
        if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
            return Err(format!("scheme must be http or https, not {scheme}"));
        }
        let authority = uri.authority().cloned().ok_or("missing host")?;
        if authority.as_str().contains('@') {
            return Err("credentials in the URL are not allowed; use `credential`".into());
        }
        if uri.query().is_some() {
            return Err("a query string is not allowed".into());
        }
        Ok(Self {
            scheme,
            authority,
            base_path: uri.path().trim_end_matches('/').to_owned(),
        })
    }
}

impl<'de> Deserialize<'de> for UpstreamUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_expanded(d, "URL", "https://api.openai.com")
    }
}

/// `host:port` to listen on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ListenAddr(pub std::net::SocketAddr);

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_expanded(d, "listen address", "127.0.0.1:8317").map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_text_is_its_display_text() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "9.10.99.100",
            "127.0.0.1",
            "198.51.100.7",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.1",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
            "1111:2222:3333:4444:5555:6666:7777:8888",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::new(ip).as_str(), ip.to_string());
        }
        for octet in 0..=255u8 {
            let ip = IpAddr::from([octet, 0, octet, 255 - octet]);
            assert_eq!(IpText::new(ip).as_str(), ip.to_string());
        }
        for net in [
            "0.0.0.0/0",
            "10.0.0.0/8",
            "192.0.2.7/32",
            "::/0",
            "2001:db8::/32",
            "1111:2222:3333:4444:5555:6666:7777:8888/128",
        ] {
            let net: ipnet::IpNet = net.parse().unwrap();
            assert_eq!(IpText::net(net).as_str(), net.to_string());
        }
    }

    #[test]
    fn cidr_accepts_bare_addresses_and_truncates_host_bits() {
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>().unwrap().0.to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "10.1.2.3".parse::<Cidr>().unwrap().0.to_string(),
            "10.1.2.3/32"
        );
        assert_eq!("::1".parse::<Cidr>().unwrap().0.to_string(), "::1/128");
        assert_eq!(
            "::ffff:10.0.0.1".parse::<Cidr>().unwrap().0.to_string(),
            "10.0.0.1/32"
        );
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
    }

    #[test]
    fn cidr_matches_ipv4_mapped_ipv6_clients() {
        let net: Cidr = "192.168.0.0/16".parse().unwrap();
        assert!(net.contains("::ffff:192.168.4.5".parse().unwrap()));
        assert!(!net.contains("::ffff:10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn upstream_url_keeps_base_path_without_trailing_slash() {
        let u: UpstreamUrl = "https://api.example.com/openai/v1/".parse().unwrap();
        assert_eq!(u.authority.as_str(), "api.example.com");
        assert_eq!(u.base_path, "/openai/v1");
        assert_eq!(
            "http://h:8000".parse::<UpstreamUrl>().unwrap().base_path,
            ""
        );
        assert!("ftp://h".parse::<UpstreamUrl>().is_err());
        assert!("https://u:p@h".parse::<UpstreamUrl>().is_err());
        assert!("h:80".parse::<UpstreamUrl>().is_err());
    }

    proptest::proptest! {
        /// A network contains every address it was written from, in plain or IPv4-mapped form,
        /// and never an address outside its prefix.
        #[test]
        fn cidr_membership_matches_the_prefix(
            a in proptest::prelude::any::<[u8; 4]>(),
            b in proptest::prelude::any::<[u8; 4]>(),
            prefix in 0u8..=32,
        ) {
            let net: Cidr = format!("{}/{prefix}", IpAddr::from(a)).parse().unwrap();
            proptest::prop_assert!(net.contains(IpAddr::from(a)));
            let mapped = IpAddr::from(std::net::Ipv4Addr::from(a).to_ipv6_mapped());
            proptest::prop_assert!(net.contains(mapped));
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
            let same = u32::from_be_bytes(a) & mask == u32::from_be_bytes(b) & mask;
            proptest::prop_assert_eq!(net.contains(IpAddr::from(b)), same);
        }

        #[test]
        fn cidr_parsing_never_panics(s in "\\PC{0,50}") {
            let _ = s.parse::<Cidr>();
        }
    }

    #[test]
    fn secret_debug_is_redacted() {
        assert_eq!(format!("{:?}", Secret::new("sk-live")), "<redacted>");
    }
}
