//! Redaction, as a transform (an example of a guard): the text of a request's messages —
//! OpenAI `messages[].content` (strings and text parts) and Anthropic `system` and text blocks —
//! is searched for emails, phone numbers, key-like strings and the patterns configured, and each
//! match is masked (`[REDACTED:email]`) or the request refused.
//!
//! Config: `{"builtin": ["email", "phone", "key"], "patterns": {"ticket": "TCK-\\d{6}"},
//! "action": "mask" | "deny"}` (defaults: all three built-in patterns, none of your own, mask).
//! Patterns are compiled once, at `configure` (a bad one refuses the config). A request without
//! a match goes upstream byte for byte as it came; one with matches has its body re-serialised
//! and an `x-tollgate-redacted: N` header telling the upstream how many were masked.

use std::sync::OnceLock;

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;
use tollgate_sdk::{
    Denial, HeadEdit, Header, HeaderOp, Plugin, Request, RequestAction, RequestEdit, Response,
    SseEvent, Transform, TransformState,
};

/// The built-in patterns, by name.
const BUILTIN: &[(&str, &str)] = &[
    (
        "email",
        r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    ),
    (
        "phone",
        r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]?\d{3,4}\b",
    ),
    (
        "key",
        r"\b(?:(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}|xox[abprs]-[A-Za-z0-9-]{10,})",
    ),
];

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Mask,
    Deny,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub builtin: Vec<String>,
    pub patterns: std::collections::BTreeMap<String, String>,
    pub action: Action,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            builtin: BUILTIN.iter().map(|(n, _)| (*n).to_owned()).collect(),
            patterns: Default::default(),
            action: Action::Mask,
        }
    }
}

/// The compiled patterns, each with its name.
pub struct Redactor {
    patterns: Vec<(String, Regex)>,
    action: Action,
}

impl Redactor {
    pub fn new(c: &Config) -> Result<Self, String> {
        let mut patterns = Vec::new();
        for name in &c.builtin {
            let Some((_, re)) = BUILTIN.iter().find(|(n, _)| n == name) else {
                let known: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
                return Err(format!(
                    "unknown built-in pattern `{name}` (known: {})",
                    known.join(", ")
                ));
            };
            patterns.push((
                name.clone(),
                Regex::new(re).expect("the built-in patterns compile"),
            ));
        }
        for (name, re) in &c.patterns {
            let compiled = Regex::new(re).map_err(|e| format!("pattern `{name}`: {e}"))?;
            patterns.push((name.clone(), compiled));
        }
        Ok(Self {
            patterns,
            action: c.action,
        })
    }

    /// `text` with every match masked, and how many there were.
    pub fn mask(&self, text: &str) -> (String, usize) {
        let mut out = text.to_owned();
        let mut n = 0;
        for (name, re) in &self.patterns {
            let count = re.find_iter(&out).count();
            if count > 0 {
                n += count;
                out = re
                    .replace_all(&out, format!("[REDACTED:{name}]").as_str())
                    .into_owned();
            }
        }
        (out, n)
    }

    /// Masks every message text of a request body in place; the number of matches.
    pub fn redact_body(&self, body: &mut Value) -> usize {
        let mut n = 0;
        let mut visit = |s: &mut Value| {
            if let Value::String(text) = s {
                let (masked, k) = self.mask(text);
                if k > 0 {
                    *text = masked;
                    n += k;
                }
            }
        };
        if let Some(system) = body.get_mut("system") {
            visit_text(system, &mut visit);
        }
        for m in body
            .get_mut("messages")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(content) = m.get_mut("content") {
                visit_text(content, &mut visit);
            }
        }
        n
    }
}

/// Calls `f` on the text of a content value: a string, or the `text` of each text part/block
/// (and the content of tool results).
fn visit_text(content: &mut Value, f: &mut impl FnMut(&mut Value)) {
    match content {
        Value::String(_) => f(content),
        Value::Array(parts) => {
            for p in parts {
                if let Some(t) = p.get_mut("text") {
                    f(t);
                }
                if let Some(inner) = p.get_mut("content") {
                    visit_text(inner, f);
                }
            }
        }
        _ => {}
    }
}

static REDACTOR: OnceLock<Redactor> = OnceLock::new();

struct Redact;

impl Plugin for Redact {
    fn configure(text: String) -> Result<(), String> {
        let c: Config = tollgate_sdk::parse_config(&text)?;
        let _ = REDACTOR.set(Redactor::new(&c)?);
        Ok(())
    }
}

