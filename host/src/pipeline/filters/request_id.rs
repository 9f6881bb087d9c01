//! `request_id`: every response carries the request's id in `server.request_id_header`
//! (default `x-request-id`), whether the upstream or the gateway answered. An upstream's own value
//! under that name is kept as `x-upstream-request-id`, so both sides of a support ticket can be
//! found.
//!
//! Hook: `on_response_head`. Never fails.

use http::{HeaderName, HeaderValue};

use crate::pipeline::headers::X_UPSTREAM_REQUEST_ID;
use crate::pipeline::{Filter, HookResult, Hooks, Session, Step};
use crate::upstream::Upstream;

pub(crate) struct RequestIdHeader {
    name: HeaderName,
}

impl RequestIdHeader {
    /// `name` was validated with the config (a valid header name).
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: HeaderName::from_bytes(name.as_bytes())
                .unwrap_or(crate::pipeline::headers::X_REQUEST_ID),
        }
    }
}

impl Filter for RequestIdHeader {
    fn name(&self) -> &str {
        "request_id"
    }

    fn hooks(&self) -> Hooks {
        Hooks::RESPONSE_HEAD
    }

    fn on_response_head<'a>(
        &'a self,
        s: &'a mut Session<'_>,
        head: &'a mut http::response::Parts,
        from: Option<&'a Upstream>,
    ) -> HookResult<'a> {
        let headers = &mut head.headers;
        if from.is_some()
            && let Some(theirs) = headers.remove(&self.name)
        {
            headers.insert(X_UPSTREAM_REQUEST_ID, theirs);
        }
        if let Ok(v) = HeaderValue::from_str(&s.request_id) {
            headers.insert(self.name.clone(), v);
        }
        Step::Now(Ok(()))
    }
}
