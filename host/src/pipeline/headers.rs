//! Header hygiene between client and upstream: hop-by-hop headers never cross the gateway, the
//! client's credential never reaches an upstream, and forwarding headers say what we know.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::policy::view;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_UPSTREAM_REQUEST_ID: HeaderName = HeaderName::from_static("x-upstream-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Whether `name` describes one connection, not the message, or is a proxy credential meant
/// for us (the list is `policy::view::is_hop_by_hop`, which policies' header operations obey
/// too).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    view::is_hop_by_hop(name.as_str())
}

/// Removes every header whose name `drop` selects. The names present are scanned (a handful)
/// instead of looking each candidate up by hash: most messages carry none of them, and then
/// nothing is hashed or allocated.
fn remove_matching(h: &mut HeaderMap, drop: impl Fn(&HeaderName) -> bool) {
    while let Some(name) = h.keys().find(|n| drop(n)).cloned() {
        h.remove(&name);
    }
}

/// Whether `name` spells with `_` a header the gateway removes or sets itself
/// (`Transfer_Encoding`, `X_Forwarded_For`, `Content_Length`): servers that read `-` and `_` as
/// one (CGI, WSGI, PHP, some frameworks) would take it for the real one, so it never crosses.
/// nginx drops every underscored name by default; other underscored names pass here.
fn is_underscore_alias(name: &HeaderName) -> bool {
    let n = name.as_str();
    if !n.contains('_') {
        return false;
    }
    let dashed = n.replace('_', "-");
    view::is_hop_by_hop(&dashed)
        || matches!(
            dashed.as_str(),
            "host"
                | "content-length"
                | "authorization"
                | "x-api-key"
                | "forwarded"
                | "x-forwarded-for"
                | "x-forwarded-proto"
                | "x-forwarded-host"
                | "x-real-ip"
                | "x-request-id"
        )
}

/// Whether a value has a byte outside visible ASCII, space and tab (obs-text; hyper has already
/// refused control characters).
fn has_obs_text(v: &HeaderValue) -> bool {
    !v.as_bytes().is_ascii()
}

/// Removes what must not cross the gateway as the client sent it: hop-by-hop headers, including
/// any the `Connection` header names; underscore spellings of the headers the gateway manages
/// ([`is_underscore_alias`]); and, unless `allow_obs_text`, headers with a value past ASCII.
pub fn strip_hop_by_hop(h: &mut HeaderMap, allow_obs_text: bool) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let obs_text: Vec<HeaderName> = if allow_obs_text {
        Vec::new()
    } else {
        h.iter()
            .filter(|(_, v)| has_obs_text(v))
            .map(|(n, _)| n.clone())
            .collect()
    };
    remove_matching(h, |n| {
        is_hop_by_hop(n) || is_underscore_alias(n) || listed.contains(n) || obs_text.contains(n)
    });
}

/// What the gateway knows about the request it forwards.
pub struct Forwarding<'a> {
    pub client_ip: IpAddr,
    pub peer_ip: IpAddr,
    /// The peer is a trusted proxy, so its forwarding headers are extended, not replaced.
    pub trusted_peer: bool,
    pub tls: bool,
    pub request_id: &'a str,
}

/// Turns the request headers into the upstream request's headers, in place. The client's
/// hop-by-hop headers (and those its `Connection` named) were removed when the request arrived,
/// before any policy ran; here only the fixed hop-by-hop set is removed again, so a header a
/// policy set is never dropped because the client named it.
pub fn to_upstream(h: &mut HeaderMap, f: &Forwarding<'_>) {
    remove_matching(h, |n| {
        is_hop_by_hop(n)
            // hyper derives Host/:authority from the upstream URI and Content-Length from the
            // body.
            || n == header::HOST
            || n == header::CONTENT_LENGTH
            // The client's key is for us; the upstream gets the upstream's credential
            // (`Upstream::send` sets it).
            || n == header::AUTHORIZATION
            || n == X_API_KEY
            // Replaced by the X-Forwarded-* set below.
            || n == header::FORWARDED
    });

    // Several X-Forwarded-For lines are one list, in order (as the client IP was read).
    let prev: Vec<&str> = h
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    // One buffer serves both headers that carry the address.
    let client_ip = ip_value(f.client_ip);
    if f.trusted_peer && !prev.is_empty() {
        let xff = format!("{}, {}", prev.join(", "), f.peer_ip);
        h.remove(&X_FORWARDED_FOR);
        insert(h, X_FORWARDED_FOR, &xff);
    } else {
        h.insert(X_FORWARDED_FOR, client_ip.clone());
    }
    h.insert(X_REAL_IP, client_ip);
    if !(f.trusted_peer && h.contains_key(&X_FORWARDED_PROTO)) {
        h.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if f.tls { "https" } else { "http" }),
        );
    }
    insert(h, X_REQUEST_ID, f.request_id);
}

