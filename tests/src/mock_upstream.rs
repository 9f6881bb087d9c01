//! A mock OpenAI-compatible upstream over real HTTP, driven per request by headers the test sends
//! through the gateway:
//!
//! - `x-mock-status: 429` answers that status with an OpenAI error body (and `retry-after: 1`);
//! - `x-mock-head-delay-ms: N` waits before sending the response head;
//! - `x-mock-events: N` and `x-mock-delay-ms: N` shape a stream (N word events, N ms apart);
//! - `x-mock-stall-after: K` stops sending (without closing) after K events;
//! - `x-mock-honour-budget: 1` caps a stream's words at the request's `max_completion_tokens`
//!   (or `max_tokens`, `max_output_tokens`).
//!
//! It speaks OpenAI Chat Completions (`…/chat/completions`) and Anthropic Messages
//! (`…/messages`), told by the path, and lists models (`GET …/models`). Started with
//! [`MockUpstream::start_only`], it speaks one protocol only, strictly, as a real provider does:
//! the other protocol's path is a 404, and a request that breaks the protocol's rules (an
//! Anthropic request without `max_tokens`, `anthropic-version` or `x-api-key`, or with a system
//! message; an OpenAI request without `messages` or with a top-level `system`) a 400 in that
//! protocol's error shape. A request offering `tools` whose last turn is not a tool result is
//! answered with a call of the first tool (`{"city": "Paris"}`), streamed or not.
//!
//! It records what it received and counts streams (or pending heads) that were dropped before they
//! completed — which is how a test sees that the gateway cancelled the upstream request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use bytes::Bytes;
use serde_json::Value;
use tollgate::mock;

#[derive(Default)]
pub struct Recorded {
    pub requests: AtomicUsize,
    /// Responses (or response heads) abandoned before they were complete.
    pub cancelled: AtomicUsize,
    pub completed: AtomicUsize,
    pub last_headers: Mutex<Option<HeaderMap>>,
    /// Method and path (with query) of every request, in order.
    pub seen: Mutex<Vec<(String, String)>>,
    pub last_body: Mutex<Option<Bytes>>,
    /// When non-zero, every request is answered with this status (and `retry-after: 1`), as an
    /// upstream over its quota would.
    pub force_status: std::sync::atomic::AtomicU16,
    /// When set, streams answer 200 and then an in-band `overloaded_error` event (as Anthropic
    /// does under load), then end.
    pub force_error_event: std::sync::atomic::AtomicBool,
    /// When non-zero, every response head waits this many milliseconds (a slow upstream).
    pub head_delay_ms: std::sync::atomic::AtomicU64,
    /// The one protocol spoken, strictly ([`MockUpstream::start_only`]); `None`: both, leniently.
    pub only: Mutex<Option<Protocol>>,
}

/// An LLM API protocol the mock speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    OpenAi,
    Anthropic,
}

