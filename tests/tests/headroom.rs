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
    let gw = TestGateway::start(&with_admin(&config(&a, "{rpm: 3}", &b, "{rpm: 4}", false))).await;
    for i in 0..7 {
        let resp = chat(&gw, &chat_body(false), None).await;
        assert_eq!(resp.status(), 200, "request {i}");
    }
    assert_eq!((a.requests(), b.requests()), (3, 4), "a took 3, b the rest");
    let left = allowances(&gw).await;
    assert_eq!(left["a"]["rpm"], json!({"left": 0, "limit": 3}), "{left}");
    assert_eq!(left["b"]["rpm"], json!({"left": 0, "limit": 4}), "{left}");
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
    let gw = TestGateway::start(&with_admin(&config(
        &a,
        "{rpm: 1000}",
        &b,
        "{rpm: 100}",
        true,
    )))
    .await;
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
    let said = allowances(&gw).await;
    assert_eq!(said["a"]["provider_requests_left"], 0, "{said}");
    assert_eq!(said["a"]["provider_tokens_left"], Value::Null, "{said}");
    assert_eq!(said["b"]["provider_requests_left"], Value::Null, "{said}");
    // An absurd reset time is trusted for a day at most, and breaks nothing.
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("x-mock-reply-header", "x-ratelimit-remaining-tokens: 5")
        .header("x-mock-reply-header", "x-ratelimit-reset-tokens: 1e300")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(allowances(&gw).await["b"]["provider_tokens_left"], 5);
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

/// The config with an admin user (`ops`) who can read `/admin/api/upstreams`.
fn with_admin(yaml: &str) -> String {
    yaml.replace(
        "admin:\n  listen: 127.0.0.1:0\n",
        "admin:\n  listen: 127.0.0.1:0\n  jwt_secret: an-admin-signing-key-of-32-chars!!\n  users:\n    - {username: ops, password: correct horse battery}\n",
    )
}

