//! What policies see of the request path, and what their answers do to it.
//!
//! Requests and responses reach plugins as WIT resources (`request`, `response`): the host keeps
//! the data in a [`RequestInfo`] / [`ResponseInfo`] and the plugin reads the fields it needs
//! through methods, so nothing is copied into the plugin that it does not read. Upstreams are
//! plain records: [`UpstreamView`] (with name and models) for a quota policy and a `router`,
//! [`Candidate`] (figures only) for a `lean-router`; a router reads most of their fields.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::wit::types::{Candidate, Header, HeaderOp, UpstreamView};

/// A router call's candidates, in the form its export takes: [`UpstreamView`]s for `router`,
/// figures alone for `lean-router` ([`crate::Plugin::lean_router`] says which). Views serve
/// either: a lean router gets their figures.
#[derive(Clone)]
pub enum Candidates {
    Views(Vec<UpstreamView>),
    Figures(Vec<Candidate>),
}

impl Candidates {
    /// The candidates' figures, for a lean router.
    pub fn figures(&self) -> std::borrow::Cow<'_, [Candidate]> {
        match self {
            Candidates::Figures(f) => f.as_slice().into(),
            Candidates::Views(v) => v.iter().map(figures).collect::<Vec<_>>().into(),
        }
    }
}

/// An upstream view's figures: a lean router's candidate.
pub fn figures(v: &UpstreamView) -> Candidate {
    Candidate {
        weight: v.weight,
        in_flight: v.in_flight,
        latency_ewma_us: v.latency_ewma_us,
        error_rate: v.error_rate,
        cooling_until_ms: v.cooling_until_ms,
    }
}

/// Headers a policy never sees or sets: the client's credential.
fn is_credential(name: &str) -> bool {
    name.eq_ignore_ascii_case("authorization") || name.eq_ignore_ascii_case("x-api-key")
}

/// Whether `name` (lowercase, as a [`HeaderName`] spells it) describes one connection, not the
/// message (RFC 9110 §7.6.1), or is a proxy credential meant for the gateway. The gateway's one
/// list: the proxy strips these (`pipeline/headers.rs`) and policies may not write them.
pub fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Headers a policy may not set, remove or rename, besides the credential: how a message is
/// framed and the connection it travels on (`content-length`, `host` and the hop-by-hop
/// headers). The gateway frames what it sends; hyper trusts a `content-length` it is handed,
/// so one a policy wrote on an answer would cut the body short.
pub fn is_framing(name: &HeaderName) -> bool {
    let n = name.as_str();
    n == "content-length" || n == "host" || is_hop_by_hop(n)
}

/// Every header as a WIT list, without credentials; values that are not UTF-8 are left out.
fn header_list(h: &HeaderMap) -> Vec<Header> {
    h.iter()
        .filter(|(n, _)| !is_credential(n.as_str()))
        .filter_map(|(n, v)| {
            Some(Header {
                name: n.as_str().to_owned(),
                value: v.to_str().ok()?.to_owned(),
            })
        })
        .collect()
}

/// One header's value (repeated headers joined with `, `), never a credential.
fn header_value(h: &HeaderMap, name: &str) -> Option<String> {
    if is_credential(name) {
        return None;
    }
    let mut values = h.get_all(name).iter().filter_map(|v| v.to_str().ok());
    let first = values.next()?.to_owned();
    Some(values.fold(first, |mut all, v| {
        all.push_str(", ");
        all.push_str(v);
        all
    }))
}

/// The request as every policy of a request sees it: built once, before the first policy runs,
/// and shared by all of them (the `request` resource's data).
#[derive(Debug, Clone)]
pub struct RequestInfo {
    pub id: String,
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The client's headers as received (credentials are filtered when read).
    pub headers: HeaderMap,
    /// The client's address (formatted only for a plugin that asks, `request.client-ip`).
    pub client_ip: IpAddr,
    pub key_id: String,
    pub key_name: String,
    pub model: Option<String>,
    pub stream: bool,
    pub session_hint: Option<String>,
    /// Prompt estimate plus completion budget (`request.estimated-tokens`).
    pub estimated_tokens: u64,
    /// What the upstreams serving the model speak, when they agree (`request.upstream-protocol`).
    pub upstream_protocol: Option<&'static str>,
}

impl RequestInfo {
    pub fn new(
        id: &str,
        parts: &http::request::Parts,
        client_ip: IpAddr,
        key_id: String,
        key_name: &str,
    ) -> Self {
        Self {
            id: id.to_owned(),
            method: parts.method.as_str().to_owned(),
            path: parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned(),
            headers: parts.headers.clone(),
            client_ip,
            key_id,
            key_name: key_name.to_owned(),
            model: None,
            stream: false,
            session_hint: None,
            estimated_tokens: 0,
            upstream_protocol: None,
        }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        header_value(&self.headers, name)
    }

