//! An ip-binding policy: decides, after authentication and before anything is sent upstream,
//! whether this key may be used from this client address.
use tollgate_sdk::{BindingDecision, Denial, IpBinding, Plugin, Request};

/// The plugin's config (the `config:` of its entry in the gateway's YAML), read once.
#[derive(tollgate_sdk::Deserialize, Default)]
#[serde(crate = "tollgate_sdk::serde", default, deny_unknown_fields)]
struct Config {
    /// Client addresses starting with one of these are refused, e.g. "203.0.113.".
    deny_prefixes: Vec<String>,
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

impl IpBinding for Policy {
    /// Called once per authenticated request. `allow` lets it go on; `deny` answers the client
    /// with the denial's status, code and message (no secrets: the client sees them).
    fn check(request: &Request) -> BindingDecision {
        let ip = request.client_ip();
        let config = CONFIG.get_or_init(Config::default);
        if config.deny_prefixes.iter().any(|p| ip.starts_with(p.as_str())) {
            return BindingDecision::Deny(Denial {
                status: 403,
                code: "ip_not_allowed".into(),
                message: "this address may not use this key".into(),
            });
        }
        BindingDecision::Allow
    }
}

tollgate_sdk::export!(Policy);
