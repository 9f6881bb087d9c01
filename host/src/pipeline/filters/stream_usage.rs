//! `stream_usage`: the filter of a route with `stream_usage: inject`. OpenAI streams report their
//! tokens only when the request asks (`stream_options.include_usage`). On such a route a
//! streaming chat or text completion request that does not ask gets the option added, so the
//! gateway can count its tokens, and the extra usage-only chunk it causes is taken out of the
//! stream before it reaches the client, who did not ask for it. The meter (`tokens.rs`) reads the
//! chunk before any filter sees it, so the count is kept.
//!
//! | hook | does |
//! |---|---|
//! | `on_request_body` | adds `stream_options.include_usage: true` to a streaming request that lacks it, and marks the request |
//! | `on_response_head` | on a marked request: an upstream's event stream loses its `Content-Length` (the client's body is shorter); any other answer unmarks it |
//! | `on_body_chunk` | on a marked request: takes the usage-only chunk out; at the end, sends what it held |
//!
//! Only whole events are passed on while stripping: the unfinished tail of a frame waits for the
//! rest of its event (upstreams send whole events per frame, so in practice nothing waits).
//! Chunks keep the `"usage": null` member OpenAI adds to each; clients ignore it.

use bytes::{Bytes, BytesMut};
use serde_json::Value;

use crate::pipeline::{Ctx, Filter, Flow, HookResult, Hooks, Session, Step};
use crate::upstream::Upstream;

/// The filter (stateless: the per-request stripper lives in the request's `ctx.ext`).
pub(crate) struct StreamUsage;

/// The route's filter, when it has `stream_usage: inject`.
pub(crate) fn build(route: &crate::config::RouteConfig) -> Option<StreamUsage> {
    (route.stream_usage == crate::config::StreamUsage::Inject).then_some(StreamUsage)
}

impl Filter for StreamUsage {
    fn name(&self) -> &str {
        "stream_usage"
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST_BODY | Hooks::RESPONSE_HEAD | Hooks::BODY_CHUNK
    }

    fn on_request_body<'a>(
        &'a self,
        s: &'a mut Session<'_>,
        body: &'a mut Bytes,
    ) -> HookResult<'a, Flow> {
        if s.probe.stream == Some(true)
            && takes_stream_options(s.head.uri.path())
            && let Some(asking) = inject(body)
        {
            *body = asking;
            s.ctx.ext.insert(StripUsageChunk::default());
        }
        Step::Now(Ok(Flow::Continue))
    }

    fn on_response_head<'a>(
        &'a self,
        s: &'a mut Session<'_>,
        head: &'a mut http::response::Parts,
        from: Option<&'a Upstream>,
    ) -> HookResult<'a> {
        if s.ctx.ext.get::<StripUsageChunk>().is_some() {
            if from.is_some()
                && crate::pipeline::headers::content_type_is(&head.headers, "text/event-stream")
            {
                // The body the client gets is shorter than the upstream's.
                head.headers.remove(http::header::CONTENT_LENGTH);
            } else {
                // Only an upstream's stream carries the chunk to take out.
                s.ctx.ext.remove::<StripUsageChunk>();
            }
        }
        Step::Now(Ok(()))
    }

    fn on_body_chunk(&self, ctx: &mut Ctx, chunk: &mut Bytes, end: bool) {
        if let Some(strip) = ctx.ext.get_mut::<StripUsageChunk>() {
            let out = strip.push(chunk);
            *chunk = if end {
                // An unfinished last event held back goes out as it is.
                [out, strip.finish()].concat().into()
            } else {
                out
            };
        }
    }
}

/// Longest event held while waiting for its end; a longer one is passed on as it is.
const MAX_HELD: usize = 1 << 20;

/// Whether `path` takes `stream_options` (OpenAI chat and text completions).
pub fn takes_stream_options(path: &str) -> bool {
    // `…/chat/completions` ends the same way.
    path.ends_with("/completions")
}

