//! `capture` (and `routes[].capture`, `auth.keys[].capture`, a stored key's `capture`):
//! keeping request and response bodies in the request log, redacted and capped
//! (docs/requests.md, "Body capture"). Off unless set.
//!
//! [`CaptureConfig`] is what an operator writes; [`CaptureRules`] is it compiled once (its
//! patterns built, its paths split) for the request path, which only redacts and cuts.

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ByteSize;
use crate::Errors;

/// Which requests keep their bodies.
#[derive(
    Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum CaptureWhen {
    /// None (the default).
    #[default]
    Off,
    /// Requests that failed: a 4xx or 5xx answer, or an answer that did not complete.
    Errors,
    /// Every request (mind the privacy of what clients send).
    All,
}

/// `capture`: what is kept of the bodies of requests, for the request log's detail.
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    /// `off` (default), `errors` or `all`.
    #[serde(default)]
    pub requests: CaptureWhen,
    /// Each body is cut to this size after redaction (default 64KiB); a stream is kept as the
    /// text its events assembled.
    #[serde(default = "max_bytes")]
    pub max_bytes: ByteSize,
    /// What is replaced by `[redacted]` before anything is written: JSON paths into a JSON body
    /// (`messages[*].content`, `metadata.email`, `input[0]`) and regular expressions written
    /// between slashes (`/\d{3}-\d{2}-\d{4}/`). API keys and bearer tokens always are.
    #[serde(default)]
    pub redact: Vec<String>,
}

fn max_bytes() -> ByteSize {
    ByteSize(64 << 10)
}

/// Keeps nothing, with the default cap and no redaction of its own.
impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            requests: CaptureWhen::Off,
            max_bytes: max_bytes(),
            redact: Vec::new(),
        }
    }
}

/// At most this many `redact` entries (each runs over every kept body).
pub const MAX_REDACT: usize = 64;

impl CaptureConfig {
    /// The regular expressions of `redact` (between slashes).
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.redact
            .iter()
            .filter_map(|r| r.strip_prefix('/')?.strip_suffix('/'))
    }

    /// The JSON paths of `redact`, split into their steps.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.redact
            .iter()
            .filter(|r| !(r.len() >= 2 && r.starts_with('/') && r.ends_with('/')))
            .map(String::as_str)
    }

    /// What is wrong with it, each with the field under it that is (`max_bytes`,
    /// `redact[2]`): the config's validation and the admin API's both ask.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.max_bytes.0 == 0 {
            out.push(("max_bytes".into(), "must be greater than 0".into()));
        }
        if self.redact.len() > MAX_REDACT {
            out.push(("redact".into(), format!("at most {MAX_REDACT} entries")));
        }
        for (i, r) in self.redact.iter().enumerate() {
            let problem = match r.strip_prefix('/').and_then(|p| p.strip_suffix('/')) {
                Some(re) if r.len() >= 2 => Regex::new(re).err().map(|err| {
                    // The error's last line says what is wrong; the ones before draw the pattern.
                    let text = err.to_string();
                    let why = text
                        .lines()
                        .last()
                        .unwrap_or("")
                        .trim_start_matches("error: ");
                    format!("is not a valid regular expression: {why}")
                }),
                _ => json_path_problem(r),
            };
            if let Some(problem) = problem {
                out.push((format!("redact[{i}]"), problem));
            }
        }
        out
    }

    /// Compiled for the request path (validated first: see [`Self::problems`]).
    pub fn compile(&self) -> CaptureRules {
        CaptureRules {
            when: self.requests,
            max_bytes: usize::try_from(self.max_bytes.0).unwrap_or(usize::MAX),
            paths: self.paths().map(parse_path).collect(),
            patterns: self.patterns().filter_map(|p| Regex::new(p).ok()).collect(),
            config: self.clone(),
        }
    }
}

/// What replaces a redacted value.
pub const REDACTED: &str = "[redacted]";

