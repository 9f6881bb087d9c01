//! A router policy: orders the route's upstreams for one request. The gateway tries them in
//! that order (failover and quota retries move to the next one).
use tollgate_sdk::{Plugin, Request, RouteDecision, Router, UpstreamView};

/// The plugin's config (the `config:` of its entry in the gateway's YAML), read once.
#[derive(tollgate_sdk::Deserialize, Default)]
#[serde(crate = "tollgate_sdk::serde", default, deny_unknown_fields)]
struct Config {
    /// The upstream to try first when it is a candidate; the others keep their order.
    prefer: String,
}

static CONFIG: std::sync::OnceLock<Config> = std::sync::OnceLock::new();

struct Policy;

impl Plugin for Policy {
    /// Called once per loaded instance with the JSON config; an error refuses the plugin and the
    /// running version keeps serving.
    fn configure(config: String) -> Result<(), String> {
        let _ = CONFIG.set(tollgate_sdk::parse_config(&config)?);
        Ok(())
    }
}

impl Router for Policy {
    /// Called once per request with the upstreams that serve its model and are not cooling down.
    /// `pick` lists indices into `candidates`, best first; `none` answers 503 with the reason.
    fn select(_request: &Request, candidates: Vec<UpstreamView>) -> RouteDecision {
        let prefer = &CONFIG.get_or_init(Config::default).prefer;
        let mut order: Vec<u32> = (0..candidates.len() as u32).collect();
        order.sort_by_key(|&i| candidates[i as usize].name != *prefer);
        RouteDecision::Pick(order)
    }
}

tollgate_sdk::export!(Policy);
