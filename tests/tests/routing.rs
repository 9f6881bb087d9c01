//! Routing and upstream selection as `docs/pipeline.md` documents them, end to end: the longest
//! `path_prefix` wins, passive health (`max_fails`/`fail_timeout`) takes a failing upstream out
//! and healthy ones go first, a connect failure moves on only with a replayable body, and
//! `max_attempts` bounds the tries; the weighted and latency routers, through the gateway.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate_tests::*;

async fn code_of(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test]
async fn the_longest_matching_prefix_picks_the_route_whatever_the_order() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    // The shorter prefix is listed first: a first-match router would send everything to u0.
    let yaml = config_yaml(&[a.url(), b.url()], "").replace(
        "routes:\n  - path_prefix: /v1/\n    upstreams: [u0, u1]\n",
        "routes:\n  - path_prefix: /v1/\n    upstreams: [u0]\n  - path_prefix: /v1/chat/\n    upstreams: [u1]\n",
    );
    let gw = TestGateway::start(&yaml).await;
    assert_eq!(gw.chat().await.status(), 200);
    assert_eq!((a.requests(), b.requests()), (0, 1), "/v1/chat/… is u1's");
    let resp = client()
        .post(gw.url("/v1/embeddings"))
        .bearer_auth(CLIENT_KEY)
        .json(&serde_json::json!({"model": "m", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        (a.requests(), b.requests()),
        (1, 1),
        "/v1/embeddings is u0's"
    );
    // A prefix must match whole segments' text as written: `/v1/chatty` is not `/v1/chat/`.
    assert_eq!(gw.chat_at("/v1/chatty").await.status(), 200);
    assert_eq!((a.requests(), b.requests()), (2, 1));
    // No prefix at all: 404 unknown_url, and no upstream is asked.
    let resp = gw.chat_at("/v2/chat/completions").await;
    assert_eq!(code_of(resp).await, (404, "unknown_url".into()));
    assert_eq!((a.requests(), b.requests()), (2, 1));
}

#[tokio::test]
async fn passive_health_takes_a_failing_upstream_out_for_fail_timeout_and_healthy_ones_go_first() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let yaml = config_yaml(&[a.url(), b.url()], "").replacen(
        "max_fails: 100\n",
        "max_fails: 2\n    fail_timeout: 1s\n",
        1,
    );
    let gw = TestGateway::start(&yaml).await;
    // u0 is first in the route; healthy, it serves.
    assert_eq!(gw.chat().await.status(), 200);
    assert_eq!((a.requests(), b.requests()), (1, 0));
    // u0 starts failing: its 5xx reach the client (it was asked; no retry of a sent request),
    // and count against it.
    a.state
        .force_status
        .store(503, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..2 {
        assert_eq!(gw.chat().await.status(), 503);
    }
    assert_eq!(a.requests(), 3);
    // Two in a row: u0 is out, and u1 (healthy) goes first.
    let u0 = || gw.gateway.runtime().upstreams[0].is_healthy();
    assert!(!u0());
    let out_at = Instant::now();
    for _ in 0..3 {
        assert_eq!(gw.chat().await.status(), 200);
    }
    assert_eq!(
        (a.requests(), b.requests()),
        (3, 3),
        "u0 was asked while out"
    );
    // After fail_timeout it is tried again: back in first place, it serves once it works.
    a.state
        .force_status
        .store(0, std::sync::atomic::Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(3), u0).await,
        "u0 never came back"
    );
    assert!(
        out_at.elapsed() >= Duration::from_millis(900),
        "back after {:?}, before fail_timeout",
        out_at.elapsed()
    );
    assert_eq!(gw.chat().await.status(), 200);
    assert_eq!((a.requests(), b.requests()), (4, 3));
}

#[tokio::test]
async fn a_connect_failure_moves_on_only_with_a_replayable_body_and_within_max_attempts() {
    let b = MockUpstream::start().await;
    let (dead1, dead2) = (DeadPort::new(), DeadPort::new());
    let yaml = |attempts: u32| {
        config_yaml(&[dead1.url(), dead2.url(), b.url()], "").replace(
            "    upstreams: [u0, u1, u2]\n",
            &format!("    upstreams: [u0, u1, u2]\n    max_attempts: {attempts}\n"),
        )
    };
    // Three attempts reach the live upstream past two dead ones.
    let gw = TestGateway::start(&yaml(3)).await;
    assert_eq!(gw.chat().await.status(), 200);
    assert_eq!(b.requests(), 1);
    // Two attempts do not: both fail to connect, and the client gets 502.
    let gw2 = TestGateway::start(&yaml(2)).await;
    assert_eq!(
        code_of(gw2.chat().await).await,
        (502, "upstream_unavailable".into())
    );
    assert_eq!(b.requests(), 1, "a third attempt was made");
    // A body streamed through (not JSON, so not buffered) cannot be sent twice: the first
    // connect failure is final, whatever max_attempts allows.
    let chunks = futures_util::stream::iter(
        ["a stream", " of bytes"].map(|c| Ok::<_, std::io::Error>(bytes::Bytes::from(c))),
    );
    let resp = client()
        .post(gw.url("/v1/audio/transcriptions"))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(resp).await, (502, "upstream_unavailable".into()));
    assert_eq!(b.requests(), 1, "a non-replayable body was retried");
}

#[tokio::test]
async fn the_weighted_router_spreads_requests_by_the_upstreams_weights() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let yaml = policy_config_yaml(
        &[a.url(), b.url()],
        &[PluginDef {
            name: "w",
            kind: "router",
            wasm: "tollgate_weighted",
            config: "{}",
            on_error: "deny",
        }],
        &["w"],
    )
    .replacen("max_fails: 100\n", "max_fails: 100\n    weight: 3\n", 1);
    let gw = TestGateway::start(&yaml).await;
    for _ in 0..8 {
        assert_eq!(gw.chat().await.status(), 200);
    }
    assert_eq!((a.requests(), b.requests()), (6, 2), "weights 3 and 1");
}