/// Always redacted, whatever the config says: API keys (OpenAI's and Anthropic's `sk-…`,
/// Tollgate's `tg-…`) and bearer tokens.
static SECRETS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:sk|tg)-[A-Za-z0-9_\-]{16,}|bearer\s+[A-Za-z0-9._~+/=\-]{8,}")
        .unwrap_or_else(|e| unreachable!("a fixed pattern: {e}"))
});

/// A [`CaptureConfig`] ready for the request path.
#[derive(Debug)]
pub struct CaptureRules {
    /// `off` keeps nothing (and, on a key, overrides its route's capture).
    pub when: CaptureWhen,
    pub max_bytes: usize,
    paths: Vec<Vec<PathStep>>,
    patterns: Vec<Regex>,
    /// What it was compiled from (shown back to operators).
    pub config: CaptureConfig,
}

/// One step of a JSON path.
#[derive(Debug, PartialEq)]
enum PathStep {
    Key(String),
    Every,
    Index(usize),
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

impl CaptureRules {
    /// `text` redacted: the JSON paths when it is JSON, then the patterns, then the secrets.
    pub fn redact(&self, text: &str) -> String {
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
    pub fn cap(&self, mut text: String, cut: bool) -> String {
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
    pub fn raw_cap(&self) -> usize {
        self.max_bytes.saturating_mul(8).max(16 << 10)
    }
}

pub(crate) fn validate(c: &super::Config, e: &mut Errors) {
    let routes = c
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("routes[{i}].capture"), r.capture.as_ref()));
    let keys = c
        .auth
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| (format!("auth.keys[{i}].capture"), k.capture.as_ref()));
    let sections = std::iter::once(("capture".to_owned(), c.capture.as_ref()))
        .chain(routes)
        .chain(keys);
    for (at, capture) in sections {
        for (field, problem) in capture.map(CaptureConfig::problems).unwrap_or_default() {
            e.add(format!("{at}.{field}"), problem);
        }
    }
}

/// Why `path` is not a JSON path of the form `a.b[*].c` or `a[0]`.
fn json_path_problem(path: &str) -> Option<String> {
    if path.is_empty() {
        return Some("is empty: a JSON path such as messages[*].content, or /regex/".into());
    }
    for step in path.split('.') {
        let (name, index) = match step.split_once('[') {
            Some((n, rest)) => (n, Some(rest)),
            None => (step, None),
        };
        if name.is_empty() && index.is_none() {
            return Some(format!("{path:?} has an empty step"));
        }
        if let Some(rest) = index {
            let Some(inner) = rest.strip_suffix(']') else {
                return Some(format!("{path:?}: `[` without `]`"));
            };
            if inner != "*" && inner.parse::<usize>().is_err() {
                return Some(format!("{path:?}: an index is a number or *"));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(redact: &[&str], max_bytes: u64) -> CaptureRules {
        let c = CaptureConfig {
            requests: CaptureWhen::All,
            max_bytes: ByteSize(max_bytes),
            redact: redact.iter().map(|s| (*s).to_owned()).collect(),
        };
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        c.compile()
    }

    #[test]
    fn json_paths_patterns_and_secrets_are_redacted() {
        let c = rules(
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
    fn bodies_are_cut_at_a_character_boundary() {
        let c = rules(&[], 4);
        // 4 bytes: h, é (two), l.
        assert_eq!(c.cap("héllo".into(), false), "hél …[cut]");
        assert_eq!(c.cap("abc".into(), false), "abc");
        assert_eq!(c.cap("abc".into(), true), "abc …[cut]");
    }

    #[test]
    fn problems_name_the_field() {
        let c = CaptureConfig {
            requests: CaptureWhen::Off,
            max_bytes: ByteSize(0),
            redact: vec!["/(/".into(), "a[x]".into(), "ok.path".into()],
        };
        let fields: Vec<String> = c.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["max_bytes", "redact[0]", "redact[1]"]);
        assert_eq!(c.compile().when, CaptureWhen::Off);
    }
}
