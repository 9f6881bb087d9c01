//! `/admin/api/dashboard`: the figures an operator looks at first.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::state::{AdminState, Viewer};
use crate::admin::error::{ApiError, ApiQuery, ErrorBody};
use crate::state::HourTotals;

/// Where "today" starts.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DashboardParams {
    /// Unix ms of midnight in the reader's time zone (the console sends the browser's), within
    /// the last 48 hours. Totals are kept per hour, so today counts from the start of the hour
    /// that holds it (the same in every zone whose offset is whole hours). Default: 00:00 UTC.
    pub today_from_ms: Option<u64>,
}

const HOUR_MS: u64 = 3_600_000;

#[derive(Serialize, ToSchema, Default, Clone, Copy)]
pub struct Totals {
    pub requests: u64,
    /// Answers with status 400 or more, and streams the upstream broke off.
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Requests refused by IP binding (wrong network, banned key).
    pub intercepts: u64,
}

impl Totals {
    fn add(&mut self, h: &HourTotals) {
        self.requests += h.requests;
        self.errors += h.errors;
        self.input_tokens += h.input_tokens;
        self.output_tokens += h.output_tokens;
        self.intercepts += h.intercepts;
    }
}

#[derive(Serialize, ToSchema)]
pub struct Hour {
    /// Start of the hour, Unix ms.
    pub hour_ms: u64,
    #[serde(flatten)]
    pub totals: Totals,
}

#[derive(Serialize, ToSchema)]
pub struct Minute {
    /// Start of the minute, Unix ms.
    pub minute_ms: u64,
    #[serde(flatten)]
    pub totals: Totals,
    /// Answers with status 429.
    pub rate_limited: u64,
    /// Of the requests that reached an upstream: how long they took (median and 95th
    /// percentile, within 10%), `null` when none did.
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    /// Their time to the first body byte sent to the client (for a stream, its first event:
    /// the time to first token), `null` when none.
    pub first_byte_p50_ms: Option<f64>,
    pub first_byte_p95_ms: Option<f64>,
}

#[derive(Serialize, ToSchema)]
pub struct Dashboard {
    /// Unix ms when the figures were read.
    pub now_ms: u64,
    /// Since `today_from_ms` (rounded down to its hour).
    pub today: Totals,
    /// Where `today` starts, Unix ms.
    pub today_from_ms: u64,
    pub last_24h: Totals,
    /// The last 24 hours, oldest first, one entry per hour (the current hour last, so far).
    pub hours: Vec<Hour>,
    /// The last 60 minutes on this gateway, oldest first (the current minute last, so far).
    /// Kept in memory as requests end, so it is live, but it starts empty at each start and
    /// counts this gateway's traffic only, where `hours` counts every gateway sharing the
    /// database.
    pub minutes: Vec<Minute>,
    pub active_bindings: u64,
    pub banned_bindings: u64,
    pub upstreams: u64,
    pub healthy_upstreams: u64,
    pub cooling_upstreams: u64,
    /// Requests in flight on every upstream of this gateway.
    pub in_flight: u64,
}

/// Totals for today and the last 24 h, an hourly series, bindings and upstream state. Token and
/// request counts are written in batches (`storage.flush_interval` behind).
#[utoipa::path(get, path = "/admin/api/dashboard", tag = "dashboard", params(DashboardParams),
    security(("bearer" = [])),
    responses((status = 200, body = Dashboard), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn dashboard(
    State(st): State<AdminState>,
    _: Viewer,
    ApiQuery(p): ApiQuery<DashboardParams>,
) -> Result<Json<Dashboard>, ApiError> {
    let now = crate::state::unix_ms();
    let current_hour = now / HOUR_MS * HOUR_MS;
    let first_hour = current_hour - 23 * HOUR_MS;
    let midnight = match p.today_from_ms {
        None => now / (24 * HOUR_MS) * (24 * HOUR_MS),
        Some(t) if t <= now && now - t <= 48 * HOUR_MS => t / HOUR_MS * HOUR_MS,
        Some(_) => {
            return Err(ApiError::invalid(
                "today_from_ms",
                "must be a Unix ms time within the last 48 hours",
            ));
        }
    };
    let db = st.gateway.stores.database();
    let rows = db.hourly_totals(first_hour.min(midnight)).await?;
    let bindings = db.binding_counts().await?;
    let (mut today, mut last_24h) = (Totals::default(), Totals::default());
    let mut hours: Vec<Hour> = (0..24)
        .map(|i| Hour {
            hour_ms: first_hour + i * HOUR_MS,
            totals: Totals::default(),
        })
        .collect();
    for h in &rows {
        if h.hour_ms >= midnight {
            today.add(h);
        }
        if h.hour_ms >= first_hour {
            last_24h.add(h);
            if let Some(slot) = hours.get_mut(((h.hour_ms - first_hour) / HOUR_MS) as usize) {
                slot.totals.add(h);
            }
        }
    }
    let rt = st.gateway.runtime();
    Ok(Json(Dashboard {
        now_ms: now,
        today,
        today_from_ms: midnight,
        last_24h,
        hours,
        minutes: st
            .gateway
            .stores
            .last_hour_series()
            .into_iter()
            .map(|m| Minute {
                minute_ms: m.minute_ms,
                totals: Totals {
                    requests: m.requests,
                    errors: m.errors,
                    input_tokens: m.input_tokens,
                    output_tokens: m.output_tokens,
                    intercepts: m.intercepts,
                },
                rate_limited: m.rate_limited,
                latency_p50_ms: m.latency.quantile_ms(0.5),
                latency_p95_ms: m.latency.quantile_ms(0.95),
                first_byte_p50_ms: m.first_byte.quantile_ms(0.5),
                first_byte_p95_ms: m.first_byte.quantile_ms(0.95),
            })
            .collect(),
        active_bindings: bindings.active,
        banned_bindings: bindings.banned,
        upstreams: rt.upstreams.len() as u64,
        healthy_upstreams: rt.upstreams.iter().filter(|u| u.is_healthy()).count() as u64,
        cooling_upstreams: rt
            .upstreams
            .iter()
            .filter(|u| !u.cooldowns().is_empty())
            .count() as u64,
        in_flight: rt.upstreams.iter().map(|u| u64::from(u.in_flight())).sum(),
    }))
}