impl Transform for Redact {
    fn on_request(_: &Request, body: String, _: &TransformState) -> RequestAction {
        let Some(r) = REDACTOR.get() else {
            return RequestAction::Forward(RequestEdit::unchanged());
        };
        let Ok(mut v) = serde_json::from_str::<Value>(&body) else {
            return RequestAction::Forward(RequestEdit::unchanged());
        };
        let n = r.redact_body(&mut v);
        if n == 0 {
            return RequestAction::Forward(RequestEdit::unchanged());
        }
        if r.action == Action::Deny {
            return RequestAction::Deny(Denial {
                status: 400,
                code: "sensitive_content".into(),
                message: format!(
                    "the request contains {n} item(s) that must not be sent (emails, phone numbers, keys or configured patterns)"
                ),
            });
        }
        RequestAction::Forward(RequestEdit {
            headers: vec![HeaderOp::Set(Header {
                name: "x-tollgate-redacted".into(),
                value: n.to_string(),
            })],
            body: Some(v.to_string()),
            ..RequestEdit::unchanged()
        })
    }

    fn on_response_head(_: &Request, _: &Response, _: &TransformState) -> HeadEdit {
        HeadEdit::unchanged()
    }

    fn on_response_body(
        _: &Request,
        _: &Response,
        _: String,
        _: &TransformState,
    ) -> Option<String> {
        None
    }

    fn on_event(_: &Request, event: SseEvent, _: &TransformState) -> Vec<SseEvent> {
        vec![event]
    }

    fn on_stream_end(_: &Request, _: &TransformState) -> Vec<SseEvent> {
        Vec::new()
    }
}

tollgate_sdk::export!(Redact);

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor() -> Redactor {
        Redactor::new(&Config::default()).unwrap()
    }

    #[test]
    fn emails_phones_and_keys_are_masked() {
        let (out, n) = redactor().mask(
            "Mail jane.doe@example.co.uk or call +1 415-555-0132 / (020) 7946 0958; key sk-proj-abcdefghijklmnop1234 and AKIAIOSFODNN7EXAMPLE.",
        );
        assert_eq!(n, 5, "{out}");
        assert_eq!(
            out,
            "Mail [REDACTED:email] or call [REDACTED:phone] / [REDACTED:phone]; key [REDACTED:key] and [REDACTED:key]."
        );
    }

    #[test]
    fn ordinary_numbers_and_words_are_left_alone() {
        let text = "In 2024 we sold 1500 units at 3.50 each; version 1.2.3; sk-short";
        assert_eq!(redactor().mask(text), (text.to_owned(), 0));
    }

    #[test]
    fn both_protocols_message_shapes_are_covered() {
        let mut openai: Value = serde_json::from_str(
            r#"{"messages":[{"role":"system","content":"ops@corp.example"},{"role":"user","content":[{"type":"text","text":"me: a@b.io"}]}]}"#,
        )
        .unwrap();
        assert_eq!(redactor().redact_body(&mut openai), 2);
        assert_eq!(
            openai["messages"][1]["content"][0]["text"],
            "me: [REDACTED:email]"
        );
        let mut anthropic: Value = serde_json::from_str(
            r#"{"system":[{"type":"text","text":"x@y.org"}],"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":"call 415-555-0132"}]}]}"#,
        )
        .unwrap();
        assert_eq!(redactor().redact_body(&mut anthropic), 2);
        assert_eq!(
            anthropic["messages"][0]["content"][0]["content"],
            "call [REDACTED:phone]"
        );
    }

    #[test]
    fn configured_patterns_compile_once_and_bad_ones_are_refused() {
        let c: Config =
            serde_json::from_str(r#"{"builtin": [], "patterns": {"ticket": "TCK-\\d{6}"}}"#)
                .unwrap();
        assert_eq!(
            Redactor::new(&c).unwrap().mask("see TCK-123456").0,
            "see [REDACTED:ticket]"
        );
        let bad: Config = serde_json::from_str(r#"{"patterns": {"x": "("}}"#).unwrap();
        assert!(Redactor::new(&bad).err().unwrap().contains("pattern `x`"));
        let unknown: Config = serde_json::from_str(r#"{"builtin": ["iban"]}"#).unwrap();
        assert!(
            Redactor::new(&unknown)
                .err()
                .unwrap()
                .contains("unknown built-in")
        );
    }
}
