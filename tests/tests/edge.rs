//! Edge protection over real HTTP: request rate limits (nginx `limit_req` semantics), token and
//! in-flight limits, IP allow/deny lists, security headers, CORS, maintenance mode and connection
//! limits — in one gateway, and across gateways sharing real PostgreSQL and Redis processes.
//! Clients are told apart by their loopback source address (127.0.0.x).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate_tests::services::{Postgres, Redis};
use tollgate_tests::*;

/// The test config (route `/v1/`, key `tester`) with top-level sections appended.
fn yaml(upstream: &str, server: &str, sections: &str) -> String {
    format!(
        "{}{sections}\n",
        config_yaml(&[upstream.to_owned()], server)
    )
}

async fn post(c: &reqwest::Client, gw: &TestGateway, body: &Value) -> reqwest::Response {
    c.post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .map_or("", |v| v.to_str().unwrap_or(""))
}

/// The port of nginx's `limit_req.t`: 2 r/s, burst 1, nodelay.
#[tokio::test]
async fn limit_req_two_per_second_burst_one_nodelay() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&yaml(
        &mock.url(),
        "",
        "limits:\n  requests:\n    - {name: per-ip, by: ip, rate: 2/s, burst: 1, nodelay: true}",
    ))
    .await;
    let c = client();
    let body = chat_body(false);
    let first = post(&c, &gw, &body).await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-ratelimit-limit-requests"), "2");
    assert_eq!(header(&first, "x-ratelimit-remaining-requests"), "1");
    assert_eq!(post(&c, &gw, &body).await.status(), 200, "the burst slot");
    let refused = post(&c, &gw, &body).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "retry-after"), "1");
    assert_eq!(header(&refused, "x-ratelimit-remaining-requests"), "0");
    assert!(
        header(&refused, "x-ratelimit-reset-requests").ends_with("ms")
            || header(&refused, "x-ratelimit-reset-requests").ends_with('s')
    );
    let err: Value = refused.json().await.unwrap();
    assert_eq!(err["error"]["code"], "rate_limit_exceeded");
    assert_eq!(err["error"]["type"], "requests");
    // A flood of refused requests is not counted: one interval later exactly one more passes.
    for _ in 0..5 {
        assert_eq!(post(&c, &gw, &body).await.status(), 429);
    }
    tokio::time::sleep(Duration::from_millis(520)).await;
    assert_eq!(post(&c, &gw, &body).await.status(), 200, "1/rate later");
    assert_eq!(post(&c, &gw, &body).await.status(), 429);
    assert_eq!(
        mock.requests(),
        3,
        "refused requests never reach the upstream"
    );
    // Operators see the refusals.
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(
            "tollgate_gateway_errors_total{answered_by=\"limits:per-ip\",code=\"rate_limit_exceeded\",route=\"/v1/\"} 7"
        ),
        "{metrics}"
    );
}

/// Without `nodelay`, the burst is served at the rate (nginx's delay): five requests at once
/// against `rate: 5/s, burst: 3` — the first at once, three delayed to 200, 400 and 600 ms, and
/// the fifth past the burst refused at once (429) while the others wait.
#[tokio::test]
async fn limit_req_without_nodelay_delays_the_burst_to_the_rate() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&yaml(
        &mock.url(),
        "",
        "limits:\n  requests:\n    - {name: paced, by: key, rate: 5/s, burst: 3, nodelay: false}",
    ))
    .await;
    let c = client();
    // Connections first, so the requests start together.
    let _ = post(&c, &gw, &json!({})).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let start = Instant::now();
    let all: Vec<_> = (0..5)
        .map(|_| {
            let (c, url) = (c.clone(), gw.url("/v1/chat/completions"));
            tokio::spawn(async move {
                let r = c
                    .post(url)
                    .bearer_auth(CLIENT_KEY)
                    .json(&chat_body(false))
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), start.elapsed().as_millis() as i64)
            })
        })
        .collect();
    let mut done = Vec::new();
    for h in all {
        done.push(h.await.unwrap());
    }
    done.sort_by_key(|(_, t)| *t);
    let refused: Vec<_> = done.iter().filter(|(s, _)| *s == 429).collect();
    let served: Vec<i64> = done
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(refused.len(), 1, "one past the burst: {done:?}");
    assert!(
        refused[0].1 < 150,
        "refused at once, not after waiting: {done:?}"
    );
    assert_eq!(served.len(), 4, "{done:?}");
    for (i, t) in served.iter().enumerate() {
        let want = 200 * i as i64;
        assert!(
            (t - want).abs() <= 120,
            "request {i} served at {t} ms, expected {want} ± 120 ms: {done:?}"
        );
    }
}

