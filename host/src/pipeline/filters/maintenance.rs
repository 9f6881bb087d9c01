//! `maintenance`: while maintenance mode is on — the route's `maintenance`, or the live setting
//! `maintenance` (the config file's `maintenance.enabled` unless the admin API overrides it) — proxied requests
//! get 503 `service_unavailable` with `Retry-After` (hook `on_request`, before authentication).
//! `/health` is not a route and stays up; `/ready` answers 503 `maintenance`.

use std::sync::Arc;

use crate::config::MaintenanceConfig;
use crate::error::Refusal;
use crate::pipeline::{Filter, Flow, HookResult, Hooks, Session, Step};
use crate::state::Stores;

pub(crate) struct Maintenance {
    pub(crate) config: MaintenanceConfig,
    pub(crate) message: Arc<str>,
    pub(crate) stores: Arc<Stores>,
    /// The route's own `maintenance: true`.
    pub(crate) route: bool,
}

impl Maintenance {
    /// The filter of one route (`route` = its `maintenance` setting).
    pub(crate) fn new(config: &MaintenanceConfig, stores: Arc<Stores>, route: bool) -> Self {
        Self {
            config: config.clone(),
            message: config.message.as_str().into(),
            stores,
            route,
        }
    }
}

impl Filter for Maintenance {
    fn name(&self) -> &str {
        "maintenance"
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request<'a>(&'a self, _s: &'a mut Session<'_>) -> HookResult<'a, Flow> {
        if self.route || self.stores.maintenance() {
            return Step::Now(Err(Refusal::new(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "service_unavailable",
                self.message.to_string(),
            )
            .retry_after(self.config.retry_after.get().as_secs())
            .into()));
        }
        Step::Now(Ok(Flow::Continue))
    }
}
