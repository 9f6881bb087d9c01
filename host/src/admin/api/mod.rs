//! `/admin/api/…`: JSON endpoints for operators. Every one but `login` and `openapi.json` needs
//! a token (`Authorization: Bearer …` from `POST /admin/api/login`). The OpenAPI 3.1 document at
//! `/admin/api/openapi.json` is generated from the handlers' annotations below.

mod audit;
mod bindings;
mod credentials;
pub(crate) mod dashboard;
pub(crate) mod export;
mod intercepts;
mod ip_rules;
mod keys;
mod login;
mod oidc;
mod plugins;
mod requests;
pub(crate) mod session;
mod settings;
mod state;
mod status;
mod upstreams;
mod usage;

pub(crate) use state::AdminState;

use axum::Json;
use axum::routing::{delete, get, post, put};
use utoipa::OpenApi;

/// The API's routes (mounted under `/admin/api`).
pub fn routes() -> axum::Router<AdminState> {
    axum::Router::new()
        .route("/openapi.json", get(openapi))
        .route("/login", post(login::login))
        .route(
            "/session",
            post(session::create)
                .get(session::current)
                .delete(session::end),
        )
        .route("/session/renew", post(session::renew))
        .route("/oidc", get(oidc::info))
        .route("/oidc/login", get(oidc::login))
        .route("/oidc/callback", get(oidc::callback))
        .route("/dashboard", get(dashboard::dashboard))
        .route("/status", get(status::get))
        .route("/alerts", get(status::alerts))
        .route("/config", get(status::config))
        .route("/bindings", get(bindings::list_bindings))
        .route(
            "/bindings/{key_id}",
            get(bindings::get_binding)
                .put(bindings::move_binding)
                .delete(bindings::unbind),
        )
        .route("/bindings/{key_id}/ban", post(bindings::ban))
        .route("/bindings/{key_id}/unban", post(bindings::unban))
        .route("/usage", get(usage::usage))
        .route("/upstreams", get(upstreams::upstreams))
        .route("/plugins", get(plugins::plugins))
        .route("/intercepts", get(intercepts::list))
        .route("/intercepts.csv", get(intercepts::csv))
        .route("/requests", get(requests::list))
        .route("/requests.csv", get(requests::csv))
        .route("/requests.ndjson", get(requests::ndjson))
        .route("/requests/{request_id}", get(requests::get))
        .route("/upstreams/{name}/cooldown", post(upstreams::cool_down))
        .route("/upstreams/{name}/restore", post(upstreams::restore))
        .route("/settings", get(settings::get).put(settings::put))
        .route("/settings/{name}", delete(settings::revert))
        .route("/audit", get(audit::audit))
        .route("/audit.csv", get(audit::audit_csv))
        .route("/reload", put(plugins::reload).post(plugins::reload))
        .route("/ip-rules", get(ip_rules::list).post(ip_rules::add))
        .route("/ip-rules/{cidr}", delete(ip_rules::remove))
        .route("/credentials", get(credentials::list))
        .route(
            "/credentials/{upstream}",
            put(credentials::set).delete(credentials::remove),
        )
        .route("/keys", get(keys::list).post(keys::create))
        .route("/keys/{key}", get(keys::get).patch(keys::update))
        .route("/keys/{key}/rotate", post(keys::rotate))
        .route("/keys/{key}/revoke", post(keys::revoke))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tollgate admin API",
        description = "Operator endpoints on the admin listener. Errors use the OpenAI error shape."
    ),
    paths(
        login::login,
        session::create,
        session::current,
        session::end,
        session::renew,
        oidc::info,
        oidc::login,
        oidc::callback,
        dashboard::dashboard,
        status::get,
        status::alerts,
        status::config,
        bindings::list_bindings,
        bindings::get_binding,
        bindings::move_binding,
        bindings::unbind,
        bindings::ban,
        bindings::unban,
        usage::usage,
        upstreams::upstreams,
        upstreams::cool_down,
        upstreams::restore,
        plugins::plugins,
        intercepts::list,
        intercepts::csv,
        requests::list,
        requests::get,
        requests::csv,
        requests::ndjson,
        settings::get,
        settings::put,
        settings::revert,
        audit::audit,
        audit::audit_csv,
        plugins::reload,
        ip_rules::list,
        ip_rules::add,
        ip_rules::remove,
        credentials::list,
        credentials::set,
        credentials::remove,
        keys::list,
        keys::create,
        keys::get,
        keys::update,
        keys::rotate,
        keys::revoke
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
