//! `usage`: the tokens each request used, read from the upstream's answer as it is relayed, and
//! aggregated per key, upstream, model and hour in the database (through the stores' batched
//! writer). The access log line carries the counts.
//!
//! Where the counts come from:
//! - a JSON answer: its `usage` object (OpenAI chat/completions `prompt_tokens`,
//!   `completion_tokens`, `prompt_tokens_details.cached_tokens`; OpenAI Responses and Anthropic
//!   `input_tokens`, `output_tokens`, cache fields). The frames are kept by reference (no copy)
//!   up to [`MAX_JSON`] and parsed when the body ends;
//! - an SSE stream: each `data:` line that mentions `"usage"` is parsed as it passes: OpenAI's final
//!   usage chunk (sent when the request asked for `stream_options.include_usage`), Anthropic's
//!   `message_start` (input, cache, first output count) and `message_delta` (cumulative output),
//!   OpenAI Responses' `response.completed`. Only the unfinished last line of a frame is copied,
//!   and at most [`MAX_LINE`] of it; no frame waits.
//!
//! A request that ends before its answer is complete keeps what was seen and is recorded as
//! partial. Hooks: `on_response_head` (picks the parser), `on_body_chunk` (feeds it), `on_done`
//! (records). Never fails a request.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use crate::pipeline::session::{RecordedTokens, Tokens};
use crate::pipeline::{Ctx, Filter, Hooks, Session};
use crate::state::{Stores, TokenUsage};
use crate::upstream::Upstream;

/// Largest JSON answer whose usage is read; a larger one is relayed but not counted.
pub const MAX_JSON: usize = 8 << 20;
/// Longest SSE line kept across frames; a longer one (a huge content delta) is skipped.
pub const MAX_LINE: usize = 64 << 10;

fn field(v: &Value, path: &[&str]) -> Option<u64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_u64()
}

/// Reads a `usage` object in any of the shapes above. `None` if it names no token count.
pub fn from_usage(u: &Value) -> Option<Tokens> {
    if !u.is_object() {
        return None;
    }
    // Anthropic counts cache reads and writes outside `input_tokens`.
    let cache_read = field(u, &["cache_read_input_tokens"]);
    let cache_write = field(u, &["cache_creation_input_tokens"]);
    let input = field(u, &["prompt_tokens"]).or_else(|| {
        field(u, &["input_tokens"]).map(|i| i + cache_read.unwrap_or(0) + cache_write.unwrap_or(0))
    });
    let output = field(u, &["completion_tokens"]).or_else(|| field(u, &["output_tokens"]));
    if input.is_none() && output.is_none() {
        return None;
    }
    let cached = field(u, &["prompt_tokens_details", "cached_tokens"])
        .or_else(|| field(u, &["input_tokens_details", "cached_tokens"]))
        .or(cache_read)
        .unwrap_or(0);
    Some(Tokens {
        input: input.unwrap_or(0),
        output: output.unwrap_or(0),
        cached,
    })
}

/// Reads the tokens of one SSE `data:` payload into `seen` (events of one stream build on each
/// other: Anthropic sends input first and output counts later).
fn from_event(data: &[u8], seen: &mut Option<Tokens>) {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    match v.get("type").and_then(Value::as_str) {
        Some("message_start") => {
            if let Some(t) = v.pointer("/message/usage").and_then(from_usage) {
                *seen = Some(t);
            }
        }
        Some("message_delta") => {
            // Cumulative output so far; input may be repeated (newer API versions) or absent.
            if let Some(u) = v.get("usage") {
                let t = seen.get_or_insert_with(Tokens::default);
                if let Some(o) = field(u, &["output_tokens"]) {
                    t.output = o;
                }
                if let Some(full) = from_usage(u).filter(|f| f.input > 0) {
                    t.input = full.input;
                    t.cached = full.cached;
                }
            }
        }
        Some("response.completed") => {
            if let Some(t) = v.pointer("/response/usage").and_then(from_usage) {
                *seen = Some(t);
            }
        }
        _ => {
            if let Some(t) = v.get("usage").and_then(from_usage) {
                *seen = Some(t);
            }
        }
    }
}

/// What a relayed answer is parsed as.
#[derive(Debug, Clone)]
enum Meter {
    /// A JSON body, kept by reference until it ends; `None` once it grew past [`MAX_JSON`].
    Json(Option<Vec<Bytes>>, usize),
    /// An SSE stream: the unfinished line carried over from the previous frame.
    Sse {
        carry: Vec<u8>,
        skipping: bool,
        seen: Option<Tokens>,
    },
}

