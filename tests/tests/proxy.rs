//! The proxy end to end: client → gateway → mock upstream, all over loopback HTTP.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate_tests::*;

async fn setup(extra_server: &str) -> (MockUpstream, TestGateway) {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&config_yaml(&[mock.url()], extra_server)).await;
    (mock, gw)
}

fn chat(gw: &TestGateway, stream: bool) -> reqwest::RequestBuilder {
    client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&chat_body(stream))
}

#[tokio::test]
async fn non_streaming_completion_is_proxied_with_the_upstream_credential() {
    let (mock, gw) = setup("").await;
    let resp = chat(&gw, false).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "mock answer");

    let seen = mock.last_headers();
    assert_eq!(
        seen["authorization"],
        format!("Bearer {UPSTREAM_CREDENTIAL}")
    );
    assert!(
        !format!("{seen:?}").contains(CLIENT_KEY),
        "client key leaked upstream: {seen:?}"
    );
    assert_eq!(seen["x-request-id"], request_id.as_str());
    assert_eq!(seen["x-forwarded-proto"], "http");
    let sent: Value =
        serde_json::from_slice(mock.state.last_body.lock().unwrap().as_ref().unwrap()).unwrap();
    assert_eq!(
        sent,
        chat_body(false),
        "body must reach the upstream unchanged"
    );
}

#[tokio::test]
async fn sse_events_arrive_one_by_one_as_the_upstream_sends_them() {
    let (_mock, gw) = setup("").await;
    let start = Instant::now();
    let resp = chat(&gw, true)
        .header("x-mock-events", "4")
        .header("x-mock-delay-ms", "150")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = read_events(resp, start).await.unwrap();
    // role, 4 words, finish, [DONE]: 7 events, 6 gaps of 150 ms.
    assert_eq!(events.len(), 7, "{events:?}");
    assert_eq!(events.last().unwrap().1, "[DONE]");
    assert!(
        events[0].0 < Duration::from_millis(120),
        "first event held back: {:?}",
        events[0].0
    );
    for pair in events.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= Duration::from_millis(100),
            "events coalesced: {:?}",
            events.iter().map(|e| e.0).collect::<Vec<_>>()
        );
    }
}

#[tokio::test]
async fn client_disconnect_mid_stream_cancels_the_upstream_request() {
    let (mock, gw) = setup("").await;
    let resp = chat(&gw, true)
        .header("x-mock-events", "50")
        .header("x-mock-delay-ms", "200")
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    use futures_util::StreamExt;
    stream.next().await.unwrap().unwrap();
    assert_eq!(mock.cancelled(), 0);
    drop(stream);
    assert!(
        eventually(Duration::from_secs(2), || mock.cancelled() == 1).await,
        "upstream stream was not cancelled"
    );
}

#[tokio::test]
async fn client_disconnect_before_the_response_head_cancels_the_upstream_request() {
    let (mock, gw) = setup("").await;
    let fut = chat(&gw, false)
        .header("x-mock-head-delay-ms", "10000")
        .send();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), fut)
            .await
            .is_err()
    );
    assert!(
        eventually(Duration::from_secs(2), || mock.cancelled() == 1).await,
        "pending upstream request was not cancelled"
    );
}

#[tokio::test]
async fn bodies_over_max_body_get_413_whether_declared_or_streamed() {
    let (mock, gw) = setup("  max_body: 1KiB").await;
    let big = serde_json::json!({"model": "m", "pad": "x".repeat(2000)});
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "request_too_large");

    // Chunked, no Content-Length: the limit is enforced while reading.
    assert_eq!(
        post_chunked(&gw, "/v1/chat/completions", "application/json").await,
        413
    );
    // A non-JSON upload streams to the upstream and is cut at the limit too.
    assert_eq!(
        post_chunked(&gw, "/v1/files", "application/octet-stream").await,
        413
    );
    assert_eq!(
        mock.state
            .completed
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// POSTs 2400 bytes in four chunks with no Content-Length.
async fn post_chunked(gw: &TestGateway, path: &str, content_type: &str) -> reqwest::StatusCode {
    let chunks =
        futures_util::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(vec![b' '; 600])));
    client()
        .post(gw.url(path))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", content_type)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn malformed_json_gets_400_in_openai_shape() {
    let (mock, gw) = setup("").await;
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["code"], "invalid_json");
    assert_eq!(mock.requests(), 0);

    // The media type is compared without its parameters: JSON with a charset, in any case, is
    // still parsed (and refused when malformed)...
    for ct in ["application/json; charset=utf-8", "Application/JSON"] {
        let resp = client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .header("content-type", ct)
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{ct}");
    }
    // ...while JSON Lines is another type: not parsed as one JSON document, it is passed on.
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/jsonl")
        .body("{\"a\": 1}\n{\"b\": 2}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.requests(), 1);
}