/// The body with `stream_options.include_usage: true`, or `None` if the request asks for it
/// already, is not a streaming request, or is not a JSON object.
pub fn inject(body: &[u8]) -> Option<Bytes> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object_mut()?;
    if obj.get("stream") != Some(&Value::Bool(true)) {
        return None;
    }
    let options = obj
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Default::default()));
    if options.is_null() {
        *options = Value::Object(Default::default());
    }
    let options = options.as_object_mut()?;
    if options.get("include_usage") == Some(&Value::Bool(true)) {
        return None;
    }
    options.insert("include_usage".into(), Value::Bool(true));
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

/// Whether one SSE event is OpenAI's usage-only chunk: a `data:` JSON object with an empty
/// `choices` and a `usage` object.
fn is_usage_chunk(event: &[u8]) -> bool {
    if memchr::memmem::find(event, b"\"usage\"").is_none() {
        return false;
    }
    // Lines end in LF, CRLF or CR: splitting at either byte leaves at most empty pieces extra.
    let data: Vec<&[u8]> = event
        .split(|&b| b == b'\n' || b == b'\r')
        .filter_map(|l| l.strip_prefix(b"data:"))
        .map(<[u8]>::trim_ascii)
        .collect();
    let [one] = data.as_slice() else {
        return false;
    };
    let Ok(v) = serde_json::from_slice::<Value>(one) else {
        return false;
    };
    v.get("choices")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
        && v.get("usage").is_some_and(Value::is_object)
}

fn mentions_usage_object(data: &[u8]) -> bool {
    memchr::memmem::find(data, b"\"usage\":{").is_some()
        || memchr::memmem::find(data, b"\"usage\": {").is_some()
}

/// Where each complete event in `buf` ends (just past the blank line that ends it), in order.
/// `buf` starts at the start of a line. Lines end in LF, CRLF or CR, as the SSE format allows; a
/// CR last in `buf` ends its line (should an LF follow in the next frame, it reads as one more
/// blank line there, which is harmless: events are only grouped here, never rewritten).
fn event_ends(buf: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let mut at = 0;
    let mut line_start = 0;
    std::iter::from_fn(move || {
        while let Some(offset) = memchr::memchr2(b'\n', b'\r', &buf[at..]) {
            let end = at + offset;
            let crlf = buf[end] == b'\r' && buf.get(end + 1) == Some(&b'\n');
            let blank = end == line_start;
            at = end + if crlf { 2 } else { 1 };
            line_start = at;
            if blank {
                return Some(at);
            }
        }
        None
    })
}

/// The end of the last complete event in `buf`, if any.
fn last_event_end(buf: &[u8]) -> Option<usize> {
    event_ends(buf).last()
}

/// Takes usage-only chunks out of an SSE stream, frame by frame.
#[derive(Debug, Default, Clone)]
pub struct StripUsageChunk {
    held: BytesMut,
    /// A usage chunk taken out ended with a CR last in its frame: an LF that starts the next
    /// frame completes that CRLF and goes with it.
    skip_lf: bool,
}

impl StripUsageChunk {
    /// What of `data` goes to the client now (possibly empty).
    pub fn push(&mut self, data: &Bytes) -> Bytes {
        let skipped;
        let data = if std::mem::take(&mut self.skip_lf) && data.first() == Some(&b'\n') {
            skipped = data.slice(1..);
            &skipped
        } else {
            data
        };
        // (`\r\r` may yet be followed by `\n`: see `event_ends`.)
        let whole_events =
            data.ends_with(b"\n\n") || data.ends_with(b"\n\r\n") || data.ends_with(b"\r\r");
        if self.held.is_empty() && whole_events && !mentions_usage_object(data) {
            // Whole events, none of them a usage chunk: as they are, no copy.
            return data.clone();
        }
        self.held.extend_from_slice(data);
        let Some(end) = last_event_end(&self.held) else {
            if self.held.len() > MAX_HELD {
                return self.held.split().freeze();
            }
            return Bytes::new();
        };
        let complete = self.held.split_to(end).freeze();
        let mut out = BytesMut::with_capacity(complete.len());
        let mut start = 0;
        while start < complete.len() {
            let rest = &complete[start..];
            let len = first_event_end(rest).unwrap_or(rest.len());
            let event = &rest[..len];
            if !is_usage_chunk(event) {
                out.extend_from_slice(event);
            } else if start + len == complete.len() && self.held.is_empty() {
                self.skip_lf = event.ends_with(b"\r");
            }
            start += len;
        }
        out.freeze()
    }