impl Meter {
    fn feed(&mut self, chunk: &Bytes) {
        match self {
            Self::Json(parts, size) => {
                *size += chunk.len();
                if *size > MAX_JSON {
                    *parts = None;
                } else if let Some(p) = parts {
                    p.push(chunk.clone());
                }
            }
            Self::Sse {
                carry,
                skipping,
                seen,
            } => {
                let mut rest = &chunk[..];
                while let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
                    let line = &rest[..end];
                    if *skipping {
                        *skipping = false;
                    } else if carry.is_empty() {
                        sse_line(line, seen);
                    } else {
                        carry.extend_from_slice(line);
                        sse_line(carry, seen);
                    }
                    carry.clear();
                    rest = &rest[end + 1..];
                }
                if !*skipping {
                    if carry.len() + rest.len() > MAX_LINE {
                        carry.clear();
                        *skipping = true;
                    } else {
                        carry.extend_from_slice(rest);
                    }
                }
            }
        }
    }

    fn finish(self) -> Option<Tokens> {
        match self {
            Self::Json(parts, _) => {
                let parts = parts?;
                let joined;
                let body: &[u8] = match parts.as_slice() {
                    [one] => one,
                    _ => {
                        joined = parts.concat();
                        &joined
                    }
                };
                usage_member(body)
            }
            Self::Sse {
                mut carry,
                skipping,
                mut seen,
            } => {
                if !skipping && !carry.is_empty() {
                    sse_line(&std::mem::take(&mut carry), &mut seen);
                }
                seen
            }
        }
    }
}

/// The top-level `usage` object of a JSON answer. Providers put it last, so the document is
/// searched from the end for `"usage"` and only the value after it is parsed (a quoted `usage` in
/// content is escaped, so it never matches; an occurrence whose value is not a usage object is
/// passed over for an earlier one).
fn usage_member(body: &[u8]) -> Option<Tokens> {
    const KEY: &[u8] = b"\"usage\"";
    let mut end = body.len();
    while let Some(at) = body[..end].windows(KEY.len()).rposition(|w| w == KEY) {
        let rest = body[at + KEY.len()..].trim_ascii_start();
        if let Some(value) = rest.strip_prefix(b":") {
            let mut de = serde_json::Deserializer::from_slice(value);
            if let Ok(v) = <Value as serde::Deserialize>::deserialize(&mut de)
                && let Some(t) = from_usage(&v)
            {
                return Some(t);
            }
        }
        end = at;
    }
    None
}

