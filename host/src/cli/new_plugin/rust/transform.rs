//! A transform policy: reads and rewrites request and response bodies. This one gives chat
//! requests that name no `max_tokens` a default one, and leaves responses alone.
use tollgate_sdk::{
    HeadEdit, Plugin, Request, RequestAction, RequestEdit, Response, SseEvent, Transform,
    TransformState,
};

/// The plugin's config (the `config:` of its entry in the gateway's YAML), read once.
#[derive(tollgate_sdk::Deserialize)]
#[serde(crate = "tollgate_sdk::serde", default, deny_unknown_fields)]
struct Config {
    /// `max_tokens` given to a request that names none (0: leave requests alone).
    default_max_tokens: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            default_max_tokens: 1024,
        }
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

/// The body with `max_tokens` set, if it is a JSON object with `messages` and no budget.
fn with_default_budget(body: &str, max_tokens: u64) -> Option<String> {
    let mut v: tollgate_sdk::serde_json::Value = tollgate_sdk::serde_json::from_str(body).ok()?;
    let obj = v.as_object_mut()?;
    let named = ["max_tokens", "max_completion_tokens"]
        .iter()
        .any(|k| obj.contains_key(*k));
    if max_tokens == 0 || named || !obj.contains_key("messages") {
        return None;
    }
    obj.insert("max_tokens".into(), max_tokens.into());
    Some(v.to_string())
}

impl Transform for Policy {
    /// Called once per request before routing: rewrite, answer, or refuse.
    fn on_request(_request: &Request, body: String, _state: &TransformState) -> RequestAction {
        let config = CONFIG.get_or_init(Config::default);
        RequestAction::Forward(RequestEdit {
            body: with_default_budget(&body, config.default_max_tokens),
            // `unchanged()` asks no call for the response: the rest below is never called.
            ..RequestEdit::unchanged()
        })
    }

    /// Called on the upstream's response head when `on_request` asked for the response.
    fn on_response_head(_request: &Request, _response: &Response, _state: &TransformState) -> HeadEdit {
        HeadEdit::unchanged()
    }

    /// Called with a whole JSON answer: the new body, or none to keep it.
    fn on_response_body(
        _request: &Request,
        _response: &Response,
        _body: String,
        _state: &TransformState,
    ) -> Option<String> {
        None
    }

    /// Called for each event of a streamed answer: the events the client gets instead.
    fn on_event(_request: &Request, event: SseEvent, _state: &TransformState) -> Vec<SseEvent> {
        vec![event]
    }

    /// Called when the stream ends: events to send last.
    fn on_stream_end(_request: &Request, _state: &TransformState) -> Vec<SseEvent> {
        Vec::new()
    }
}

tollgate_sdk::export!(Policy);
