//! Upstreams: their health as operators see it; cool one down by hand or restore it. A change
//! applies on this gateway at once, on every gateway sharing the cache through it, and is audited
//! with the cooldowns before and after.

use std::sync::Arc;

use serde::Serialize;

use super::{Actor, ServiceError};
use crate::gateway::Gateway;
use crate::state::{AuditRecord, SharedCooldown};
use crate::upstream::Upstream;

/// Longest manual cooldown, in seconds (one day).
pub const MAX_COOLDOWN_SECS: u64 = 86_400;

#[derive(Serialize, utoipa::ToSchema)]
pub struct Cooldown {
    /// `null`: every model.
    pub model: Option<String>,
    /// Unix ms.
    pub until_ms: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RecentError {
    /// Unix ms.
    pub at_ms: u64,
    /// e.g. `status 503`, `connect failed`, `no response head in time`.
    pub error: String,
}

/// One upstream of the running config as operators see it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct UpstreamView {
    pub name: String,
    /// Base URL (no credential).
    pub url: String,
    /// Passive health: false while marked down after consecutive failures.
    pub healthy: bool,
    pub in_flight: u32,
    /// Moving average of the time to the response head of successful attempts, ms, weighted
    /// to the last ten or so (each new one counts for a fifth); `null` before the first.
    pub latency_ewma_ms: Option<f64>,
    /// Moving average of failed attempts (0–1), weighted like the latency; `null` before this
    /// gateway sent the upstream any attempt.
    pub error_rate: Option<f32>,
    pub cooldowns: Vec<Cooldown>,
    /// The last errors (failed attempts, 429 answers), oldest first.
    pub recent_errors: Vec<RecentError>,
    /// Models it serves (empty: any).
    pub models: Vec<String>,
}

impl From<&Upstream> for UpstreamView {
    fn from(u: &Upstream) -> Self {
        Self {
            name: u.name.to_string(),
            url: u.config.url.as_ref().map_or_else(
                || "mock".to_owned(),
                |url| format!("{}://{}{}", url.scheme, url.authority, url.base_path),
            ),
            healthy: u.is_healthy(),
            in_flight: u.in_flight(),
            latency_ewma_ms: Some(u.latency_ewma_us())
                .filter(|&us| us > 0)
                .map(|us| us as f64 / 1000.0),
            error_rate: u.error_rate_observed(),
            cooldowns: u
                .cooldowns()
                .into_iter()
                .map(|(model, until_ms)| Cooldown { model, until_ms })
                .collect(),
            recent_errors: u
                .recent_errors()
                .into_iter()
                .map(|(at_ms, error)| RecentError { at_ms, error })
                .collect(),
            models: u.config.models.clone(),
        }
    }
}

/// Every upstream of the running config, in config order.
pub fn list(gateway: &Gateway) -> Vec<UpstreamView> {
    let rt = gateway.runtime();
    rt.upstreams.iter().map(|u| u.as_ref().into()).collect()
}

fn by_name(gateway: &Gateway, name: &str) -> Result<Arc<Upstream>, ServiceError> {
    gateway
        .runtime()
        .upstreams
        .iter()
        .find(|u| *u.name == *name)
        .cloned()
        .ok_or(ServiceError::NotFound("upstream"))
}

/// Cools `name` down for `seconds` (one model, or every model), as a quota policy does.
pub async fn cool_down(
    gateway: &Gateway,
    actor: &Actor,
    name: &str,
    seconds: u64,
    model: Option<String>,
) -> Result<UpstreamView, ServiceError> {
    if !(1..=MAX_COOLDOWN_SECS).contains(&seconds) {
        return Err(ServiceError::Invalid {
            field: "seconds",
            message: format!("must be 1 to {MAX_COOLDOWN_SECS}"),
        });
    }
    let until_ms = crate::state::unix_ms() + seconds * 1000;
    apply(gateway, actor, name, "upstream.cooldown", model, until_ms).await
}

/// Ends `name`'s cooldowns: one model's, or all of them.
pub async fn restore(
    gateway: &Gateway,
    actor: &Actor,
    name: &str,
    model: Option<String>,
) -> Result<UpstreamView, ServiceError> {
    apply(gateway, actor, name, "upstream.restore", model, 0).await
}

/// Sets (`until_ms` > 0) or clears (0) a cooldown here and in the cache, and audits it.
async fn apply(
    gateway: &Gateway,
    actor: &Actor,
    name: &str,
    action: &str,
    model: Option<String>,
    until_ms: u64,
) -> Result<UpstreamView, ServiceError> {
    let u = by_name(gateway, name)?;
    let cooldowns = |u: &Upstream| serde_json::to_string(&UpstreamView::from(u).cooldowns).ok();
    let before = cooldowns(&u);
    if until_ms == 0 {
        u.clear_cooldown(model.as_deref());
    } else {
        u.cool_down(model.as_deref(), until_ms);
    }
    gateway.stores.share_cooldown(SharedCooldown {
        upstream: name.to_owned(),
        model,
        until_ms,
    });
    let view = UpstreamView::from(u.as_ref());
    let after = serde_json::to_string(&view.cooldowns).ok();
    let record =
        AuditRecord::new(&actor.name, &actor.ip, action, name, "ok").with_change(before, after);
    gateway.stores.database().record_audit(record).await?;
    Ok(view)
}
