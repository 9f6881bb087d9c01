//! Token metering: the tokens an answer used, read from the upstream's answer as the relay passes
//! it to the client. Part of the relay step (like `bytes_out`), so every filter reads one count:
//! `ctx.record.tokens` when the request ends, [`TokenMeter::seen`] while it streams.
//!
//! Where the counts come from:
//! - a JSON answer: its `usage` object (OpenAI chat/completions `prompt_tokens`,
//!   `completion_tokens`, `prompt_tokens_details.cached_tokens`; OpenAI Responses and Anthropic
//!   `input_tokens`, `output_tokens`, cache fields). The frames are kept by reference (no copy)
//!   up to [`MAX_JSON`] and only the `usage` member is parsed when the body ends;
//! - an SSE stream: each `data:` line that mentions `"usage"` is parsed as it passes: OpenAI's final
//!   usage chunk (sent when the request asked for `stream_options.include_usage`), Anthropic's
//!   `message_start` (input, cache, first output count) and `message_delta` (cumulative output),
//!   OpenAI Responses' `response.completed`. Only the unfinished last line of a frame is copied,
//!   and at most [`MAX_LINE`] of it; no frame waits.
//!
//! Parsing goes into typed structs (unknown members are skipped, nothing is allocated per field).
//! A request that ends before its answer is complete keeps what was seen and is marked partial.
//!
//! The model that served the answer is read on the way: a JSON answer's first `"model"` member
//! (OpenAI's top-level `model`, Anthropic's), a stream's first event that names one (each
//! OpenAI chunk, Anthropic's `message_start`); a stream stops looking once it has it.

use bytes::Bytes;
use serde::Deserialize;

/// Largest JSON answer whose usage is read; a larger one is relayed but not counted.
pub const MAX_JSON: usize = 8 << 20;
/// Longest SSE line kept across frames; a longer one (a huge content delta) is skipped.
pub const MAX_LINE: usize = 64 << 10;

/// Tokens one answer reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Input (prompt) tokens, cached ones included.
    pub input: u64,
    pub output: u64,
    /// Input tokens served from the provider's prompt cache.
    pub cached: u64,
}

impl Tokens {
    pub fn total(&self) -> u64 {
        self.input + self.output
    }
}

/// The most tokens one count of an answer is taken at (2^40, a thousand times any context
/// window): an upstream's figure beyond it is clamped, so sums and the signed corrections of
/// reservations (`used - reserved`) cannot overflow, whatever an upstream reports.
pub const MAX_REPORTED: u64 = 1 << 40;

/// The tokens of a finished request, as the record and the access log carry them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordedTokens {
    pub tokens: Tokens,
    /// The request ended before the answer did: the counts are what was seen.
    pub partial: bool,
}

/// A `usage` object in any of the shapes above.
#[derive(Deserialize, Default)]
struct Usage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    prompt_tokens_details: Option<Details>,
    input_tokens_details: Option<Details>,
}

#[derive(Deserialize)]
struct Details {
    cached_tokens: Option<u64>,
}

impl Usage {
    /// The counts, or `None` if it names none.
    fn tokens(&self) -> Option<Tokens> {
        // Anthropic counts cache reads and writes outside `input_tokens`.
        let input = self.prompt_tokens.or_else(|| {
            self.input_tokens.map(|i| {
                i.saturating_add(self.cache_read_input_tokens.unwrap_or(0))
                    .saturating_add(self.cache_creation_input_tokens.unwrap_or(0))
            })
        });
        let output = self.completion_tokens.or(self.output_tokens);
        let clamp = |n: Option<u64>| n.unwrap_or(0).min(MAX_REPORTED);
        if input.is_none() && output.is_none() {
            return None;
        }
        let detail = |d: &Option<Details>| d.as_ref().and_then(|d| d.cached_tokens);
        let cached = detail(&self.prompt_tokens_details)
            .or_else(|| detail(&self.input_tokens_details))
            .or(self.cache_read_input_tokens);
        Some(Tokens {
            input: clamp(input),
            output: clamp(output),
            cached: clamp(cached),
        })
    }
}

/// An object that carries a `usage` member (Anthropic's `message`, OpenAI Responses' `response`).
#[derive(Deserialize)]
struct WithUsage {
    usage: Option<Usage>,
}

