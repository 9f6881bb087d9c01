//! `capture`: keeps the bodies of requests in the request log, for its detail view, where the
//! route's `capture` (or the top-level one) asks: for failed requests or for all (docs/requests.md,
//! "Body capture"). Off unless configured.
//!
//! | hook | does |
//! |---|---|
//! | `on_request_body` | keeps the body as it goes to the upstream (a reference, not a copy) |
//! | `on_body_chunk` | copies the answer's frames, up to a cap (with `errors`: only an answer whose status is 4xx or 5xx) |
//! | `on_done` | for a request that is kept: redacts both bodies (the configured JSON paths and patterns, and always API keys and bearer tokens), turns a stream into the text its events carried, cuts each to `max_bytes`, and hands them to the request log (which runs after it) |
//!
//! Nothing is written unredacted: redaction happens here, before the entry leaves the request.

use std::sync::LazyLock;

use bytes::{Bytes, BytesMut};
use regex::Regex;
use serde_json::Value;

use crate::config::{CaptureConfig, CaptureWhen, Config, RouteConfig};
use crate::pipeline::{Ctx, Filter, HookResult, Hooks, Outcome, Session, Step};

/// What replaces a redacted value.
const REDACTED: &str = "[redacted]";

/// Always redacted, whatever the config says: API keys (OpenAI's and Anthropic's `sk-…`,
/// Tollgate's `tg-…`) and bearer tokens.
static SECRETS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:sk|tg)-[A-Za-z0-9_\-]{16,}|bearer\s+[A-Za-z0-9._~+/=\-]{8,}")
        .unwrap_or_else(|e| unreachable!("a fixed pattern: {e}"))
});

pub(crate) struct Capture {
    when: CaptureWhen,
    max_bytes: usize,
    paths: Vec<Vec<PathStep>>,
    patterns: Vec<Regex>,
}

/// One step of a JSON path.
#[derive(Debug, PartialEq)]
enum PathStep {
    Key(String),
    Every,
    Index(usize),
}

/// The route's `capture`, else the top-level one; none when neither keeps anything.
pub(crate) fn build(config: &Config, route: &RouteConfig) -> Option<Capture> {
    let c: &CaptureConfig = route.capture.as_ref().or(config.capture.as_ref())?;
    if c.requests == CaptureWhen::Off {
        return None;
    }
    Some(Capture {
        when: c.requests,
        max_bytes: usize::try_from(c.max_bytes.0).unwrap_or(usize::MAX),
        paths: c.paths().map(parse_path).collect(),
        // Validated when the config was loaded.
        patterns: c.patterns().filter_map(|p| Regex::new(p).ok()).collect(),
    })
}

fn parse_path(path: &str) -> Vec<PathStep> {
    let mut steps = Vec::new();
    for part in path.split('.') {
        let (name, rest) = part.split_once('[').unwrap_or((part, ""));
        if !name.is_empty() {
            steps.push(PathStep::Key(name.to_owned()));
        }
        for index in rest.split('[') {
            match index.trim_end_matches(']') {
                "" => {}
                "*" => steps.push(PathStep::Every),
                n => steps.extend(n.parse().ok().map(PathStep::Index)),
            }
        }
    }
    steps
}

