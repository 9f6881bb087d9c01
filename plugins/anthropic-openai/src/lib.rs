//! Anthropic Messages ↔ OpenAI Chat Completions, as a transform.
//!
//! Config: `{"upstream": "openai" | "anthropic" | "auto", "anthropic_version": "2023-06-01",
//! "default_max_tokens": 4096}`. The route's upstreams speak `upstream`'s protocol (`auto`: the
//! one `request.upstream-protocol()` names for the request's model, OpenAI when unknown; so a
//! fallback to a model on the other provider is translated for it); a client
//! speaking the other one (told by its path: `…/messages` is Anthropic, `…/chat/completions`
//! OpenAI) is translated both ways, JSON and streamed answers and errors included. A client
//! speaking the upstream's protocol passes untouched (and its answer is not called for).
//!
//! The mapping, field by field, with what is approximated and what is refused, is
//! docs/translation.md. The request is translated in `request.rs`, JSON answers in
//! `response.rs`, streams (a state machine kept in the transform's state) in `stream.rs`.

mod request;
mod response;
mod stream;

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use tollgate_sdk::{
    Denial, HeadEdit, Header, HeaderOp, Plugin, Request, RequestAction, RequestEdit, Response,
    SseEvent, Transform, TransformState,
};

pub use request::{anthropic_to_openai, openai_to_anthropic};
pub use response::{
    anthropic_message_to_openai, error_to_anthropic, error_to_openai,
    openai_completion_to_anthropic,
};
pub use stream::{AnthropicToOpenAi, OpenAiToAnthropic};

/// A protocol.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Openai,
    Anthropic,
}

/// What the route's upstreams speak, as configured.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Upstream {
    #[default]
    Openai,
    Anthropic,
    /// Whatever the upstreams serving the request's model speak (`request.upstream-protocol`).
    Auto,
}

impl Upstream {
    /// The protocol for a request whose upstreams speak `declared` (as the host says).
    pub fn resolve(self, declared: Option<&str>) -> Protocol {
        match self {
            Self::Openai => Protocol::Openai,
            Self::Anthropic => Protocol::Anthropic,
            Self::Auto if declared == Some("anthropic") => Protocol::Anthropic,
            Self::Auto => Protocol::Openai,
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// What the route's upstreams speak.
    pub upstream: Upstream,
    /// `anthropic-version` sent to an Anthropic upstream when the client sent none.
    pub anthropic_version: String,
    /// `max_tokens` for an OpenAI request that names none (Anthropic requires one).
    pub default_max_tokens: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            upstream: Upstream::Openai,
            anthropic_version: "2023-06-01".into(),
            default_max_tokens: 4096,
        }
    }
}

static CONFIG: OnceLock<Config> = OnceLock::new();

fn config() -> &'static Config {
    CONFIG.get_or_init(Config::default)
}

/// A request the translation cannot carry: the client gets 400 and why.
#[derive(Debug, PartialEq)]
pub struct Unsupported(pub String);

/// What the response calls need to know, kept in the transform's state between calls.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct State {
    /// The client's protocol (the upstream speaks the other one).
    pub client: Protocol,
    /// The model the client asked for.
    pub model: String,
    /// An OpenAI client asked for usage in its stream (`stream_options.include_usage`).
    #[serde(default)]
    pub include_usage: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_anthropic: Option<OpenAiToAnthropic>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_openai: Option<AnthropicToOpenAi>,
}

/// The client's protocol, told by the path (query left out).
pub fn client_protocol(path: &str) -> Option<Protocol> {
    let path = path.split('?').next().unwrap_or(path).trim_end_matches('/');
    if path.ends_with("/messages") {
        Some(Protocol::Anthropic)
    } else if path.ends_with("/chat/completions") {
        Some(Protocol::Openai)
    } else {
        None
    }
}

/// The upstream's path for a client's: the last segment(s) swapped, the prefix kept, the query
/// dropped (Anthropic's `?beta=true` means nothing to an OpenAI upstream).
pub fn upstream_path(path: &str, to: Protocol) -> String {
    let path = path.split('?').next().unwrap_or(path).trim_end_matches('/');
    match to {
        Protocol::Openai => format!("{}/chat/completions", path.trim_end_matches("/messages")),
        Protocol::Anthropic => format!("{}/messages", path.trim_end_matches("/chat/completions")),
    }
}

fn state_of(state: &TransformState) -> Option<State> {
    serde_json::from_str(&state.get()?).ok()
}

fn save(state: &TransformState, s: &State) {
    if let Ok(text) = serde_json::to_string(s) {
        state.set(&text);
    }
}

struct AnthropicOpenAi;

impl Plugin for AnthropicOpenAi {
    fn configure(text: String) -> Result<(), String> {
        let c: Config = tollgate_sdk::parse_config(&text)?;
        let _ = CONFIG.set(c);
        Ok(())
    }
}