/// One SSE line: a `data:` line that mentions usage is parsed.
fn sse_line(line: &[u8], seen: &mut Option<Tokens>) {
    let Some(data) = line.strip_prefix(b"data:") else {
        return;
    };
    if contains(data, b"\"usage\"") {
        from_event(data.trim_ascii(), seen);
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The per-request state of the filter (in `Ctx::ext`).
#[derive(Clone)]
struct Metered {
    key_id: String,
    meter: Option<Meter>,
}

pub(crate) struct Usage {
    stores: Arc<Stores>,
}

impl Usage {
    pub(crate) fn new(stores: Arc<Stores>) -> Self {
        Self { stores }
    }
}

#[async_trait::async_trait]
impl Filter for Usage {
    fn name(&self) -> &str {
        "usage"
    }

    fn hooks(&self) -> Hooks {
        Hooks::RESPONSE_HEAD | Hooks::BODY_CHUNK | Hooks::DONE
    }

    async fn on_response_head(
        &self,
        s: &mut Session<'_>,
        head: &mut http::response::Parts,
        from: Option<&Upstream>,
    ) -> Result<(), crate::error::GatewayError> {
        let Some(key) = &s.key else {
            return Ok(());
        };
        let meter = from.and_then(|_| {
            let ct = head
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if ct.starts_with("text/event-stream") {
                Some(Meter::Sse {
                    carry: Vec::new(),
                    skipping: false,
                    seen: None,
                })
            } else if ct.starts_with("application/json") {
                Some(Meter::Json(Some(Vec::new()), 0))
            } else {
                None
            }
        });
        s.ctx.ext.insert(Metered {
            key_id: key.hex.to_string(),
            meter,
        });
        Ok(())
    }

    fn on_body_chunk(&self, ctx: &mut Ctx, chunk: &Bytes) {
        if let Some(Metered { meter: Some(m), .. }) = ctx.ext.get_mut::<Metered>() {
            m.feed(chunk);
        }
    }

    fn on_done(&self, ctx: &mut Ctx) {
        let Some(metered) = ctx.ext.remove::<Metered>() else {
            return;
        };
        let r = &mut ctx.record;
        let partial = !matches!(
            r.outcome,
            crate::pipeline::Outcome::Complete | crate::pipeline::Outcome::Refused
        );
        let tokens = metered.meter.and_then(Meter::finish);
        if let Some(tokens) = tokens {
            r.tokens = Some(RecordedTokens { tokens, partial });
        }
        let t = tokens.unwrap_or_default();
        self.stores.record_tokens(TokenUsage {
            at_ms: crate::state::unix_ms(),
            key_id: metered.key_id,
            upstream: r.upstream.as_deref().unwrap_or("").to_owned(),
            model: r.model.clone().unwrap_or_default(),
            requests: 1,
            errors: u64::from(
                r.status >= 400 || r.outcome == crate::pipeline::Outcome::UpstreamAborted,
            ),
            partial: u64::from(partial && tokens.is_some()),
            input_tokens: t.input,
            output_tokens: t.output,
            cached_tokens: t.cached,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sse(frames: &[&str]) -> Option<Tokens> {
        let mut m = Meter::Sse {
            carry: Vec::new(),
            skipping: false,
            seen: None,
        };
        for f in frames {
            m.feed(&Bytes::copy_from_slice(f.as_bytes()));
        }
        m.finish()
    }

    #[test]
    fn openai_json_usage_with_cached_tokens() {
        let body = r#"{"id":"x","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":4}}}"#;
        let mut m = Meter::Json(Some(Vec::new()), 0);
        // Split anywhere: the body is parsed when it ends.
        m.feed(&Bytes::from_static(&body.as_bytes()[..20]));
        m.feed(&Bytes::from_static(&body.as_bytes()[20..]));
        let t = m.finish().unwrap();
        assert_eq!((t.input, t.output, t.cached, t.total()), (12, 5, 4, 17));
    }

    #[test]
    fn openai_stream_final_usage_chunk_split_across_frames_and_line_endings() {
        let t = sse(&[
            "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\r\n\r\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tok",
            "ens\":9,\"completion_tokens\":3,\"total_tokens\":12}}\r",
            "\rdata: [DONE]\n\n",
        ])
        .unwrap();
        assert_eq!((t.input, t.output), (9, 3));
    }

    #[test]
    fn json_usage_is_found_from_the_end_past_content_that_mentions_it() {
        let body = br#"{"choices":[{"message":{"content":"say \"usage\": {\"prompt_tokens\": 99}"}}],"usage":{"prompt_tokens":3,"completion_tokens":4},"meta":{"usage":"n/a"}}"#;
        let t = usage_member(body).unwrap();
        assert_eq!((t.input, t.output), (3, 4));
        assert_eq!(usage_member(br#"{"usage":"n/a"}"#), None);
    }

    #[test]
    fn a_stream_without_usage_reports_none() {
        assert_eq!(
            sse(&[
                "data: {\"choices\":[],\"usage\":null}\n\n",
                "data: [DONE]\n\n"
            ]),
            None
        );
    }

    #[test]
    fn anthropic_stream_input_at_start_cumulative_output_at_delta() {
        let t = sse(&[
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":20,\"cache_read_input_tokens\":5,\"cache_creation_input_tokens\":1,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"usage\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        ])
        .unwrap();
        assert_eq!((t.input, t.output, t.cached), (26, 15, 5));
    }

    #[test]
    fn responses_api_completed_event() {
        let t = sse(&[
            "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":30,\"output_tokens\":8,\"input_tokens_details\":{\"cached_tokens\":10}}}}\n\n",
        ])
        .unwrap();
        assert_eq!((t.input, t.output, t.cached), (30, 8, 10));
    }

    #[test]
    fn an_overlong_line_is_skipped_and_the_next_one_still_read() {
        let huge = format!("data: {{\"x\":\"{}\"}}", "a".repeat(MAX_LINE + 10));
        let (a, b) = huge.split_at(MAX_LINE / 2);
        let t = sse(&[
            a,
            b,
            "\n\ndata: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n",
        ])
        .unwrap();
        assert_eq!((t.input, t.output), (1, 2));
    }

    #[test]
    fn an_oversized_json_answer_is_not_counted() {
        let mut m = Meter::Json(Some(Vec::new()), 0);
        m.feed(&Bytes::from(vec![b' '; MAX_JSON]));
        m.feed(&Bytes::from_static(b"{\"usage\":{\"prompt_tokens\":1}}"));
        assert_eq!(m.finish(), None);
    }
}
