//! `access`: IP allow and deny lists, on the trusted client IP, before authentication (hook
//! `on_request`). The gateway-wide table (the config file's `access` plus the entries stored
//! through the admin API or `tollgate ip`, kept in step across a cluster by the stores) is checked
//! first, then the route's own `access`. Refused: 403 `ip_denied`.

use std::sync::Arc;

use crate::error::Refusal;
use crate::pipeline::{Filter, Flow, HookResult, Hooks, Session, Step};
use crate::state::Stores;

pub(crate) struct IpAccess {
    pub(crate) stores: Arc<Stores>,
}

impl Filter for IpAccess {
    fn name(&self) -> &str {
        "access"
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request<'a>(&'a self, s: &'a mut Session<'_>) -> HookResult<'a, Flow> {
        let ip = s.client_ip;
        let route = s.route.and_then(|r| r.access.as_deref());
        Step::Now(
            if !self.stores.ip_allowed(ip) || route.is_some_and(|t| !t.allows(ip)) {
                Err(Refusal::new(
                    http::StatusCode::FORBIDDEN,
                    "permission_error",
                    "ip_denied",
                    "requests from this address are not allowed",
                )
                .into())
            } else {
                Ok(Flow::Continue)
            },
        )
    }
}
