//! Prices, spend and budgets: each request's cost from its reported tokens, shown by the usage
//! API, the CLI and `/metrics`; budgets per key and per owner, in money or tokens, that hold
//! under concurrent streams on two gateways sharing Redis, and across a restart.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use serde_json::{Value, json};
use tollgate_tests::services::{Postgres, Redis};
use tollgate_tests::{CLIENT_KEY, MockUpstream, TestGateway, admin_token, client, config_yaml};

fn with_admin(yaml: &str) -> String {
    yaml.replace(
        "admin:\n  listen: 127.0.0.1:0\n",
        "admin:\n  listen: 127.0.0.1:0\n  jwt_secret: an-admin-signing-key-of-32-chars!!\n  users:\n    - {username: ops, password: correct horse battery}\n",
    )
}

/// The test key with `fields` added (e.g. `owner: t`).
fn yaml_with(upstream: &str, key_fields: &str, sections: &str) -> String {
    let base = config_yaml(&[upstream.to_owned()], "");
    let base = base.replace(
        &format!("      key: {CLIENT_KEY}\n"),
        &format!("      key: {CLIENT_KEY}\n{key_fields}"),
    );
    with_admin(&format!("{base}{sections}\n"))
}

/// $1000 and $2000 per million tokens: one input token costs $0.001, one output token $0.002.
const PRICING: &str =
    "pricing:\n  currency: EUR\n  models:\n    - {match: gpt-*, input: 1000, output: 2000}";