/// One address at five times its limit for 10 s is held to rate × time + burst (±2%), and a
/// second address under its limit is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_address_is_held_to_its_rate_and_another_is_untouched() {
    const RATE: f64 = 20.0;
    const BURST: f64 = 5.0;
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&yaml(
        &mock.url(),
        "",
        "limits:\n  requests:\n    - {name: per-ip, by: ip, rate: 20/s, burst: 5}",
    ))
    .await;
    let gw = Arc::new(gw);
    let accepted = Arc::new(AtomicU64::new(0));
    let quiet_refused = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    let mut flood = tokio::time::interval(Duration::from_millis(10)); // 100 r/s = 5 × 20
    let mut quiet = tokio::time::interval(Duration::from_millis(100)); // 10 r/s, under 20
    let (noisy_client, quiet_client) = (client_from("127.0.0.2"), client_from("127.0.0.3"));
    let mut first_last = (None, Instant::now());
    while start.elapsed() < Duration::from_secs(10) {
        tokio::select! {
            _ = flood.tick() => {
                let sent = Instant::now();
                first_last.0.get_or_insert(sent);
                first_last.1 = sent;
                let (c, gw, accepted) = (noisy_client.clone(), gw.clone(), accepted.clone());
                tasks.push(tokio::spawn(async move {
                    if post(&c, &gw, &chat_body(false)).await.status() == 200 {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            _ = quiet.tick() => {
                let (c, gw, refused) = (quiet_client.clone(), gw.clone(), quiet_refused.clone());
                tasks.push(tokio::spawn(async move {
                    if post(&c, &gw, &chat_body(false)).await.status() != 200 {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let span = (first_last.1 - first_last.0.unwrap()).as_secs_f64();
    let expected = RATE * span + BURST + 1.0;
    let got = accepted.load(Ordering::Relaxed) as f64;
    assert!(
        (got - expected).abs() <= expected * 0.02,
        "accepted {got}, expected {expected:.1} ± 2% over {span:.2} s"
    );
    assert_eq!(quiet_refused.load(Ordering::Relaxed), 0);
}

/// Stream `n` word events; the mock reports usage (8 prompt tokens + n) in its last chunk.
fn streaming(max_tokens: u64) -> Value {
    json!({"model": "gpt-test", "stream": true, "max_tokens": max_tokens,
           "stream_options": {"include_usage": true},
           "messages": [{"role": "user", "content": "hi"}]})
}

/// The reservation of `body` under the default estimate: max_tokens + ⌈body bytes / 4⌉.
fn reservation(body: &Value) -> u64 {
    body["max_tokens"].as_u64().unwrap() + (body.to_string().len() as u64).div_ceil(4)
}

/// Sends 20 streaming requests at once, split over `gateways`; returns (admitted, tokens the
/// admitted ones used, token-limit refusals).
async fn twenty_streams(gateways: &[&TestGateway], body: &Value) -> (u64, u64, u64) {
    twenty_streams_with(gateways, body, &[("x-mock-events", "40")]).await
}

/// [`twenty_streams`] with the mock's behaviour set by `mock_headers`.
async fn twenty_streams_with(
    gateways: &[&TestGateway],
    body: &Value,
    mock_headers: &[(&'static str, &'static str)],
) -> (u64, u64, u64) {
    let mock_headers = mock_headers.to_vec();
    let c = client();
    let all: Vec<_> = (0..20)
        .map(|i| {
            let (c, url, body, mock_headers) = (
                c.clone(),
                gateways[i % gateways.len()].url("/v1/chat/completions"),
                body.clone(),
                mock_headers.clone(),
            );
            tokio::spawn(async move {
                let mut req = c
                    .post(url)
                    .bearer_auth(CLIENT_KEY)
                    .header("x-mock-delay-ms", "5");
                for (name, value) in mock_headers {
                    req = req.header(name, value);
                }
                let r = req.json(&body).send().await.unwrap();
                let status = r.status().as_u16();
                if status != 200 {
                    let err: Value = r.json().await.unwrap();
                    assert_eq!(err["error"]["type"], "tokens", "{err}");
                    return (status, 0);
                }
                let text = r.text().await.unwrap();
                let usage = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                    .find_map(|v| v["usage"]["total_tokens"].as_u64())
                    .unwrap();
                (status, usage)
            })
        })
        .collect();
    let (mut admitted, mut used, mut refused) = (0, 0, 0);
    for t in all {
        let (status, tokens) = t.await.unwrap();
        match status {
            200 => {
                admitted += 1;
                used += tokens;
            }
            429 => refused += 1,
            other => panic!("status {other}"),
        }
    }
    (admitted, used, refused)
}

const TPM: &str = "limits:\n  tokens:\n    - {name: tpm, by: key, tokens: 1000/m}";

/// 20 concurrent streams against 1000 tokens a minute: the reservations admit only what fits, so
/// the tokens used never pass the budget by more than one request's reservation.
#[tokio::test]
async fn concurrent_streams_cannot_overrun_a_token_budget() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&yaml(&mock.url(), "", TPM)).await;
    let body = streaming(48);
    let reserve = reservation(&body);
    let (admitted, used, refused) = twenty_streams(&[&gw], &body).await;
    assert_eq!(admitted, 1000 / reserve, "reserving {reserve} each");
    assert_eq!(admitted + refused, 20);
    assert!(used <= 1000 + reserve, "used {used}");
    // The answers used 48 tokens each, less than reserved: the difference comes back.
    let used_each = used / admitted;
    assert!(used_each < reserve);
    let c = client();
    let mut remaining = 0;
    for _ in 0..50 {
        let r = post(
            &c,
            &gw,
            &json!({"model": "m", "max_tokens": 1, "messages": []}),
        )
        .await;
        remaining = header(&r, "x-ratelimit-remaining-tokens")
            .parse()
            .unwrap_or(0);
        if remaining >= 1000 - used - 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        remaining >= 1000 - used - 20,
        "refund not applied: {remaining} left after using {used}"
    );
    assert_eq!(
        header(&post(&c, &gw, &body).await, "x-ratelimit-limit-tokens"),
        "1000"
    );
}

/// The same budget shared by two gateways through Redis is one budget.
#[tokio::test]
async fn two_gateways_sharing_redis_share_one_token_budget() {
    let (pg, redis, mock) = (
        Postgres::start(),
        Redis::start(),
        MockUpstream::start().await,
    );
    let db = pg.create_database("tokens").await;
    let yaml = yaml(
        &mock.url(),
        "",
        &format!(
            "{TPM}\nstorage:\n  database: {db}\n  cache: {}\n  op_timeout: 10s",
            redis.url()
        ),
    );
    let (a, b) = (
        TestGateway::start(&yaml).await,
        TestGateway::start(&yaml).await,
    );
    let body = streaming(48);
    let reserve = reservation(&body);
    let (admitted, used, _) = twenty_streams(&[&a, &b], &body).await;
    assert_eq!(admitted, 1000 / reserve, "one budget for both gateways");
    assert!(used <= 1000 + reserve);
}

/// A request that names no completion budget reserves `default_max_tokens` and is forwarded with
/// it as `max_completion_tokens`, so an upstream that honours the budget cannot overrun the
/// limit: 20 concurrent streams that would each produce 100 tokens, split over two gateways on
/// one Redis, use at most the budget. Without the clamp the same traffic overruns it.
#[tokio::test]
async fn requests_without_a_budget_are_forwarded_with_the_reserved_one() {
    let (pg, redis, mock) = (
        Postgres::start(),
        Redis::start(),
        MockUpstream::start().await,
    );
    let db = pg.create_database("clamp").await;
    let body = json!({"model": "gpt-test", "stream": true,
                      "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "hi"}]});
    let prompt = (body.to_string().len() as u64).div_ceil(4);
    let honouring = [("x-mock-events", "100"), ("x-mock-honour-budget", "1")];
    for clamp in [true, false] {
        let yaml = yaml(
            &mock.url(),
            "",
            &format!(
                "{TPM}\n  estimate: {{default_max_tokens: 30, clamp: {clamp}}}\nstorage:\n  database: {db}\n  cache: {}\n  op_timeout: 10s",
                redis.url()
            ),
        );
        // A fresh budget for each round: the limit's bucket lives in Redis.
        let mut conn = redis::Client::open(redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
        let (a, b) = (
            TestGateway::start(&yaml).await,
            TestGateway::start(&yaml).await,
        );
        let (admitted, used, refused) = twenty_streams_with(&[&a, &b], &body, &honouring).await;
        assert_eq!(admitted, 1000 / (30 + prompt), "clamp {clamp}");
        assert_eq!(admitted + refused, 20);
        let forwarded: Value = serde_json::from_slice(&mock.last_body()).unwrap();
        if clamp {
            assert_eq!(forwarded["max_completion_tokens"], 30);
            // 8 prompt tokens (the mock's count) and exactly the 30 words allowed, each.
            assert_eq!(used, admitted * (8 + 30));
            assert!(used <= 1000);
        } else {
            assert!(forwarded.get("max_completion_tokens").is_none());
            assert_eq!(used, admitted * (8 + 100));
            assert!(
                used > 1000,
                "without the clamp the budget is overrun: {used}"
            );
            // The overrun is charged as debt: the next request waits, on either gateway, about
            // as long as the overrun takes to refill at 1000 a minute (less what refilled while
            // the test ran).
            tokio::time::sleep(Duration::from_millis(300)).await;
            let next = post(
                &client(),
                &b,
                &json!({"model": "m", "max_tokens": 1, "messages": []}),
            )
            .await;
            assert_eq!(next.status(), 429, "the debt is not charged");
            let wait: f64 = header(&next, "retry-after").parse().unwrap();
            let overrun_secs = (used - 1000) as f64 / (1000.0 / 60.0);
            assert!(
                wait >= overrun_secs - 10.0 && wait <= overrun_secs + 10.0,
                "retry-after {wait} s for an overrun of {} tokens",
                used - 1000
            );
        }
    }
}

/// With `enforce: strict`, a stream that passes its reservation is ended with an SSE error event
/// and the upstream request is cancelled.
#[tokio::test]
async fn a_strict_token_limit_ends_an_overrunning_stream() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&yaml(
        &mock.url(),
        "",
        "limits:\n  tokens:\n    - {name: tpm, by: key, tokens: 100000/m, enforce: strict}",
    ))
    .await;
    // Reserves 5 + ⌈body/4⌉ tokens; the mock streams 400 events (one token each) regardless.
    // The running count is the prompt estimate plus one per event (the role chunk, then a word
    // each), so exactly 5 events pass: the role chunk and 4 words; the 6th is withheld. Ten such
    // streams at once are each cut at exactly that point.
    let body = json!({"model": "m", "stream": true, "max_tokens": 5, "messages": []});
    let streams: Vec<_> = (0..10)
        .map(|_| {
            let (url, body) = (gw.url("/v1/chat/completions"), body.clone());
            tokio::spawn(async move {
                let resp = client()
                    .post(url)
                    .bearer_auth(CLIENT_KEY)
                    .header("x-mock-events", "400")
                    // Events far enough apart to arrive one per read.
                    .header("x-mock-delay-ms", "30")
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
                resp.text().await.unwrap()
            })
        })
        .collect();
    // With one event per read the cut is at exactly 4 words; events read together are counted
    // together (the frame that passes is withheld whole), so a loaded machine may cut earlier,
    // never later.
    let mut exact = 0;
    for s in streams {
        let text = s.await.unwrap();
        let words = text.matches("\"content\":\"w").count();
        assert!(
            (1..=4).contains(&words),
            "the cut point: {words} words: {text}"
        );
        exact += usize::from(words == 4);
        let tail = text.trim_end().rsplit("\n\n").next().unwrap();
        assert!(tail.starts_with("event: error\ndata: "), "{tail}");
        let err: Value = serde_json::from_str(tail.split_once("data: ").unwrap().1).unwrap();
        assert_eq!(err["error"]["code"], "token_limit_exceeded");
        assert!(!text.contains("[DONE]"));
    }
    assert!(
        exact >= 7,
        "only {exact} of 10 streams were cut at exactly 4 words"
    );
    assert!(
        eventually(Duration::from_secs(2), || mock.cancelled() == 10).await,
        "the upstream streams were not all cancelled: {}",
        mock.cancelled()
    );
    // Operators see them as `cut`, not as complete or aborted.
    let series = "tollgate_requests_total{outcome=\"cut\",route=\"/v1/\",status_class=\"2xx\",upstream=\"u0\"} 10";
    assert!(
        eventually_async(Duration::from_secs(2), || async {
            gw.metrics().await.contains(series)
        })
        .await,
        "{}",
        gw.metrics().await
    );
}

/// `max_in_flight`: a second request waits for no one — it is refused while the first runs, and
/// the slot comes back exactly once when the first ends, however it ends.
#[tokio::test]
async fn in_flight_slots_are_released_on_client_abort_and_upstream_failure() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&yaml(
        &mock.url(),
        "",
        "limits:\n  in_flight:\n    - {name: one-at-a-time, by: key, max: 1}",
    ))
    .await;
    let c = client();
    let stream = || {
        c.post(gw.url("/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .header("x-mock-events", "1000")
            .header("x-mock-delay-ms", "50")
            .json(&chat_body(true))
            .send()
    };
    for round in 0..3 {
        let mut running = stream().await.unwrap();
        assert_eq!(running.status(), 200, "round {round}");
        running.chunk().await.unwrap();
        let refused = post(&c, &gw, &chat_body(false)).await;
        assert_eq!(refused.status(), 429);
        let err: Value = refused.json().await.unwrap();
        assert_eq!(err["error"]["code"], "concurrency_limit_exceeded");
        // The client goes away mid-stream.
        drop(running);
        let mut freed = false;
        for _ in 0..100 {
            if post(&c, &gw, &chat_body(false)).await.status() == 200 {
                freed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(freed, "round {round}: the slot was not released");
    }
    // The upstream fails: the slot comes back too (and is not released twice: still one at a
    // time afterwards).
    for _ in 0..3 {
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .header("x-mock-status", "500")
            .json(&chat_body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 500);
    }
    let mut running = stream().await.unwrap();
    running.chunk().await.unwrap();
    assert_eq!(post(&c, &gw, &chat_body(false)).await.status(), 429);
}

/// Deny and allow lists from the config: global and per route, IPv4-mapped addresses
/// normalised, checked before authentication.
#[tokio::test]
async fn config_ip_lists_refuse_before_authentication() {
    let mock = MockUpstream::start().await;
    let mut text = yaml(
        &mock.url(),
        "",
        "access:\n  deny: [127.0.0.2, \"::ffff:127.0.0.4/128\"]",
    );
    text = text.replace(
        "    upstreams: [u0]\n",
        "    upstreams: [u0]\n  - path_prefix: /private/\n    upstreams: [u0]\n    access:\n      allow: [127.0.0.5/32]\n",
    );
    let gw = TestGateway::start(&text).await;
    for ip in ["127.0.0.2", "127.0.0.4"] {
        // No key at all: the address is refused first.
        let r = client_from(ip)
            .post(gw.url("/v1/chat/completions"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{ip}");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["code"], "ip_denied");
    }
    assert_eq!(
        post(&client_from("127.0.0.3"), &gw, &chat_body(false))
            .await
            .status(),
        200
    );
    let private = |ip: &str| {
        client_from(ip)
            .post(gw.url("/private/x"))
            .bearer_auth(CLIENT_KEY)
            .json(&chat_body(false))
            .send()
    };
    assert_eq!(private("127.0.0.3").await.unwrap().status(), 403);
    assert_eq!(private("127.0.0.5").await.unwrap().status(), 200);
    assert_eq!(mock.requests(), 2);
}

async fn admin_token(gw: &TestGateway) -> String {
    let r = client()
        .post(format!("http://{}/admin/api/login", gw.admin_addr.unwrap()))
        .json(&json!({"username": "ops", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn with_admin(yaml: &str) -> String {
    yaml.replace(
        "admin:\n  listen: 127.0.0.1:0\n",
        "admin:\n  listen: 127.0.0.1:0\n  jwt_secret: an-admin-signing-key-of-32-chars!!\n  users:\n    - {username: ops, password: correct horse battery}\n",
    )
}

/// A deny entry added through the admin API on one gateway refuses the address on another
/// gateway of the cluster within a second; removing it lets the address back in.
#[tokio::test]
async fn a_deny_entry_reaches_every_gateway_within_a_second() {
    let (pg, redis, mock) = (
        Postgres::start(),
        Redis::start(),
        MockUpstream::start().await,
    );
    let db = pg.create_database("iprules").await;
    let text = with_admin(&yaml(
        &mock.url(),
        "",
        &format!(
            "storage:\n  database: {db}\n  cache: {}\n  op_timeout: 10s",
            redis.url()
        ),
    ));
    let (a, b) = (
        TestGateway::start(&text).await,
        TestGateway::start(&text).await,
    );
    let attacker = client_from("127.0.0.9");
    assert_eq!(post(&attacker, &b, &chat_body(false)).await.status(), 200);
    let token = admin_token(&a).await;
    let admin = format!("http://{}/admin/api", a.admin_addr.unwrap());
    let added = client()
        .post(format!("{admin}/ip-rules"))
        .bearer_auth(&token)
        .json(&json!({"cidr": "::ffff:127.0.0.9", "action": "deny", "note": "abuse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201);
    let rule: Value = added.json().await.unwrap();
    assert_eq!(rule["cidr"], "127.0.0.9/32", "mapped form normalised");
    let since = Instant::now();
    let mut denied_after = None;
    while since.elapsed() < Duration::from_secs(3) {
        if post(&attacker, &b, &chat_body(false)).await.status() == 403 {
            denied_after = Some(since.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = denied_after.expect("never denied on the other gateway");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(
        post(&client_from("127.0.0.8"), &b, &chat_body(false))
            .await
            .status(),
        200
    );
    // Listed and audited.
    let list: Value = client()
        .get(format!("{admin}/ip-rules"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"][0]["cidr"], "127.0.0.9/32");
    assert_eq!(list["items"][0]["created_by"], "ops");
    let audit: Value = client()
        .get(format!("{admin}/audit?action=ip_rule.deny"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(audit["items"][0]["target"], "127.0.0.9/32", "{audit}");
    let removed = client()
        .delete(format!("{admin}/ip-rules/127.0.0.9_32"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 204);
    assert!(
        eventually_async(Duration::from_secs(1), || async {
            post(&attacker, &b, &chat_body(false)).await.status() == 200
        })
        .await,
        "not lifted on the other gateway"
    );
}

/// Security headers on answers the gateway writes itself: 401, 404, 413, 429, 503, and on
/// `/health`; not HSTS over plain HTTP.
#[tokio::test]
async fn security_headers_are_on_the_gateways_own_errors() {
    let mock = MockUpstream::start().await;
    let mut text = yaml(
        &mock.url(),
        "  max_body: 1KiB\n  response_headers:\n    hsts: max-age=63072000\n    set:\n      x-content-type-options: nosniff\n      x-frame-options: DENY\n      referrer-policy: no-referrer\n      cache-control: no-store\n",
        "limits:\n  requests:\n    - {name: tiny, by: ip, rate: 1/m, burst: 2, routes: [/v1/]}",
    );
    text = text.replace(
        "    upstreams: [u0]\n",
        "    upstreams: [u0]\n  - path_prefix: /closed/\n    upstreams: [u0]\n    maintenance: true\n",
    );
    let gw = TestGateway::start(&text).await;
    let c = client();
    let url = gw.url("/v1/chat/completions");
    // The limit counts requests before authentication: the 401 and the 413 take two of three.
    let answers = [
        (
            401,
            c.post(&url).json(&chat_body(false)).send().await.unwrap(),
        ),
        (404, c.get(gw.url("/nowhere")).send().await.unwrap()),
        (
            413,
            c.post(&url)
                .bearer_auth(CLIENT_KEY)
                .header("content-type", "application/json")
                .body(vec![b' '; 4096])
                .send()
                .await
                .unwrap(),
        ),
        (200, post(&c, &gw, &chat_body(false)).await),
        (429, post(&c, &gw, &chat_body(false)).await),
        (503, c.get(gw.url("/closed/x")).send().await.unwrap()),
        (200, c.get(gw.url("/health")).send().await.unwrap()),
    ];
    for (status, r) in &answers {
        assert_eq!(r.status().as_u16(), *status);
        assert_eq!(header(r, "x-content-type-options"), "nosniff", "{status}");
        assert_eq!(header(r, "x-frame-options"), "DENY", "{status}");
        assert_eq!(header(r, "referrer-policy"), "no-referrer", "{status}");
        assert_eq!(header(r, "cache-control"), "no-store", "{status}");
        assert_eq!(
            header(r, "strict-transport-security"),
            "",
            "no HSTS without TLS"
        );
    }
}

/// A CORS preflight is answered by the gateway, without a key and without upstream traffic;
/// answers carry the CORS headers for allowed origins only, and `Vary: Origin`.
#[tokio::test]
async fn cors_preflight_is_answered_by_the_gateway() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&yaml(
        &mock.url(),
        "  cors:\n    allow_origins: [\"https://app.example.com\"]\n    expose_headers: [x-request-id, x-ratelimit-remaining-requests]\n    max_age: 1h\n",
        "",
    ))
    .await;
    let c = client();
    let preflight = |origin: &'static str| {
        c.request(reqwest::Method::OPTIONS, gw.url("/v1/chat/completions"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let ok = preflight("https://app.example.com").await.unwrap();
    assert_eq!(ok.status(), 204);
    assert_eq!(
        header(&ok, "access-control-allow-origin"),
        "https://app.example.com"
    );
    assert!(header(&ok, "access-control-allow-methods").contains("POST"));
    assert!(header(&ok, "access-control-allow-headers").contains("authorization"));
    assert_eq!(header(&ok, "access-control-max-age"), "3600");
    assert_eq!(header(&ok, "vary"), "Origin");
    let other = preflight("https://evil.example").await.unwrap();
    assert_eq!(other.status(), 204);
    assert_eq!(header(&other, "access-control-allow-origin"), "");
    assert_eq!(mock.requests(), 0, "preflights never reach the upstream");
    // An answer, not a refusal: no gateway error is counted for them.
    let metrics = gw.metrics().await;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("tollgate_gateway_errors_total") && l.contains("cors")),
        "{metrics}"
    );
    // The real request, with the key.
    let r = c
        .post(gw.url("/v1/chat/completions"))
        .header("origin", "https://app.example.com")
        .bearer_auth(CLIENT_KEY)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        "https://app.example.com"
    );
    assert!(header(&r, "access-control-expose-headers").contains("x-request-id"));
    assert_eq!(header(&r, "vary"), "Origin");
    // The gateway's own errors carry them too, so the browser can read the error.
    let r = c
        .post(gw.url("/v1/chat/completions"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        "https://app.example.com"
    );
}

/// Maintenance from the config (global) and from the admin API's live setting: 503
/// `service_unavailable` with `Retry-After`; `/health` stays up; `/ready` says why.
#[tokio::test]
async fn maintenance_mode_answers_503_and_ready_says_why() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&yaml(
        &mock.url(),
        "",
        "maintenance:\n  enabled: true\n  retry_after: 120s\n  message: back at noon",
    ))
    .await;
    let r = post(&client(), &gw, &chat_body(false)).await;
    assert_eq!(r.status(), 503);
    assert_eq!(header(&r, "retry-after"), "120");
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "service_unavailable");
    assert_eq!(err["error"]["message"], "back at noon");
    assert_eq!(
        client()
            .get(gw.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready = client().get(gw.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(
        ready.json::<Value>().await.unwrap()["status"],
        "maintenance"
    );
    assert_eq!(mock.requests(), 0);

    // The live setting turns it on and off without a config change.
    let gw = TestGateway::start(&with_admin(&yaml(&mock.url(), "", ""))).await;
    let token = admin_token(&gw).await;
    let set = |on: bool| {
        client()
            .put(format!(
                "http://{}/admin/api/settings",
                gw.admin_addr.unwrap()
            ))
            .bearer_auth(&token)
            .json(&json!({"maintenance": on}))
            .send()
    };
    assert_eq!(post(&client(), &gw, &chat_body(false)).await.status(), 200);
    assert_eq!(set(true).await.unwrap().status(), 200);
    assert_eq!(post(&client(), &gw, &chat_body(false)).await.status(), 503);
    assert_eq!(set(false).await.unwrap().status(), 200);
    assert_eq!(post(&client(), &gw, &chat_body(false)).await.status(), 200);
}

/// `new_connections_per_ip`: past the rate, a connection is answered 429 at once and closed;
/// another address still connects.
#[tokio::test]
async fn new_connections_past_the_per_address_rate_are_refused() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&yaml(&mock.url(), "  new_connections_per_ip: 3/m\n", "")).await;
    let connect = |from: &str| {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        socket.connect(gw.addr)
    };
    let request = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    for i in 0..3 {
        let mut s = connect("127.0.0.6").await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "connection {i}: {out}");
    }
    let mut s = connect("127.0.0.6").await.unwrap();
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out)).await;
    assert!(out.starts_with("HTTP/1.1 429"), "{out:?}");
    assert!(out.contains("connection_limit_exceeded"));
    let mut s = connect("127.0.0.7").await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"));
}

/// `policies.example.yaml` does what seed 000's nginx site does: 10 r/s with burst 20 per client
/// address on the proxied route, and the security headers.
#[tokio::test]
async fn the_example_config_limits_each_address_like_the_nginx_site_it_replaces() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("policies.example.yaml"))
        .unwrap()
        .replace("${TOLLGATE_LISTEN:-127.0.0.1:8317}", "127.0.0.1:0")
        .replace(
            "${TOLLGATE_DATABASE:-sqlite://tollgate.db}",
            "\"sqlite::memory:\"",
        )
        .replace("access_log: true", "access_log: false");
    // The example's 10 r/s, slowed to 10 an hour so that no refill can happen while the test
    // runs, however slow the machine: the burst is then exact.
    assert!(
        text.contains("      rate: 10/s "),
        "the example's per-ip rate changed"
    );
    let text = text.replacen("      rate: 10/s ", "      rate: 10/h ", 1);
    let gw = TestGateway::start_in(&text, &root).await;
    let c = client_from("127.0.0.20");
    let send = |c: &reqwest::Client| {
        c.post(gw.url("/v1/chat/completions"))
            .bearer_auth("sk-tollgate-demo")
            .json(&chat_body(false))
            .send()
    };
    // 1 + burst 20; the 22nd is refused, and told to come back in 1/rate (6 minutes).
    let mut statuses = Vec::new();
    for _ in 0..22 {
        statuses.push(send(&c).await.unwrap());
    }
    let codes: Vec<u16> = statuses.iter().map(|r| r.status().as_u16()).collect();
    assert!(codes[..21].iter().all(|&s| s == 200), "{codes:?}");
    assert_eq!(codes[21], 429, "{codes:?}");
    let retry: u64 = header(&statuses[21], "retry-after").parse().unwrap();
    assert!((355..=360).contains(&retry), "retry-after {retry}");
    let last = statuses.last().unwrap();
    assert_eq!(header(last, "x-ratelimit-limit-requests"), "21");
    assert_eq!(header(last, "x-content-type-options"), "nosniff");
    assert_eq!(header(last, "x-frame-options"), "DENY");
    // Another address has its own bucket (its key binding is another matter: the demo key is
    // bound to the first address by the example's ip-binding policy).
    let other = send(&client_from("127.0.0.21")).await.unwrap();
    assert_ne!(other.status(), 429);
    assert_eq!(header(&other, "x-ratelimit-remaining-requests"), "20");
}

/// Bad input to `/admin/api/ip-rules` gets a 400 naming the field, and changes nothing.
#[tokio::test]
async fn ip_rules_refuse_bad_input_naming_the_field() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&with_admin(&yaml(&mock.url(), "", ""))).await;
    let token = admin_token(&gw).await;
    let admin = format!("http://{}/admin/api/ip-rules", gw.admin_addr.unwrap());
    for (body, param) in [
        (json!({"cidr": "10.0.0.0/33", "action": "deny"}), "cidr"),
        (json!({"cidr": "not an address", "action": "deny"}), "cidr"),
        (json!({"cidr": "10.0.0.1", "action": "block"}), "action"),
        (
            json!({"cidr": "10.0.0.1", "action": "deny", "note": "x".repeat(201)}),
            "note",
        ),
        (
            json!({"cidr": "10.0.0.1", "action": "deny", "colour": "red"}),
            "colour",
        ),
    ] {
        let r = client()
            .post(&admin)
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["param"], param, "{body}: {err}");
    }
    let missing = client()
        .delete(format!("{admin}/10.9.9.9_32"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let list: Value = client()
        .get(&admin)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"], json!([]), "nothing was stored");
    assert_eq!(list["in_force"], 0);
}

/// `allow_origins: ["*"]` answers any origin with `*` (and no `Vary: Origin`: the answer does not
/// depend on it); `allow_credentials` with exact origins echoes the origin and allows credentials;
/// the two together are refused by validation (browsers reject `*` with credentials).
#[tokio::test]
async fn cors_any_origin_and_credentials() {
    let mock = MockUpstream::start().await;
    let get = |gw: &TestGateway, origin: &'static str| {
        let url = gw.url("/v1/chat/completions");
        async move {
            client()
                .post(url)
                .bearer_auth(CLIENT_KEY)
                .header("origin", origin)
                .json(&chat_body(false))
                .send()
                .await
                .unwrap()
        }
    };
    let any = TestGateway::start(&yaml(
        &mock.url(),
        "  cors:\n    allow_origins: [\"*\"]\n",
        "",
    ))
    .await;
    let r = get(&any, "https://whoever.example").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "access-control-allow-origin"), "*");
    assert_eq!(header(&r, "access-control-allow-credentials"), "");
    assert_eq!(header(&r, "vary"), "");

    let creds = TestGateway::start(&yaml(
        &mock.url(),
        "  cors:\n    allow_origins: [https://app.example]\n    allow_credentials: true\n",
        "",
    ))
    .await;
    let r = get(&creds, "https://app.example").await;
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        "https://app.example"
    );
    assert_eq!(header(&r, "access-control-allow-credentials"), "true");
    assert_eq!(header(&r, "vary"), "Origin");
    let r = get(&creds, "https://other.example").await;
    assert_eq!(header(&r, "access-control-allow-origin"), "");
    assert_eq!(header(&r, "access-control-allow-credentials"), "");

    let both = yaml(
        &mock.url(),
        "  cors:\n    allow_origins: [\"*\"]\n    allow_credentials: true\n",
        "",
    );
    let Err(err) = tollgate::config::Config::parse(&both, "test.yaml", Box::new(|_| None)) else {
        panic!("`*` with credentials is refused");
    };
    let err = err.to_string();
    assert!(err.contains("server.cors.allow_credentials"), "{err}");
}

/// `response_headers.set` replaces the defaults (it is the whole set, and wins over an upstream's
/// value of the same name); `set: {}` sends none of them.
#[tokio::test]
async fn response_headers_replace_the_defaults_and_an_empty_set_sends_none() {
    let mock = MockUpstream::start().await;
    let ask = |gw: &TestGateway| {
        let url = gw.url("/v1/chat/completions");
        async move {
            client()
                .post(url)
                .bearer_auth(CLIENT_KEY)
                .header("x-mock-reply-header", "x-frame-options: ALLOWALL")
                .json(&chat_body(false))
                .send()
                .await
                .unwrap()
        }
    };
    let own = TestGateway::start(&yaml(
        &mock.url(),
        "  response_headers:\n    set: {x-frame-options: SAMEORIGIN, permissions-policy: \"camera=()\"}\n",
        "",
    ))
    .await;
    let r = ask(&own).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-frame-options"),
        "SAMEORIGIN",
        "wins over the upstream's"
    );
    assert_eq!(header(&r, "permissions-policy"), "camera=()");
    for default in ["x-content-type-options", "referrer-policy", "cache-control"] {
        assert_eq!(header(&r, default), "", "{default} is a default, replaced");
    }
    let none =
        TestGateway::start(&yaml(&mock.url(), "  response_headers:\n    set: {}\n", "")).await;
    let r = ask(&none).await;
    assert_eq!(
        header(&r, "x-frame-options"),
        "ALLOWALL",
        "the upstream's own, untouched"
    );
    for default in ["x-content-type-options", "referrer-policy", "cache-control"] {
        assert_eq!(header(&r, default), "", "{default}");
    }
    let refused = none.chat_at("/nowhere").await;
    assert_eq!(refused.status(), 404);
    assert_eq!(header(&refused, "x-content-type-options"), "");
}

const OTHER_KEY: &str = "sk-other-client-key";

/// [`yaml`] with a second key (`other`), a second route (`/v2/`) and `sections` appended.
fn two_keys_two_routes(upstream: &str, sections: &str) -> String {
    yaml(upstream, "", sections)
        .replace(
            &format!("    - name: tester\n      key: {CLIENT_KEY}\n"),
            &format!(
                "    - name: tester\n      key: {CLIENT_KEY}\n    - name: other\n      key: {OTHER_KEY}\n"
            ),
        )
        .replace(
            "routes:\n",
            "routes:\n  - path_prefix: /v2/\n    upstreams: [u0]\n",
        )
}

/// One request with `key` for `model` to `path` on `gw`; its status.
async fn status_of(gw: &TestGateway, path: &str, key: &str, model: &str) -> u16 {
    client()
        .post(gw.url(path))
        .bearer_auth(key)
        .json(&json!({"model": model, "messages": []}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The scopes of docs/limits.md: `by: key-model` keeps a bucket per key and model, `routes:`
/// limits only those routes, `keys:` only those keys. Each limit allows one request an hour.
#[tokio::test]
async fn key_model_route_and_key_scopes_decide_what_a_limit_counts() {
    let mock = MockUpstream::start().await;
    let one = "rate: 1/h, burst: 0";
    let gw = TestGateway::start(&two_keys_two_routes(
        &mock.url(),
        &format!("limits:\n  requests:\n    - {{name: per-model, by: key-model, {one}, routes: [/v1/]}}\n    - {{name: v2-only, by: ip, {one}, routes: [/v2/]}}\n    - {{name: other-only, by: key, {one}, keys: [other], routes: [/v2/]}}"),
    ))
    .await;
    let v1 = "/v1/chat/completions";
    let v2 = "/v2/chat/completions";
    // key-model: one bucket per (key, model).
    assert_eq!(status_of(&gw, v1, CLIENT_KEY, "a").await, 200);
    assert_eq!(status_of(&gw, v1, CLIENT_KEY, "a").await, 429);
    assert_eq!(status_of(&gw, v1, CLIENT_KEY, "b").await, 200);
    assert_eq!(status_of(&gw, v1, OTHER_KEY, "a").await, 200);
    // routes: the per-ip limit counts /v2/ only (the /v1/ requests above did not use it).
    assert_eq!(status_of(&gw, v2, CLIENT_KEY, "a").await, 200);
    assert_eq!(status_of(&gw, v2, CLIENT_KEY, "b").await, 429);
    // keys: `other-only` counts `other` alone — but /v2/ is now spent by address anyway, so
    // the key scope is seen from another address.
    let from = |local: &'static str, key: &'static str| {
        let url = gw.url(v2);
        async move {
            client_from(local)
                .post(url)
                .bearer_auth(key)
                .json(&json!({"model": "a", "messages": []}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(from("127.0.0.31", OTHER_KEY).await, 200);
    // `other` is spent by key now: from a third address (its own per-ip bucket) it is refused…
    assert_eq!(from("127.0.0.32", OTHER_KEY).await, 429);
    // …while `tester`, which `other-only` does not count, passes from a fresh address.
    assert_eq!(from("127.0.0.33", CLIENT_KEY).await, 200);
}

/// When several limits apply and one refuses, the others are refunded (nginx does the same with
/// several `limit_req`): a request refused by a tight route limit costs nothing of the key's.
#[tokio::test]
async fn a_request_one_limit_refuses_is_refunded_to_the_others() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&two_keys_two_routes(
        &mock.url(),
        "limits:\n  requests:\n    - {name: per-key, by: key, rate: 1/h, burst: 4}\n    - {name: v1-tight, by: key, rate: 1/h, burst: 0, routes: [/v1/]}",
    ))
    .await;
    let (v1, v2) = ("/v1/chat/completions", "/v2/chat/completions");
    assert_eq!(status_of(&gw, v1, CLIENT_KEY, "m").await, 200);
    for _ in 0..3 {
        assert_eq!(status_of(&gw, v1, CLIENT_KEY, "m").await, 429);
    }
    // per-key had 5; one was used. Without refunds the three refused would have taken three
    // more, leaving one.
    for i in 0..4 {
        assert_eq!(
            status_of(&gw, v2, CLIENT_KEY, "m").await,
            200,
            "request {i}"
        );
    }
    assert_eq!(status_of(&gw, v2, CLIENT_KEY, "m").await, 429);
}

/// Two gateways on one Redis share a request limit: burst 4 (five at once) is five in all.
/// With Redis gone each falls back to its own buckets: still limited, never open.
#[tokio::test]
async fn a_request_limit_is_cluster_wide_on_redis_and_per_gateway_without_it() {
    let (mut redis, mock) = (Redis::start(), MockUpstream::start().await);
    let yaml = yaml(
        &mock.url(),
        "",
        &format!(
            "limits:\n  requests:\n    - {{name: per-key, by: key, rate: 1/h, burst: 4}}\nstorage:\n  cache: {}\n  op_timeout: 500ms",
            redis.url()
        ),
    );
    let (a, b) = (
        TestGateway::start(&yaml).await,
        TestGateway::start(&yaml).await,
    );
    let path = "/v1/chat/completions";
    let mut statuses = Vec::new();
    for i in 0..8 {
        let gw = if i % 2 == 0 { &a } else { &b };
        statuses.push(status_of(gw, path, CLIENT_KEY, "m").await);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);

    redis.kill9();
    // Each gateway now has its own bucket of five, fresh (the shared one is unreachable).
    for gw in [&a, &b] {
        let mut ok = 0;
        for _ in 0..7 {
            if status_of(gw, path, CLIENT_KEY, "m").await == 200 {
                ok += 1;
            }
        }
        assert_eq!(ok, 5, "per gateway without Redis");
    }
}

/// A reservation that could never fit the token limit is refused at once with a clear message
/// and `Retry-After: 60`, whatever the bucket holds.
#[tokio::test]
async fn a_reservation_over_the_token_limits_capacity_is_refused() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&yaml(
        &mock.url(),
        "",
        "limits:\n  tokens:\n    - {name: small, by: key, tokens: 100/m}",
    ))
    .await;
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&json!({"model": "m", "max_tokens": 1000, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after"), "60");
    let err: Value = r.json().await.unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("more than the token limit \"small\" of 100 allows at all"),
        "{err}"
    );
    assert_eq!(mock.requests(), 0);
    // Nothing was taken: a request that fits passes.
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&json!({"model": "m", "max_tokens": 10, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Buckets survive a config reload unless the limit's name or parameters change.
#[tokio::test]
async fn request_buckets_survive_a_reload_unless_the_limit_changes() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.yaml");
    let limited = |burst: u32| {
        yaml(
            &mock.url(),
            "",
            &format!(
                "limits:\n  requests:\n    - {{name: per-key, by: key, rate: 1/h, burst: {burst}}}"
            ),
        )
    };
    std::fs::write(&path, limited(1)).unwrap();
    let gw = TestGateway::start_file(&path).await;
    let chat = "/v1/chat/completions";
    assert_eq!(status_of(&gw, chat, CLIENT_KEY, "m").await, 200);
    assert_eq!(status_of(&gw, chat, CLIENT_KEY, "m").await, 200);
    assert_eq!(status_of(&gw, chat, CLIENT_KEY, "m").await, 429);
    // The same limit, another change (a comment): the bucket is kept.
    gw.gateway
        .reload(
            &tollgate::config::Config::parse(
                &(limited(1) + "# touched\n"),
                "gw.yaml",
                Box::new(|_| None),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        status_of(&gw, chat, CLIENT_KEY, "m").await,
        429,
        "kept across the reload"
    );
    // A changed burst is a new limit: a fresh bucket.
    gw.gateway
        .reload(
            &tollgate::config::Config::parse(&limited(2), "gw.yaml", Box::new(|_| None)).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        status_of(&gw, chat, CLIENT_KEY, "m").await,
        200,
        "a new limit starts full"
    );
}

/// `limits.estimate`, as docs/limits.md orders it: `max_completion_tokens`, else `max_tokens`,
/// else `max_output_tokens`, else `default_max_tokens`, plus the body's bytes / 4. Read from
/// `x-ratelimit-remaining-tokens` of each first request on a fresh gateway (1000 tokens an hour,
/// so nothing refills meanwhile).
#[tokio::test]
async fn a_reservation_takes_the_first_budget_the_request_names() {
    let mock = MockUpstream::start().await;
    let sections = "limits:\n  tokens:\n    - {name: tph, by: key, tokens: 1000/h}\n  estimate: {default_max_tokens: 77, clamp: false}";
    for (body, completion) in [
        (
            json!({"model": "m", "max_completion_tokens": 50, "max_tokens": 500, "messages": []}),
            50,
        ),
        (
            json!({"model": "m", "max_tokens": 500, "max_output_tokens": 60, "messages": []}),
            500,
        ),
        (
            json!({"model": "m", "max_output_tokens": 60, "messages": []}),
            60,
        ),
        (json!({"model": "m", "messages": []}), 77),
    ] {
        let gw = TestGateway::start(&yaml(&mock.url(), "", sections)).await;
        let r = post(&client(), &gw, &body).await;
        assert_eq!(r.status(), 200);
        let prompt = (body.to_string().len() as i64 + 3) / 4;
        let remaining: i64 = header(&r, "x-ratelimit-remaining-tokens").parse().unwrap();
        let want = 1000 - completion - prompt;
        assert!(
            (remaining - want).abs() <= 1,
            "{body}: {remaining} left, expected {want}"
        );
    }
}

/// An answer that reports no usage keeps its whole reservation (nothing says what it cost); a
/// request the gateway answered itself (here 502: its upstream refuses connections) gets its
/// reservation back.
#[tokio::test]
async fn no_usage_keeps_the_reservation_and_a_gateway_answer_refunds_it() {
    let mock = MockUpstream::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let yaml = yaml(
        &mock.url(),
        "",
        "limits:\n  tokens:\n    - {name: tph, by: key, tokens: 1000/h}\n  estimate: {default_max_tokens: 100, clamp: false}",
    )
    .replace(
        "routes:\n",
        &format!("  - name: dead\n    url: {dead}\nroutes:\n  - path_prefix: /dead/\n    upstreams: [dead]\n"),
    );
    let gw = TestGateway::start(&yaml).await;
    let c = client();
    let remaining = |r: &reqwest::Response| -> i64 {
        header(r, "x-ratelimit-remaining-tokens").parse().unwrap()
    };
    let body = json!({"model": "m", "max_tokens": 100, "messages": []});
    let reserve = 100 + (body.to_string().len() as i64 + 3) / 4;

    // A gateway answer: reserved, then all of it back.
    let refused = c
        .post(gw.url("/dead/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 502);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A stream that reports no usage (no `stream_options.include_usage`): kept whole.
    let stream = json!({"model": "m", "max_tokens": 100, "stream": true, "messages": []});
    let stream_reserve = 100 + (stream.to_string().len() as i64 + 3) / 4;
    let s = post(&c, &gw, &stream).await;
    let after_stream = remaining(&s);
    assert!(
        (after_stream - (1000 - stream_reserve)).abs() <= 1,
        "the 502 was refunded: {after_stream} left"
    );
    let text = s.text().await.unwrap();
    assert!(!text.contains("\"usage\""), "the stream reported no usage");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let next = post(&c, &gw, &body).await;
    let left = remaining(&next);
    assert!(
        (left - (1000 - stream_reserve - reserve)).abs() <= 1,
        "the usage-less stream kept its reservation: {left} left"
    );
}

/// `routes[].max_request_tokens`: a prompt estimated over the route's cap (body bytes /
/// `bytes_per_token`) gets 400 `context_length_exceeded` before any upstream; one under it is
/// served; 0 is refused at load with its YAML path.
#[tokio::test]
async fn a_prompt_over_the_routes_token_cap_is_refused_before_any_upstream() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&yaml(&mock.url(), "", "").replace(
        "    upstreams: [u0]\n",
        "    upstreams: [u0]\n    max_request_tokens: 100\n",
    ))
    .await;
    let c = client();
    let small = post(&c, &gw, &chat_body(false)).await;
    assert_eq!(small.status(), 200);
    // About 2000 bytes: 500 tokens at 4 bytes each.
    let mut big = chat_body(false);
    big["messages"] = json!([{"role": "user", "content": "x".repeat(2000)}]);
    let refused = post(&c, &gw, &big).await;
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("over this route's limit of 100"),
        "{body}"
    );
    assert_eq!(
        mock.requests(),
        1,
        "only the small request reached the upstream"
    );

    let zero = yaml(&mock.url(), "", "").replace(
        "    upstreams: [u0]\n",
        "    upstreams: [u0]\n    max_request_tokens: 0\n",
    );
    let err = tollgate::Config::parse(&zero, "t.yaml", Box::new(|_| None)).unwrap_err();
    assert!(
        err.to_string().contains("routes[0].max_request_tokens"),
        "{err}"
    );
}
