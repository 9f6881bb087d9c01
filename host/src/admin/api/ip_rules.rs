//! `/admin/api/ip-rules`: the IP allow/deny entries stored in the database, on top of the config
//! file's `access` lists. A change applies on every gateway sharing the database within a second
//! and is audited (`ip_rule.allow`, `ip_rule.deny`, `ip_rule.remove`).

use axum::Json;
use axum::extract::{Path, State};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::state::{AdminState, Operator, Viewer};
use crate::admin::error::{ApiError, ApiJson, ErrorBody};
use crate::service::ip_rules::{self, IpRuleView};
use crate::state::IpAction;

#[derive(Deserialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    Allow,
    Deny,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRule {
    /// A CIDR or one address (IPv4-mapped IPv6 is stored as IPv4).
    pub cidr: String,
    pub action: RuleAction,
    /// Why (at most 200 characters).
    #[serde(default)]
    pub note: String,
}

#[derive(Serialize, ToSchema)]
pub struct RuleList {
    pub items: Vec<IpRuleView>,
    /// Entries in the table in force on this gateway (config file and stored).
    pub in_force: usize,
    /// Whether the table in force holds allow entries: then only the networks they list reach
    /// any route (adding the first allow entry switches every gateway to this).
    pub allow_list: bool,
}

/// The stored entries, newest first.
#[utoipa::path(get, path = "/admin/api/ip-rules", tag = "access",
    security(("bearer" = [])),
    responses((status = 200, body = RuleList), (status = 401, body = ErrorBody)))]
pub async fn list(State(st): State<AdminState>, _: Viewer) -> Result<Json<RuleList>, ApiError> {
    let stores = &st.gateway.stores;
    let table = stores.ip_table();
    Ok(Json(RuleList {
        items: ip_rules::list(stores).await?,
        in_force: table.len(),
        allow_list: table.is_allow_list(),
    }))
}

/// Adds (or replaces) an entry for every gateway.
#[utoipa::path(post, path = "/admin/api/ip-rules", tag = "access",
    request_body = NewRule, security(("bearer" = [])),
    responses((status = 415, description = "not sent as application/json", body = ErrorBody), (status = 201, body = IpRuleView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn add(
    State(st): State<AdminState>,
    Operator(actor): Operator,
    ApiJson(req): ApiJson<NewRule>,
) -> Result<(StatusCode, Json<IpRuleView>), ApiError> {
    let action = match req.action {
        RuleAction::Allow => IpAction::Allow,
        RuleAction::Deny => IpAction::Deny,
    };
    let rule = ip_rules::add(&st.gateway.stores, &actor, &req.cidr, action, &req.note).await?;
    Ok((StatusCode::CREATED, Json(rule)))
}

/// Removes an entry (the network as a path segment, `/` written `%2F` or `_`: `10.0.0.0_8`).
#[utoipa::path(delete, path = "/admin/api/ip-rules/{cidr}", tag = "access",
    params(("cidr" = String, Path, description = "the network, with `_` for `/`")),
    security(("bearer" = [])),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn remove(
    State(st): State<AdminState>,
    Operator(actor): Operator,
    Path(cidr): Path<String>,
) -> Result<StatusCode, ApiError> {
    ip_rules::remove(&st.gateway.stores, &actor, &cidr.replace('_', "/")).await?;
    Ok(StatusCode::NO_CONTENT)
}