/// Whether a `Content-Type` value names the media type `essence` (e.g. `application/json`):
/// the type before any parameter, without surrounding space, compared without case. So
/// `Application/JSON; charset=utf-8` is JSON, and `application/jsonl` is not.
pub fn has_media_type(value: &[u8], essence: &str) -> bool {
    let end = value.iter().position(|&b| b == b';').unwrap_or(value.len());
    value[..end]
        .trim_ascii()
        .eq_ignore_ascii_case(essence.as_bytes())
}

/// Whether the headers' `Content-Type` names the media type `essence` ([`has_media_type`]).
pub fn content_type_is(h: &HeaderMap, essence: &str) -> bool {
    h.get(header::CONTENT_TYPE)
        .is_some_and(|v| has_media_type(v.as_bytes(), essence))
}

/// Turns an upstream's response headers into the client's, in place (the request id is the
/// `request_id` filter's).
pub fn to_client(h: &mut HeaderMap) {
    // What an upstream says in its header values is relayed as it is.
    strip_hop_by_hop(h, true);
    if content_type_is(h, "text/event-stream") {
        // Tells an nginx in front of us not to buffer the stream either.
        h.insert(
            HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        );
    }
}

/// An address as a header value.
fn ip_value(ip: IpAddr) -> HeaderValue {
    let text = tollgate_config::IpText::new(ip);
    HeaderValue::from_maybe_shared(Bytes::copy_from_slice(text.as_str().as_bytes()))
        .expect("an IP address is a valid header value")
}

