//! `GET /admin/api/plugins` (versions in service, their calls and shadows, the last reload) and
//! `/admin/api/reload` (reload now, audited).

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::state::{AdminState, Operator, Viewer};
use crate::admin::error::{ApiError, ErrorBody};

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
pub(super) async fn plugins(State(st): State<AdminState>, _: Viewer) -> Json<PluginsView> {
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
pub(super) async fn reload(
    State(st): State<AdminState>,
    Operator(actor): Operator,
) -> Result<Json<ReloadResult>, ApiError> {
    use crate::service::reload::{Reloaded, reload};
    let (ok, error) = match reload(&st.gateway, &actor).await? {
        Reloaded::Applied => (true, None),
        Reloaded::Refused(e) => (false, Some(e)),
        Reloaded::Unavailable => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "reload_unavailable",
                "this gateway was not started from a config file",
            ));
        }
    };
    Ok(Json(ReloadResult { ok, error }))
}