#[tokio::test]
async fn the_latency_router_sends_traffic_to_the_faster_upstream_once_both_are_measured() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.state
        .head_delay_ms
        .store(60, std::sync::atomic::Ordering::SeqCst);
    let yaml = policy_config_yaml(
        &[a.url(), b.url()],
        &[PluginDef {
            name: "l",
            kind: "router",
            wasm: "tollgate_latency",
            config: "{}",
            on_error: "deny",
        }],
        &["l"],
    );
    let gw = TestGateway::start(&yaml).await;
    // Unmeasured upstreams count as fastest: each is tried once, then the fast one takes all.
    for _ in 0..12 {
        assert_eq!(gw.chat().await.status(), 200);
    }
    assert_eq!((a.requests(), b.requests()), (1, 11));
}

/// `upstreams[].models` decides which upstreams may serve a request; a model none serves is
/// answered 404 `model_not_found` by the gateway, with the name echoed (cut to 256 characters),
/// and no upstream is asked.
#[tokio::test]
async fn a_model_goes_to_the_upstreams_that_serve_it_and_an_unknown_one_is_404_model_not_found() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let yaml = config_yaml(&[a.url(), b.url()], "")
        .replacen("max_fails: 100\n", "max_fails: 100\n    models: [gpt-a]\n", 1)
        .replace(
            &format!("url: {}\n    credential: {UPSTREAM_CREDENTIAL}\n    max_fails: 100\n", b.url()),
            &format!(
                "url: {}\n    credential: {UPSTREAM_CREDENTIAL}\n    max_fails: 100\n    models: [gpt-b, gpt-c]\n",
                b.url()
            ),
        );
    let gw = TestGateway::start(&yaml).await;
    let ask = |model: String| {
        let gw = &gw;
        async move {
            client()
                .post(gw.url("/v1/chat/completions"))
                .bearer_auth(CLIENT_KEY)
                .json(&serde_json::json!({"model": model, "messages": []}))
                .send()
                .await
                .unwrap()
        }
    };
    for (model, want) in [("gpt-b", (0, 1)), ("gpt-a", (1, 1)), ("gpt-c", (1, 2))] {
        assert_eq!(ask(model.into()).await.status(), 200, "{model}");
        assert_eq!((a.requests(), b.requests()), want, "{model}");
    }

    let resp = ask("gpt-unknown".into()).await;
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("\"gpt-unknown\""), "{message}");

    // A huge name is echoed cut to 256 characters.
    let resp = ask(format!("m{}", "x".repeat(10_000))).await;
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    let echoed = message.chars().filter(|c| *c == 'x').count();
    assert_eq!(echoed, 255, "{} characters: {message:.80}", message.len());
    assert!(message.contains('…'));
    assert_eq!(
        (a.requests(), b.requests()),
        (1, 2),
        "no upstream was asked"
    );
}

/// `models` entries ending in `*` are prefixes, end to end: `claude-*` serves every Claude model
/// and nothing else; an exact name is not a prefix.
#[tokio::test]
async fn model_prefix_patterns_route_whole_families() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let yaml = config_yaml(&[a.url(), b.url()], "")
        .replacen(
            "max_fails: 100\n",
            "max_fails: 100\n    models: [\"claude-*\"]\n",
            1,
        )
        .replace(
            &format!("url: {}\n    credential: {UPSTREAM_CREDENTIAL}\n    max_fails: 100\n", b.url()),
            &format!(
                "url: {}\n    credential: {UPSTREAM_CREDENTIAL}\n    max_fails: 100\n    models: [gpt-4o]\n",
                b.url()
            ),
        );
    let gw = TestGateway::start(&yaml).await;
    let ask = |model: &'static str| {
        let url = gw.url("/v1/chat/completions");
        async move {
            client()
                .post(url)
                .bearer_auth(CLIENT_KEY)
                .json(&serde_json::json!({"model": model, "messages": []}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    for (model, status, want) in [
        ("claude-3-5-sonnet", 200, (1, 0)),
        ("claude-", 200, (2, 0)),
        ("gpt-4o", 200, (2, 1)),
        ("gpt-4o-mini", 404, (2, 1)),
        ("claud", 404, (2, 1)),
        ("xclaude-3", 404, (2, 1)),
    ] {
        assert_eq!(ask(model).await, status, "{model}");
        assert_eq!((a.requests(), b.requests()), want, "{model}");
    }
}

/// When every upstream that serves the model is marked unhealthy, they are tried anyway (as
/// nginx does), rather than refusing: an upstream that has recovered answers at once.
#[tokio::test]
async fn when_every_upstream_is_unhealthy_they_are_tried_anyway() {
    let mock = MockUpstream::start().await;
    let yaml = config_yaml(&[mock.url()], "")
        .replace("max_fails: 100\n", "max_fails: 1\n    fail_timeout: 1h\n");
    let gw = TestGateway::start(&yaml).await;
    let send = || {
        client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .json(&serde_json::json!({"model": "m", "messages": []}))
    };
    mock.force_status(502);
    assert_eq!(send().send().await.unwrap().status(), 502);
    let ups: Vec<_> = gw.gateway.runtime().upstreams.clone();
    assert!(
        !ups[0].is_healthy(),
        "one failure with max_fails: 1 marks it"
    );
    mock.force_status(0);
    let resp = send().send().await.unwrap();
    assert_eq!(resp.status(), 200, "tried although marked unhealthy");
    assert_eq!(mock.requests(), 2);
}
