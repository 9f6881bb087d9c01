//! What an operator on call needs to see first: the gateway's version, uptime and config file,
//! whether its stores answer, and the conditions that need attention (maintenance, failsafe
//! open, a store down, upstreams unhealthy or cooling, a refused reload, lost writes), each with
//! its level. The admin API's `/status` and `/alerts` and the console's dashboard read it.

use std::sync::atomic::Ordering;

use serde::Serialize;
use utoipa::ToSchema;

use crate::gateway::Gateway;
use crate::state::StoreHealth;

/// One thing that needs attention.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Condition {
    /// `critical` (traffic is failing or about to), `warning` (degraded or unusual) or `info`.
    pub level: &'static str,
    /// A stable name for it, e.g. `maintenance`, `database_down`.
    pub code: &'static str,
    pub message: String,
}

/// Counters of this gateway's stores since it started.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StoreCounters {
    /// Requests decided by the failsafe because the stores could not answer.
    pub failsafe_decisions: u64,
    /// Writer flushes that could not write a batch.
    pub flush_failures: u64,
    /// Usage updates or intercepts dropped because the write queue was full.
    pub queue_full: u64,
    /// Cache operations that failed and fell back.
    pub cache_fallbacks: u64,
    /// Requests the request log dropped.
    pub requests_dropped: u64,
}

/// The gateway's status.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Status {
    pub version: &'static str,
    /// Unix ms.
    pub started_ms: u64,
    pub now_ms: u64,
    pub uptime_secs: u64,
    /// The config file this gateway runs from (absolute), if it watches one.
    pub config_path: Option<String>,
    #[schema(value_type = Object)]
    pub stores: StoreHealth,
    pub counters: StoreCounters,
    pub maintenance: bool,
    pub failsafe: String,
    pub upstreams: u64,
    pub healthy_upstreams: u64,
    pub cooling_upstreams: u64,
    /// Unix ms of the last reload, and its error if it was refused.
    pub last_reload_ms: Option<u64>,
    pub last_reload_error: Option<String>,
    /// What needs attention now, most severe first; empty when all is well.
    pub conditions: Vec<Condition>,
}

fn condition(level: &'static str, code: &'static str, message: impl Into<String>) -> Condition {
    Condition {
        level,
        code,
        message: message.into(),
    }
}

/// Reads the status (probing the stores).
pub async fn status(gw: &Gateway) -> Status {
    let stores = &gw.stores;
    let health = stores.health().await;
    let settings = stores.settings();
    let rt = gw.runtime();
    let now = crate::state::unix_ms();
    let stats = &stores.stats;
    let counters = StoreCounters {
        failsafe_decisions: stats.failsafe.load(Ordering::Relaxed),
        flush_failures: stats.flush_failures.load(Ordering::Relaxed),
        queue_full: stats.queue_full.load(Ordering::Relaxed),
        cache_fallbacks: stats.cache_fallbacks.load(Ordering::Relaxed),
        requests_dropped: stats.requests_dropped.load(Ordering::Relaxed),
    };
    let unhealthy: Vec<&str> = rt
        .upstreams
        .iter()
        .filter(|u| !u.is_healthy())
        .map(|u| &*u.name)
        .collect();
    let cooling: Vec<&str> = rt
        .upstreams
        .iter()
        .filter(|u| !u.cooldowns().is_empty())
        .map(|u| &*u.name)
        .collect();
    let reload = gw.last_reload();
    let mut conditions = Vec::new();
    if !health.database.up {
        conditions.push(condition(
            "critical",
            "database_down",
            format!(
                "the database ({}) does not answer: {}",
                health.database.kind,
                health.database.error.as_deref().unwrap_or("")
            ),
        ));
    }
    if !health.cache.up {
        conditions.push(condition(
            "critical",
            "cache_down",
            format!(
                "the cache ({}) does not answer: {}",
                health.cache.kind,
                health.cache.error.as_deref().unwrap_or("")
            ),
        ));
    }
    if !rt.upstreams.is_empty() && unhealthy.len() == rt.upstreams.len() {
        conditions.push(condition(
            "critical",
            "no_healthy_upstream",
            "no upstream is healthy: proxied requests fail",
        ));
    } else if !unhealthy.is_empty() {
        conditions.push(condition(
            "warning",
            "upstreams_unhealthy",
            format!("unhealthy: {}", unhealthy.join(", ")),
        ));
    }
    if settings.maintenance {
        conditions.push(condition(
            "warning",
            "maintenance",
            "maintenance mode is on: every proxied request gets 503",
        ));
    }
    if settings.failsafe == "open" {
        conditions.push(condition(
            "warning",
            "failsafe_open",
            "failsafe is open: while the stores cannot answer, requests are let through unchecked",
        ));
    }
    if let Some(error) = reload.as_ref().and_then(|r| r.error.as_ref()) {
        conditions.push(condition(
            "warning",
            "reload_refused",
            format!(
                "the last reload was refused; the previous config still serves: {}",
                error.lines().next().unwrap_or("")
            ),
        ));
    }
    if counters.failsafe_decisions > 0 {
        conditions.push(condition(
            "warning",
            "failsafe_decisions",
            format!(
                "{} requests were decided by the failsafe since the start",
                counters.failsafe_decisions
            ),
        ));
    }
    if counters.flush_failures > 0 || counters.queue_full > 0 {
        conditions.push(condition(
            "warning",
            "writes_lost",
            format!(
                "{} flushes failed and {} updates were dropped since the start",
                counters.flush_failures, counters.queue_full
            ),
        ));
    }
    if !cooling.is_empty() {
        conditions.push(condition(
            "info",
            "upstreams_cooling",
            format!("cooling down: {}", cooling.join(", ")),
        ));
    }
    Status {
        version: env!("CARGO_PKG_VERSION"),
        started_ms: gw.started_ms,
        now_ms: now,
        uptime_secs: now.saturating_sub(gw.started_ms) / 1000,
        config_path: gw.config_path().map(|p| {
            std::fs::canonicalize(p)
                .unwrap_or_else(|_| p.to_path_buf())
                .display()
                .to_string()
        }),
        stores: health,
        counters,
        maintenance: settings.maintenance,
        failsafe: settings.failsafe,
        upstreams: rt.upstreams.len() as u64,
        healthy_upstreams: (rt.upstreams.len() - unhealthy.len()) as u64,
        cooling_upstreams: cooling.len() as u64,
        last_reload_ms: reload.as_ref().map(|r| r.at_ms),
        last_reload_error: reload.and_then(|r| r.error),
        conditions,
    }
}
