//! `response_headers`: the security headers of `server.response_headers` on every data-plane
//! answer — upstream answers, the gateway's own errors, and `/health` and `/ready` (hook
//! `on_response_head`; the probes call [`ResponseHeaders::apply`] directly, and the listener's
//! answers to malformed heads take [`ResponseHeaders::lines`]).
//! `Strict-Transport-Security` is sent only on TLS connections.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::ResponseHeadersConfig;
use crate::pipeline::{Filter, HookResult, Hooks, Session, Step};
use crate::upstream::Upstream;

/// The headers, parsed once per config.
#[derive(Default)]
pub struct ResponseHeaders {
    set: Vec<(HeaderName, HeaderValue)>,
    hsts: Option<HeaderValue>,
}

impl ResponseHeaders {
    /// Invalid names or values were refused by config validation; any left are skipped.
    pub fn new(c: &ResponseHeadersConfig) -> Self {
        Self {
            set: c
                .set
                .iter()
                .filter_map(|(k, v)| {
                    Some((
                        HeaderName::from_bytes(k.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect(),
            hsts: (!c.hsts.is_empty())
                .then(|| HeaderValue::from_str(&c.hsts).ok())
                .flatten(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.hsts.is_none()
    }

    /// Sets the headers on an answer sent over a connection that is TLS or not.
    pub fn apply(&self, headers: &mut HeaderMap, tls: bool) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        if tls && let Some(hsts) = &self.hsts {
            headers.insert(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
    }

    /// The headers as HTTP/1 header lines, for an answer written without a `HeaderMap`.
    pub fn lines(&self, tls: bool) -> Vec<u8> {
        let mut map = HeaderMap::new();
        self.apply(&mut map, tls);
        let mut out = Vec::new();
        for (name, value) in &map {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out
    }
}

pub(crate) struct SecurityHeaders(pub(crate) Arc<ResponseHeaders>);

impl Filter for SecurityHeaders {
    fn name(&self) -> &str {
        "response_headers"
    }

    fn hooks(&self) -> Hooks {
        Hooks::RESPONSE_HEAD
    }

    fn on_response_head<'a>(
        &'a self,
        s: &'a mut Session<'_>,
        head: &'a mut http::response::Parts,
        _from: Option<&'a Upstream>,
    ) -> HookResult<'a> {
        self.0.apply(&mut head.headers, s.conn.tls);
        Step::Now(Ok(()))
    }
}
