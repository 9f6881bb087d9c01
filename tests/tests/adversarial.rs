//! The gateway tried as an attacker would: raw sockets and hand-made HTTP/2 frames over loopback,
//! against a mock upstream that counts every request it receives.
//!
//! Each test names the defect it guards against (see `docs/limits.md` for every limit and
//! timeout and its default).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_tests::*;

async fn setup(extra_server: &str) -> (MockUpstream, TestGateway) {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&config_yaml(&[mock.url()], extra_server)).await;
    (mock, gw)
}

/// Sends `raw` on a fresh connection and reads until the gateway closes it (or `within` passes).
async fn exchange(gw: &TestGateway, raw: &[u8], within: Duration) -> String {
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(raw).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(within, tcp.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// Whether the peer closed `tcp` within `within` (EOF or reset).
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

fn status_of(response: &str) -> u16 {
    response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP response: {response:?}"))
}

/// The JSON body of the first response in `response`, which must be in the OpenAI error shape.
fn error_code(response: &str) -> String {
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    let len = response
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(body.len());
    let json: Value = serde_json::from_str(&body[..len.min(body.len())])
        .unwrap_or_else(|e| panic!("not JSON ({e}): {response:?}"));
    json["error"]["code"].as_str().unwrap().to_owned()
}

fn post(path: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\n{headers}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const CHAT: &str = r#"{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}"#;

// --- 1. Silent connections, idle connections, per-address cap ---

#[tokio::test]
async fn silent_and_slow_preface_connections_are_closed_while_clients_are_served() {
    // http2 is on (the default): before the fix, protocol detection waited forever.
    let (_mock, gw) = setup("  max_connections: 40\n  timeouts:\n    client_header: 400ms").await;
    let mut sockets = Vec::new();
    for i in 0..30 {
        let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
        match i % 3 {
            0 => {}                                                   // silent
            1 => tcp.write_all(b"P").await.unwrap(),                  // one byte
            _ => tcp.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap(), // part of the h2 preface
        }
        sockets.push(tcp);
    }
    // A legitimate client is served meanwhile (10 slots are left).
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let start = Instant::now();
    for (i, tcp) in sockets.iter_mut().enumerate() {
        assert!(
            closed_within(tcp, Duration::from_secs(3)).await,
            "socket {i} still open"
        );
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

/// `max_connections: 100` and 600 sockets that hold a slot without sending a request head —
/// silent, or a slow HTTP/2 preface — spread over 12 addresses so the per-address cap does not
/// stop them. With `client_header` at its 30 s default nothing times them out; at the cap the
/// listener sheds the oldest of them, so every one of 100 legitimate requests made meanwhile
/// (each on a new connection) is answered within 1 s.
#[tokio::test]
async fn silent_connections_cannot_hold_every_slot() {
    let (_mock, gw) = setup("  max_connections: 100").await;
    let mut holders = Vec::new();
    for i in 0..600u32 {
        let local = format!("127.0.1.{}:0", 1 + i % 12).parse().unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(local).unwrap();
        let mut tcp = socket.connect(gw.addr).await.unwrap();
        if i % 2 == 1 {
            // Half of the preface, then nothing.
            tcp.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        }
        holders.push(tcp);
    }
    let http = client_from("127.0.0.1");
    for n in 0..100 {
        let start = Instant::now();
        let resp = tokio::time::timeout(
            Duration::from_secs(1),
            http.get(gw.url("/health"))
                .header("connection", "close")
                .send(),
        )
        .await
        .unwrap_or_else(|_| panic!("request {n} not answered within 1 s"))
        .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(start.elapsed() < Duration::from_secs(1));
    }
    // The shed sockets were closed, not left open.
    let mut closed = 0;
    for tcp in &mut holders {
        if closed_within(tcp, Duration::from_millis(5)).await {
            closed += 1;
        }
    }
    assert!(closed >= 500, "only {closed} of 600 holders were closed");
}

#[tokio::test]
async fn one_address_cannot_take_more_than_its_share_of_connections() {
    let (_mock, gw) = setup("  max_connections_per_ip: 5").await;
    // Five connections, each served once (so each is surely accepted and counted: the workers
    // accept in parallel, so a connection opened later may otherwise be counted first).
    async fn health_status(tcp: &mut TcpStream) -> [u8; 12] {
        tcp.write_all(b"GET /health HTTP/1.1\r\nhost: gw\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 512];
        let n = tcp.read(&mut head).await.unwrap();
        head[..12.min(n)].try_into().unwrap()
    }
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
        assert_eq!(&health_status(&mut tcp).await, b"HTTP/1.1 200");
        held.push(tcp);
    }
    let mut sixth = TcpStream::connect(gw.addr).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(1), sixth.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the sixth connection from one address is closed at once"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status_of(&answer), 429, "{answer}");
    assert_eq!(error_code(&answer), "connection_limit_exceeded");
    // The five it holds are served as before.
    assert_eq!(&health_status(&mut held[0]).await, b"HTTP/1.1 200");
    // The gateway frees the slot when it sees the close: poll for it, bounded.
    drop(held.pop());
    let freed = eventually_async(Duration::from_secs(2), || async {
        let r = exchange(
            &gw,
            b"GET /health HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
            Duration::from_secs(2),
        )
        .await;
        status_of(&r) == 200
    })
    .await;
    assert!(freed, "a freed slot is not usable");
}

/// Checks that the gateway closes `tcp` no sooner than `at_least` from now, and within 2 s.
async fn closed_after(tcp: &mut TcpStream, at_least: Duration) {
    let start = Instant::now();
    assert!(closed_within(tcp, Duration::from_secs(3)).await);
    let took = start.elapsed();
    assert!(
        took >= at_least && took < Duration::from_secs(2),
        "{took:?}"
    );
}

/// Sends a keep-alive `/health` request on `tcp` and checks the 200.
async fn health_on(tcp: &mut TcpStream) {
    tcp.write_all(b"GET /health HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}

#[tokio::test]
async fn a_later_http1_head_sent_slowly_is_cut_after_client_header() {
    // client_idle stays at its default (60 s): only the head rule can close the connection.
    let (_mock, gw) = setup("  timeouts:\n    client_header: 300ms").await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    health_on(&mut tcp).await;
    // The next head starts, and never ends.
    tcp.write_all(b"GET /health HTTP/1.1\r\nhost: gw\r\n")
        .await
        .unwrap();
    closed_after(&mut tcp, Duration::from_millis(250)).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_kept_past_client_header() {
    // Idle time is client_idle's to bound, not client_header's: a connection that waits 1 s
    // between requests is still served.
    let (_mock, gw) = setup("  timeouts:\n    client_header: 300ms\n    client_idle: 5s").await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    health_on(&mut tcp).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    health_on(&mut tcp).await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_client_idle() {
    let (_mock, gw) = setup("  timeouts:\n    client_idle: 400ms").await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    // The watchdog's first look finds no request yet and plans its next one far away; the
    // request ending must bring the idle deadline forward.
    tokio::time::sleep(Duration::from_millis(100)).await;
    health_on(&mut tcp).await;
    closed_after(&mut tcp, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn idle_http2_connections_get_goaway_after_client_idle() {
    let (_mock, gw) = setup("  timeouts:\n    client_idle: 400ms").await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    // As above: the first look finds no request; the request ending must re-plan.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let req = http::Request::get(format!("http://{}/health", gw.addr))
        .body(())
        .unwrap();
    let (resp, _) = h2.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    let start = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(3), conn).await;
    assert!(ended.is_ok(), "the idle h2 connection was not closed");
    // GOAWAY after client_idle (400 ms) from the end of the request, not before and not at the
    // next routine check.
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_millis(1000),
        "closed after {took:?}"
    );
}

// --- 2. The upstream's `models` restriction ---

async fn restricted() -> (MockUpstream, TestGateway) {
    let mock = MockUpstream::start().await;
    let yaml = config_yaml(&[mock.url()], "").replace(
        "    max_fails: 100\n",
        "    max_fails: 100\n    models: [gpt-allowed]\n",
    );
    (mock, TestGateway::start(&yaml).await)
}

#[tokio::test]
async fn the_models_restriction_holds_whatever_the_content_type_or_framing() {
    let (mock, gw) = restricted().await;
    let body = r#"{"model":"gpt-forbidden","messages":[]}"#;
    for ct in [
        "content-type: text/plain\r\n",
        "",
        "content-type: application/vnd.api+json\r\n",
        "content-type: application/x-www-form-urlencoded\r\n",
    ] {
        let r = exchange(
            &gw,
            &post(
                "/v1/chat/completions",
                &format!("{ct}connection: close\r\n"),
                body,
            ),
            Duration::from_secs(3),
        )
        .await;
        assert_eq!(status_of(&r), 404, "{ct:?}: {r}");
        assert_eq!(error_code(&r), "model_not_found");
    }
    // Chunked, no Content-Type.
    let chunked = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let r = exchange(&gw, chunked.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(status_of(&r), 404, "{r}");
    // A body that names no readable model is refused, not sent to a restricted upstream.
    let r = exchange(
        &gw,
        &post(
            "/v1/chat/completions",
            "content-type: text/plain\r\nconnection: close\r\n",
            "hello",
        ),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status_of(&r), 400, "{r}");
    assert_eq!(error_code(&r), "model_required");
    assert_eq!(mock.requests(), 0, "nothing reached the upstream");

    // The allowed model passes whatever the content type; a bodiless GET names no model.
    let allowed = r#"{"model":"gpt-allowed","messages":[]}"#;
    let r = exchange(
        &gw,
        &post(
            "/v1/chat/completions",
            "content-type: text/plain\r\nconnection: close\r\n",
            allowed,
        ),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status_of(&r), 200, "{r}");
    let resp = client()
        .get(gw.url("/v1/models"))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.requests(), 2);
}

// --- 4. Paths ---

#[tokio::test]
async fn dot_segments_are_resolved_before_routing_and_encoded_slashes_refused() {
    let (mock, gw) = setup("").await;
    for path in [
        "/v1/../restricted/x",
        "/v1/%2e%2e/admin",
        "/v1/%2E%2e/%2e%2e/etc",
    ] {
        let r = exchange(
            &gw,
            &post(path, "connection: close\r\n", CHAT),
            Duration::from_secs(3),
        )
        .await;
        assert_eq!(status_of(&r), 404, "{path}: {r}");
        assert_eq!(error_code(&r), "unknown_url", "{path}");
    }
    for path in ["/v1/..%2f..%2fetc", "/v1/%2fchat", "/v1/%5c..", "/v1/%zz"] {
        let r = exchange(
            &gw,
            &post(path, "connection: close\r\n", CHAT),
            Duration::from_secs(3),
        )
        .await;
        assert_eq!(status_of(&r), 400, "{path}: {r}");
        assert_eq!(error_code(&r), "bad_request", "{path}");
    }
    assert_eq!(mock.requests(), 0);
    // A path that stays under the route is forwarded normalised, query intact.
    let r = exchange(
        &gw,
        &post(
            "/v1/./x/../chat//completions?a=%2e",
            "content-type: application/json\r\nconnection: close\r\n",
            CHAT,
        ),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status_of(&r), 200, "{r}");
    assert_eq!(
        mock.seen(),
        vec![("POST".into(), "/v1/chat/completions?a=%2e".into())]
    );
}

// --- 5. Clients that stop reading ---

#[tokio::test]
async fn a_client_that_stops_reading_a_stream_cancels_the_upstream_generation() {
    let (mock, gw) = setup("  timeouts:\n    client_write: 500ms").await;
    let body = r#"{"model":"gpt-test","stream":true,"messages":[]}"#;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    // 200,000 events: far more than the socket buffers hold, so writes block.
    tcp.write_all(&post(
        "/v1/chat/completions",
        "content-type: application/json\r\nx-mock-events: 200000\r\n",
        body,
    ))
    .await
    .unwrap();
    // Read nothing. The socket buffers fill within milliseconds; then client_write (500 ms)
    // runs, checked every quarter of it.
    let start = Instant::now();
    assert!(
        eventually(Duration::from_secs(8), || mock.cancelled() == 1).await,
        "the upstream stream was not cancelled (cancelled={}, completed={})",
        mock.cancelled(),
        mock.state
            .completed
            .load(std::sync::atomic::Ordering::SeqCst)
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(2500),
        "cancelled after {took:?}"
    );
    drop(tcp);
}

#[tokio::test]
async fn http2_streams_with_a_zero_window_are_cancelled_upstream() {
    let (mock, gw) = setup("  timeouts:\n    client_write: 500ms").await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut h2, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(conn);
    let body = bytes::Bytes::from_static(br#"{"model":"gpt-test","stream":true,"messages":[]}"#);
    let mut pending = Vec::new();
    for _ in 0..20 {
        let req = http::Request::post(format!("http://{}/v1/chat/completions", gw.addr))
            .header("authorization", format!("Bearer {CLIENT_KEY}"))
            .header("content-type", "application/json")
            .header("x-mock-events", "1000")
            .header("x-mock-delay-ms", "10")
            .body(())
            .unwrap();
        let mut h2c = h2.clone().ready().await.unwrap();
        let (resp, mut send) = h2c.send_request(req, false).unwrap();
        send.send_data(body.clone(), true).unwrap();
        pending.push(resp);
        h2 = h2c;
    }
    // The heads arrive (headers are not flow-controlled); the bodies never can.
    for resp in pending.iter_mut() {
        let r = tokio::time::timeout(Duration::from_secs(5), resp)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let heads = Instant::now();
    assert!(
        eventually(Duration::from_secs(8), || mock.cancelled() == 20).await,
        "upstream streams still open: cancelled {} of 20",
        mock.cancelled()
    );
    // Each after client_write (500 ms) without progress, checked every quarter of it.
    let took = heads.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(2500),
        "cancelled after {took:?}"
    );
    assert_eq!(mock.completed(), 0, "a zero-window stream ran to its end");
}

// --- 7. Header limits, error bodies, methods, framing ---

#[tokio::test]
async fn oversized_headers_get_431_in_openai_shape_and_never_reach_the_upstream() {
    let (mock, gw) = setup("").await;
    // One header over max_header_size (8 KiB) but the head under max_head_size (32 KiB).
    let big = "a".repeat(20 << 10);
    let r = exchange(
        &gw,
        &post(
            "/v1/chat/completions",
            &format!("x-big: {big}\r\nconnection: close\r\n"),
            CHAT,
        ),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status_of(&r), 431, "{}", &r[..r.len().min(200)]);
    assert_eq!(error_code(&r), "request_header_fields_too_large");
    // A head over max_head_size: hyper refuses it; the answer still has the JSON shape.
    let huge = "a".repeat(100 << 10);
    let r = exchange(
        &gw,
        &post("/v1/chat/completions", &format!("x-big: {huge}\r\n"), CHAT),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status_of(&r), 431, "{}", &r[..r.len().min(200)]);
    assert_eq!(error_code(&r), "request_header_fields_too_large");
    assert_eq!(mock.requests(), 0);
}

#[tokio::test]
async fn parser_level_errors_have_json_bodies() {
    let (_mock, gw) = setup("").await;
    let r = exchange(
        &gw,
        b"GET /v1/models HTTP/1.1\r\nhost gw\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status_of(&r), 400, "{r}");
    assert_eq!(error_code(&r), "bad_request");
    let long = format!(
        "GET /v1/{} HTTP/1.1\r\nhost: gw\r\n\r\n",
        "a".repeat(70_000)
    );
    let r = exchange(&gw, long.as_bytes(), Duration::from_secs(3)).await;
    assert!(
        matches!(status_of(&r), 414 | 431),
        "{}",
        &r[..r.len().min(200)]
    );
    error_code(&r);
    // 405 from the gateway's own endpoints, and from a route.
    let r = exchange(
        &gw,
        b"POST /health HTTP/1.1\r\nhost: gw\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status_of(&r), 405, "{r}");
    assert_eq!(error_code(&r), "method_not_allowed");
}

/// Every answer hyper writes for a head it refuses, before the pipeline runs, carries the JSON
/// body *and* the configured security headers (docs/limits.md promises them on every data-plane
/// answer). Each case names what the attacker sends.
#[tokio::test]
async fn answers_to_malformed_heads_carry_the_security_headers() {
    let (mock, gw) = setup(
        "  response_headers:\n    set: {x-frame-options: DENY, x-test-stamp: on-every-answer}\n",
    )
    .await;
    let big = "a".repeat(64 << 10);
    let many: String = (0..101).map(|i| format!("x-h{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "a 64 KiB header",
            post("/v1/chat/completions", &format!("x-big: {big}\r\n"), CHAT),
            431,
        ),
        (
            "101 headers",
            post("/v1/chat/completions", &many, CHAT),
            431,
        ),
        (
            "a 70 KiB URI",
            format!(
                "GET /v1/{} HTTP/1.1\r\nhost: gw\r\n\r\n",
                "a".repeat(70 << 10)
            )
            .into_bytes(),
            431,
        ),
        (
            "two Content-Lengths",
            post("/v1/chat/completions", "content-length: 3\r\n", CHAT),
            400,
        ),
        (
            "a NUL in a value",
            b"GET /v1/models HTTP/1.1\r\nhost: gw\r\nx-a: a\0b\r\n\r\n".to_vec(),
            400,
        ),
        (
            "HTTP/1.2",
            b"GET /v1/models HTTP/1.2\r\nhost: gw\r\n\r\n".to_vec(),
            400,
        ),
        (
            "Transfer-Encoding: gzip",
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: gzip\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            "a non-UTF-8 path",
            b"GET /v1/\xff\xfe HTTP/1.1\r\nhost: gw\r\n\r\n".to_vec(),
            400,
        ),
        (
            "a header without a colon",
            b"GET /v1/models HTTP/1.1\r\nhost gw\r\n\r\n".to_vec(),
            400,
        ),
    ];
    for (what, raw, status) in cases {
        let r = exchange(&gw, &raw, Duration::from_secs(3)).await;
        let head = r.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
        let got = status_of(&r);
        assert!(
            got == status || (status == 431 && got == 414),
            "{what}: {}",
            &r[..r.len().min(300)]
        );
        error_code(&r);
        for line in [
            "x-test-stamp: on-every-answer",
            "x-frame-options: deny",
            "content-type: application/json",
        ] {
            assert!(head.contains(line), "{what}: no {line}: {head}");
        }
    }
    assert_eq!(mock.requests(), 0);
}

/// A request for no route is refused (404) before any route's filters run; an allowed origin
/// still gets `Access-Control-Allow-Origin`, so the browser can read the error.
#[tokio::test]
async fn an_unrouted_404_carries_cors_for_an_allowed_origin() {
    let (_mock, gw) = setup("  cors:\n    allow_origins: [https://app.example]\n").await;
    let get = |origin: &'static str| {
        let url = gw.url("/nowhere");
        async move {
            client()
                .get(url)
                .header("origin", origin)
                .send()
                .await
                .unwrap()
        }
    };
    let allowed = get("https://app.example").await;
    assert_eq!(allowed.status(), 404);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(allowed.headers()["vary"], "Origin");
    let other = get("https://evil.example").await;
    assert_eq!(other.status(), 404);
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn methods_a_route_does_not_list_get_405_with_allow() {
    let (mock, gw) = setup("").await;
    for method in ["TRACE", "PUT", "PATCH", "FOO"] {
        let raw = format!(
            "{method} /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        let r = exchange(&gw, raw.as_bytes(), Duration::from_secs(3)).await;
        assert_eq!(status_of(&r), 405, "{method}: {r}");
        assert!(
            r.to_ascii_lowercase()
                .contains("allow: get, post, head, options, delete")
        );
        assert_eq!(error_code(&r), "method_not_allowed");
    }
    assert_eq!(mock.requests(), 0);
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_are_refused() {
    let (mock, gw) = setup("").await;
    for te in [
        "gzip, chunked",
        "identity, chunked",
        "chunked, chunked",
        "x-custom, chunked",
    ] {
        let raw = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\ncontent-type: application/json\r\ntransfer-encoding: {te}\r\nconnection: close\r\n\r\n{:x}\r\n{CHAT}\r\n0\r\n\r\n",
            CHAT.len()
        );
        let r = exchange(&gw, raw.as_bytes(), Duration::from_secs(3)).await;
        assert_eq!(status_of(&r), 400, "{te}: {r}");
        error_code(&r);
    }
    assert_eq!(mock.requests(), 0);
    // Plain chunked passes, and the upstream never sees both framings.
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{CHAT}\r\n0\r\n\r\n",
        CHAT.len()
    );
    let r = exchange(&gw, raw.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(status_of(&r), 200, "{r}");
    let seen = mock.last_headers();
    assert!(
        !(seen.contains_key("transfer-encoding") && seen.contains_key("content-length")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_body_trickled_under_the_idle_limit_is_cut() {
    let (mock, gw) = setup("  min_body_rate: 1KiB\n  timeouts:\n    client_body: 1s").await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        CHAT.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let start = Instant::now();
    let mut answer = Vec::new();
    // One byte every 400 ms: never idle for 1 s, but far under 1 KiB/s.
    for b in CHAT.bytes() {
        if tcp.write_all(&[b]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(400), tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            Ok(_) => break,
            Err(_) => {}
        }
        assert!(start.elapsed() < Duration::from_secs(6), "body never cut");
    }
    let r = String::from_utf8_lossy(&answer);
    assert_eq!(status_of(&r), 408, "{r}");
    assert_eq!(mock.requests(), 0);
}

#[tokio::test]
async fn echoed_values_are_truncated() {
    let mock = MockUpstream::start().await;
    let yaml = config_yaml(&[mock.url()], "").replace(
        "    max_fails: 100\n",
        "    max_fails: 100\n    models: [gpt-allowed]\n",
    );
    let gw = TestGateway::start(&yaml).await;
    let model = "m".repeat(900 << 10);
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&serde_json::json!({"model": model, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let text = resp.text().await.unwrap();
    assert!(text.len() < 2048, "{} bytes echoed", text.len());
}

#[tokio::test]
async fn forwarded_for_lines_reach_the_upstream_as_the_list_the_client_ip_was_read_from() {
    let (mock, gw) = setup("  trusted_proxies: [\"127.0.0.1\"]").await;
    let r = exchange(
        &gw,
        &post(
            "/v1/chat/completions",
            "content-type: application/json\r\nx-forwarded-for: 203.0.113.9\r\nx-forwarded-for: 198.51.100.7:4711\r\nconnection: close\r\n",
            CHAT,
        ),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status_of(&r), 200, "{r}");
    let seen = mock.last_headers();
    assert_eq!(seen["x-real-ip"], "198.51.100.7");
    assert_eq!(
        seen["x-forwarded-for"],
        "203.0.113.9, 198.51.100.7:4711, 127.0.0.1"
    );
}

#[tokio::test]
async fn http11_requests_need_one_host() {
    let (mock, gw) = setup("").await;
    let no_host = format!(
        "GET /v1/models HTTP/1.1\r\nauthorization: Bearer {CLIENT_KEY}\r\nconnection: close\r\n\r\n"
    );
    let r = exchange(&gw, no_host.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(status_of(&r), 400, "{r}");
    let two = format!(
        "GET /v1/models HTTP/1.1\r\nhost: a\r\nhost: b\r\nauthorization: Bearer {CLIENT_KEY}\r\nconnection: close\r\n\r\n"
    );
    let r = exchange(&gw, two.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(status_of(&r), 400, "{r}");
    assert_eq!(mock.requests(), 0);
}

// --- 8. HTTP/2 abuse ---

#[tokio::test]
async fn http2_host_must_match_authority() {
    let (mock, gw) = setup("").await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/v1/models", gw.addr))
        .header("host", "evil.example")
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .body(())
        .unwrap();
    let (resp, _) = h2.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 400);
    assert_eq!(mock.requests(), 0);
}

/// Underscore spellings of the headers the gateway manages never reach the upstream (a WSGI or
/// CGI server would read `X_Forwarded_For` as `X-Forwarded-For`), nor values past ASCII unless
/// `allow_obs_text`; an HTTP/2 `:authority` with userinfo is refused.
#[tokio::test]
async fn underscore_aliases_and_obs_text_never_reach_the_upstream() {
    let (mock, gw) = setup("").await;
    // `café` as UTF-8: two bytes past ASCII.
    let request = post(
        "/v1/chat/completions",
        "x_forwarded_for: 6.6.6.6\r\nx_real_ip: 6.6.6.6\r\ntransfer_encoding: chunked\r\ncontent_length: 1\r\nx_request_id: forged\r\nopenai_beta: kept\r\nx-latin1: café\r\nconnection: close\r\n",
        CHAT,
    );
    let r = exchange(&gw, &request, Duration::from_secs(3)).await;
    assert_eq!(status_of(&r), 200, "{r}");
    let h = mock.last_headers();
    for gone in [
        "x_forwarded_for",
        "x_real_ip",
        "transfer_encoding",
        "content_length",
        "x_request_id",
        "x-latin1",
    ] {
        assert!(!h.contains_key(gone), "{gone} reached the upstream: {h:?}");
    }
    assert_eq!(h["openai_beta"], "kept");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");

    // With allow_obs_text, the value crosses as it came.
    let (mock, gw) = setup("  allow_obs_text: true").await;
    let r = exchange(&gw, &request, Duration::from_secs(3)).await;
    assert_eq!(status_of(&r), 200, "{r}");
    assert_eq!(
        mock.last_headers()["x-latin1"].as_bytes(),
        "café".as_bytes()
    );

    // HTTP/2 with `user@host` as :authority.
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://admin:pw@{}/v1/models", gw.addr))
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .body(())
        .unwrap();
    let (resp, _) = h2.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 400);
    assert_eq!(mock.requests(), 1, "only the HTTP/1 request above");
}

/// `http2_max_streams` is what the gateway advertises (SETTINGS_MAX_CONCURRENT_STREAMS), and a
/// client is held to it: with 3 allowed and 3 streams open, a fourth waits for one to end.
/// (A client that ignores the setting gets REFUSED_STREAM from hyper's h2; the `h2` crate used
/// here cannot be made to ignore it.)
#[tokio::test]
async fn http2_max_streams_is_advertised_and_held() {
    let (_mock, gw) = setup("  http2_max_streams: 3").await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut h2 = h2.ready().await.unwrap();
    let stream =
        |h2: &mut h2::client::SendRequest<bytes::Bytes>| h2_chat_stream(h2, gw.addr, 20, 50);
    // The first answer's head: the server's SETTINGS have arrived by then.
    let first = stream(&mut h2).await.unwrap();
    assert_eq!(h2.current_max_send_streams(), 3, "the advertised limit");
    let mut open = Vec::new();
    for _ in 0..2 {
        h2 = h2.ready().await.unwrap();
        open.push(stream(&mut h2));
    }
    // A fourth stream waits (the client holds it back) while three are open (~1 s each)…
    h2 = h2.ready().await.unwrap();
    let mut fourth = Box::pin(stream(&mut h2));
    let early = tokio::time::timeout(Duration::from_millis(300), &mut fourth).await;
    assert!(
        early.is_err(),
        "a fourth stream was answered while three were open"
    );
    // …and goes when one ends.
    let mut body = first.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let answered = tokio::time::timeout(Duration::from_secs(3), fourth).await;
    assert_eq!(answered.expect("never answered").unwrap().status(), 200);
}

#[tokio::test]
async fn http2_clients_that_cancel_accepted_streams_get_goaway() {
    let (mock, gw) = setup("  http2_max_cancels: 50").await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut h2 = h2;
    let mut sent = 0;
    let start = Instant::now();
    // HEADERS + body, then RST_STREAM(CANCEL) once the gateway has accepted the stream.
    while start.elapsed() < Duration::from_secs(10) {
        let Ok(ready) = h2.clone().ready().await else {
            break;
        };
        h2 = ready;
        let req = http::Request::post(format!("http://{}/v1/chat/completions", gw.addr))
            .header("authorization", format!("Bearer {CLIENT_KEY}"))
            .header("content-type", "application/json")
            .header("x-mock-head-delay-ms", "1000")
            .body(())
            .unwrap();
        let Ok((resp, mut body)) = h2.send_request(req, false) else {
            break;
        };
        let _ = body.send_data(bytes::Bytes::from_static(CHAT.as_bytes()), true);
        tokio::time::sleep(Duration::from_millis(5)).await;
        body.send_reset(h2::Reason::CANCEL);
        drop(resp);
        sent += 1;
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    eprintln!(
        "GOAWAY after {sent} cancelled streams; {} reached the upstream",
        mock.requests()
    );
    assert!(
        ended.is_ok(),
        "connection still open after {sent} cancelled streams"
    );
    assert!(sent < 500, "{sent} streams were accepted before GOAWAY");
    // The budget of 50, refilled at 5 a second while the loop ran, plus the one stream in
    // flight when it ran out.
    let bound = 50 + (5.0 * start.elapsed().as_secs_f64()).ceil() as usize + 1;
    assert!(
        mock.requests() <= bound,
        "{} requests reached the upstream (bound {bound})",
        mock.requests()
    );
}

/// The same attack in batches: a whole `http2_max_streams` of HEADERS at once, then a reset of
/// each, again and again. Streams are accepted before their cancels are counted, so one batch
/// past the budget may reach the upstream — no more: once the budget is spent, new streams are
/// answered at once (503) without reaching an upstream, and the connection gets GOAWAY.
#[tokio::test]
async fn http2_batches_of_cancelled_streams_reach_the_upstream_at_most_one_batch_past_the_budget() {
    let (mock, gw) = setup("  http2_max_cancels: 50\n  http2_max_streams: 40").await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let start = Instant::now();
    let mut sent = 0;
    'attack: for _ in 0..20 {
        let mut batch = Vec::new();
        for _ in 0..40 {
            let Ok(ready) = h2.clone().ready().await else {
                break 'attack;
            };
            h2 = ready;
            let req = http::Request::post(format!("http://{}/v1/chat/completions", gw.addr))
                .header("authorization", format!("Bearer {CLIENT_KEY}"))
                .header("content-type", "application/json")
                .header("x-mock-head-delay-ms", "2000")
                .body(())
                .unwrap();
            let Ok((resp, mut body)) = h2.send_request(req, false) else {
                break 'attack;
            };
            let _ = body.send_data(bytes::Bytes::from_static(CHAT.as_bytes()), true);
            batch.push((resp, body));
            sent += 1;
        }
        // Let the gateway accept and forward the batch, then cancel all of it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for (resp, mut body) in batch {
            body.send_reset(h2::Reason::CANCEL);
            drop(resp);
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "connection still open after {sent} streams");
    let refill = (5.0 * start.elapsed().as_secs_f64()).ceil() as usize;
    let bound = 50 + 40 + refill;
    assert!(
        mock.requests() <= bound,
        "{} of {sent} streams reached the upstream (bound: 50 cancels + one batch of 40 + {refill} refilled)",
        mock.requests()
    );
}

// --- 10. Smuggling ---

/// Transfer-Encoding spellings that must never make the gateway read a body differently from a
/// server behind it.
const TE_MUTATIONS: [&str; 32] = [
    "Transfer-Encoding: chunked",
    "Transfer-Encoding : chunked",
    "Transfer-Encoding:chunked",
    "Transfer-Encoding: xchunked",
    "Transfer-Encoding: chunked ",
    "Transfer-Encoding:\tchunked",
    "Transfer-Encoding: CHUNKED",
    "Transfer-Encoding: chunked, identity",
    "Transfer-Encoding: identity, chunked",
    "Transfer-Encoding: gzip, chunked",
    "Transfer-Encoding: chunked\r\nTransfer-Encoding: x",
    "Transfer-Encoding: x\r\nTransfer-Encoding: chunked",
    "Transfer-Encoding: \"chunked\"",
    "Transfer-Encoding: chunk",
    "Transfer-Encoding: chunked;q=1",
    "Transfer-Encoding:\x0bchunked",
    "Transfer-Encoding:\x0cchunked",
    " Transfer-Encoding: chunked",
    "Transfer-Encoding\r\n : chunked",
    "X: y\r\nTransfer-Encoding: chunked",
    "Transfer_Encoding: chunked",
    "Transfer-Encoding: chu\x00nked",
    "Transfer-Encoding: chunked\r\n\tx",
    "Transfer-encoding: cHuNkEd",
    "TRANSFER-ENCODING: chunked",
    "Transfer-Encoding: ,chunked",
    "Transfer-Encoding: chunked,",
    "Transfer-Encoding: chunked\x00",
    "Transfer-Encoding: \r\n chunked",
    "Transfer-Encoding:  chunked",
    "Transfer-Encoding: identity",
    "Transfer-Encoding: chunked, chunked",
];

/// The statuses of every response head in what one connection received, in order.
fn response_statuses(answer: &str) -> Vec<u16> {
    answer
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| answer.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// Every framing trick, each followed by a second request that carries a valid key, so a
/// request the gateway carved out of another's body would be served and reach the upstream.
///
/// Where the framing is ambiguous (Content-Length with any Transfer-Encoding spelling, two
/// Content-Lengths, HTTP/1.0 with chunked, NUL or CR in a value, obs-fold, an early answer with
/// the body unread), the connection gets exactly one answer — the first request's, or a 400 —
/// and is closed: nothing after it is read as a request. Where it is not (`Transfer_Encoding` is
/// just another header, as for nginx; bare-LF line ends; an `Upgrade` the gateway does not
/// perform), the bytes after the first request are the client's own pipelined request, answered
/// second, with the same key: nothing is carved out of a body.
#[tokio::test]
async fn content_length_and_transfer_encoding_mutations_smuggle_nothing() {
    let (mock, gw) = setup("").await;
    let smuggled = format!(
        "GET /v1/smuggled HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\n\r\n"
    );
    // (what, raw, answers expected on the connection)
    let mut cases: Vec<(String, String, usize)> = TE_MUTATIONS
        .iter()
        .map(|te| {
            // As chunked the body ends at "0\r\n\r\n" and the smuggled request follows; as
            // Content-Length: 4 the split is elsewhere.
            let raw = format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\ncontent-type: application/json\r\ncontent-length: 4\r\n{te}\r\n\r\n0\r\n\r\n{smuggled}"
            );
            let pipelined = if te.starts_with("Transfer_Encoding") { 2 } else { 1 };
            ((*te).to_owned(), raw, pipelined)
        })
        .collect();
    let others = [
        (
            "two Content-Lengths",
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\ncontent-length: 4\r\ncontent-length: 40\r\n\r\nABCD{smuggled}"
            ),
            1,
        ),
        (
            "HTTP/1.0 with chunked",
            format!(
                "POST /v1/chat/completions HTTP/1.0\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            1,
        ),
        (
            "bare LF line ends",
            format!(
                "POST /v1/chat/completions HTTP/1.1\nhost: gw\nauthorization: Bearer {CLIENT_KEY}\ncontent-length: 0\n\n{smuggled}"
            ),
            2,
        ),
        (
            "NUL in a value",
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nx: a\0b\r\ncontent-length: 0\r\n\r\n{smuggled}"
            ),
            1,
        ),
        (
            "CR in a value",
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nx: a\rb\r\ncontent-length: 0\r\n\r\n{smuggled}"
            ),
            1,
        ),
        (
            "obs-fold in Content-Length",
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-length:\r\n 4\r\n\r\nABCD{smuggled}"
            ),
            1,
        ),
        (
            "Upgrade, then a pipelined request",
            format!(
                "GET /v1/models HTTP/1.1\r\nhost: gw\r\nconnection: upgrade\r\nupgrade: websocket\r\nauthorization: Bearer {CLIENT_KEY}\r\n\r\n{smuggled}"
            ),
            2,
        ),
        // An early 401 with the body unread: the smuggled request *is* the body.
        (
            "early 401, body unread",
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
            1,
        ),
    ];
    cases.extend(others.into_iter().map(|(w, r, n)| (w.to_owned(), r, n)));
    for (what, raw, expected) in &cases {
        let before = mock
            .seen()
            .iter()
            .filter(|(_, p)| p.contains("smuggled"))
            .count();
        let answer = exchange(&gw, raw.as_bytes(), Duration::from_millis(800)).await;
        let statuses = response_statuses(&answer);
        let reached = mock
            .seen()
            .iter()
            .filter(|(_, p)| p.contains("smuggled"))
            .count()
            - before;
        assert_eq!(
            statuses.len(),
            *expected,
            "{what:?}: answers {statuses:?}\n{answer}"
        );
        if *expected == 1 {
            assert_eq!(
                reached, 0,
                "{what:?}: a request carved out of a body reached the upstream"
            );
        } else {
            // The pipelined request was served as itself: a GET without a body, answered second.
            assert_eq!((reached, statuses[1]), (1, 200), "{what:?}: {statuses:?}");
        }
    }
}

/// `max_connections`: a connection with a request in flight is never shed, so with every slot
/// busy, connections past the cap are not served until one of those being served ends (they
/// wait, and are then served normally).
#[tokio::test]
async fn connections_past_max_connections_wait_until_one_ends() {
    let (_mock, gw) = setup("  max_connections: 2").await;
    // Two connections, each with a stream of about 1 s; each client (and so its connection)
    // goes away when its stream ends.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let resp = gw.stream(10, 100).await;
        assert_eq!(resp.status(), 200);
        streams.push(tokio::spawn(async move {
            resp.bytes().await.unwrap();
            Instant::now()
        }));
    }
    let start = Instant::now();
    let third = tokio::time::timeout(
        Duration::from_secs(5),
        client().get(gw.url("/health")).send(),
    )
    .await
    .expect("the waiting connection was never served")
    .unwrap();
    let answered = Instant::now();
    assert_eq!(third.status(), 200);
    let first_end = futures_util::future::join_all(streams)
        .await
        .into_iter()
        .map(Result::unwrap)
        .min()
        .unwrap();
    assert!(
        answered >= first_end,
        "served after {:?}, while both slots were busy",
        answered - start
    );
}
