//! `capture`: keeps the bodies of requests in the request log, for its detail view, where the
//! request's key's `capture`, else its route's, else the top-level one asks: for failed requests
//! or for all (docs/requests.md, "Body capture"). Off unless configured.
//!
//! On every route (a key issued at run time may ask for capture on any route at any time); a
//! request that nothing asks to capture costs one look at its key in each hook.
//!
//! | hook | does |
//! |---|---|
//! | `on_request_body` | keeps the body as it goes to the upstream (a reference, not a copy) |
//! | `on_body_chunk` | copies the answer's frames, up to a cap (with `errors`: only an answer whose status is 4xx or 5xx) |
//! | `on_done` | for a request that is kept: redacts both bodies (the configured JSON paths and patterns, and always API keys and bearer tokens), turns a stream into the text its events carried, cuts each to `max_bytes`, and hands them to the request log (which runs after it) |
//!
//! Nothing is written unredacted: redaction happens here, before the entry leaves the request.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde_json::Value;

use crate::config::{CaptureRules, CaptureWhen, Config, RouteConfig};
use crate::pipeline::{Ctx, Filter, Flow, HookResult, Hooks, Outcome, Session, Step};

pub(crate) struct Capture {
    /// The route's rules (or the top-level ones); `None`: keep nothing unless the key asks.
    route: Option<Arc<CaptureRules>>,
}

/// The filter of `route`.
pub(crate) fn build(config: &Config, route: &RouteConfig) -> Capture {
    let c = route.capture.as_ref().or(config.capture.as_ref());
    Capture {
        route: c
            .filter(|c| c.requests != CaptureWhen::Off)
            .map(|c| Arc::new(c.compile())),
    }
}

/// The bodies kept for the request log (request, answer), redacted and capped.
#[derive(Clone)]
pub(crate) struct Captured(pub(crate) (String, String));

/// What a request collects until it ends.
#[derive(Clone, Default)]
struct Collected {
    request: Bytes,
    answer: BytesMut,
    /// The answer ran past what is collected.
    cut: bool,
}

impl Capture {
    /// The rules for a request of `key`: the key's own, else the route's; `None` when they keep
    /// nothing.
    fn rules<'a>(&'a self, key: Option<&'a crate::state::ClientKey>) -> Option<&'a CaptureRules> {
        let rules = match key.and_then(|k| k.capture.as_deref()) {
            Some(own) => own,
            None => self.route.as_deref()?,
        };
        (rules.when != CaptureWhen::Off).then_some(rules)
    }
}

/// A stream's text: what its `data:` events carried (OpenAI's `choices[].delta.content`,
/// Anthropic's `delta.text`); `None` when it carried none (not a chat stream).
fn stream_text(raw: &str) -> Option<String> {
    let mut text = String::new();
    for line in raw.lines() {
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(data.trim()) else {
            continue;
        };
        if let Some(choices) = v.get("choices").and_then(Value::as_array) {
            for c in choices {
                if let Some(s) = c.pointer("/delta/content").and_then(Value::as_str) {
                    text.push_str(s);
                }
            }
        } else if let Some(s) = v.pointer("/delta/text").and_then(Value::as_str) {
            text.push_str(s);
        }
    }
    (!text.is_empty()).then_some(text)
}

impl Filter for Capture {
    fn name(&self) -> &str {
        "capture"
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST_BODY | Hooks::BODY_CHUNK | Hooks::DONE
    }

    fn on_request_body<'a>(
        &'a self,
        s: &'a mut Session<'_>,
        body: &'a mut Bytes,
    ) -> HookResult<'a, Flow> {
        if self.rules(s.ctx.record.key.as_deref()).is_none() {
            return Step::Now(Ok(Flow::Continue));
        }
        s.ctx.ext.insert(Collected {
            request: body.clone(),
            ..Collected::default()
        });
        Step::Now(Ok(Flow::Continue))
    }

    fn on_body_chunk(&self, ctx: &mut Ctx, chunk: &mut Bytes, _end: bool) {
        let Some(rules) = self.rules(ctx.record.key.as_deref()) else {
            return;
        };
        if rules.when == CaptureWhen::Errors && ctx.record.status < 400 {
            return;
        }
        let cap = rules.raw_cap();
        let c = match ctx.ext.get_mut::<Collected>() {
            Some(c) => c,
            None => {
                ctx.ext.insert(Collected::default());
                match ctx.ext.get_mut::<Collected>() {
                    Some(c) => c,
                    None => return,
                }
            }
        };
        let room = cap.saturating_sub(c.answer.len());
        if chunk.len() > room {
            c.cut = true;
        }
        c.answer.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }

    fn on_done(&self, ctx: &mut Ctx) {
        let Some(rules) = self.rules(ctx.record.key.as_deref()) else {
            return;
        };
        let Some(c) = ctx.ext.remove::<Collected>() else {
            return;
        };
        let r = &ctx.record;
        let failed = r.status >= 400 || r.outcome != Outcome::Complete;
        if rules.when == CaptureWhen::Errors && !failed {
            return;
        }
        let request = rules.cap(rules.redact(&String::from_utf8_lossy(&c.request)), false);
        let raw = String::from_utf8_lossy(&c.answer);
        let answer = match stream_text(&raw) {
            Some(text) => rules.redact(&text),
            None => rules.redact(&raw),
        };
        let answer = rules.cap(answer, c.cut);
        ctx.ext.insert(Captured((request, answer)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_kept_as_its_text() {
        let raw = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\ndata: [DONE]\n\n";
        assert_eq!(stream_text(raw).as_deref(), Some("Hello"));
        let anthropic = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n";
        assert_eq!(stream_text(anthropic).as_deref(), Some("Hi"));
        assert_eq!(stream_text("{\"id\":1}"), None);
    }
}
