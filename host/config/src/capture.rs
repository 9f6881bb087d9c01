//! `capture` (and `routes[].capture`): keeping request and response bodies in the request log,
//! redacted and capped (docs/requests.md, "Body capture"). Off unless set.

use serde::Deserialize;

use super::ByteSize;
use crate::Errors;

/// Which requests keep their bodies.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema)]
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
#[derive(Debug, Deserialize, Clone, schemars::JsonSchema)]
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
}

pub(crate) fn validate(c: &super::Config, e: &mut Errors) {
    let sections = std::iter::once(("capture".to_owned(), c.capture.as_ref())).chain(
        c.routes
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("routes[{i}].capture"), r.capture.as_ref())),
    );
    for (at, capture) in sections {
        let Some(capture) = capture else { continue };
        if capture.max_bytes.0 == 0 {
            e.add(format!("{at}.max_bytes"), "must be greater than 0");
        }
        for (i, r) in capture.redact.iter().enumerate() {
            let problem = match r.strip_prefix('/').and_then(|p| p.strip_suffix('/')) {
                Some(re) if r.len() >= 2 => regex::Regex::new(re).err().map(|err| {
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
                e.add(format!("{at}.redact[{i}]"), problem);
            }
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
