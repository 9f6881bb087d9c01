//! Upstreams: their health as operators see it; cool one down by hand or restore it. A change
//! applies on this gateway at once, on every gateway sharing the cache through it, and is audited
//! with the cooldowns before and after.

use std::sync::Arc;

use serde::Serialize;

use super::{Actor, ServiceError};
use crate::gateway::Gateway;
use crate::state::{AuditRecord, SharedCooldown};
use crate::upstream::Upstream;
use crate::upstream::capacity::Allowance;

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

/// What is left of one declared allowance (`upstreams[].limits`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct Left {
    /// Left now (the bucket refills continuously).
    pub left: u64,
    /// Declared per window.
    pub limit: u64,
}

/// This calendar month's money (`monthly_budget`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct MonthSpend {
    /// Spent this month (UTC) on requests sent to the upstream, including what requests in
    /// flight reserved; in `currency`.
    pub spent: f64,
    pub limit: f64,
    pub currency: String,
    /// When the month ends and the allowance is whole again (Unix ms).
    pub resets_ms: u64,
}

/// The upstream account's allowance as it stands, cluster-wide when the cache is shared.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AllowanceView {
    /// `null`: not declared.
    pub rpm: Option<Left>,
    pub tpm: Option<Left>,
    pub monthly_tokens: Option<Left>,
    pub monthly_budget: Option<MonthSpend>,
    /// The provider's last `x-ratelimit-remaining-requests`, while its reset time has not
    /// passed (each request sent since counted off); this gateway's view.
    pub provider_requests_left: Option<u64>,
    /// Likewise `x-ratelimit-remaining-tokens`.
    pub provider_tokens_left: Option<u64>,
}

impl AllowanceView {
    fn new(a: Allowance, currency: &str) -> Option<Self> {
        let left = |x: Option<(u64, u64)>| x.map(|(left, limit)| Left { left, limit });
        let view = Self {
            rpm: left(a.rpm),
            tpm: left(a.tpm),
            monthly_tokens: left(a.monthly_tokens),
            monthly_budget: a
                .monthly_budget
                .map(|(spent, limit, resets_ms)| MonthSpend {
                    spent: crate::config::from_nanos(spent),
                    limit: crate::config::from_nanos(limit),
                    currency: currency.to_owned(),
                    resets_ms,
                }),
            provider_requests_left: a.provider_requests,
            provider_tokens_left: a.provider_tokens,
        };
        (a != Allowance::default()).then_some(view)
    }
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
    /// What is left of its declared allowance and what the provider said is left; `null` when
    /// neither is known.
    pub allowance: Option<AllowanceView>,
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
            allowance: None,
        }
    }
}

impl UpstreamView {
    /// With its allowance read (a shared-cache round trip per declared limit).
    async fn with_allowance(u: &Upstream, currency: &str) -> Self {
        let mut view = Self::from(u);
        if let Some(c) = &u.capacity {
            view.allowance = AllowanceView::new(c.allowance().await, currency);
        }
        view
    }
}

/// Every upstream of the running config, in config order.
pub async fn list(gateway: &Gateway) -> Vec<UpstreamView> {
    let rt = gateway.runtime();
    let mut views = Vec::with_capacity(rt.upstreams.len());
    for u in &rt.upstreams {
        views.push(UpstreamView::with_allowance(u, &rt.prices.currency).await);
    }
    views
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
    let currency = gateway.runtime().prices.currency.clone();
    let view = UpstreamView::with_allowance(&u, &currency).await;
    let after = serde_json::to_string(&view.cooldowns).ok();
    let record =
        AuditRecord::new(&actor.name, &actor.ip, action, name, "ok").with_change(before, after);
    gateway.stores.database().record_audit(record).await?;
    Ok(view)
}
