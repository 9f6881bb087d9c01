//! `/admin/api/upstreams…`: each upstream's health and cooldowns; cool one down or restore it
//! (audited, shared with the cluster).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::state::{AdminState, Operator};
use crate::admin::error::{ApiError, ApiJson, ErrorBody};
use crate::state::AuditRecord;

#[derive(Serialize, ToSchema)]
pub struct Cooldown {
    /// `null`: every model.
    pub model: Option<String>,
    /// Unix ms.
    pub until_ms: u64,
}

#[derive(Serialize, ToSchema)]
pub struct RecentError {
    /// Unix ms.
    pub at_ms: u64,
    /// e.g. `status 503`, `connect failed`, `no response head in time`.
    pub error: String,
}

#[derive(Serialize, ToSchema)]
pub struct UpstreamView {
    pub name: String,
    /// Base URL (no credential).
    pub url: String,
    /// Passive health: false while marked down after consecutive failures.
    pub healthy: bool,
    pub in_flight: u32,
    /// Moving average of the time to the response head, ms.
    pub latency_ewma_ms: f64,
    /// Moving average of failed attempts (0–1).
    pub error_rate: f32,
    pub cooldowns: Vec<Cooldown>,
    /// The last errors (failed attempts, 429 answers), oldest first.
    pub recent_errors: Vec<RecentError>,
    /// Models it serves (empty: any).
    pub models: Vec<String>,
}

/// Upstreams of the running config: health, in-flight, latency, error rate, cooldowns.
#[utoipa::path(get, path = "/admin/api/upstreams", tag = "upstreams",
    security(("bearer" = [])),
    responses((status = 200, body = Vec<UpstreamView>), (status = 401, body = ErrorBody)))]
pub(super) async fn upstreams(
    State(st): State<AdminState>,
    _op: Operator,
) -> Json<Vec<UpstreamView>> {
    let rt = st.gateway.runtime();
    Json(rt.upstreams.iter().map(|u| upstream_view(u)).collect())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CooldownRequest {
    /// How long, 1–86400 s.
    pub seconds: u64,
    /// Only this model; absent: every model.
    pub model: Option<String>,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// Only this model's cooldown; absent: every cooldown of the upstream.
    pub model: Option<String>,
}

pub(super) fn upstream_by_name(
    rt: &crate::pipeline::route::Runtime,
    name: &str,
) -> Result<Arc<crate::upstream::Upstream>, ApiError> {
    rt.upstreams
        .iter()
        .find(|u| *u.name == *name)
        .cloned()
        .ok_or_else(|| ApiError::not_found("upstream"))
}

pub(super) fn upstream_view(u: &crate::upstream::Upstream) -> UpstreamView {
    UpstreamView {
        name: u.name.to_string(),
        url: u.config.url.as_ref().map_or_else(
            || "mock".to_owned(),
            |url| format!("{}://{}{}", url.scheme, url.authority, url.base_path),
        ),
        healthy: u.is_healthy(),
        in_flight: u.in_flight(),
        latency_ewma_ms: u.latency_ewma_us() as f64 / 1000.0,
        error_rate: u.error_rate(),
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

/// Cools an upstream down by hand, on every gateway sharing the cache (as a quota policy does).
#[utoipa::path(post, path = "/admin/api/upstreams/{name}/cooldown", tag = "upstreams",
    params(("name" = String, Path, description = "upstream name")),
    request_body = CooldownRequest, security(("bearer" = [])),
    responses((status = 415, description = "not sent as application/json", body = ErrorBody), (status = 200, body = UpstreamView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn cool_down(
    State(st): State<AdminState>,
    Operator(actor): Operator,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<CooldownRequest>,
) -> Result<Json<UpstreamView>, ApiError> {
    if !(1..=86_400).contains(&req.seconds) {
        return Err(ApiError::invalid("seconds", "must be 1 to 86400"));
    }
    let rt = st.gateway.runtime();
    let u = upstream_by_name(&rt, &name)?;
    let before = serde_json::to_string(&upstream_view(&u).cooldowns).ok();
    let until_ms = crate::state::unix_ms() + req.seconds * 1000;
    u.cool_down(req.model.as_deref(), until_ms);
    st.gateway
        .stores
        .share_cooldown(crate::state::SharedCooldown {
            upstream: name.clone(),
            model: req.model,
            until_ms,
        });
    let view = upstream_view(&u);
    let after = serde_json::to_string(&view.cooldowns).ok();
    let record = AuditRecord::new(&actor.name, &actor.ip, "upstream.cooldown", &name, "ok")
        .with_change(before, after);
    st.gateway.stores.database().record_audit(record).await?;
    Ok(Json(view))
}

/// Ends an upstream's cooldowns (one model's, or all), on every gateway sharing the cache.
#[utoipa::path(post, path = "/admin/api/upstreams/{name}/restore", tag = "upstreams",
    params(("name" = String, Path, description = "upstream name")),
    request_body = RestoreRequest, security(("bearer" = [])),
    responses((status = 415, description = "not sent as application/json", body = ErrorBody), (status = 200, body = UpstreamView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn restore(
    State(st): State<AdminState>,
    Operator(actor): Operator,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<RestoreRequest>,
) -> Result<Json<UpstreamView>, ApiError> {
    let rt = st.gateway.runtime();
    let u = upstream_by_name(&rt, &name)?;
    let before = serde_json::to_string(&upstream_view(&u).cooldowns).ok();
    u.clear_cooldown(req.model.as_deref());
    st.gateway
        .stores
        .share_cooldown(crate::state::SharedCooldown {
            upstream: name.clone(),
            model: req.model,
            until_ms: 0,
        });
    let view = upstream_view(&u);
    let after = serde_json::to_string(&view.cooldowns).ok();
    let record = AuditRecord::new(&actor.name, &actor.ip, "upstream.restore", &name, "ok")
        .with_change(before, after);
    st.gateway.stores.database().record_audit(record).await?;
    Ok(Json(view))
}
