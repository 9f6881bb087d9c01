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
    /// The route's own `access` lists, if it has any.
    pub(crate) route: Option<Arc<crate::state::IpTable>>,
}

/// The filter of one route: the gateway-wide table (in the stores) and the route's own lists.
pub(crate) fn build(stores: &Arc<Stores>, route: &crate::config::RouteConfig) -> IpAccess {
    IpAccess {
        stores: stores.clone(),
        route: (route.access != crate::config::AccessConfig::default())
            .then(|| Arc::new(crate::state::IpTable::new(entries(&route.access)))),
    }
}

/// A config `access` section as table entries.
pub(crate) fn entries(
    a: &crate::config::AccessConfig,
) -> Vec<(ipnet::IpNet, crate::state::IpAction)> {
    use crate::state::IpAction;
    let allow = a.allow.iter().map(|c| (c.0, IpAction::Allow));
    allow
        .chain(a.deny.iter().map(|c| (c.0, IpAction::Deny)))
        .collect()
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
        let route = self.route.as_deref();
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