/// Replaces what `path` reaches in `v` with [`REDACTED`].
fn redact_path(v: &mut Value, path: &[PathStep]) {
    let Some((first, rest)) = path.split_first() else {
        *v = Value::String(REDACTED.into());
        return;
    };
    match (first, v) {
        (PathStep::Key(k), Value::Object(map)) => {
            if let Some(inner) = map.get_mut(k) {
                redact_path(inner, rest);
            }
        }
        (PathStep::Every, Value::Array(items)) => {
            for item in items {
                redact_path(item, rest);
            }
        }
        (PathStep::Index(i), Value::Array(items)) => {
            if let Some(item) = items.get_mut(*i) {
                redact_path(item, rest);
            }
        }
        _ => {}
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
    /// `text` redacted: the JSON paths when it is JSON, then the patterns, then the secrets.
    fn redact(&self, text: &str) -> String {
        let mut out = match (self.paths.is_empty(), serde_json::from_str::<Value>(text)) {
            (false, Ok(mut v)) => {
                for p in &self.paths {
                    redact_path(&mut v, p);
                }
                v.to_string()
            }
            _ => text.to_owned(),
        };
        for p in self.patterns.iter().chain(std::iter::once(&*SECRETS)) {
            if p.is_match(&out) {
                out = p.replace_all(&out, REDACTED).into_owned();
            }
        }
        out
    }

    /// `text` cut to `max_bytes` (at a character boundary), marked when it was cut.
    fn cap(&self, mut text: String, cut: bool) -> String {
        if text.len() > self.max_bytes || cut {
            let mut end = self.max_bytes.min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push_str(" …[cut]");
        }
        text
    }

    /// Raw answer bytes kept: a stream's events are larger than the text they carry (eight
    /// times `max_bytes`, and at least 16 KiB).
    fn raw_cap(&self) -> usize {
        self.max_bytes.saturating_mul(8).max(16 << 10)
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
    ) -> HookResult<'a> {
        s.ctx.ext.insert(Collected {
            request: body.clone(),
            ..Collected::default()
        });
        Step::Now(Ok(()))
    }

    fn on_body_chunk(&self, ctx: &mut Ctx, chunk: &mut Bytes, _end: bool) {
        if self.when == CaptureWhen::Errors && ctx.record.status < 400 {
            return;
        }
        let cap = self.raw_cap();
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
        let Some(c) = ctx.ext.remove::<Collected>() else {
            return;
        };
        let r = &ctx.record;
        let failed = r.status >= 400 || r.outcome != Outcome::Complete;
        if self.when == CaptureWhen::Errors && !failed {
            return;
        }
        let request = self.cap(self.redact(&String::from_utf8_lossy(&c.request)), false);
        let raw = String::from_utf8_lossy(&c.answer);
        let answer = match stream_text(&raw) {
            Some(text) => self.redact(&text),
            None => self.redact(&raw),
        };
        let answer = self.cap(answer, c.cut);
        ctx.ext.insert(Captured((request, answer)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(redact: &[&str], max_bytes: usize) -> Capture {
        let c = CaptureConfig {
            requests: CaptureWhen::All,
            max_bytes: crate::config::ByteSize(max_bytes as u64),
            redact: redact.iter().map(|s| (*s).to_owned()).collect(),
        };
        Capture {
            when: c.requests,
            max_bytes,
            paths: c.paths().map(parse_path).collect(),
            patterns: c.patterns().filter_map(|p| Regex::new(p).ok()).collect(),
        }
    }

    #[test]
    fn json_paths_patterns_and_secrets_are_redacted() {
        let c = capture(
            &["messages[*].content", "metadata.email", "/\\d{3}-\\d{4}/"],
            1 << 20,
        );
        let body = r#"{"model":"m","messages":[{"role":"user","content":"my ssn"},{"role":"user","content":"x"}],"metadata":{"email":"a@b.c","id":"call 555-1234"},"note":"key sk-abcdefghijklmnopqrstuv"}"#;
        let out = c.redact(body);
        assert!(!out.contains("my ssn") && !out.contains("a@b.c"), "{out}");
        assert!(
            !out.contains("555-1234") && !out.contains("sk-abcdef"),
            "{out}"
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["messages"][0]["content"], REDACTED);
        assert_eq!(v["messages"][0]["role"], "user");
        assert_eq!(v["model"], "m");
        assert_eq!(v["metadata"]["id"], "call [redacted]");
        // Not JSON: the patterns and the secrets still apply.
        assert_eq!(
            c.redact("Bearer abcdefghij 555-1234"),
            "[redacted] [redacted]"
        );
    }

    #[test]
    fn a_stream_is_kept_as_its_text_and_bodies_are_capped() {
        let raw = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\ndata: [DONE]\n\n";
        assert_eq!(stream_text(raw).as_deref(), Some("Hello"));
        let anthropic = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n";
        assert_eq!(stream_text(anthropic).as_deref(), Some("Hi"));
        assert_eq!(stream_text("{\"id\":1}"), None);
        let c = capture(&[], 4);
        // 4 bytes: h, é (two), l.
        assert_eq!(c.cap("héllo".into(), false), "hél …[cut]");
        assert_eq!(c.cap("abc".into(), false), "abc");
        assert_eq!(c.cap("abc".into(), true), "abc …[cut]");
    }
}