pub struct MockUpstream {
    pub addr: SocketAddr,
    pub state: Arc<Recorded>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockUpstream {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("addr")).await
    }

    /// A mock speaking only `protocol`, strictly (see the module documentation).
    pub async fn start_only(protocol: Protocol) -> Self {
        let mock = Self::start().await;
        *mock.state.only.lock().expect("lock") = Some(protocol);
        mock
    }

    pub async fn start_on(addr: SocketAddr) -> Self {
        let state = Arc::new(Recorded::default());
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("mock binds");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            // Like real OpenAI-compatible servers (asyncio sets it by default): without it, small
            // SSE writes on a reused connection wait for our delayed ACK (~40 ms).
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn cancelled(&self) -> usize {
        self.state.cancelled.load(Ordering::SeqCst)
    }

    /// Responses the mock finished sending.
    pub fn completed(&self) -> usize {
        self.state.completed.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Answers every request with `status` from now on (0 to stop).
    pub fn force_status(&self, status: u16) {
        self.state.force_status.store(status, Ordering::SeqCst);
    }

    /// Sends every stream from now on with an error as its first event (in a 200 answer).
    pub fn force_error_event(&self) {
        self.state.force_error_event.store(true, Ordering::SeqCst);
    }

    /// Method and path of every request received so far.
    pub fn seen(&self) -> Vec<(String, String)> {
        self.state.seen.lock().expect("lock").clone()
    }

    pub fn last_body(&self) -> Bytes {
        self.state
            .last_body
            .lock()
            .expect("lock")
            .clone()
            .unwrap_or_default()
    }

    pub fn last_headers(&self) -> HeaderMap {
        self.state
            .last_headers
            .lock()
            .expect("lock")
            .clone()
            .unwrap_or_default()
    }
}

/// Counts as cancelled unless marked complete before it is dropped.
struct CancelGuard {
    state: Arc<Recorded>,
    done: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        let counter = if self.done {
            &self.state.completed
        } else {
            &self.state.cancelled
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

fn header_num(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.parse().ok()
}

async fn handle(
    State(state): State<Arc<Recorded>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.requests.fetch_add(1, Ordering::SeqCst);
    state.seen.lock().expect("lock").push((
        method.to_string(),
        uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
    ));
    *state.last_headers.lock().expect("lock") = Some(headers.clone());
    *state.last_body.lock().expect("lock") = Some(body.clone());
    let mut guard = CancelGuard {
        state: state.clone(),
        done: false,
    };

    let slow = state.head_delay_ms.load(Ordering::SeqCst);
    if let Some(ms) = header_num(&headers, "x-mock-head-delay-ms").or((slow > 0).then_some(slow)) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let forced = state.force_status.load(Ordering::SeqCst);
    if let Some(status) = (forced != 0)
        .then_some(u64::from(forced))
        .or_else(|| header_num(&headers, "x-mock-status"))
    {
        guard.done = true;
        let status =
            StatusCode::from_u16(status as u16).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({"error": {"message": "mock error", "type": "mock", "param": null, "code": status.as_u16()}});
        return (
            status,
            [("retry-after", "1"), ("content-type", "application/json")],
            body.to_string(),
        )
            .into_response();
    }
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = json.get("model").and_then(Value::as_str).unwrap_or("mock");
    let anthropic = uri.path().ends_with("/messages");
    if method == axum::http::Method::GET && uri.path().trim_end_matches('/').ends_with("/models") {
        guard.done = true;
        let listing = serde_json::json!({"object": "list", "data": [
            {"id": "gpt-4o-mini", "object": "model", "created": 1_700_000_000, "owned_by": "mock"},
            {"id": "gpt-4o", "object": "model", "created": 1_700_000_001, "owned_by": "mock"},
        ]});
        return ([("content-type", "application/json")], listing.to_string()).into_response();
    }
    let only = *state.only.lock().expect("lock");
    if let Some(protocol) = only
        && let Err((status, why)) = strictly(protocol, uri.path(), &headers, &json)
    {
        guard.done = true;
        let body = match protocol {
            Protocol::OpenAi => {
                serde_json::json!({"error": {"message": why, "type": "invalid_request_error", "param": null, "code": null}})
            }
            Protocol::Anthropic => {
                serde_json::json!({"type": "error", "error": {"type": "invalid_request_error", "message": why}})
            }
        };
        return (
            StatusCode::from_u16(status).expect("status"),
            [("content-type", "application/json")],
            body.to_string(),
        )
            .into_response();
    }
    let tool = tool_to_call(&json);
    let streamed = json.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if let Some(tool) = &tool {
        guard.done = true;
        return tool_call_answer(anthropic, streamed, model, tool);
    }
    if !streamed {
        guard.done = true;
        let body = if anthropic {
            mock::message("msg_mock", model, "mock answer")
        } else {
            mock::chat_completion("chatcmpl-mock", model, "mock answer")
        };
        let mut resp = ([("content-type", "application/json")], body.to_string()).into_response();
        // Each `x-mock-reply-header: name: value` adds that header to the answer.
        for (name, value) in headers
            .get_all("x-mock-reply-header")
            .iter()
            .filter_map(|v| v.to_str().ok()?.split_once(": "))
        {
            if let (Ok(n), Ok(v)) = (
                axum::http::HeaderName::try_from(name),
                axum::http::HeaderValue::try_from(value),
            ) {
                resp.headers_mut().insert(n, v);
            }
        }
        return resp;
    }

    let eol = match headers.get("x-mock-eol").and_then(|v| v.to_str().ok()) {
        Some("crlf") => "\r\n",
        Some("cr") => "\r",
        _ => "\n",
    };
    if state.force_error_event.load(Ordering::SeqCst) {
        guard.done = true;
        let event = serde_json::json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
        return (
            [("content-type", "text/event-stream")],
            frame(Some("error"), &event.to_string(), eol),
        )
            .into_response();
    }
    let mut n = header_num(&headers, "x-mock-events").unwrap_or(5) as usize;
    // `x-mock-honour-budget: 1`: at most the request's completion budget of words, as real
    // providers do (without it the mock ignores the budget, as some upstreams do).
    if headers.contains_key("x-mock-honour-budget")
        && let Some(budget) = ["max_completion_tokens", "max_tokens", "max_output_tokens"]
            .iter()
            .find_map(|f| json.get(*f).and_then(Value::as_u64))
    {
        n = n.min(budget as usize);
    }
    let delay = Duration::from_millis(header_num(&headers, "x-mock-delay-ms").unwrap_or(0));
    let stall_after = header_num(&headers, "x-mock-stall-after").map(|k| k as usize);
    let text: String = (0..n).map(|i| format!("w{i} ")).collect();
    let include_usage = json
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // Framed by this mock's own writer, not the gateway's, so that the gateway's stream parsers
    // read text they did not write.
    let events: Vec<Bytes> = if anthropic {
        mock::message_stream_data("msg_mock", model, text.trim_end())
            .iter()
            .map(|(name, data)| frame(Some(name), &data.to_string(), eol))
            .collect()
    } else {
        mock::chat_stream_data("chatcmpl-mock", model, text.trim_end(), include_usage)
            .iter()
            .map(|data| frame(None, &data.to_string(), eol))
            .chain([frame(None, "[DONE]", eol)])
            .collect()
    };
    let stream = futures_util::stream::unfold(
        (events.into_iter().enumerate(), guard),
        move |(mut it, mut guard)| async move {
            let Some((i, event)) = it.next() else {
                guard.done = true;
                drop(guard);
                return None;
            };
            if stall_after.is_some_and(|k| i >= k) {
                std::future::pending::<()>().await;
            }
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Some((Ok::<_, std::convert::Infallible>(event), (it, guard)))
        },
    );
    (
        [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

/// One server-sent event as the mock sends it: an optional `event:` line, one `data:` line and
/// a blank line, every line ended with `eol` (LF, CRLF or CR: the SSE format allows each).
fn frame(name: Option<&str>, data: &str, eol: &str) -> Bytes {
    let mut s = String::with_capacity(data.len() + 32);
    if let Some(name) = name {
        s.push_str("event: ");
        s.push_str(name);
        s.push_str(eol);
    }
    s.push_str("data: ");
    s.push_str(data);
    s.push_str(eol);
    s.push_str(eol);
    Bytes::from(s)
}

/// A request `protocol` refuses: the status and why.
fn strictly(
    protocol: Protocol,
    path: &str,
    headers: &HeaderMap,
    body: &Value,
) -> Result<(), (u16, String)> {
    let bad = |why: &str| Err((400, why.to_owned()));
    match protocol {
        Protocol::OpenAi => {
            if !path.ends_with("/chat/completions") {
                return Err((404, format!("no such endpoint {path}")));
            }
            if !headers.contains_key("authorization") {
                return Err((401, "missing bearer credential".into()));
            }
            if !body["messages"].is_array() {
                return bad("messages is required");
            }
            if ["system", "stop_sequences", "metadata"]
                .iter()
                .any(|k| body.get(*k).is_some())
            {
                return bad("unknown parameter (an Anthropic request?)");
            }
            for m in body["messages"].as_array().into_iter().flatten() {
                let role = m["role"].as_str().unwrap_or_default();
                if !["system", "developer", "user", "assistant", "tool"].contains(&role) {
                    return bad("invalid role");
                }
                if let Some(parts) = m["content"].as_array()
                    && parts
                        .iter()
                        .any(|p| p["type"] != "text" && p["type"] != "image_url")
                {
                    return bad("invalid content part (an Anthropic block?)");
                }
            }
        }
        Protocol::Anthropic => {
            if !path.ends_with("/messages") {
                return Err((404, format!("no such endpoint {path}")));
            }
            if !headers.contains_key("x-api-key") || headers.contains_key("authorization") {
                return Err((401, "x-api-key is required".into()));
            }
            if !headers.contains_key("anthropic-version") {
                return bad("anthropic-version header is required");
            }
            if !body["max_tokens"].is_u64() {
                return bad("max_tokens: field required");
            }
            let mut last = "";
            for m in body["messages"].as_array().into_iter().flatten() {
                let role = m["role"].as_str().unwrap_or_default();
                if role != "user" && role != "assistant" {
                    return bad("messages: roles must be user or assistant");
                }
                if role == last {
                    return bad("messages: roles must alternate");
                }
                last = role;
            }
            if body.get("stream_options").is_some() || body.get("tool_calls").is_some() {
                return bad("unknown parameter (an OpenAI request?)");
            }
        }
    }
    Ok(())
}

/// The first offered tool's name, when the last turn is not a tool result (in either protocol).
fn tool_to_call(body: &Value) -> Option<String> {
    let tools = body.get("tools")?.as_array()?;
    let first = tools.first()?;
    let name = first["function"]["name"]
        .as_str()
        .or(first["name"].as_str())?;
    let last = body["messages"].as_array()?.last()?;
    let answered = last["role"] == "tool"
        || last["content"]
            .as_array()
            .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result"));
    (!answered).then(|| name.to_owned())
}

/// A call of `tool` with `{"city": "Paris"}`, in the protocol and form asked for.
fn tool_call_answer(anthropic: bool, streamed: bool, model: &str, tool: &str) -> Response {
    use serde_json::json;
    let args = r#"{"city": "Paris"}"#;
    let usage_o = json!({"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39});
    match (anthropic, streamed) {
        (false, false) => {
            let body = json!({"id": "chatcmpl-tool", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
                    "tool_calls": [{"id": "call_mock", "type": "function", "function": {"name": tool, "arguments": args}}]}}],
                "usage": usage_o});
            ([("content-type", "application/json")], body.to_string()).into_response()
        }
        (true, false) => {
            let body = json!({"id": "msg_tool", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": "Let me look."}, {"type": "tool_use", "id": "toolu_mock", "name": tool, "input": {"city": "Paris"}}],
                "stop_reason": "tool_use", "stop_sequence": null, "usage": {"input_tokens": 30, "output_tokens": 9}});
            ([("content-type", "application/json")], body.to_string()).into_response()
        }
        (false, true) => {
            let chunk = |delta: Value, finish: Value| {
                json!({"id": "chatcmpl-tool", "object": "chat.completion.chunk", "created": 1, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            };
            let mut events = vec![
                chunk(
                    json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": "call_mock", "type": "function", "function": {"name": tool, "arguments": ""}}]}),
                    Value::Null,
                ),
                chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": "}}]}),
                    Value::Null,
                ),
                chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
                    Value::Null,
                ),
                chunk(json!({}), json!("tool_calls")),
            ];
            let mut usage = chunk(json!({}), Value::Null);
            usage["choices"] = json!([]);
            usage["usage"] = usage_o;
            events.push(usage);
            let mut text: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
            text.push_str("data: [DONE]\n\n");
            ([("content-type", "text/event-stream")], text).into_response()
        }
        (true, true) => {
            let events = [
                (
                    "message_start",
                    json!({"type": "message_start", "message": {"id": "msg_tool", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 30, "output_tokens": 1}}}),
                ),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_mock", "name": tool, "input": {}}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": "}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
                ),
                (
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 0}),
                ),
                (
                    "message_delta",
                    json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 9}}),
                ),
                ("message_stop", json!({"type": "message_stop"})),
            ];
            let text: String = events
                .iter()
                .map(|(n, d)| format!("event: {n}\ndata: {d}\n\n"))
                .collect();
            ([("content-type", "text/event-stream")], text).into_response()
        }
    }
}