/// Each upstream's `allowance` from the admin API, by name.
async fn allowances(gw: &TestGateway) -> Value {
    let http = client();
    let admin = gw.admin_addr.unwrap().to_string();
    let token = admin_token(&http, &admin, "ops", "correct horse battery").await;
    let list = admin_get(&http, &admin, &token, "/admin/api/upstreams").await;
    list.as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["name"].as_str().unwrap().to_owned(),
                u["allowance"].clone(),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// `gpt-test` at one currency unit a token (input and output), so a request's cost is its
/// token count: the mock's answer is 8 prompt and 2 completion tokens, 10 in all.
const PRICES: &str =
    "pricing:\n  models:\n    - {match: gpt-test, input: 1000000, output: 1000000}\n";

/// A request reserving 25 prompt tokens (its 100-byte body at 4 bytes a token) plus its
/// `max_tokens` of 10: 35 reserved, 10 used.
fn priced_body(model: &str) -> Value {
    json!({"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "hi there, what is new?"}]})
}

/// Sends `n` requests one after the other, each settled before the next (the correction runs
/// once the answer has gone); every status.
async fn priced_requests(gw: &TestGateway, model: &str, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..n {
        statuses.push(chat(gw, &priced_body(model), None).await.status().as_u16());
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    statuses
}

/// `monthly_budget`: an attempt reserves what it may cost and is not sent past the month's
/// money; what it reserved is corrected to what its answer cost, so the room a cheap answer
/// leaves is used; a restarted gateway (a fresh cache) counts the month from the usage table.
#[tokio::test]
async fn an_upstreams_monthly_budget_is_never_overspent_and_survives_a_restart() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("t.db").display());
    let yaml = with_admin(&config(&a, "{monthly_budget: 45}", &b, "", false)).replace(
        "logging:",
        &format!("{PRICES}storage:\n  database: {db}\nlogging:"),
    );
    // The body's size is what the reservation is estimated from: pin it.
    assert_eq!(
        serde_json::to_vec(&priced_body("gpt-test")).unwrap().len(),
        100
    );
    let gw = TestGateway::start(&yaml).await;
    // Reserves 25 + 10 = 35 each (100 bytes: 25 prompt tokens), costs 10: the first takes the
    // counter to 10, the second to 20 (10 + 35 = 45 fits), the third would reach 55.
    assert_eq!(priced_requests(&gw, "gpt-test", 5).await, [200; 5]);
    assert_eq!(
        (a.requests(), b.requests()),
        (2, 3),
        "a took what its month allows once each answer's cost was settled, b the rest"
    );
    // Operators see the month as it stands: 20 of 45 spent, nothing declared on b.
    let month = allowances(&gw).await;
    assert_eq!(month["a"]["monthly_budget"]["spent"], 20.0, "{month}");
    assert_eq!(month["a"]["monthly_budget"]["limit"], 45.0, "{month}");
    assert_eq!(month["a"]["monthly_budget"]["currency"], "USD", "{month}");
    assert_eq!(month["a"]["rpm"], Value::Null, "{month}");
    assert_eq!(month["b"], Value::Null, "{month}");
    // The usage table has a's 20; a new gateway on the same database (its own cache) starts
    // its month there, not at zero, before any request and when one comes.
    gw.gateway.stores.flush().await;
    drop(gw);
    let again = TestGateway::start(&yaml).await;
    assert_eq!(
        allowances(&again).await["a"]["monthly_budget"]["spent"],
        20.0
    );
    assert_eq!(priced_requests(&again, "gpt-test", 2).await, [200; 2]);
    assert_eq!(
        (a.requests(), b.requests()),
        (2, 5),
        "the restarted gateway knew a's month was spent"
    );
}

/// With a money allowance, a model without a price cannot be counted: the upstream is not sent
/// it (the next one is; alone it answers 403 `model_not_priced`), and a model the upstream
/// lists without a price is a config error at the allowance's path.
#[tokio::test]
async fn a_money_allowance_refuses_what_it_cannot_price() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let yaml = config(&a, "{monthly_budget: 1000}", &b, "", false)
        .replace("logging:", &format!("{PRICES}logging:"));
    let gw = TestGateway::start(&yaml).await;
    assert_eq!(priced_requests(&gw, "unpriced-model", 1).await, [200]);
    assert_eq!(priced_requests(&gw, "gpt-test", 1).await, [200]);
    assert_eq!(
        (a.requests(), b.requests()),
        (1, 1),
        "a got only the priced one"
    );

    let alone = TestGateway::start(&yaml.replace("upstreams: [a, b]", "upstreams: [a]")).await;
    let resp = chat(&alone, &priced_body("unpriced-model"), None).await;
    assert_eq!(resp.status(), 403);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["code"], "model_not_priced", "{e}");
    assert_eq!(a.requests(), 1, "nothing reached a");

    let listed = yaml.replace(
        "max_fails: 100, limits",
        "max_fails: 100, models: [gpt-test, unpriced-model], limits",
    );
    let config = tollgate::Config::parse(&listed, "test.yaml", Box::new(|_| None)).unwrap();
    let err = tollgate::Gateway::new(&config)
        .await
        .map(|_| ())
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("upstreams[0].limits.monthly_budget")
            && err.contains("none for unpriced-model"),
        "{err}"
    );
}

/// A `max_tokens` past what a count holds (near 2^64) against an upstream's `tpm` counted in
/// Redis: the upstream is not sent it, and its bucket keeps what was spent. Sent to the script
/// as it came, such a count wrapped to a negative take, which let the request through and
/// emptied the bucket.
#[tokio::test]
async fn a_huge_max_tokens_neither_passes_nor_resets_a_shared_allowance() {
    use tollgate_tests::services::Redis;
    let redis = Redis::start();
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let yaml = config(&a, "{tpm: 1000}", &b, "", false)
        .replace("upstreams: [a, b]", "upstreams: [a]")
        .replace(
            "logging:",
            &format!(
                "storage:\n  cache: {}\n  op_timeout: 10s\nlogging:",
                redis.url()
            ),
        );
    let gw = TestGateway::start(&yaml).await;
    let ask = |max_tokens: u64| {
        json!({"model": "gpt-test", "max_tokens": max_tokens,
               "messages": [{"role": "user", "content": "hi"}]})
    };
    // 600 reserved; the mock's answer uses 8 + 2, which settles it to 10.
    assert_eq!(chat(&gw, &ask(600), None).await.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for huge in [
        u64::MAX,
        18_000_000_000_000_000_000,
        9_300_000_000_000_000_000,
    ] {
        let r = chat(&gw, &ask(huge), None).await;
        assert_eq!(r.status(), 429, "max_tokens {huge}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "upstream_quota_exhausted", "{e}");
    }
    assert_eq!(a.requests(), 1, "a was sent none of them");
    // What was spent is still spent: 10 + 1000 does not fit, 10 + 900 does.
    assert_eq!(chat(&gw, &ask(1000), None).await.status(), 429);
    assert_eq!(chat(&gw, &ask(900), None).await.status(), 200);
    assert_eq!(a.requests(), 2);
}
