//! The built-in `mock` upstream: canned OpenAI-style answers served inside the gateway, so a
//! newcomer's first `curl` or SDK call works end to end without an account. It is an upstream like
//! any other (auth, routing, limits and logging all apply); it is not meant for production.
//!
//! The JSON builders are public so test and benchmark mock servers produce the same shapes.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::{Value, json};

use crate::config::MockConfig;
use crate::listen::BoxBody;

pub const DEFAULT_MODEL: &str = "tollgate-mock";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// A non-streaming `chat.completion`.
pub fn chat_completion(id: &str, model: &str, text: &str) -> Value {
    json!({
        "id": id, "object": "chat.completion", "created": now(), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": usage(8, text.split_whitespace().count()),
    })
}

/// One `chat.completion.chunk`; `delta` is the content piece, `finish` ends the choice.
pub fn chat_chunk(id: &str, model: &str, delta: Option<&str>, finish: bool) -> Value {
    let delta = match delta {
        Some(d) => json!({"content": d}),
        None if finish => json!({}),
        None => json!({"role": "assistant", "content": ""}),
    };
    json!({
        "id": id, "object": "chat.completion.chunk", "created": now(), "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": if finish { Some("stop") } else { None }}],
    })
}

/// A server-sent event carrying `data`.
pub fn sse_event(data: &Value) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

pub const SSE_DONE: &[u8] = b"data: [DONE]\n\n";

/// The `data` of each event of a streamed chat completion: role, one per word, finish, usage (if
/// asked); the stream then ends with `data: [DONE]`.
pub fn chat_stream_data(id: &str, model: &str, text: &str, include_usage: bool) -> Vec<Value> {
    let mut events = vec![chat_chunk(id, model, None, false)];
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    events.extend(words.iter().map(|w| chat_chunk(id, model, Some(w), false)));
    events.push(chat_chunk(id, model, None, true));
    if include_usage {
        let mut u = chat_chunk(id, model, None, true);
        u["choices"] = json!([]);
        u["usage"] = usage(8, words.len());
        events.push(u);
    }
    events
}

/// The events of a streamed chat completion ([`chat_stream_data`]), then `[DONE]`.
pub fn chat_stream_events(id: &str, model: &str, text: &str, include_usage: bool) -> Vec<Bytes> {
    let mut events: Vec<Bytes> = chat_stream_data(id, model, text, include_usage)
        .iter()
        .map(sse_event)
        .collect();
    events.push(Bytes::from_static(SSE_DONE));
    events
}

/// A non-streaming Anthropic Messages answer.
pub fn message(id: &str, model: &str, text: &str) -> Value {
    json!({
        "id": id, "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 8, "output_tokens": text.split_whitespace().count()},
    })
}

/// A server-sent event with an event name, as Anthropic sends them.
pub fn named_event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// The name and `data` of each event of a streamed Anthropic message: `message_start` (input
/// tokens), one text delta per word, `message_delta` (cumulative output tokens), `message_stop`.
pub fn message_stream_data(id: &str, model: &str, text: &str) -> Vec<(&'static str, Value)> {
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    let mut start = message(id, model, "");
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    start["usage"] = json!({"input_tokens": 8, "output_tokens": 1});
    let mut events = vec![
        (
            "message_start",
            json!({"type": "message_start", "message": start}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        ("ping", json!({"type": "ping"})),
    ];
    events.extend(words.iter().map(|w| {
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}),
        )
    }));
    events.push((
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push((
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"output_tokens": words.len()}}),
    ));
    events.push(("message_stop", json!({"type": "message_stop"})));
    events
}

/// The events of a streamed Anthropic message ([`message_stream_data`]).
pub fn message_stream_events(id: &str, model: &str, text: &str) -> Vec<Bytes> {
    message_stream_data(id, model, text)
        .iter()
        .map(|(name, data)| named_event(name, data))
        .collect()
}

fn json_response(status: StatusCode, body: &Value) -> Response<BoxBody> {
    let body = Full::new(Bytes::from(body.to_string()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/json".parse().expect("static"),
    );
    resp
}

/// A streamed `text/event-stream` response sending `events` with `delay` between them.
pub fn sse_response(events: Vec<Bytes>, delay: std::time::Duration) -> Response<BoxBody> {
    let frames = futures_util::stream::unfold(
        (events.into_iter(), true),
        move |(mut it, first)| async move {
            let next = it.next()?;
            if !first {
                tokio::time::sleep(delay).await;
            }
            Some((Ok(Frame::data(next)), (it, false)))
        },
    );
    let mut resp = Response::new(BodyExt::boxed_unsync(StreamBody::new(frames)));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        "text/event-stream".parse().expect("static"),
    );
    h.insert(header::CACHE_CONTROL, "no-cache".parse().expect("static"));
    resp
}

/// Answers one request the way an OpenAI-compatible server (or, on `…/messages`, Anthropic's
/// Messages API) would.
pub fn respond(
    config: &MockConfig,
    request_id: &str,
    method: &Method,
    path: &str,
    body: Option<&Value>,
) -> Response<BoxBody> {
    let model = body
        .and_then(|b| b.get("model"))
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_MODEL);
    let stream = body
        .and_then(|b| b.get("stream"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let id = format!("chatcmpl-{request_id}");
    match (method, path.rsplit('/').next().unwrap_or_default()) {
        (&Method::GET, "models") => json_response(
            StatusCode::OK,
            &json!({"object": "list", "data": [{"id": DEFAULT_MODEL, "object": "model", "created": 0, "owned_by": "tollgate"}]}),
        ),
        (&Method::POST, "completions") if path.ends_with("/chat/completions") => {
            if stream {
                let include_usage = body
                    .and_then(|b| b.pointer("/stream_options/include_usage"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                sse_response(
                    chat_stream_events(&id, model, &config.reply, include_usage),
                    config.delay.get(),
                )
            } else {
                json_response(StatusCode::OK, &chat_completion(&id, model, &config.reply))
            }
        }
        (&Method::POST, "messages") => {
            let id = format!("msg_{request_id}");
            if stream {
                sse_response(
                    message_stream_events(&id, model, &config.reply),
                    config.delay.get(),
                )
            } else {
                json_response(StatusCode::OK, &message(&id, model, &config.reply))
            }
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": {"message": format!("the mock upstream does not serve {method} {path}"),
                               "type": "invalid_request_error", "param": null, "code": "unknown_url"}}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_stream_starts_with_input_and_ends_with_cumulative_output() {
        let events = message_stream_events("m1", "claude", "a b c");
        let first = std::str::from_utf8(&events[0]).unwrap();
        assert!(first.starts_with("event: message_start\ndata: "), "{first}");
        assert!(first.contains("\"input_tokens\":8"), "{first}");
        let delta = std::str::from_utf8(&events[events.len() - 2]).unwrap();
        assert!(delta.contains("\"output_tokens\":3"), "{delta}");
        assert!(events.last().unwrap().starts_with(b"event: message_stop\n"));
    }

    #[test]
    fn stream_events_carry_every_word_then_done() {
        let events = chat_stream_events("c1", "m", "a b c", true);
        // role + 3 words + finish + usage + [DONE]
        assert_eq!(events.len(), 7);
        assert!(
            events
                .iter()
                .all(|e| e.starts_with(b"data: ") && e.ends_with(b"\n\n"))
        );
        let text: String = events[1..4]
            .iter()
            .map(|e| {
                let v: Value = serde_json::from_slice(&e[6..]).unwrap();
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(text, "a b c");
        assert_eq!(&events[6][..], SSE_DONE);
    }
}