impl Transform for AnthropicOpenAi {
    fn on_request(request: &Request, body: String, state: &TransformState) -> RequestAction {
        let c = config();
        let upstream = match c.upstream {
            Upstream::Auto => c.upstream.resolve(request.upstream_protocol().as_deref()),
            fixed => fixed.resolve(None),
        };
        let path = request.path();
        let Some(client) = client_protocol(&path) else {
            return RequestAction::Forward(RequestEdit::unchanged());
        };
        if client == upstream || request.method() != "POST" {
            return RequestAction::Forward(RequestEdit::unchanged());
        }
        let translated = match client {
            Protocol::Anthropic => anthropic_to_openai(&body),
            Protocol::Openai => openai_to_anthropic(&body, c.default_max_tokens),
        };
        let (new_body, model, include_usage) = match translated {
            Ok(t) => t,
            Err(Unsupported(message)) => {
                return RequestAction::Deny(Denial {
                    status: 400,
                    code: "unsupported_by_translation".into(),
                    message,
                });
            }
        };
        let headers = match upstream {
            Protocol::Openai => vec![
                HeaderOp::Remove("anthropic-version".into()),
                HeaderOp::Remove("anthropic-beta".into()),
            ],
            Protocol::Anthropic if request.header("anthropic-version").is_none() => {
                vec![HeaderOp::Set(Header {
                    name: "anthropic-version".into(),
                    value: c.anthropic_version.clone(),
                })]
            }
            Protocol::Anthropic => Vec::new(),
        };
        save(
            state,
            &State {
                client,
                model,
                include_usage,
                ..State::default()
            },
        );
        RequestAction::Forward(RequestEdit {
            path: Some(upstream_path(&path, upstream)),
            headers,
            body: Some(new_body),
            response: true,
        })
    }

    fn on_response_head(_: &Request, _: &Response, _: &TransformState) -> HeadEdit {
        HeadEdit::unchanged()
    }

    fn on_response_body(
        _: &Request,
        response: &Response,
        body: String,
        state: &TransformState,
    ) -> Option<String> {
        let s = state_of(state)?;
        let now_s = tollgate_sdk::host::now_ms() / 1000;
        let ok = (200..300).contains(&response.status());
        Some(match (s.client, ok) {
            (Protocol::Anthropic, true) => openai_completion_to_anthropic(&body)?,
            (Protocol::Openai, true) => anthropic_message_to_openai(&body, now_s)?,
            (Protocol::Anthropic, false) => error_to_anthropic(response.status(), &body),
            (Protocol::Openai, false) => error_to_openai(response.status(), &body),
        })
    }

    fn on_event(_: &Request, event: SseEvent, state: &TransformState) -> Vec<SseEvent> {
        let Some(mut s) = state_of(state) else {
            return vec![event];
        };
        let out = match s.client {
            Protocol::Anthropic => s
                .to_anthropic
                .get_or_insert_with(|| OpenAiToAnthropic::new(&s.model))
                .on_event(&event.data),
            Protocol::Openai => {
                let now_s = tollgate_sdk::host::now_ms() / 1000;
                let include = s.include_usage;
                s.to_openai
                    .get_or_insert_with(|| AnthropicToOpenAi::new(&s.model, now_s, include))
                    .on_event(event.event.as_deref(), &event.data)
            }
        };
        save(state, &s);
        out
    }

    fn on_stream_end(_: &Request, state: &TransformState) -> Vec<SseEvent> {
        let Some(mut s) = state_of(state) else {
            return Vec::new();
        };
        let out = match s.client {
            Protocol::Anthropic => s.to_anthropic.as_mut().map(|t| t.finish()),
            Protocol::Openai => s.to_openai.as_mut().map(|t| t.finish()),
        };
        save(state, &s);
        out.unwrap_or_default()
    }
}

tollgate_sdk::export!(AnthropicOpenAi);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_the_upstreams_the_host_names() {
        assert_eq!(
            Upstream::Auto.resolve(Some("anthropic")),
            Protocol::Anthropic
        );
        assert_eq!(Upstream::Auto.resolve(Some("openai")), Protocol::Openai);
        assert_eq!(Upstream::Auto.resolve(None), Protocol::Openai);
        assert_eq!(
            Upstream::Anthropic.resolve(Some("openai")),
            Protocol::Anthropic
        );
    }

    #[test]
    fn the_client_is_told_by_its_path() {
        assert_eq!(
            client_protocol("/v1/messages?beta=true"),
            Some(Protocol::Anthropic)
        );
        assert_eq!(
            client_protocol("/v1/chat/completions"),
            Some(Protocol::Openai)
        );
        assert_eq!(client_protocol("/v1/embeddings"), None);
        assert_eq!(
            upstream_path("/v1/messages?beta=true", Protocol::Openai),
            "/v1/chat/completions"
        );
        assert_eq!(
            upstream_path("/x/v1/chat/completions", Protocol::Anthropic),
            "/x/v1/messages"
        );
    }
}