    pub fn header_list(&self) -> Vec<Header> {
        header_list(&self.headers)
    }
}

/// The `transform-state` resource's type. Its data is the store's `transform_state`, lent for one
/// call (`Plugin`'s transform calls), so the handle carries nothing.
pub struct TransformState;

/// Longest value a transform may keep in its state.
pub const MAX_TRANSFORM_STATE: usize = 64 << 10;

/// An upstream's response head as quota and response header-rewrite policies see it (the
/// `response` resource's data).
#[derive(Debug, Clone)]
pub struct ResponseInfo {
    pub upstream: String,
    pub status: u16,
    pub headers: HeaderMap,
    pub first_event: Option<String>,
}

impl ResponseInfo {
    /// The head `head` from `upstream`, without a first event.
    pub fn from_head(upstream: &str, head: &http::response::Parts) -> Self {
        Self {
            upstream: upstream.to_owned(),
            status: head.status.as_u16(),
            headers: head.headers.clone(),
            first_event: None,
        }
    }

    pub fn new<B>(upstream: &str, resp: &http::Response<B>, first_event: Option<String>) -> Self {
        Self {
            upstream: upstream.to_owned(),
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            first_event,
        }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        header_value(&self.headers, name)
    }

    pub fn header_list(&self) -> Vec<Header> {
        header_list(&self.headers)
    }
}

/// Applies header operations in order. Invalid names or values, and any attempt to touch the
/// client's credential or the message's framing ([`is_framing`]), are skipped (and logged at
/// debug level).
pub fn apply_ops(h: &mut HeaderMap, ops: Vec<HeaderOp>, plugin: &str) {
    let parse = |name: &str, value: Option<&str>| -> Option<(HeaderName, Option<HeaderValue>)> {
        if is_credential(name) {
            return None;
        }
        let n = HeaderName::from_bytes(name.as_bytes())
            .ok()
            .filter(|n| !is_framing(n))?;
        let v = match value {
            Some(v) => Some(HeaderValue::from_str(v).ok()?),
            None => None,
        };
        Some((n, v))
    };
    for op in ops {
        let applied = match &op {
            HeaderOp::Set(Header { name, value }) => parse(name, Some(value)).map(|(n, v)| {
                h.insert(n, v.expect("value given"));
            }),
            HeaderOp::Append(Header { name, value }) => parse(name, Some(value)).map(|(n, v)| {
                h.append(n, v.expect("value given"));
            }),
            HeaderOp::Remove(name) => parse(name, None).map(|(n, _)| {
                h.remove(n);
            }),
            HeaderOp::Rename((from, to)) => {
                parse(from, None)
                    .zip(parse(to, None))
                    .map(|((f, _), (t, _))| {
                        let values: Vec<HeaderValue> = h.get_all(&f).iter().cloned().collect();
                        h.remove(&f);
                        for v in values {
                            h.append(t.clone(), v);
                        }
                    })
            }
        };
        if applied.is_none() {
            tracing::debug!(target: "plugin", plugin, ?op, "header operation skipped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_apply_in_order_and_never_touch_credentials() {
        let mut h = HeaderMap::new();
        h.insert("x-a", "1".parse().unwrap());
        h.insert("authorization", "Bearer k".parse().unwrap());
        apply_ops(
            &mut h,
            vec![
                HeaderOp::Append(Header {
                    name: "x-a".into(),
                    value: "2".into(),
                }),
                HeaderOp::Rename(("x-a".into(), "x-b".into())),
                HeaderOp::Set(Header {
                    name: "x-c".into(),
                    value: "3".into(),
                }),
                HeaderOp::Remove("authorization".into()),
                HeaderOp::Set(Header {
                    name: "x-api-key".into(),
                    value: "stolen".into(),
                }),
                HeaderOp::Set(Header {
                    name: "bad name".into(),
                    value: "v".into(),
                }),
            ],
            "t",
        );
        assert!(!h.contains_key("x-a"));
        assert_eq!(h.get_all("x-b").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(h["x-c"], "3");
        assert_eq!(h["authorization"], "Bearer k");
        assert!(!h.contains_key("x-api-key"));
        assert!(header_list(&h).iter().all(|x| x.name != "authorization"));
    }

    #[test]
    fn header_reads_join_repeats_and_hide_credentials() {
        let mut h = HeaderMap::new();
        h.append("x-a", "1".parse().unwrap());
        h.append("x-a", "2".parse().unwrap());
        h.insert("x-api-key", "sk-secret".parse().unwrap());
        assert_eq!(header_value(&h, "X-A").as_deref(), Some("1, 2"));
        assert_eq!(header_value(&h, "x-api-key"), None);
        assert_eq!(header_value(&h, "x-missing"), None);
    }
}