/// One SSE event's payload: only the members that can carry usage.
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    message: Option<WithUsage>,
    response: Option<WithUsage>,
    usage: Option<Usage>,
}

/// Reads the tokens of one SSE `data:` payload into `seen` (events of one stream build on each
/// other: Anthropic sends input first and output counts later).
fn from_event(data: &[u8], seen: &mut Option<Tokens>) {
    let Ok(ev) = serde_json::from_slice::<Event<'_>>(data) else {
        return;
    };
    let nested = |w: Option<WithUsage>| w.and_then(|w| w.usage).and_then(|u| u.tokens());
    match ev.kind.as_deref() {
        Some("message_start") => {
            if let Some(t) = nested(ev.message) {
                *seen = Some(t);
            }
        }
        Some("message_delta") => {
            // Cumulative output so far; input may be repeated (newer API versions) or absent.
            if let Some(u) = ev.usage {
                let t = seen.get_or_insert_with(Tokens::default);
                if let Some(o) = u.output_tokens {
                    t.output = o;
                }
                if let Some(full) = u.tokens().filter(|f| f.input > 0) {
                    t.input = full.input;
                    t.cached = full.cached;
                }
            }
        }
        Some("response.completed") => {
            if let Some(t) = nested(ev.response) {
                *seen = Some(t);
            }
        }
        _ => {
            if let Some(t) = ev.usage.and_then(|u| u.tokens()) {
                *seen = Some(t);
            }
        }
    }
}

/// Reads the tokens of an answer as its frames pass.
#[derive(Debug)]
pub enum TokenMeter {
    /// A JSON body, kept by reference until it ends; `None` once it grew past [`MAX_JSON`].
    Json {
        parts: Option<Vec<Bytes>>,
        size: usize,
    },
    /// An SSE stream: the unfinished line carried over from the previous frame.
    Sse {
        carry: Vec<u8>,
        skipping: bool,
        seen: Option<Tokens>,
        /// `data:` lines so far (a lower bound of the output tokens of a stream that reports
        /// usage only at its end: OpenAI sends at least one token per event).
        events: u64,
        /// The model the stream named, once an event did.
        model: Option<Box<str>>,
    },
}

impl TokenMeter {
    /// The meter for an answer with this `Content-Type`, if it is one that reports usage.
    pub fn for_content_type(ct: &[u8]) -> Option<Self> {
        if super::headers::has_media_type(ct, "text/event-stream") {
            Some(Self::Sse {
                carry: Vec::new(),
                skipping: false,
                seen: None,
                events: 0,
                model: None,
            })
        } else if super::headers::has_media_type(ct, "application/json") {
            Some(Self::Json {
                parts: Some(Vec::new()),
                size: 0,
            })
        } else {
            None
        }
    }

