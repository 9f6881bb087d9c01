//! `/admin/api/…`: JSON endpoints for operators. Every one but `login` and `openapi.json` needs
//! a token (`Authorization: Bearer …` from `POST /admin/api/login`). The OpenAPI 3.1 document at
//! `/admin/api/openapi.json` is generated from the handlers' annotations below.

use std::net::IpAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::routing::{delete, get, post, put};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::auth::{AdminAuth, Login};
use super::error::{ApiError, ApiJson, ApiQuery, ErrorBody};
use crate::gateway::Gateway;
use crate::listen::ConnInfo;
use crate::service::Actor;
use crate::service::bindings::{self, BindingView, Change};
use crate::state::{AuditQuery, AuditRecord, BindingQuery, BindingStatus, UsageBy};

/// What every admin handler can reach.
#[derive(Clone)]
pub struct AdminState {
    pub gateway: Arc<Gateway>,
    pub auth: Arc<AdminAuth>,
}

/// An authenticated operator (the extractor checks the token).
pub struct Operator(pub Actor);

impl FromRequestParts<AdminState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &AdminState,
    ) -> Result<Self, ApiError> {
        let bearer = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let user = match bearer {
            Some(token) => state.auth.verify_token(token),
            // The console's cookie: a request that changes something must also carry the
            // session's CSRF token (`session.rs`).
            None => {
                let token = super::session::cookie_token(&parts.headers)
                    .ok_or_else(ApiError::unauthorized)?;
                let user = state.auth.verify_token(token);
                let safe = matches!(
                    parts.method,
                    http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
                );
                let offered = parts
                    .headers
                    .get(super::session::CSRF_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if user.is_some() && !safe && !state.auth.csrf_matches(token, offered) {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "csrf_failed",
                        "a request with the session cookie that changes something needs the session's X-CSRF-Token",
                    ));
                }
                user
            }
        }
        .ok_or_else(ApiError::unauthorized)?;
        Ok(Self(Actor {
            name: user,
            ip: client_ip(parts).to_string(),
        }))
    }
}

pub(super) fn client_ip(parts: &http::request::Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnInfo>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| {
            crate::config::canonical_ip(c.peer.ip())
        })
}

/// The API's routes (mounted under `/admin/api`).
pub fn routes() -> axum::Router<AdminState> {
    axum::Router::new()
        .route("/openapi.json", get(openapi))
        .route("/login", post(login))
        .route(
            "/session",
            post(super::session::create)
                .get(super::session::current)
                .delete(super::session::end),
        )
        .route("/dashboard", get(super::dashboard::dashboard))
        .route("/bindings", get(list_bindings))
        .route(
            "/bindings/{key_id}",
            get(get_binding).put(move_binding).delete(unbind),
        )
        .route("/bindings/{key_id}/ban", post(ban))
        .route("/bindings/{key_id}/unban", post(unban))
        .route("/usage", get(usage))
        .route("/upstreams", get(upstreams))
        .route("/plugins", get(plugins))
        .route("/intercepts", get(super::intercepts::list))
        .route("/intercepts.csv", get(super::intercepts::csv))
        .route("/upstreams/{name}/cooldown", post(cool_down))
        .route("/upstreams/{name}/restore", post(restore))
        .route(
            "/settings",
            get(super::settings::get).put(super::settings::put),
        )
        .route("/audit", get(audit))
        .route("/audit.csv", get(audit_csv))
        .route("/reload", put(reload).post(reload))
        .route(
            "/ip-rules",
            get(super::ip_rules::list).post(super::ip_rules::add),
        )
        .route("/ip-rules/{cidr}", delete(super::ip_rules::remove))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tollgate admin API",
        description = "Operator endpoints on the admin listener. Errors use the OpenAI error shape."
    ),
    paths(
        login,
        super::session::create,
        super::session::current,
        super::session::end,
        super::dashboard::dashboard,
        list_bindings,
        get_binding,
        move_binding,
        unbind,
        ban,
        unban,
        usage,
        upstreams,
        cool_down,
        restore,
        plugins,
        super::intercepts::list,
        super::intercepts::csv,
        super::settings::get,
        super::settings::put,
        audit,
        audit_csv,
        reload,
        super::ip_rules::list,
        super::ip_rules::add,
        super::ip_rules::remove
    ),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The OpenAPI 3.1 document of this API.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi_document())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    /// Send as `Authorization: Bearer <token>`.
    pub token: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// Logs in. Wrong user names and wrong passwords get the same answer; repeated failures from
