//! `stream_usage: inject` (per route): OpenAI streams report their tokens only when the request
//! asks (`stream_options.include_usage`). On such a route a streaming chat or text completion
//! request that does not ask gets the option added, so the gateway can count its tokens, and the
//! extra usage-only chunk it causes is taken out of the stream before it reaches the client, who
//! did not ask for it. The meter (`tokens.rs`) reads the chunk before it is taken out.
//!
//! Only whole events are passed on while stripping: the unfinished tail of a frame waits for the
//! rest of its event (upstreams send whole events per frame, so in practice nothing waits).
//! Chunks keep the `"usage": null` member OpenAI adds to each; clients ignore it.

use bytes::{Bytes, BytesMut};
use serde_json::Value;

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
    let data: Vec<&[u8]> = event
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
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

/// The end of the last complete event in `buf` (just past its blank line), if any.
fn last_event_end(buf: &[u8]) -> Option<usize> {
    let lf = memchr::memmem::rfind(buf, b"\n\n").map(|i| i + 2);
    let crlf = memchr::memmem::rfind(buf, b"\n\r\n").map(|i| i + 3);
    lf.max(crlf)
}

/// Takes usage-only chunks out of an SSE stream, frame by frame.
#[derive(Debug, Default)]
pub struct StripUsageChunk {
    held: BytesMut,
}

impl StripUsageChunk {
    /// What of `data` goes to the client now (possibly empty).
    pub fn push(&mut self, data: &Bytes) -> Bytes {
        let whole_events = data.ends_with(b"\n\n") || data.ends_with(b"\n\r\n");
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
            }
            start += len;
        }
        out.freeze()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// What is still held when the stream ends (an unfinished last event), to pass on as it is.
    pub fn finish(&mut self) -> Bytes {
        self.held.split().freeze()
    }
}

/// The end of the first complete event in `buf` (just past its blank line), if any.
fn first_event_end(buf: &[u8]) -> Option<usize> {
    let lf = memchr::memmem::find(buf, b"\n\n").map(|i| i + 2);
    let crlf = memchr::memmem::find(buf, b"\n\r\n").map(|i| i + 3);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
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
        let crlf = whole.replace('\n', "\r\n");
        assert_eq!(strip(&[&crlf]), expected.replace('\n', "\r\n"));
    }

    #[test]
    fn other_events_pass_untouched_and_an_unfinished_tail_is_flushed() {
        let s = "event: x\ndata: {\"usage\":{\"a\":1},\"choices\":[{}]}\n\ndata: partial";
        assert_eq!(strip(&[s]), s);
    }
}
