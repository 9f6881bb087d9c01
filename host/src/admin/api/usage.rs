//! `GET /admin/api/usage`: token usage per key, upstream or model over a range of hours.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::state::{AdminState, Viewer};
use crate::admin::error::{ApiError, ApiQuery, ErrorBody};
use crate::state::UsageBy;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// `key` (default), `upstream` or `model`.
    pub by: Option<String>,
    /// Unix ms; default 24 h ago.
    pub from_ms: Option<u64>,
    /// Unix ms; default now.
    pub to_ms: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct UsageRow {
    /// The key's configured name (or its id's first 12 digits if the config no longer has it),
    /// the upstream or the model; '' for none.
    pub name: String,
    pub key_id: Option<String>,
    pub requests: u64,
    pub errors: u64,
    /// Requests that ended before their answer did (tokens as seen).
    pub partial: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    /// What the tokens cost, in `currency` (requests whose model has no price count 0).
    pub cost: f64,
    /// `pricing.currency`.
    pub currency: String,
    /// Unix ms.
    pub last_used_ms: u64,
}

/// Requests and tokens per key, upstream or model over a time range (hours that start in it).
#[utoipa::path(get, path = "/admin/api/usage", tag = "usage", params(UsageParams),
    security(("bearer" = [])),
    responses((status = 200, body = Vec<UsageRow>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn usage(
    State(st): State<AdminState>,
    _: Viewer,
    ApiQuery(p): ApiQuery<UsageParams>,
) -> Result<Json<Vec<UsageRow>>, ApiError> {
    let by = match p.by.as_deref().unwrap_or("key") {
        "key" => UsageBy::Key,
        "upstream" => UsageBy::Upstream,
        "model" => UsageBy::Model,
        _ => {
            return Err(ApiError::invalid(
                "by",
                "must be `key`, `upstream` or `model`",
            ));
        }
    };
    let now = crate::state::unix_ms();
    let to = p.to_ms.unwrap_or(now);
    let from = p.from_ms.unwrap_or(now.saturating_sub(24 * 3_600_000));
    if from > to {
        return Err(ApiError::invalid("from_ms", "must not be after to_ms"));
    }
    // Hours that start in the range: the range is widened to the start of its first hour.
    let from = from / 3_600_000 * 3_600_000;
    let rows = st
        .gateway
        .stores
        .database()
        .token_usage(by, from, to)
        .await?;
    let rt = st.gateway.runtime();
    Ok(Json(
        rows.into_iter()
            .map(|u| {
                let (name, key_id) = match by {
                    UsageBy::Key => (
                        rt.keys
                            .name_of_id(&u.key_id)
                            .unwrap_or_else(|| u.key_id.chars().take(12).collect()),
                        Some(u.key_id.to_string()),
                    ),
                    UsageBy::Upstream => (u.upstream.to_string(), None),
                    UsageBy::Model => (u.model.to_string(), None),
                };
                UsageRow {
                    name,
                    key_id,
                    requests: u.requests,
                    errors: u.errors,
                    partial: u.partial,
                    input_tokens: u.input_tokens,
                    output_tokens: u.output_tokens,
                    cached_tokens: u.cached_tokens,
                    cost: u.cost_nanos as f64 / 1e9,
                    currency: rt.prices.currency.clone(),
                    last_used_ms: u.at_ms,
                }
            })
            .collect(),
    ))
}
