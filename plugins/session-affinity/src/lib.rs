//! Session affinity: requests of one session go to the same upstream while it is available. The
//! session key is the configured header's value, else the request's session hint
//! (`prompt_cache_key` or `user`). The session → upstream map lives in the host's kv with a TTL;
//! when the bound upstream is not among the candidates (cooling, or not serving the model) the
//! session moves to the rotation's pick.
//! Config: `{"header": "x-session-id", "ttl_ms": 3600000}` (the defaults).

use serde::Deserialize;
use tollgate_sdk::{Plugin, Request, RouteDecision, Router, UpstreamView, host};

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub header: String,
    pub ttl_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            header: "x-session-id".into(),
            ttl_ms: 3_600_000,
        }
    }
}

/// The session key of a request, if it has one: the configured header's value (from `header`),
/// else the session hint (from `hint`, asked only when the header is missing or empty).
pub fn session_key(
    c: &Config,
    header: impl FnOnce(&str) -> Option<String>,
    hint: impl FnOnce() -> Option<String>,
) -> Option<String> {
    header(&c.header).filter(|v| !v.is_empty()).or_else(hint)
}

/// Candidate order: the bound upstream first if present, else rotation by `n`.
pub fn order(names: &[&str], bound: Option<&str>, n: u64) -> Vec<u32> {
    let len = names.len() as u32;
    if len == 0 {
        return Vec::new();
    }
    let first = bound
        .and_then(|b| names.iter().position(|n| *n == b))
        .map_or((n % u64::from(len)) as u32, |p| p as u32);
    std::iter::once(first)
        .chain((0..len).filter(|&i| i != first))
        .collect()
}

static CONFIG: std::sync::OnceLock<Config> = std::sync::OnceLock::new();

struct Affinity;

impl Plugin for Affinity {
    fn configure(config: String) -> Result<(), String> {
        let _ = CONFIG.set(tollgate_sdk::parse_config(&config)?);
        Ok(())
    }
}

impl Router for Affinity {
    fn select(request: &Request, candidates: Vec<UpstreamView>) -> RouteDecision {
        let c = CONFIG.get_or_init(Config::default);
        let names: Vec<&str> = candidates.iter().map(|u| u.name.as_str()).collect();
        // The rotation turns only for requests it places: a session that stays where it is must
        // not move the next new session (with three upstreams and three requests per session,
        // every session used to land on the first).
        let rotate = || (host::kv::incr("rr", 1, None) as u64).wrapping_sub(1);
        let Some(session) = session_key(c, |h| request.header(h), || request.session_hint()) else {
            return RouteDecision::Pick(order(&names, None, rotate()));
        };
        let kv_key = format!("s:{session}");
        let bound = host::kv::get(&kv_key).filter(|b| names.contains(&b.as_str()));
        let n = if bound.is_some() { 0 } else { rotate() };
        let picks = order(&names, bound.as_deref(), n);
        if let Some(&first) = picks.first() {
            let chosen = names[first as usize];
            if bound.as_deref() != Some(chosen) {
                host::kv::set(&kv_key, chosen, Some(c.ttl_ms));
            }
        }
        RouteDecision::Pick(picks)
    }
}

tollgate_sdk::export!(Affinity);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_beats_hint_and_empty_headers_fall_back() {
        let c = Config::default();
        let hint = || Some("u".to_string());
        let header = |value: &'static str| {
            move |name: &str| (name == "x-session-id").then(|| value.to_string())
        };
        assert_eq!(session_key(&c, header("s1"), hint), Some("s1".into()));
        assert_eq!(session_key(&c, |_| None, hint), Some("u".into()));
        assert_eq!(session_key(&c, header(""), || None), None);
    }

    #[test]
    fn bound_upstream_first_else_rotation() {
        assert_eq!(order(&["a", "b", "c"], Some("c"), 0), [2, 0, 1]);
        assert_eq!(order(&["a", "b"], Some("gone"), 3), [1, 0]);
    }
}