/// one IP lock the user name out there (`admin.lockout`).
#[utoipa::path(post, path = "/admin/api/login", tag = "auth",
    request_body = LoginRequest,
    responses((status = 415, description = "not sent as application/json", body = ErrorBody), 
        (status = 200, body = LoginResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 429, description = "locked out; see Retry-After", body = ErrorBody),
    ))]
async fn login(
    State(st): State<AdminState>,
    parts: http::request::Parts,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    let ip = client_ip(&parts);
    match st
        .auth
        .login(&st.gateway.stores, &req.username, &req.password, ip)
        .await?
    {
        Login::Ok { token, expires_at } => Ok(Json(LoginResponse { token, expires_at })),
        other => Err(login_error(other)),
    }
}

/// The answer to a login that did not succeed.
pub(super) fn login_error(outcome: Login) -> ApiError {
    match outcome {
        Login::Locked { retry_after_secs } => ApiError {
            retry_after_secs: Some(retry_after_secs),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "login_locked",
                "too many failed logins for this user from this address; try again later",
            )
        },
        Login::Denied | Login::Ok { .. } => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "invalid username or password",
        ),
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BindingsParams {
    /// Start of a key id or of a bound network.
    pub search: Option<String>,
    /// `active` or `banned`.
    pub status: Option<String>,
    /// Page size (1–1000, default 50).
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct Page<T: ToSchema> {
    pub items: Vec<T>,
    /// How many match in all.
    pub total: u64,
}

/// Lists bindings, most recently used first.
#[utoipa::path(get, path = "/admin/api/bindings", tag = "bindings", params(BindingsParams),
    security(("bearer" = [])),
    responses((status = 200, body = Page<BindingView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_bindings(
    State(st): State<AdminState>,
    _op: Operator,
    ApiQuery(p): ApiQuery<BindingsParams>,
) -> Result<Json<Page<BindingView>>, ApiError> {
    let status = match p.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            BindingStatus::parse(s)
                .ok_or_else(|| ApiError::invalid("status", "must be `active` or `banned`"))?,
        ),
    };
    let (items, total) = bindings::list(
        &st.gateway.stores,
        BindingQuery {
            search: p.search,
            status,
            limit: p.limit.unwrap_or(50),
            offset: p.offset.unwrap_or(0),
        },
    )
    .await?;
    Ok(Json(Page { items, total }))
}

/// Shows one key's binding.
#[utoipa::path(get, path = "/admin/api/bindings/{key_id}", tag = "bindings",
    params(("key_id" = String, Path, description = "64 hex digits", pattern = "^[0-9a-fA-F]{64}$")),
    security(("bearer" = [])),
    responses((status = 200, body = BindingView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_binding(
    State(st): State<AdminState>,
    _op: Operator,
    Path(key_id): Path<String>,
) -> Result<Json<BindingView>, ApiError> {
    Ok(Json(bindings::get(&st.gateway.stores, &key_id).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    /// The network to bind the key to: a CIDR or one address.
    pub cidr: String,
}

/// Binds a key to another network.
#[utoipa::path(put, path = "/admin/api/bindings/{key_id}", tag = "bindings",
    params(("key_id" = String, Path, description = "64 hex digits", pattern = "^[0-9a-fA-F]{64}$")),
    request_body = MoveRequest, security(("bearer" = [])),
    responses((status = 415, description = "not sent as application/json", body = ErrorBody), (status = 200, body = BindingView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn move_binding(
    State(st): State<AdminState>,
    Operator(actor): Operator,
    Path(key_id): Path<String>,
    ApiJson(req): ApiJson<MoveRequest>,
) -> Result<Json<Option<BindingView>>, ApiError> {
    let net = bindings::parse_net(&req.cidr)?;
    let after = bindings::change(&st.gateway.stores, &actor, &key_id, Change::Move(net)).await?;
    Ok(Json(after))
}

/// Forgets a key's binding; its next request binds afresh.
#[utoipa::path(delete, path = "/admin/api/bindings/{key_id}", tag = "bindings",
    params(("key_id" = String, Path, description = "64 hex digits", pattern = "^[0-9a-fA-F]{64}$")),
    security(("bearer" = [])),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn unbind(
    State(st): State<AdminState>,
    Operator(actor): Operator,
    Path(key_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    bindings::change(&st.gateway.stores, &actor, &key_id, Change::Unbind).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Bans a key everywhere (403 `key_banned`).
#[utoipa::path(post, path = "/admin/api/bindings/{key_id}/ban", tag = "bindings",
    params(("key_id" = String, Path, description = "64 hex digits", pattern = "^[0-9a-fA-F]{64}$")),
    security(("bearer" = [])),
    responses((status = 200, body = BindingView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn ban(
    State(st): State<AdminState>,
    Operator(actor): Operator,
    Path(key_id): Path<String>,
) -> Result<Json<Option<BindingView>>, ApiError> {
    Ok(Json(
        bindings::change(&st.gateway.stores, &actor, &key_id, Change::Ban).await?,
    ))
}

/// Lifts a ban.
#[utoipa::path(post, path = "/admin/api/bindings/{key_id}/unban", tag = "bindings",
    params(("key_id" = String, Path, description = "64 hex digits", pattern = "^[0-9a-fA-F]{64}$")),
    security(("bearer" = [])),
    responses((status = 200, body = BindingView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn unban(
    State(st): State<AdminState>,
    Operator(actor): Operator,
    Path(key_id): Path<String>,
) -> Result<Json<Option<BindingView>>, ApiError> {
    Ok(Json(
        bindings::change(&st.gateway.stores, &actor, &key_id, Change::Unban).await?,
    ))
}

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
    /// Unix ms.
    pub last_used_ms: u64,
}

/// Requests and tokens per key, upstream or model over a time range (hours that start in it).
#[utoipa::path(get, path = "/admin/api/usage", tag = "usage", params(UsageParams),
    security(("bearer" = [])),
    responses((status = 200, body = Vec<UsageRow>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn usage(
    State(st): State<AdminState>,
    _op: Operator,
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
                    last_used_ms: u.at_ms,
                }
            })
            .collect(),
    ))
}

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
async fn upstreams(State(st): State<AdminState>, _op: Operator) -> Json<Vec<UpstreamView>> {
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

fn upstream_by_name(
    rt: &crate::pipeline::route::Runtime,
    name: &str,
) -> Result<Arc<crate::upstream::Upstream>, ApiError> {
    rt.upstreams
        .iter()
        .find(|u| *u.name == *name)
        .cloned()
        .ok_or_else(|| ApiError::not_found("upstream"))
}

fn upstream_view(u: &crate::upstream::Upstream) -> UpstreamView {
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
async fn cool_down(
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
async fn restore(
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

#[derive(Serialize, ToSchema)]
pub struct PluginView {
    pub name: String,
    /// `ip-binding`, `router`, `quota`, `header-rewrite`.
    pub kind: String,
    /// The component: `builtin:NAME` (shipped in the binary) or the file it was read from.
    pub module: String,
    /// The built-in plugin's version; none for a file.
    pub version: Option<String>,
    /// sha256 of the loaded component.
    pub sha256: String,
    /// Where this version's machine code came from: `compiled`, `disk-cache` (the compilation
    /// cache, `storage.plugin_cache`) or `reused` (a version already in service had the same
    /// module: a config-only change).
    pub code_origin: String,
    /// Time spent compiling it or reading it from the cache, ms (0 when reused).
    pub code_ms: f64,
    /// Linear memory of a configured instance, bytes (none when no instance is pooled).
    pub instance_memory: Option<u64>,
    pub calls: u64,
    /// Traps, deadline or memory exhaustion, failed instantiations.
    pub failures: u64,
    pub breaker_openings: u64,
    /// Calls refused without running (breaker open, concurrency limit).
    pub rejected: u64,
    /// Failures that were traps (panic, unreachable, out of memory).
    pub traps: u64,
    /// Failures that ran past the deadline.
    pub timeouts: u64,
    /// Call time percentiles, ms: the upper bound of the power-of-two bucket holding them
    /// (`null` before the first call).
    pub call_p50_ms: Option<f64>,
    pub call_p99_ms: Option<f64>,
}

#[derive(Serialize, ToSchema)]
pub struct LastReload {
    /// Unix ms.
    pub at_ms: u64,
    pub ok: bool,
    /// Why it was refused, verbatim.
    pub error: Option<String>,
}

/// A shadow candidate beside a live policy (`routes[].shadow`) and how their decisions compare
/// since the last reload.
#[derive(Serialize, ToSchema)]
pub struct ShadowView {
    /// The route's `path_prefix`.
    pub route: String,
    pub live: String,
    pub candidate: String,
    pub agree: u64,
    pub disagree: u64,
    /// Candidate calls that failed (nothing to compare).
    pub errors: u64,
    /// Comparisons skipped: the candidate's `max_concurrency` calls were running.
    pub skipped: u64,
    /// agree / (agree + disagree); none before the first comparison.
    pub agreement: Option<f64>,
    /// The most recent disagreements (at most 32), oldest first.
    pub disagreements: Vec<crate::pipeline::filters::shadow::Disagreement>,
}

#[derive(Serialize, ToSchema)]
pub struct PluginsView {
    pub plugins: Vec<PluginView>,
    /// Shadow evaluations in service.
    pub shadows: Vec<ShadowView>,
    /// The latest reload (file change, SIGHUP or this API) since start, if any.
    pub last_reload: Option<LastReload>,
}

/// The plugin versions in service and the latest reload's result.
#[utoipa::path(get, path = "/admin/api/plugins", tag = "plugins",
    security(("bearer" = [])),
    responses((status = 200, body = PluginsView), (status = 401, body = ErrorBody)))]
async fn plugins(State(st): State<AdminState>, _op: Operator) -> Json<PluginsView> {
    use std::sync::atomic::Ordering::Relaxed;
    let rt = st.gateway.runtime();
    let plugins = rt
        .plugins
        .iter()
        .map(|p| PluginView {
            name: p.spec.name.to_string(),
            kind: p.spec.kind.as_str().to_owned(),
            module: p.module.to_string(),
            version: match &p.module {
                crate::config::Module::Builtin(name) => {
                    tollgate_builtins::find(name).map(|b| b.version.to_owned())
                }
                crate::config::Module::File(_) => None,
            },
            sha256: p.sha256.clone(),
            code_origin: p.code_origin.as_str().to_owned(),
            code_ms: p.code_time.as_secs_f64() * 1000.0,
            instance_memory: p.instance_memory(),
            calls: p.stats.calls.load(Relaxed),
            failures: p.stats.failures.load(Relaxed),
            breaker_openings: p.stats.breaker_opened.load(Relaxed),
            rejected: p.stats.rejected.load(Relaxed),
            traps: p.stats.traps.load(Relaxed),
            timeouts: p.stats.timeouts.load(Relaxed),
            call_p50_ms: p.stats.call_time.quantile(0.5).map(|s| s * 1000.0),
            call_p99_ms: p.stats.call_time.quantile(0.99).map(|s| s * 1000.0),
        })
        .collect();
    let last_reload = st.gateway.last_reload().map(|r| LastReload {
        at_ms: r.at_ms,
        ok: r.error.is_none(),
        error: r.error,
    });
    let shadows = rt
        .shadows
        .iter()
        .map(|sh| {
            let (agree, disagree) = (
                sh.stats.agree.load(Relaxed),
                sh.stats.disagree.load(Relaxed),
            );
            ShadowView {
                route: sh.route.to_string(),
                live: sh.live.to_string(),
                candidate: sh.candidate.spec.name.to_string(),
                agree,
                disagree,
                errors: sh.stats.errors.load(Relaxed),
                skipped: sh.stats.skipped.load(Relaxed),
                agreement: (agree + disagree > 0).then(|| agree as f64 / (agree + disagree) as f64),
                disagreements: sh.stats.sample(),
            }
        })
        .collect();
    Json(PluginsView {
        plugins,
        shadows,
        last_reload,
    })
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    pub actor: Option<String>,
    pub ip: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    /// Unix ms.
    pub from_ms: Option<u64>,
    /// Unix ms.
    pub to_ms: Option<u64>,
    /// Page size (1–1000, default 50).
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditView {
    pub id: i64,
    pub at_ms: u64,
    pub actor: String,
    pub ip: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    /// JSON of the target before and after ('' where there is none).
    pub before: String,
    pub after: String,
}

impl From<AuditRecord> for AuditView {
    fn from(r: AuditRecord) -> Self {
        Self {
            id: r.id,
            at_ms: r.at_ms,
            actor: r.actor,
            ip: r.ip,
            action: r.action,
            target: r.target,
            outcome: r.outcome,
            before: r.before,
            after: r.after,
        }
    }
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/admin/api/audit", tag = "audit", params(AuditParams),
    security(("bearer" = [])),
    responses((status = 200, body = Page<AuditView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn audit(
    State(st): State<AdminState>,
    _op: Operator,
    ApiQuery(p): ApiQuery<AuditParams>,
) -> Result<Json<Page<AuditView>>, ApiError> {
    let q = p.query();
    let (items, total) = st.gateway.stores.database().audit(&q).await?;
    Ok(Json(Page {
        items: items.into_iter().map(Into::into).collect(),
        total,
    }))
}

impl AuditParams {
    fn query(self) -> AuditQuery {
        AuditQuery {
            actor: self.actor,
            ip: self.ip,
            action: self.action,
            target: self.target,
            from_ms: self.from_ms,
            to_ms: self.to_ms,
            limit: self.limit.unwrap_or(50).clamp(1, super::MAX_PAGE),
            offset: self.offset.unwrap_or(0),
            before_id: None,
        }
    }
}

impl super::export::CsvRow for AuditRecord {
    fn id(&self) -> i64 {
        self.id
    }

    fn fields(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            super::export::rfc3339_ms(self.at_ms),
            self.actor.clone(),
            self.ip.clone(),
            self.action.clone(),
            self.target.clone(),
            self.outcome.clone(),
            self.before.clone(),
            self.after.clone(),
        ]
    }
}

/// The audit log as CSV (same filters; `limit` and `offset` are not used), streamed.
#[utoipa::path(get, path = "/admin/api/audit.csv", tag = "audit", params(AuditParams),
    security(("bearer" = [])),
    responses((status = 200, content_type = "text/csv", body = String), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn audit_csv(
    State(st): State<AdminState>,
    _op: Operator,
    ApiQuery(p): ApiQuery<AuditParams>,
) -> axum::response::Response {
    const HEADER: &[&str] = &[
        "id", "at", "actor", "ip", "action", "target", "outcome", "before", "after",
    ];
    let base = AuditQuery {
        limit: super::export::EXPORT_PAGE,
        offset: 0,
        ..p.query()
    };
    let stores = st.gateway.stores.clone();
    super::export::csv_response("audit.csv", HEADER, move |before_id| {
        let (stores, q) = (
            stores.clone(),
            AuditQuery {
                before_id,
                ..base.clone()
            },
        );
        async move { stores.database().audit_page(&q).await }
    })
}

#[derive(Serialize, ToSchema)]
pub struct ReloadResult {
    /// Whether the new config is in service (otherwise the running one stays).
    pub ok: bool,
    /// Why it was refused, verbatim (YAML paths included).
    pub error: Option<String>,
}

/// Re-reads the config file and its plugins, as SIGHUP does. A refused config leaves the
/// running one in service; the answer says why.
#[utoipa::path(method(post, put), path = "/admin/api/reload", tag = "plugins",
    security(("bearer" = [])),
    responses((status = 200, body = ReloadResult), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn reload(
    State(st): State<AdminState>,
    Operator(actor): Operator,
) -> Result<Json<ReloadResult>, ApiError> {
    let Some(result) = st.gateway.request_reload().await else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "reload_unavailable",
            "this gateway was not started from a config file",
        ));
    };
    let outcome = if result.is_ok() { "ok" } else { "failed" };
    let mut record = AuditRecord::new(&actor.name, &actor.ip, "config.reload", "", outcome);
    if let Err(e) = &result {
        record.after = serde_json::json!({ "error": e }).to_string();
    }
    st.gateway.stores.database().record_audit(record).await?;
    Ok(Json(ReloadResult {
        ok: result.is_ok(),
        error: result.err(),
    }))
}