    /// Reads one relayed data frame.
    pub fn feed(&mut self, chunk: &Bytes) {
        match self {
            Self::Json { parts, size } => {
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
                events,
                model,
            } => {
                let mut rest = &chunk[..];
                while let Some(end) = memchr::memchr2(b'\n', b'\r', rest) {
                    let line = &rest[..end];
                    if *skipping {
                        *skipping = false;
                    } else if carry.is_empty() {
                        *events += u64::from(line.starts_with(b"data:"));
                        sse_line(line, seen, model);
                    } else {
                        carry.extend_from_slice(line);
                        *events += u64::from(carry.starts_with(b"data:"));
                        sse_line(carry, seen, model);
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

    /// `data:` lines of a stream so far (0 for a JSON answer).
    pub fn events(&self) -> u64 {
        match self {
            Self::Json { .. } => 0,
            Self::Sse { events, .. } => *events,
        }
    }

    /// The counts a stream reported so far (a JSON answer is only read at its end).
    pub fn seen(&self) -> Option<Tokens> {
        match self {
            Self::Json { .. } => None,
            Self::Sse { seen, .. } => *seen,
        }
    }

    /// The counts, once the answer ended (or was cut off).
    #[cfg(test)]
    pub fn finish(self) -> Option<Tokens> {
        self.finish_with_model().0
    }

    /// The counts and the model that served the answer, once it ended (or was cut off).
    pub fn finish_with_model(self) -> (Option<Tokens>, Option<Box<str>>) {
        match self {
            Self::Json { parts, .. } => {
                let Some(parts) = parts else {
                    return (None, None);
                };
                let joined;
                let body: &[u8] = match parts.as_slice() {
                    [one] => one,
                    _ => {
                        joined = parts.concat();
                        &joined
                    }
                };
                (usage_member(body), model_member(body))
            }
            Self::Sse {
                mut carry,
                skipping,
                mut seen,
                mut model,
                ..
            } => {
                if !skipping && !carry.is_empty() {
                    sse_line(&std::mem::take(&mut carry), &mut seen, &mut model);
                }
                (seen, model)
            }
        }
    }
}

const USAGE_KEY: &[u8] = b"\"usage\"";

/// Searchers for [`USAGE_KEY`], built once: building one costs more than a search of a short
/// answer or event.
static USAGE_FROM_END: std::sync::LazyLock<memchr::memmem::FinderRev<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::FinderRev::new(USAGE_KEY));
static USAGE_FROM_START: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(USAGE_KEY));

/// The top-level `usage` object of a JSON answer. Providers put it last, so the document is
/// searched from the end for `"usage"` and only the value after it is parsed (a quoted `usage` in
/// content is escaped, so it never matches; an occurrence whose value is not a usage object is
/// passed over for an earlier one).
fn usage_member(body: &[u8]) -> Option<Tokens> {
    let finder = &*USAGE_FROM_END;
    let mut end = body.len();
    while let Some(at) = finder.rfind(&body[..end]) {
        let rest = body[at + USAGE_KEY.len()..].trim_ascii_start();
        if let Some(value) = rest.strip_prefix(b":") {
            let mut de = serde_json::Deserializer::from_slice(value);
            if let Ok(u) = Usage::deserialize(&mut de)
                && let Some(t) = u.tokens()
            {
                return Some(t);
            }
        }
        end = at;
    }
    None
}

/// One SSE line: a `data:` line that mentions usage is parsed; until one named the model, each
/// is searched for it.
fn sse_line(line: &[u8], seen: &mut Option<Tokens>, model: &mut Option<Box<str>>) {
    let Some(data) = line.strip_prefix(b"data:") else {
        return;
    };
    if model.is_none() {
        *model = model_member(data);
    }
    if USAGE_FROM_START.find(data).is_some() {
        from_event(data.trim_ascii(), seen);
    }
}

const MODEL_KEY: &[u8] = b"\"model\"";

static MODEL_FROM_START: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(MODEL_KEY));

/// The longest served model name kept (a longer one is cut).
const MAX_MODEL: usize = 256;

/// The first `"model"` member of a JSON document whose value is a string (a quoted `model` in
/// content is escaped, so it never matches). A value without escapes (every model name) is cut
/// out directly; one with escapes is decoded by serde_json.
fn model_member(body: &[u8]) -> Option<Box<str>> {
    let finder = &*MODEL_FROM_START;
    let mut from = 0;
    while let Some(at) = finder.find(&body[from..]) {
        let after = from + at + MODEL_KEY.len();
        from = after;
        let Some(value) = body[after..].trim_ascii_start().strip_prefix(b":") else {
            continue;
        };
        let value = value.trim_ascii_start();
        let Some(text) = value.strip_prefix(b"\"") else {
            continue;
        };
        let name: std::borrow::Cow<'_, str> = match memchr::memchr2(b'"', b'\\', text) {
            Some(end) if text[end] == b'"' => match std::str::from_utf8(&text[..end]) {
                Ok(plain) => plain.into(),
                Err(_) => continue,
            },
            Some(_) => {
                let mut de = serde_json::Deserializer::from_slice(value);
                match <std::borrow::Cow<'_, str>>::deserialize(&mut de) {
                    Ok(name) => name,
                    Err(_) => continue,
                }
            }
            None => continue,
        };
        let mut end = name.len().min(MAX_MODEL);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        return Some(name[..end].into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sse(frames: &[&str]) -> Option<Tokens> {
        let mut m = TokenMeter::for_content_type(b"text/event-stream").unwrap();
        for f in frames {
            m.feed(&Bytes::copy_from_slice(f.as_bytes()));
        }
        m.finish()
    }

    #[test]
    fn the_served_model_is_read_from_a_json_answer_and_from_a_streams_first_event_naming_it() {
        let mut m = json();
        m.feed(&Bytes::from_static(
            br#"{"id":"x","choices":[{"message":{"content":"say \"model\": no"}}],"model":"gpt-4o-2024-08-06","usage":{"prompt_tokens":1}}"#,
        ));
        let (tokens, model) = m.finish_with_model();
        assert_eq!(tokens.map(|t| t.input), Some(1));
        assert_eq!(model.as_deref(), Some("gpt-4o-2024-08-06"));
        let mut s = TokenMeter::for_content_type(b"text/event-stream").unwrap();
        for f in [
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"mod",
            "el\": \"claude-x\",\"usage\":{\"input_tokens\":3}}}\n\n",
            "data: {\"type\":\"ping\",\"model\":\"other\"}\n\n",
        ] {
            s.feed(&Bytes::copy_from_slice(f.as_bytes()));
        }
        assert_eq!(s.finish_with_model().1.as_deref(), Some("claude-x"));
        assert_eq!(
            model_member(br#"{"model":42,"x":{"model":"b"}}"#).as_deref(),
            Some("b")
        );
        assert_eq!(model_member(br#"{"content":"no model here"}"#), None);
        assert_eq!(
            model_member(br#"{"model" : "a\"b\u00e9"}"#).as_deref(),
            Some("a\"b\u{e9}"),
            "escapes are decoded"
        );
        assert_eq!(model_member(br#"{"model":"unterminated"#), None);
    }

    fn json() -> TokenMeter {
        TokenMeter::for_content_type(b"application/json; charset=utf-8").unwrap()
    }

    #[test]
    fn openai_json_usage_with_cached_tokens() {
        let body = r#"{"id":"x","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":4}}}"#;
        let mut m = json();
        // Split anywhere: the body is parsed when it ends.
        m.feed(&Bytes::from_static(&body.as_bytes()[..20]));
        m.feed(&Bytes::from_static(&body.as_bytes()[20..]));
        assert_eq!(m.seen(), None);
        let t = m.finish().unwrap();
        assert_eq!((t.input, t.output, t.cached, t.total()), (12, 5, 4, 17));
        // An upstream's absurd figures are clamped, never summed past u64 or i64.
        let body = format!(
            r#"{{"usage":{{"input_tokens":{m},"cache_read_input_tokens":{m},"output_tokens":{m}}}}}"#,
            m = u64::MAX
        );
        let mut m = json();
        m.feed(&Bytes::from(body));
        let t = m.finish().unwrap();
        assert_eq!(
            (t.input, t.output, t.cached),
            (MAX_REPORTED, MAX_REPORTED, MAX_REPORTED)
        );
        assert_eq!(t.total(), 2 * MAX_REPORTED);
    }

    #[test]
    fn other_content_types_are_not_metered() {
        assert!(TokenMeter::for_content_type(b"text/plain").is_none());
        assert!(TokenMeter::for_content_type(b"").is_none());
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
        assert_eq!(usage_member(br#"{"usage":null}"#), None);
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
        let mut m = TokenMeter::for_content_type(b"text/event-stream").unwrap();
        for f in [
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"content\":[],\"usage\":{\"input_tokens\":20,\"cache_read_input_tokens\":5,\"cache_creation_input_tokens\":1,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"usage\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\n",
        ] {
            m.feed(&Bytes::from_static(f.as_bytes()));
        }
        // Running count while it streams.
        assert_eq!(m.seen().map(|t| (t.input, t.output)), Some((26, 7)));
        for f in [
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        ] {
            m.feed(&Bytes::from_static(f.as_bytes()));
        }
        let t = m.finish().unwrap();
        assert_eq!((t.input, t.output, t.cached), (26, 15, 5));
    }

    #[test]
    fn responses_api_completed_event() {
        let t = sse(&[
            "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"output\":[{\"type\":\"message\"}],\"usage\":{\"input_tokens\":30,\"output_tokens\":8,\"input_tokens_details\":{\"cached_tokens\":10}}}}\n\n",
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
        let mut m = json();
        m.feed(&Bytes::from(vec![b' '; MAX_JSON]));
        m.feed(&Bytes::from_static(b"{\"usage\":{\"prompt_tokens\":1}}"));
        assert_eq!(m.finish(), None);
    }
}
