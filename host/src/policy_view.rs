//! Conversions between the request path's HTTP types and the WIT types policies see.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::policy::types::{Header, HeaderOp, RequestView, UpstreamView};
use crate::upstream::Upstream;

/// Headers a policy never sees or sets: the client's credential.
fn is_credential(name: &str) -> bool {
    name.eq_ignore_ascii_case("authorization") || name.eq_ignore_ascii_case("x-api-key")
}

/// The headers as a WIT list, without credentials; values that are not UTF-8 are left out.
pub fn header_list(h: &HeaderMap) -> Vec<Header> {
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

/// What the request-phase policies see.
pub struct ViewInput<'a> {
    pub id: &'a str,
    pub parts: &'a http::request::Parts,
    pub client_ip: std::net::IpAddr,
    pub key_id: String,
    pub key_name: &'a str,
    pub model: Option<&'a str>,
    pub stream: bool,
    pub session_hint: Option<&'a str>,
}

pub fn request_view(i: ViewInput<'_>) -> RequestView {
    RequestView {
        id: i.id.to_owned(),
        method: i.parts.method.as_str().to_owned(),
        path: i
            .parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned(),
        headers: header_list(&i.parts.headers),
        client_ip: i.client_ip.to_string(),
        key_id: i.key_id,
        key_name: i.key_name.to_owned(),
        model: i.model.map(str::to_owned),
        stream: i.stream,
        session_hint: i.session_hint.map(str::to_owned),
    }
}

pub fn upstream_view(u: &Upstream, model: Option<&str>) -> UpstreamView {
    UpstreamView {
        name: u.name.to_string(),
        weight: u.weight(),
        models: u.config.models.clone(),
        in_flight: u.in_flight(),
        latency_ewma_us: u.latency_ewma_us(),
        error_rate: u.error_rate(),
        cooling_until_ms: u.cooling_until(model),
    }
}

/// Applies header operations in order. Invalid names or values, and any attempt to touch the
/// client's credential, are skipped (and logged at debug level).
pub fn apply_ops(h: &mut HeaderMap, ops: Vec<HeaderOp>, plugin: &str) {
    let parse = |name: &str, value: Option<&str>| -> Option<(HeaderName, Option<HeaderValue>)> {
        if is_credential(name) {
            return None;
        }
        let n = HeaderName::from_bytes(name.as_bytes()).ok()?;
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
}