/// A stream asking for at most `max_tokens`, whose answer (the mock's) runs to `events` words.
async fn stream(gw: &TestGateway, max_tokens: u64, events: &str) -> (u16, String) {
    let body = json!({"model": "gpt-test", "stream": true, "max_tokens": max_tokens,
                      "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "hi"}]});
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("x-mock-events", events)
        .header("x-mock-delay-ms", "5")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

/// A small non-streamed request for `model`.
async fn ask_model(gw: &TestGateway, model: &str) -> reqwest::Response {
    client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&json!({"model": model, "messages": []}))
        .send()
        .await
        .unwrap()
}

/// The reservation of `stream(.., max_tokens, ..)`: its body over 4 bytes a token, plus
/// `max_tokens`.
fn reservation(max_tokens: u64) -> u64 {
    let body = json!({"model": "gpt-test", "stream": true, "max_tokens": max_tokens,
                      "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "hi"}]});
    (body.to_string().len() as u64).div_ceil(4) + max_tokens
}

async fn usage_by_key(gw: &TestGateway) -> Value {
    let http = client();
    let admin = gw.admin_addr.unwrap().to_string();
    let token = admin_token(&http, &admin, "ops", "correct horse battery").await;
    http.get(format!("http://{admin}/admin/api/usage?by=key"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A request's cost is its tokens at its model's price: in the usage API (with the currency) and
/// in `/metrics`.
#[tokio::test]
async fn spend_is_the_reported_tokens_at_the_models_price() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&yaml_with(&mock.url(), "", PRICING)).await;
    let (status, text) = stream(&gw, 100, "10").await;
    assert_eq!(status, 200, "{text}");
    // The mock reports 8 prompt tokens and one completion token per word.
    let expected = 8.0 * 0.001 + 10.0 * 0.002;
    gw.gateway.stores.flush().await;
    let rows = usage_by_key(&gw).await;
    let row = &rows[0];
    assert_eq!(row["name"], "tester");
    assert_eq!(row["currency"], "EUR");
    assert!(
        (row["cost"].as_f64().unwrap() - expected).abs() < 1e-9,
        "{row}"
    );
    let metrics = gw.metrics().await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("tollgate_spend_total{") && l.contains("key=\"tester\""))
        .unwrap_or_else(|| panic!("{metrics}"));
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((value - expected).abs() < 1e-9, "{line}");
    // A model without a price costs nothing and is not refused (no money budget).
    let unpriced = ask_model(&gw, "llama").await;
    assert_eq!(unpriced.status(), 200);
}

/// What a stream delivered: its events with content (the mock's first only names the role).
fn words(text: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.starts_with("data: {") && l.contains("\"content\"") && !l.contains("\"content\":\"\"")
        })
        .count() as u64
}

/// 50 concurrent streams, split over two gateways sharing Redis, against one owner's budget of
/// 1000 tokens a day with `enforce`, each asking for 40 tokens and answered with 100: what each
/// admitted stream delivered (its words, and whether the budget ended it), and the reservation
/// of one. Afterwards the
/// budget refuses the next request with OpenAI's `insufficient_quota` and the time it resets.
async fn fifty_overrunning_streams(enforce: &str) -> (Vec<(u64, bool)>, u64) {
    let (pg, redis, mock) = (
        Postgres::start(),
        Redis::start(),
        MockUpstream::start().await,
    );
    let db = pg.create_database("budgets").await;
    let yaml = yaml_with(
        &mock.url(),
        "      owner: team-t\n",
        &format!(
            "budgets:\n  enforce: {enforce}\n  owners:\n    - {{owner: team-t, tokens: 1000, period: day}}\nstorage:\n  database: {db}\n  cache: {}\n  op_timeout: 10s",
            redis.url()
        ),
    );
    let (a, b) = (
        TestGateway::start(&yaml).await,
        TestGateway::start(&yaml).await,
    );
    let reserve = reservation(40);
    let gws = [&a, &b];
    let all: Vec<_> = (0..50)
        .map(|i| {
            let gw = gws[i % 2];
            async move { stream(gw, 40, "100").await }
        })
        .collect();
    let results = futures_util::future::join_all(all).await;
    let mut delivered = Vec::new();
    for (status, text) in &results {
        match status {
            200 => delivered.push((words(text), text.contains("insufficient_quota"))),
            429 => {
                let v: Value = serde_json::from_str(text).unwrap();
                assert_eq!(v["error"]["code"], "insufficient_quota", "{v}");
                assert_eq!(v["error"]["type"], "insufficient_quota");
            }
            other => panic!("status {other}: {text}"),
        }
    }
    assert_eq!(
        delivered.len() as u64,
        1000 / reserve,
        "exactly what fits is admitted"
    );
    // Settled (each cut stream is charged what it held): nothing is left for another request.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let r = client()
        .post(a.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&json!({"model": "gpt-test", "max_tokens": 40, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");
    let v: Value = r.json().await.unwrap();
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("team-t") && message.contains("resets at"),
        "{message}"
    );
    (delivered, reserve)
}

/// `strict`: the reservations admit exactly what fits, the streams share what the budget has
/// left, and together they never pass it: their prompts plus every word delivered stay within
/// the 1000 tokens, and use nearly all of them.
#[tokio::test]
async fn a_strict_token_budget_holds_under_fifty_concurrent_overrunning_streams_on_two_gateways() {
    let (delivered, reserve) = fifty_overrunning_streams("strict").await;
    assert!(
        delivered.iter().all(|&(_, cut)| cut),
        "the budget ran out before any answer did: each ends with the error event"
    );
    let prompt = reserve - 40;
    let used: u64 = delivered.iter().map(|(w, _)| prompt + w).sum();
    assert!(
        used <= 1000,
        "the budget is never exceeded: {used} ({delivered:?})"
    );
    assert!(
        used + delivered.len() as u64 >= 1000 - reserve,
        "what was left went to the streams: {used} ({delivered:?})"
    );
}

/// `admission`: the same streams may run up to one reservation past the budget, no more,
/// across both gateways; at least one stream gets past its own reservation.
#[tokio::test]
async fn an_admission_budget_is_overrun_by_at_most_one_reservation_under_fifty_streams() {
    let (delivered, reserve) = fifty_overrunning_streams("admission").await;
    let prompt = reserve - 40;
    let used: u64 = delivered.iter().map(|(w, _)| prompt + w).sum();
    assert!(
        used <= 1000 + reserve,
        "overrun by at most one reservation ({reserve}): {used} ({delivered:?})"
    );
    assert!(
        used > 1000,
        "the overdraft was used: {used} ({delivered:?})"
    );
    assert!(delivered.iter().any(|&(w, _)| w > 40), "{delivered:?}");
    assert!(
        delivered.iter().filter(|&&(_, cut)| cut).count() >= delivered.len() - 1,
        "one stream at most finishes on the overdraft: {delivered:?}"
    );
}

/// A stream that runs past its reservation while its budget has room takes more and finishes:
/// it is not ended, and it is charged what it reported.
#[tokio::test]
async fn a_stream_past_its_reservation_finishes_while_the_budget_has_room() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&yaml_with(
        &mock.url(),
        "      budgets: [{tokens: 100000, period: day}]\n",
        "",
    ))
    .await;
    let (status, text) = stream(&gw, 10, "60").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(words(&text), 60, "{text}");
    assert!(!text.contains("insufficient_quota"), "{text}");
    gw.gateway.stores.flush().await;
    let rows = usage_by_key(&gw).await;
    // The mock's count: 8 prompt tokens, one per word.
    assert_eq!(rows[0]["input_tokens"], 8, "{rows}");
    assert_eq!(rows[0]["output_tokens"], 60, "{rows}");
}

/// A money budget on a key: admitted while what it may cost fits, then 429; a model without a
/// price is refused for it (its cost could not be counted); and a gateway started afresh on the
/// same database still counts what was spent.
#[tokio::test]
async fn a_money_budget_is_counted_from_the_usage_table_after_a_restart() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    // 0.5 EUR a month: at $0.001 an input and $0.002 an output token.
    let yaml = yaml_with(
        &mock.url(),
        "      budgets: [{amount: 0.5, period: month}]\n",
        &format!("{PRICING}\nstorage:\n  database: sqlite://b.db\n"),
    );
    let mut gw = TestGateway::start_in(&yaml, dir.path()).await;
    let unpriced = ask_model(&gw, "llama").await;
    assert_eq!(unpriced.status(), 403);
    let v: Value = unpriced.json().await.unwrap();
    assert_eq!(v["error"]["code"], "model_not_priced");
    // Each request: 8 prompt and 50 output tokens = 0.108; it reserves up to
    // (prompt estimate + 60) tokens' price.
    let mut ok = 0;
    for _ in 0..10 {
        let (status, _) = stream(&gw, 60, "50").await;
        if status == 200 {
            ok += 1;
        } else {
            assert_eq!(status, 429);
            break;
        }
    }
    assert!((2..=4).contains(&ok), "{ok} requests fit in 0.5");
    gw.begin_shutdown().await.unwrap();
    drop(gw);
    let gw = TestGateway::start_in(&yaml, dir.path()).await;
    let (status, text) = stream(&gw, 60, "50").await;
    assert_eq!(
        status, 429,
        "the restarted gateway remembers the spend: {text}"
    );
}

/// A budget's `alert_at` percentages each send one webhook alert when the spend passes them.
#[tokio::test]
async fn a_budget_passing_its_alert_percentages_sends_one_alert_each() {
    let sink = tollgate_tests::WebhookSink::start(0).await;
    let hook = &sink.url;
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&yaml_with(
        &mock.url(),
        "      budgets: [{tokens: 100, period: week, alert_at: [10, 20, 90]}]\n",
        &format!("alerts:\n  webhook: {hook}"),
    ))
    .await;
    for _ in 0..4 {
        // 8 prompt and 5 completion tokens each (the mock's count): 52 in all.
        let (status, text) = stream(&gw, 10, "5").await;
        assert_eq!(status, 200, "{text}");
    }
    assert!(
        tollgate_tests::eventually(std::time::Duration::from_secs(5), || {
            sink.received().len() >= 2
        })
        .await
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let got = sink.received();
    let percents: Vec<u64> = got.iter().map(|a| a["percent"].as_u64().unwrap()).collect();
    assert_eq!(
        percents,
        [10, 20],
        "one alert per percentage passed, none for 90: {got:?}"
    );
    assert_eq!(got[1]["event"], "budget_threshold");
    assert_eq!(got[1]["scope"], "key");
    assert_eq!(got[1]["name"], "tester");
    assert_eq!(got[1]["unit"], "tokens");
    assert_eq!(got[1]["limit"], 100.0);
    assert_eq!(got[1]["period"], "week");
    // The admin API's /alerts lists what this gateway sent, newest first, delivered.
    let sent = gw.gateway.stores.recent_alerts();
    let shown: Vec<(u64, &str)> = sent
        .iter()
        .map(|a| (a.alert["percent"].as_u64().unwrap(), a.delivery))
        .collect();
    assert_eq!(shown, [(20, "delivered"), (10, "delivered")], "{sent:?}");
}

/// A reservation too large to be counted (a `max_tokens` near 2^64, whose tokens or price are
/// past what a counter holds) is refused like any that does not fit, never counted as a
/// negative or wrapped one.
#[tokio::test]
async fn a_reservation_past_what_a_counter_holds_is_refused() {
    let mock = MockUpstream::start().await;
    // A key's own token limit too (there, with the prompt added, it used to wrap to a few).
    for (fields, code) in [
        (
            "      budgets: [{amount: 5, period: day}]\n",
            "insufficient_quota",
        ),
        (
            "      budgets: [{tokens: 100000, period: day}]\n",
            "insufficient_quota",
        ),
        ("      limits: {tokens: 100000/d}\n", "rate_limit_exceeded"),
    ] {
        let yaml = yaml_with(&mock.url(), fields, PRICING);
        let gw = TestGateway::start(&yaml).await;
        for max_tokens in [
            u64::MAX - 5,
            18_000_000_000_000_000_000,
            5_000_000_000_000_000_000,
        ] {
            let (status, text) = stream(&gw, max_tokens, "1").await;
            assert_eq!(status, 429, "{fields}, max_tokens {max_tokens}: {text}");
            assert!(text.contains(code), "{text}");
        }
        // The budget is whole: a small request still fits.
        let (status, text) = stream(&gw, 10, "1").await;
        assert_eq!(status, 200, "{fields}: {text}");
    }
}