#[tokio::test]
async fn missing_unknown_and_malformed_keys_get_the_same_401() {
    let (mock, gw) = setup("").await;
    let url = gw.url("/v1/chat/completions");
    let mut bodies = Vec::new();
    for auth in [
        None,
        Some("Bearer sk-wrong-key"),
        Some("Basic abc"),
        Some("Bearer "),
    ] {
        let mut req = client().post(&url).json(&chat_body(false));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{auth:?}");
        assert_eq!(resp.headers()["content-type"], "application/json");
        bodies.push(resp.text().await.unwrap());
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
    let body: Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(mock.requests(), 0);

    let ok = client()
        .post(&url)
        .header("x-api-key", CLIENT_KEY)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn unknown_paths_get_404_in_openai_shape() {
    let (_mock, gw) = setup("").await;
    for path in ["/v2/other", "/admin/api/nothing", "/metrics"] {
        let resp = client()
            .get(gw.url(path))
            .bearer_auth(CLIENT_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unknown_url", "{path}");
    }
}

#[tokio::test]
async fn untrusted_peers_cannot_choose_their_client_ip_but_trusted_proxies_can() {
    let (mock, gw) = setup("  trusted_proxies: [127.0.0.2]").await;
    let spoof = |local: &str| {
        reqwest::Client::builder()
            .local_address(Some(local.parse().unwrap()))
            .build()
            .unwrap()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .header("x-forwarded-for", "203.0.113.50")
            .header("x-real-ip", "203.0.113.51")
            .json(&chat_body(false))
    };
    assert_eq!(spoof("127.0.0.1").send().await.unwrap().status(), 200);
    let seen = mock.last_headers();
    assert_eq!(seen["x-real-ip"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");

    assert_eq!(spoof("127.0.0.2").send().await.unwrap().status(), 200);
    let seen = mock.last_headers();
    assert_eq!(seen["x-real-ip"], "203.0.113.50");
    assert_eq!(seen["x-forwarded-for"], "203.0.113.50, 127.0.0.2");
}

#[tokio::test]
async fn slow_request_heads_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_mock, gw) = setup("  timeouts:\n    client_header: 300ms").await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection still open after 3 s");
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn slow_upstream_head_gets_504() {
    let (_mock, gw) = setup("  timeouts:\n    response_head: 300ms").await;
    let resp = chat(&gw, false)
        .header("x-mock-head-delay-ms", "3000")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_timeout");
}

#[tokio::test]
async fn a_stream_that_goes_silent_is_cut_after_the_idle_timeout() {
    let (mock, gw) = setup("  timeouts:\n    idle: 300ms").await;
    let start = Instant::now();
    let resp = chat(&gw, true)
        .header("x-mock-stall-after", "2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let result = read_events(resp, start).await;
    assert!(
        result.is_err(),
        "a silent upstream must end the client's stream with an error"
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(eventually(Duration::from_secs(2), || mock.cancelled() == 1).await);
}

#[tokio::test]
async fn unreachable_upstream_fails_over_to_the_next_one() {
    let dead = DeadPort::new();
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&config_yaml(&[dead.url(), mock.url()], "")).await;
    let resp = chat(&gw, false).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.requests(), 1);

    // With no live upstream at all the client gets 502 in OpenAI shape.
    let gw = TestGateway::start(&config_yaml(&[dead.url()], "")).await;
    let resp = chat(&gw, false).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_unavailable");
}

#[tokio::test]
async fn upstream_errors_are_relayed_unchanged() {
    let (_mock, gw) = setup("").await;
    let resp = chat(&gw, false)
        .header("x-mock-status", "429")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["message"], "mock error");
}

#[tokio::test]
async fn http2_prior_knowledge_streams_too() {
    let (_mock, gw) = setup("").await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let start = Instant::now();
    let resp = h2
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("x-mock-events", "3")
        .header("x-mock-delay-ms", "100")
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let events = read_events(resp, start).await.unwrap();
    assert_eq!(events.len(), 6);
    assert!(events[1].0 - events[0].0 >= Duration::from_millis(70));
}

#[tokio::test]
async fn graceful_shutdown_lets_an_in_flight_stream_finish_and_refuses_new_connections() {
    let (_mock, mut gw) = setup("").await;
    let start = Instant::now();
    let resp = chat(&gw, true)
        .header("x-mock-events", "6")
        .header("x-mock-delay-ms", "100")
        .send()
        .await
        .unwrap();
    let reader = tokio::spawn(read_events(resp, start));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let addr = gw.addr;
    let stopped = gw.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "new connections must be refused while draining"
    );
    let events = reader.await.unwrap().unwrap();
    assert_eq!(
        events.last().unwrap().1,
        "[DONE]",
        "stream was cut: {events:?}"
    );
    tokio::time::timeout(Duration::from_secs(2), stopped)
        .await
        .expect("server stops after draining")
        .unwrap();
}

/// The whole shutdown sequence over real connections: for `drain_delay` the gateway still
/// accepts and serves while `/ready` answers 503 `draining`; then it stops accepting and an
/// HTTP/2 connection gets GOAWAY (a new stream on it is refused) while its stream in flight goes
/// on; at `shutdown_grace` what is left is cut, and the server stops.
#[tokio::test]
async fn shutdown_says_draining_then_sends_goaway_then_cuts_at_the_grace() {
    let (_mock, mut gw) =
        setup("  timeouts:\n    drain_delay: 800ms\n    shutdown_grace: 800ms\n").await;
    let addr = gw.addr;
    // An HTTP/2 connection with a stream that would take 4 s.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let request = |events: &str| {
        http::Request::post(format!("http://{addr}/v1/chat/completions"))
            .header("authorization", format!("Bearer {CLIENT_KEY}"))
            .header("content-type", "application/json")
            .header("x-mock-events", events)
            .header("x-mock-delay-ms", "100")
            .body(())
            .unwrap()
    };
    let body = bytes::Bytes::from_static(br#"{"model":"m","stream":true,"messages":[]}"#);
    let (resp, mut send) = h2
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(request("40"), false)
        .unwrap();
    send.send_data(body.clone(), true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let reader = tokio::spawn(async move {
        let mut data = resp.into_body();
        let mut text = Vec::new();
        let outcome = loop {
            match data.data().await {
                Some(Ok(chunk)) => {
                    let _ = data.flow_control().release_capacity(chunk.len());
                    text.extend_from_slice(&chunk);
                }
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            }
        };
        (
            outcome,
            String::from_utf8_lossy(&text).into_owned(),
            Instant::now(),
        )
    });

    let (ready_url, chat_url) = (gw.url("/ready"), gw.url("/v1/chat/completions"));
    let t0 = Instant::now();
    let stopped = gw.begin_shutdown();
    // Draining: new connections are still served, and /ready says so.
    let ready = client().get(&ready_url).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["status"], "draining");
    let served = post_chat(&client(), &chat_url, CLIENT_KEY).await;
    assert_eq!(served.status(), 200);
    assert!(
        t0.elapsed() < Duration::from_millis(800),
        "too slow to check the delay"
    );

    // After the delay: no new connection, and GOAWAY on the open one: a new stream is refused.
    assert!(
        eventually_async(Duration::from_secs(3), || async {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await,
        "still accepting after drain_delay"
    );
    assert!(t0.elapsed() >= Duration::from_millis(750));
    let refused = match h2.clone().ready().await {
        Err(e) => Some(e),
        Ok(mut h2) => match h2.send_request(request("1"), true) {
            Err(e) => Some(e),
            Ok((resp, _)) => resp.await.err(),
        },
    };
    let refused = refused.expect("a new stream after GOAWAY was served");
    assert!(
        refused.is_go_away() || refused.reason() == Some(h2::Reason::REFUSED_STREAM),
        "{refused:?}"
    );

    // The stream in flight went on through the delay, and is cut at the grace.
    let (outcome, text, ended) = reader.await.unwrap();
    assert!(outcome.is_err(), "the stream was not cut: {text}");
    assert!(!text.contains("[DONE]"));
    assert!(
        text.matches("data: ").count() >= 10,
        "it stopped early: {text}"
    );
    let at = ended - t0;
    assert!(
        at >= Duration::from_millis(1500) && at < Duration::from_secs(4),
        "cut after {at:?}, expected about 1.6 s (delay + grace)"
    );
    tokio::time::timeout(Duration::from_secs(3), stopped)
        .await
        .expect("the server stops after the grace")
        .unwrap();
}

#[tokio::test]
async fn health_and_ready_answer_without_a_key() {
    let (_mock, gw) = setup("").await;
    let health: Value = client()
        .get(gw.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, serde_json::json!({"status": "ok"}));
    let ready: Value = client()
        .get(gw.url("/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["upstreams"][0]["name"], "u0");
}

#[tokio::test]
async fn a_client_that_stalls_mid_body_gets_408() {
    let (mock, gw) = setup("  timeouts:\n    client_body: 300ms").await;
    let chunks = futures_util::stream::unfold(0, |i| async move {
        match i {
            0 => Some((Ok::<_, std::io::Error>(b"{\"model\":".to_vec()), 1)),
            _ => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                None
            }
        }
    });
    let start = Instant::now();
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 408);
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(mock.requests(), 0);
}

#[tokio::test]
async fn the_request_id_travels_in_the_configured_response_header() {
    // The built-in `request_id` filter: `server.request_id_header` names the header on every
    // answer; the upstream's own value under that name is kept as `x-upstream-request-id`.
    let (mock, gw) = setup("  request_id_header: X-Trace-Id").await;
    let resp = chat(&gw, false)
        .header("x-mock-reply-header", "x-trace-id: upstream-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ours = resp.headers()["x-trace-id"].to_str().unwrap().to_owned();
    assert_eq!(
        ours.len(),
        32,
        "a fresh request id, not the upstream's: {ours}"
    );
    assert_eq!(resp.headers()["x-upstream-request-id"], "upstream-123");
    assert!(!resp.headers().contains_key("x-request-id"));
    // The upstream was told the same id.
    assert_eq!(mock.last_headers()["x-request-id"], ours.as_str());

    // The gateway's own answers carry it too.
    let refused = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let id = refused.headers()["x-trace-id"].to_str().unwrap();
    assert!(id.len() == 32 && id != ours, "{id}");
}

#[tokio::test]
async fn a_request_id_header_that_is_not_a_header_name_is_refused_with_its_path() {
    let yaml = config_yaml(
        &["http://127.0.0.1:9".into()],
        "  request_id_header: \"bad header\"",
    );
    let err = tollgate::Config::parse(&yaml, "c.yaml", Box::new(|_| None))
        .unwrap_err()
        .to_string();
    assert!(err.contains("server.request_id_header"), "{err}");
}

/// docs/limits.md's upstream settings, end to end: `auth_scheme: x-api-key` presents the
/// credential as Anthropic expects, an empty credential sends none (and never the client's key),
/// and a path in the upstream URL is prepended to the request path.
#[tokio::test]
async fn upstream_credentials_and_base_paths_are_presented_as_configured() {
    let mock = MockUpstream::start().await;
    let base = format!("{}/base/path", mock.url().trim_end_matches('/'));
    let yaml = config_yaml(&[mock.url()], "")
        .replacen(
            &format!("credential: {UPSTREAM_CREDENTIAL}\n"),
            &format!("credential: {UPSTREAM_CREDENTIAL}\n    auth_scheme: x-api-key\n"),
            1,
        )
        .replace(
            "routes:\n",
            &format!(
                "  - name: bare\n    url: {base}\n    max_fails: 100\nroutes:\n  - path_prefix: /bare/\n    upstreams: [bare]\n"
            ),
        );
    let gw = TestGateway::start(&yaml).await;

    let resp = chat(&gw, false).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let h = mock.last_headers();
    assert_eq!(h["x-api-key"], UPSTREAM_CREDENTIAL);
    assert!(h.get("authorization").is_none(), "{h:?}");

    let resp = post_chat(
        &client(),
        &gw.url("/bare/v1/chat/completions?x=1"),
        CLIENT_KEY,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let h = mock.last_headers();
    assert!(
        h.get("authorization").is_none() && h.get("x-api-key").is_none(),
        "an empty credential sends none, and never the client's key: {h:?}"
    );
    assert_eq!(
        mock.seen().last().unwrap().1,
        "/base/path/bare/v1/chat/completions?x=1"
    );
}

/// A trusted proxy's `x-request-id` is the request's id (and reaches the upstream); anyone
/// else's is replaced by a new one.
#[tokio::test]
async fn a_trusted_peers_request_id_is_kept_and_anyone_elses_replaced() {
    let (mock, gw) = setup("  trusted_proxies: [127.0.0.2/32]\n").await;
    let send = |local: &'static str| {
        let url = gw.url("/v1/chat/completions");
        async move {
            client_from(local)
                .post(url)
                .bearer_auth(CLIENT_KEY)
                .header("x-request-id", "from-the-proxy-42")
                .json(&chat_body(false))
                .send()
                .await
                .unwrap()
        }
    };
    let trusted = send("127.0.0.2").await;
    assert_eq!(trusted.headers()["x-request-id"], "from-the-proxy-42");
    assert_eq!(mock.last_headers()["x-request-id"], "from-the-proxy-42");
    let untrusted = send("127.0.0.3").await;
    let id = untrusted.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(id, "from-the-proxy-42");
    assert_eq!(id.len(), 32, "a new UUID: {id}");
    assert_eq!(mock.last_headers()["x-request-id"], id.as_str());
}

/// `timeouts.connect`: an upstream whose listener never completes the handshake (its accept
/// queue is full, so the kernel drops the SYN) is given up after the timeout; a replayable
/// request moves on to the next upstream, and with no other it is 502.
#[tokio::test]
async fn an_upstream_that_never_accepts_is_given_up_after_timeouts_connect() {
    // A listener with a backlog of one, filled, and never accepting.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let black_hole = socket.listen(1).unwrap();
    let hole = black_hole.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_millis(200), s.connect(hole)).await {
            fillers.push(c);
        }
    }
    let mock = MockUpstream::start().await;
    let urls = [format!("http://{hole}"), mock.url()];
    let yaml = config_yaml(&urls, "  timeouts:\n    connect: 300ms\n")
        .replace(
            "upstreams: [u0, u1]",
            "upstreams: [u0, u1]\n    max_attempts: 2",
        )
        .replace(
            "routes:\n",
            "routes:\n  - path_prefix: /only-hole/\n    upstreams: [u0]\n",
        );
    let gw = TestGateway::start(&yaml).await;

    let start = Instant::now();
    let resp = chat(&gw, false).send().await.unwrap();
    let took = start.elapsed();
    assert_eq!(resp.status(), 200, "moved on to the next upstream");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "gave up after {took:?}"
    );
    assert_eq!(mock.requests(), 1);

    let start = Instant::now();
    let resp = post_chat(
        &client(),
        &gw.url("/only-hole/v1/chat/completions"),
        CLIENT_KEY,
    )
    .await;
    let took = start.elapsed();
    assert_eq!(resp.status(), 502);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "upstream_unavailable", "{err}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    drop(fillers);
}
