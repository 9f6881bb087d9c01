//! Upstream headroom end to end: declared allowances (`upstreams[].limits`) the gateway counts
//! and never sends past, the providers' `x-ratelimit-remaining-*` headers, and the built-in
//! `headroom` router that prefers the upstream with the most left.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use serde_json::{Value, json};
use tollgate_tests::*;

/// Upstreams `a` and `b` with these `limits:` lines (empty: none), and `policies`.
fn config(
    a: &MockUpstream,
    a_limits: &str,
    b: &MockUpstream,
    b_limits: &str,
    router: bool,
) -> String {
    let limits = |l: &str| {
        if l.is_empty() {
            String::new()
        } else {
            format!(", limits: {l}")
        }
    };
    let policies = if router {
        "    policies: [headroom]\nplugins:\n  - {name: headroom, kind: router, module: builtin:headroom}\n".to_owned()
    } else {
        String::new()
    };
    format!(
        "server:\n  listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nauth:\n  secret: test-secret-0123456789\n  keys:\n    - name: tester\n      key: {CLIENT_KEY}\n\
upstreams:\n\
  - {{name: a, url: {}, credential: c, max_fails: 100{}}}\n\
  - {{name: b, url: {}, credential: c, max_fails: 100{}}}\n\
routes:\n  - path_prefix: /v1/\n    upstreams: [a, b]\n    max_attempts: 2\n{policies}\
logging:\n  access_log: false\n",
        a.url(),
        limits(a_limits),
        b.url(),
        limits(b_limits),
    )
}

async fn chat(gw: &TestGateway, body: &Value, extra: Option<(&str, &str)>) -> reqwest::Response {
    let mut req = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(body);
    if let Some((k, v)) = extra {
        req = req.header(k, v);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn the_gateway_never_sends_past_a_declared_rpm() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    // No router: configured order, `a` first.
    let gw = TestGateway::start(&config(&a, "{rpm: 3}", &b, "{rpm: 4}", false)).await;
    for i in 0..7 {
        let resp = chat(&gw, &chat_body(false), None).await;
        assert_eq!(resp.status(), 200, "request {i}");
    }
    assert_eq!((a.requests(), b.requests()), (3, 4), "a took 3, b the rest");
    // Both at their allowance: the client is told to wait, and neither hears of it.
    let resp = chat(&gw, &chat_body(false), None).await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["code"], "upstream_quota_exhausted");
    assert_eq!((a.requests(), b.requests()), (3, 4));
}

#[tokio::test]
async fn the_headroom_router_prefers_the_most_left_and_skips_what_cannot_fit() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let gw = TestGateway::start(&config(&a, "{rpm: 5}", &b, "{rpm: 10}", true)).await;
    let mut order = String::new();
    for _ in 0..15 {
        let (ba, bb) = (a.requests(), b.requests());
        assert_eq!(chat(&gw, &chat_body(false), None).await.status(), 200);
        order.push(if a.requests() > ba { 'a' } else { 'b' });
        assert_eq!(a.requests() + b.requests(), ba + bb + 1, "one attempt each");
    }
    // b has more left until both have 5, then they alternate (ties keep the configured order).
    assert_eq!(order, "bbbbbababababab");
    let resp = chat(&gw, &chat_body(false), None).await;
    assert_eq!(resp.status(), 503, "nothing left anywhere");
    assert_eq!(
        (a.requests(), b.requests()),
        (5, 10),
        "zero requests past either rpm"
    );

    // Tokens: a has more requests left than b, so it is preferred, but a request whose
    // estimate (prompt plus budget) it cannot take this minute goes to b.
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let gw = TestGateway::start(&config(&a, "{rpm: 100, tpm: 100}", &b, "{rpm: 10}", true)).await;
    let mut small = chat_body(false);
    small["max_tokens"] = json!(5);
    assert_eq!(chat(&gw, &small, None).await.status(), 200);
    assert_eq!((a.requests(), b.requests()), (1, 0));
    let mut big = chat_body(false);
    big["max_tokens"] = json!(500);
    assert_eq!(chat(&gw, &big, None).await.status(), 200);
    assert_eq!((a.requests(), b.requests()), (1, 1));
}

#[tokio::test]
async fn a_providers_remaining_header_steers_the_next_requests() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    // a is preferred (more requests declared) until its own answer says it has none left.
    let gw = TestGateway::start(&config(&a, "{rpm: 1000}", &b, "{rpm: 100}", true)).await;
    let exhausted = ("x-mock-reply-header", "x-ratelimit-remaining-requests: 0");
    assert_eq!(
        chat(&gw, &chat_body(false), Some(exhausted)).await.status(),
        200
    );
    assert_eq!((a.requests(), b.requests()), (1, 0));
    for _ in 0..4 {
        assert_eq!(chat(&gw, &chat_body(false), None).await.status(), 200);
    }
    assert_eq!(
        (a.requests(), b.requests()),
        (1, 4),
        "a said it had nothing left"
    );
}

/// Two gateways on one Redis count one allowance: the upstream's rpm holds for the cluster.
#[tokio::test]
async fn two_gateways_on_one_redis_share_an_upstreams_allowance() {
    use tollgate_tests::services::{Postgres, Redis};
    let (pg, redis) = (Postgres::start(), Redis::start());
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let db = pg.create_database("headroom").await;
    let yaml = config(&a, "{rpm: 4}", &b, "", false).replace(
        "logging:",
        &format!(
            "storage:\n  database: {db}\n  cache: {}\n  op_timeout: 10s\nlogging:",
            redis.url()
        ),
    );
    let (one, two) = (
        TestGateway::start(&yaml).await,
        TestGateway::start(&yaml).await,
    );
    for gw in [&one, &two, &one, &two, &one, &two] {
        assert_eq!(chat(gw, &chat_body(false), None).await.status(), 200);
    }
    assert_eq!(
        (a.requests(), b.requests()),
        (4, 2),
        "a took its 4 for the cluster, not 4 per gateway"
    );
}
