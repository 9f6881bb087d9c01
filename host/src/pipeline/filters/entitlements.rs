//! `entitlements`: what a client key may use (`models` and `routes` of a key, from `auth.keys` or
//! issued at run time). Refused before any limit counts the request and before any upstream or
//! policy is asked.
//!
//! | hook | does |
//! |---|---|
//! | `on_authenticated` | a key limited to some routes gets 403 `route_not_allowed` elsewhere; a key limited to some models gets 403 `model_not_allowed` for any other model, and for a request that names none — except `GET …/models`, which it answers itself with the models the key may use |
//!
//! The model list of that answer is the route's upstreams' configured `models` the key's patterns
//! match, plus the key's exact names (a pattern such as `claude-*` lists only what an upstream
//! names). A key without limits passes untouched, and its `GET /v1/models` goes upstream.

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;

use crate::config::{Config, RouteConfig};
use crate::error::Refusal;
use crate::pipeline::{Filter, Flow, HookResult, Hooks, Session, Step};
use crate::state::ClientKey;

pub(crate) struct Entitlements {
    route: Box<str>,
    /// Every model the route's upstreams list (sorted, once each).
    upstream_models: Vec<String>,
}

/// Every route's filter (a cheap check: two empty lists for a key without limits).
pub(crate) fn build(config: &Config, route: &RouteConfig) -> Entitlements {
    let mut upstream_models: Vec<String> = config
        .upstreams
        .iter()
        .filter(|u| route.upstreams.contains(&u.name))
        .flat_map(|u| u.models.iter().cloned())
        .collect();
    upstream_models.sort();
    upstream_models.dedup();
    Entitlements {
        route: route.path_prefix.as_str().into(),
        upstream_models,
    }
}

fn refusal(code: &'static str, message: String) -> Refusal {
    Refusal::new(StatusCode::FORBIDDEN, "permission_error", code, message)
}

impl Entitlements {
    /// `GET …/models` for a key limited to some models: the ones it may use.
    fn model_list(&self, key: &ClientKey) -> http::Response<crate::listen::BoxBody> {
        let mut ids: Vec<&str> = self
            .upstream_models
            .iter()
            .map(String::as_str)
            .filter(|m| key.allows_model(m))
            .chain(
                key.models
                    .iter()
                    .map(|m| &**m)
                    .filter(|m| !m.ends_with('*')),
            )
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let data: Vec<_> = ids
            .iter()
            .map(|id| serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "tollgate"}))
            .collect();
        let body = serde_json::json!({"object": "list", "data": data}).to_string();
        let mut resp = http::Response::new(
            http_body_util::Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        resp
    }
}

impl Filter for Entitlements {
    fn name(&self) -> &str {
        "entitlements"
    }

    fn hooks(&self) -> Hooks {
        Hooks::AUTHENTICATED
    }

    fn on_authenticated<'a>(&'a self, s: &'a mut Session<'_>) -> HookResult<'a, Flow> {
        let Some(key) = s.key.clone() else {
            return Step::Now(Ok(Flow::Continue));
        };
        if !key.allows_route(&self.route) {
            return Step::Now(Err(refusal(
                "route_not_allowed",
                format!("this API key may not use {}", self.route),
            )
            .into()));
        }
        if key.models.is_empty() {
            return Step::Now(Ok(Flow::Continue));
        }
        Step::Now(match s.model() {
            Some(m) if key.allows_model(m) => Ok(Flow::Continue),
            Some(m) => Err(refusal(
                "model_not_allowed",
                format!(
                    "this API key may not use the model {:?}",
                    crate::error::truncate(m)
                ),
            )
            .into()),
            None if s.head.method == http::Method::GET
                && s.head.uri.path().ends_with("/models") =>
            {
                Ok(Flow::Answer(self.model_list(&key)))
            }
            None => Err(refusal(
                "model_not_allowed",
                "this API key is limited to some models and the request names none".into(),
            )
            .into()),
        })
    }
}
