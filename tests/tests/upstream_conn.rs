//! Plain-HTTP upstream connections (`host/src/upstream/h1.rs`): the request's task drives them,
//! they are reused, one the upstream closed while idle is replaced without failing a request,
//! and an answer without a body frees its connection too. The upstream here counts the TCP
//! connections it accepts, and closes a connection left idle for `IDLE_CLOSE`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tollgate_tests::*;

/// How long the upstream keeps an idle connection before it closes it.
const IDLE_CLOSE: Duration = Duration::from_millis(300);

struct CountingUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl CountingUpstream {
    /// Answers a JSON chat completion, or `204 No Content` to a request whose path ends in
    /// `/empty`; streams 3 SSE events when the body asks for a stream.
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (a, r) = (accepted.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                a.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| answer(req, r.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        // Closes a connection that sends no new request head for this long.
                        .header_read_timeout(IDLE_CLOSE)
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            accepted,
            requests,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn answer(
    req: http::Request<Incoming>,
    requests: Arc<AtomicUsize>,
) -> Result<http::Response<Full<Bytes>>, hyper::Error> {
    use http_body_util::BodyExt;
    requests.fetch_add(1, Ordering::SeqCst);
    let empty = req.uri().path().ends_with("/empty");
    let body = req.into_body().collect().await?.to_bytes();
    if empty {
        return Ok(http::Response::builder()
            .status(204)
            .body(Full::default())
            .unwrap());
    }
    let stream = serde_json::from_slice::<serde_json::Value>(&body)
        .map(|v| v["stream"] == true)
        .unwrap_or(false);
    let (content_type, body) = if stream {
        let event = r#"{"choices":[{"index":0,"delta":{"content":"w"}}]}"#;
        let events = format!("data: {event}\n\ndata: {event}\n\ndata: {event}\n\ndata: [DONE]\n\n");
        ("text/event-stream", events)
    } else {
        (
            "application/json",
            r#"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#.to_owned(),
        )
    };
    Ok(http::Response::builder()
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap())
}

async fn gateway(upstream: &CountingUpstream) -> TestGateway {
    // One worker: every request below uses the same worker's connections.
    TestGateway::start(&config_yaml(&[upstream.url()], "  workers: 1")).await
}

/// Posts a chat request to `path`; its status (a success) and body.
async fn chat(
    http: &reqwest::Client,
    gw: &TestGateway,
    path: &str,
    stream: bool,
) -> (reqwest::StatusCode, String) {
    let resp = http
        .post(gw.url(path))
        .bearer_auth(CLIENT_KEY)
        .json(&chat_body(stream))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert!(status.is_success(), "{status}: {body}");
    (status, body)
}

#[tokio::test]
async fn one_upstream_connection_carries_every_answer_streamed_or_not() {
    let upstream = CountingUpstream::start().await;
    let gw = gateway(&upstream).await;
    let http = client();
    for i in 0..6 {
        let (_, body) = chat(&http, &gw, "/v1/chat/completions", i % 2 == 1).await;
        if i % 2 == 1 {
            assert_eq!(body.matches("data: ").count(), 4, "{body}");
        } else {
            assert!(body.contains(r#""content":"ok""#), "{body}");
        }
    }
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 6);
    assert_eq!(
        upstream.accepted(),
        1,
        "each answer must give its connection back for the next request"
    );
}

#[tokio::test]
async fn an_answer_without_a_body_frees_its_connection_too() {
    let upstream = CountingUpstream::start().await;
    let gw = gateway(&upstream).await;
    let http = client();
    for _ in 0..3 {
        let (status, _) = chat(&http, &gw, "/v1/empty", false).await;
        assert_eq!(status, 204);
    }
    chat(&http, &gw, "/v1/chat/completions", false).await;
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 4);
    assert_eq!(upstream.accepted(), 1);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_replaced_without_an_error() {
    let upstream = CountingUpstream::start().await;
    let gw = gateway(&upstream).await;
    let http = client();
    for round in 1..=3 {
        chat(&http, &gw, "/v1/chat/completions", false).await;
        chat(&http, &gw, "/v1/chat/completions", true).await;
        assert_eq!(upstream.accepted(), round, "one connection per idle period");
        // The upstream closes the idle connection; the gateway learns it only when it next
        // takes that connection, and must open a new one rather than fail the request.
        tokio::time::sleep(IDLE_CLOSE * 3).await;
    }
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 6);
}