    /// What is still held when the stream ends (an unfinished last event), to pass on as it is.
    pub fn finish(&mut self) -> Bytes {
        self.held.split().freeze()
    }
}

/// The end of the first complete event in `buf`, if any.
fn first_event_end(buf: &[u8]) -> Option<usize> {
    event_ends(buf).next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inject_adds_include_usage_only_to_streams_that_lack_it() {
        let out = inject(br#"{"model":"m","stream":true,"messages":[]}"#).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "m");
        let kept =
            inject(br#"{"stream":true,"stream_options":{"include_usage":false,"x":1}}"#).unwrap();
        let v: Value = serde_json::from_slice(&kept).unwrap();
        assert_eq!(
            (
                v["stream_options"]["include_usage"].as_bool(),
                v["stream_options"]["x"].as_i64()
            ),
            (Some(true), Some(1))
        );
        assert!(inject(br#"{"stream":true,"stream_options":{"include_usage":true}}"#).is_none());
        assert!(inject(br#"{"stream":false}"#).is_none());
        assert!(inject(br#"{"messages":[]}"#).is_none());
        assert!(inject(b"[1,2]").is_none());
        assert!(takes_stream_options("/v1/chat/completions"));
        assert!(!takes_stream_options("/v1/messages"));
    }

    fn strip(frames: &[&str]) -> String {
        let mut s = StripUsageChunk::default();
        let mut out = String::new();
        for f in frames {
            out.push_str(
                std::str::from_utf8(&s.push(&Bytes::copy_from_slice(f.as_bytes()))).unwrap(),
            );
        }
        out.push_str(std::str::from_utf8(&s.finish()).unwrap());
        out
    }

    #[test]
    fn the_usage_only_chunk_is_taken_out_wherever_the_frames_split() {
        let chunk = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n";
        let usage =
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n";
        let done = "data: [DONE]\n\n";
        let whole = format!("{chunk}{usage}{done}");
        let expected = format!("{chunk}{done}");
        assert_eq!(strip(&[chunk, usage, done]), expected);
        assert_eq!(strip(&[&whole]), expected);
        for cut in [1, 10, chunk.len() + 5, chunk.len() + usage.len() - 1] {
            let (a, b) = whole.split_at(cut);
            assert_eq!(strip(&[a, b]), expected, "cut at {cut}");
        }
        // The other line endings the SSE format allows, whole and cut anywhere.
        for eol in ["\r\n", "\r"] {
            let other = whole.replace('\n', eol);
            let expected = expected.replace('\n', eol);
            assert_eq!(strip(&[&other]), expected, "{eol:?}");
            for cut in 1..other.len() {
                let (a, b) = other.split_at(cut);
                assert_eq!(strip(&[a, b]), expected, "{eol:?} cut at {cut}");
            }
        }
        // A usage chunk with an event line before its data, CR-only.
        let named = "event: usage\rdata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\r\r";
        assert_eq!(strip(&[chunk, named, done]), format!("{chunk}{done}"));
    }

    #[test]
    fn events_end_at_blank_lines_of_any_line_ending() {
        let ends = |s: &str| event_ends(s.as_bytes()).collect::<Vec<_>>();
        assert_eq!(ends("a\n\nb\n\n"), [3, 6]);
        assert_eq!(ends("a\r\n\r\nb\r\n\r\n"), [5, 10]);
        assert_eq!(ends("a\r\rb\r\r"), [3, 6]);
        // Mixed: LF then CRLF, CRLF then LF, CR then LF-as-part-of-CRLF.
        assert_eq!(ends("a\n\r\nb\r\n\nc\r\r\n"), [4, 8, 12]);
        // Line ends that are not blank lines end no event.
        assert_eq!(ends("a\nb\r\nc\rd"), Vec::<usize>::new());
        assert_eq!(ends(""), Vec::<usize>::new());
    }

    #[test]
    fn other_events_pass_untouched_and_an_unfinished_tail_is_flushed() {
        let s = "event: x\ndata: {\"usage\":{\"a\":1},\"choices\":[{}]}\n\ndata: partial";
        assert_eq!(strip(&[s]), s);
    }
}
