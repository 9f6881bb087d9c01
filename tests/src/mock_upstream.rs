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
    if !json.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        guard.done = true;
        let body = if anthropic {
            mock::message("msg_mock", model, "mock answer")
        } else {
            mock::chat_completion("chatcmpl-mock", model, "mock answer")
        };
        let mut resp = ([("content-type", "application/json")], body.to_string()).into_response();
        // `x-mock-reply-header: name: value` adds that header to the answer.
        if let Some((name, value)) = headers
            .get("x-mock-reply-header")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(": "))
            && let (Ok(n), Ok(v)) = (
                axum::http::HeaderName::try_from(name),
                axum::http::HeaderValue::try_from(value),
            )
        {
            resp.headers_mut().insert(n, v);
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
