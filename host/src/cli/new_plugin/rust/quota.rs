//! A quota policy: looks at an upstream's answer and may cool that upstream down and retry the
//! request elsewhere (while the client has received nothing).
use tollgate_sdk::{
    AfterCooldown, Cooldown, CooldownScope, Plugin, Quota, QuotaDecision, Request, Response,
    UpstreamView, host,
};

/// The plugin's config (the `config:` of its entry in the gateway's YAML), read once.
#[derive(tollgate_sdk::Deserialize)]
#[serde(crate = "tollgate_sdk::serde", default, deny_unknown_fields)]
struct Config {
    /// How long a model is skipped on an upstream after it answered 429.
    cooldown_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self { cooldown_ms: 60_000 }
    }
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

impl Quota for Policy {
    /// Asked once at load: the statuses `on_response` wants to see (`None`: every answer).
    /// Answers with other statuses pass without a call.
    fn watch() -> Option<Vec<u16>> {
        Some(vec![429])
    }

    /// Called for each watched answer. `pass` relays it; `retry-other` tries the router's next
    /// pick; `cooldown` records when the upstream (or just this model on it) may be used again.
    fn on_response(_request: &Request, _upstream: UpstreamView, response: &Response) -> QuotaDecision {
        if response.status() != 429 {
            return QuotaDecision::Pass;
        }
        let wait = CONFIG.get_or_init(Config::default).cooldown_ms;
        QuotaDecision::Cooldown(Cooldown {
            scope: CooldownScope::Model,
            until_ms: host::now_ms() + wait,
            then: AfterCooldown::RetryOther,
        })
    }
}

tollgate_sdk::export!(Policy);