fn insert(h: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hop_by_hop_test_names_exactly_the_hop_by_hop_set() {
        const HOP_BY_HOP: [HeaderName; 9] = [
            header::CONNECTION,
            HeaderName::from_static("keep-alive"),
            HeaderName::from_static("proxy-connection"),
            header::PROXY_AUTHENTICATE,
            header::PROXY_AUTHORIZATION,
            header::TE,
            header::TRAILER,
            header::TRANSFER_ENCODING,
            header::UPGRADE,
        ];
        for name in &HOP_BY_HOP {
            assert!(is_hop_by_hop(name), "{name}");
        }
        for name in [
            "host",
            "content-type",
            "x-keep-alive",
            "tes",
            "upgrade-insecure-requests",
        ] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
    }

    #[test]
    fn a_media_type_is_compared_without_its_parameters_and_without_case() {
        for yes in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON;charset=UTF-8",
            " application/json ",
        ] {
            assert!(has_media_type(yes.as_bytes(), "application/json"), "{yes}");
        }
        for no in [
            "application/jsonl",
            "application/json-seq",
            "application/jsonx; charset=utf-8",
            "text/json",
            "",
            ";application/json",
        ] {
            assert!(!has_media_type(no.as_bytes(), "application/json"), "{no}");
        }
        assert!(has_media_type(
            b"text/event-stream;charset=utf-8",
            "text/event-stream"
        ));
        assert!(!has_media_type(b"text/event-streams", "text/event-stream"));
    }

    fn fwd(trusted: bool) -> Forwarding<'static> {
        Forwarding {
            client_ip: "198.51.100.7".parse().unwrap(),
            peer_ip: "10.0.0.2".parse().unwrap(),
            trusted_peer: trusted,
            tls: true,
            request_id: "rid",
        }
    }

    #[test]
    fn client_key_and_hop_by_hop_headers_never_reach_upstream() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer client-key".parse().unwrap());
        h.insert("x-api-key", "client-key".parse().unwrap());
        h.insert(
            header::CONNECTION,
            "keep-alive, x-secret-hop".parse().unwrap(),
        );
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert("anthropic-version", "2023-06-01".parse().unwrap());
        h.insert(header::HOST, "gateway.example".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "12".parse().unwrap());
        h.insert(header::FORWARDED, "for=6.6.6.6".parse().unwrap());
        // As the pipeline does: the client's hop-by-hop headers on arrival, then forwarding.
        strip_hop_by_hop(&mut h, false);
        // Hop-by-hop headers a policy sets in between (several lines of one) are removed again.
        h.append(header::UPGRADE, "websocket".parse().unwrap());
        h.append(header::UPGRADE, "h2c".parse().unwrap());
        h.insert(header::PROXY_AUTHORIZATION, "Basic x".parse().unwrap());
        to_upstream(&mut h, &fwd(false));
        for gone in [
            "host",
            "content-length",
            "forwarded",
            "upgrade",
            "proxy-authorization",
        ] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        assert!(!h.contains_key(header::AUTHORIZATION));
        assert!(!h.contains_key("x-api-key"));
        assert!(!h.contains_key("x-secret-hop"));
        assert!(!h.contains_key(header::CONNECTION));
        assert!(!h.contains_key(header::TE));
        assert_eq!(h["anthropic-version"], "2023-06-01");
        assert_eq!(h["x-request-id"], "rid");
    }

    #[test]
    fn forwarded_for_is_replaced_for_untrusted_peers_and_extended_for_trusted_ones() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        h.insert("x-forwarded-proto", "gopher".parse().unwrap());
        to_upstream(&mut h, &fwd(false));
        assert_eq!(h["x-forwarded-for"], "198.51.100.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-real-ip"], "198.51.100.7");

        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "198.51.100.7".parse().unwrap());
        h.insert("x-forwarded-proto", "http".parse().unwrap());
        to_upstream(&mut h, &fwd(true));
        assert_eq!(h["x-forwarded-for"], "198.51.100.7, 10.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "http");
    }

    #[test]
    fn several_forwarded_for_lines_are_forwarded_as_one_list() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "203.0.113.1".parse().unwrap());
        h.append("x-forwarded-for", "198.51.100.7, 10.1.1.1".parse().unwrap());
        to_upstream(&mut h, &fwd(true));
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(
            h["x-forwarded-for"],
            "203.0.113.1, 198.51.100.7, 10.1.1.1, 10.0.0.2"
        );
    }

    #[test]
    fn underscore_spellings_of_managed_headers_and_values_past_ascii_never_cross() {
        let mut h = HeaderMap::new();
        for name in [
            "transfer_encoding",
            "content_length",
            "x_forwarded_for",
            "x_real_ip",
            "x_api_key",
            "proxy_authorization",
        ] {
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                "1".parse().unwrap(),
            );
        }
        h.insert("openai_beta", "kept".parse().unwrap());
        h.insert("x-latin1", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        h.insert("x-plain", "visible ascii\tand tab".parse().unwrap());
        let mut allowed = h.clone();
        strip_hop_by_hop(&mut h, false);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["openai_beta", "x-plain"]);
        strip_hop_by_hop(&mut allowed, true);
        assert_eq!(allowed["x-latin1"].as_bytes(), b"caf\xe9");
    }

    #[test]
    fn headers_a_policy_set_survive_the_clients_connection_header() {
        // The client's Connection header was applied on arrival; what a policy sets afterwards
        // under the same names reaches the upstream.
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "x-tenant".parse().unwrap());
        h.insert("x-tenant", "from-client".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert!(!h.contains_key("x-tenant"));
        h.insert("x-tenant", "from-policy".parse().unwrap());
        to_upstream(&mut h, &fwd(false));
        assert_eq!(h["x-tenant"], "from-policy");
    }

    #[test]
    fn streams_tell_a_proxy_in_front_not_to_buffer() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "close".parse().unwrap());
        h.insert(
            header::CONTENT_TYPE,
            "text/event-stream; charset=utf-8".parse().unwrap(),
        );
        to_client(&mut h);
        assert!(!h.contains_key(header::CONNECTION));
        assert_eq!(h["x-accel-buffering"], "no");
    }
}
