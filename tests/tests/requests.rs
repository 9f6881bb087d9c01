//! The request log: every request the data plane answers, proxied or refused, with the code of
//! a refusal and what gave it; failovers with each attempt; abandoned streams with their partial
//! tokens; sampling, retention and the writer's bound; the admin API's filters, paging and
//! exports.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use serde_json::{Value, json};
use tollgate_tests::plugins::wasm;
use tollgate_tests::{
    CLIENT_KEY, DeadPort, MockUpstream, TestGateway, admin_get, admin_token, chat_body, client,
    client_from, config_yaml, plugin, policy_config_yaml,
};

const ADMIN: &str = "admin:\n  listen: 127.0.0.1:0\n  jwt_secret: an-admin-signing-key-of-32-chars!!\n  users:\n    - {username: ops, password: correct horse battery}\n";

fn with_admin(yaml: &str) -> String {
    yaml.replace("admin:\n  listen: 127.0.0.1:0\n", ADMIN)
}

/// With an operator, and every request logged (by default only what failed is).
fn log_all(yaml: &str) -> String {
    format!(
        "{}storage:\n  request_log: {{sample: 1}}\n",
        with_admin(yaml)
    )
}

/// Logs in and reads `path` (under `/admin/api`).
async fn api(gw: &TestGateway, path: &str) -> Value {
    let http = client();
    let admin = gw.admin_addr.unwrap().to_string();
    let token = admin_token(&http, &admin, "ops", "correct horse battery").await;
    admin_get(&http, &admin, &token, &format!("/admin/api{path}")).await
}

/// The logged requests matching `query`, newest first (after a flush).
async fn logged(gw: &TestGateway, query: &str) -> Vec<Value> {
    gw.gateway.stores.flush().await;
    let page = api(gw, &format!("/requests?limit=1000&{query}")).await;
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"))
        .clone()
}

async fn chat(c: &reqwest::Client, gw: &TestGateway, path: &str, key: &str) -> u16 {
    c.post(gw.url(path))
        .bearer_auth(key)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Every kind of refusal is logged with its code and what gave it: the address list, the key
/// check, the route table, a named rate limit, maintenance, the key's entitlements and a policy
/// plugin; proxied requests are logged beside them with their upstream attempt.
#[tokio::test]
async fn every_refusal_is_logged_with_its_code_and_what_refused_it() {
    let mock = MockUpstream::start().await;
    let mut yaml = log_all(&config_yaml(&[mock.url()], ""));
    yaml = yaml.replace(
        &format!("      key: {CLIENT_KEY}\n"),
        &format!(
            "      key: {CLIENT_KEY}\n    - {{name: narrow, key: sk-narrow-key-0001, models: [only-this]}}\n"
        ),
    );
    yaml = yaml.replace(
        "    upstreams: [u0]\n",
        "    upstreams: [u0]\n    policies: [bind]\n  - path_prefix: /limited/\n    upstreams: [u0]\n  - path_prefix: /closed/\n    upstreams: [u0]\n    maintenance: true\n",
    );
    yaml.push_str(&format!(
        "access:\n  deny: [127.0.0.2]\nlimits:\n  requests:\n    - {{name: per-ip, by: ip, rate: 1/m, burst: 1, routes: [/limited/]}}\nplugins:\n  - {{name: bind, kind: ip-binding, module: {}, config: {{prefix_v4: 32}}}}\n",
        wasm("tollgate_ip_binding").display()
    ));
    let gw = TestGateway::start(&yaml).await;
    let local = client();
    assert_eq!(
        chat(&local, &gw, "/v1/chat/completions", CLIENT_KEY).await,
        200
    );
    let cases: Vec<(u16, &str, &str)> = vec![
        (
            chat(
                &client_from("127.0.0.2"),
                &gw,
                "/v1/chat/completions",
                CLIENT_KEY,
            )
            .await,
            "ip_denied",
            "access",
        ),
        (
            chat(&local, &gw, "/v1/chat/completions", "sk-wrong").await,
            "invalid_api_key",
            "auth",
        ),
        (
            chat(&local, &gw, "/nowhere/x", CLIENT_KEY).await,
            "unknown_url",
            "route",
        ),
        (
            chat(
                &client_from("127.0.0.3"),
                &gw,
                "/v1/chat/completions",
                CLIENT_KEY,
            )
            .await,
            "ip_not_allowed",
            "plugin:bind",
        ),
        (
            chat(&local, &gw, "/closed/chat/completions", CLIENT_KEY).await,
            "service_unavailable",
            "maintenance",
        ),
        (
            chat(&local, &gw, "/v1/chat/completions", "sk-narrow-key-0001").await,
            "model_not_allowed",
            "entitlements",
        ),
        {
            // The rate and its burst of one pass; the third is refused.
            for _ in 0..2 {
                assert_eq!(
                    chat(&local, &gw, "/limited/chat/completions", CLIENT_KEY).await,
                    200
                );
            }
            (
                chat(&local, &gw, "/limited/chat/completions", CLIENT_KEY).await,
                "rate_limit_exceeded",
                "limits:per-ip",
            )
        },
    ];
    let refused = logged(&gw, "error=any").await;
    for (status, code, by) in &cases {
        let row = refused
            .iter()
            .find(|r| r["error"] == *code)
            .unwrap_or_else(|| panic!("{code} not logged: {refused:#?}"));
        assert_eq!(row["status"], *status, "{row}");
        assert_eq!(row["answered_by"], *by, "{row}");
        assert_eq!(row["outcome"], "refused", "{row}");
        assert_eq!(
            row["attempts"],
            json!([]),
            "refused before any upstream: {row}"
        );
    }
    assert_eq!(refused.len(), cases.len(), "{refused:#?}");
    // The filters: by what refused, by status class, by key name.
    let limited = logged(&gw, "answered_by=limits:per-ip").await;
    assert_eq!(limited.len(), 1);
    assert_eq!(limited[0]["route"], "/limited/");
    assert_eq!(
        limited[0]["key_name"], "",
        "a limit by address acts before the key is read"
    );
    let ok = logged(&gw, "status=2xx").await;
    assert_eq!(ok.len(), 3, "{ok:#?}");
    for row in &ok {
        assert_eq!(row["outcome"], "complete");
        assert_eq!(row["upstream"], "u0");
        assert_eq!(row["attempts"][0]["upstream"], "u0");
        assert_eq!(row["attempts"][0]["status"], 200);
        assert_eq!(row["answered_by"], "");
        assert!(row["duration_us"].as_u64().unwrap() > 0);
    }
    assert_eq!(logged(&gw, "key=narrow").await.len(), 1);
    assert_eq!(logged(&gw, "ip=127.0.0.3").await.len(), 1);
    // One request by its id.
    let id = ok[0]["request_id"].as_str().unwrap();
    let one = api(&gw, &format!("/requests/{id}")).await;
    assert_eq!(one["id"], ok[0]["id"]);
}

/// A failover shows both attempts: the upstream that refused the connection, then the one that
/// answered.
#[tokio::test]
async fn a_failover_shows_both_attempts() {
    let (dead, mock) = (DeadPort::new(), MockUpstream::start().await);
    let gw = TestGateway::start(&log_all(&config_yaml(&[dead.url(), mock.url()], ""))).await;
    assert_eq!(
        chat(&client(), &gw, "/v1/chat/completions", CLIENT_KEY).await,
        200
    );
    let rows = logged(&gw, "").await;
    assert_eq!(rows.len(), 1);
    let attempts = rows[0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0]["upstream"], "u0");
    assert_eq!(attempts[0]["status"], 0);
    assert_eq!(attempts[0]["error"], "upstream_unavailable");
    assert_eq!(attempts[1]["upstream"], "u1");
    assert_eq!(attempts[1]["status"], 200);
    assert_eq!(rows[0]["upstream"], "u1");
    assert_eq!(logged(&gw, "upstream=u1").await.len(), 1);
    assert_eq!(logged(&gw, "upstream=u0").await.len(), 0);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(
            "tollgate_upstream_failovers_total{reason=\"upstream_unavailable\",route=\"/v1/\",upstream=\"u0\"} 1"
        ),
        "{metrics}"
    );
}

/// The policies' decisions are in the row: the router's order, and the quota policy's verdict
/// on the upstream that answered 429 (and a failover attempt marked `retry`).
#[tokio::test]
async fn the_policies_decisions_are_logged() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let yaml = policy_config_yaml(
        &[a.url(), b.url()],
        &[
            plugin("first", "router", "tollgate_fill_first", "{}"),
            plugin("quota", "quota", "tollgate_quota_switch", "{}"),
        ],
        &["first", "quota"],
    );
    let gw = TestGateway::start(&log_all(&yaml)).await;
    a.force_status(429);
    assert_eq!(
        chat(&client(), &gw, "/v1/chat/completions", CLIENT_KEY).await,
        200
    );
    let rows = logged(&gw, "").await;
    let row = &rows[0];
    assert_eq!(
        row["decisions"][0],
        json!({"policy": "plugin:first", "decision": ["u0", "u1"]}),
        "{row}"
    );
    let quota = &row["decisions"][1];
    assert_eq!(quota["policy"], "plugin:quota", "{row}");
    assert_eq!(quota["decision"]["upstream"], "u0");
    assert!(
        quota["decision"]["verdict"]["cooldown"].is_object(),
        "{row}"
    );
    assert_eq!(row["attempts"][0]["status"], 429);
    assert_eq!(row["attempts"][0]["error"], "retry");
    assert_eq!(row["attempts"][1]["upstream"], "u1");
    assert_eq!(row["upstream"], "u1");
}

/// A stream the client abandons is logged as such, with the tokens seen so far, marked partial.
#[tokio::test]
async fn an_abandoned_stream_is_logged_with_its_partial_tokens() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&log_all(&config_yaml(&[mock.url()], ""))).await;
    let body = json!({"model": "claude-test", "max_tokens": 64, "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]});
    let mut resp = client()
        .post(gw.url("/v1/messages"))
        .bearer_auth(CLIENT_KEY)
        .header("x-mock-events", "50")
        .header("x-mock-delay-ms", "100")
        .json(&body)
        .send()
        .await
        .unwrap();
    resp.chunk().await.unwrap().unwrap();
    drop(resp);
    assert!(tollgate_tests::eventually(Duration::from_secs(5), || mock.cancelled() == 1).await);
    let rows = logged(&gw, "outcome=client_aborted").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["partial"], true, "{row}");
    assert_eq!(row["input_tokens"], 8, "{row}");
    assert_eq!(row["model"], "claude-test");
    assert_eq!(
        row["served_model"], "claude-test",
        "from the stream's message_start"
    );
    assert!(row["first_byte_us"].as_u64().is_some(), "{row}");
}

/// `sample: 0` keeps no successful request but every refusal; past `max_pending` waiting
/// entries new ones are dropped and counted; `max_rows` keeps the newest.
#[tokio::test]
async fn sampling_the_writers_bound_and_retention() {
    let mock = MockUpstream::start().await;
    let base = with_admin(&config_yaml(&[mock.url()], ""));
    let sampled =
        TestGateway::start(&format!("{base}storage:\n  request_log: {{sample: 0}}\n")).await;
    let c = client();
    for _ in 0..5 {
        assert_eq!(
            chat(&c, &sampled, "/v1/chat/completions", CLIENT_KEY).await,
            200
        );
        assert_eq!(
            chat(&c, &sampled, "/v1/chat/completions", "sk-nope").await,
            401
        );
    }
    let rows = logged(&sampled, "").await;
    assert_eq!(rows.len(), 5, "only the refusals: {rows:#?}");
    assert!(rows.iter().all(|r| r["status"] == 401));

    // A long flush interval, so the buffer fills before the writer takes it.
    let bounded = TestGateway::start(&format!(
        "{base}storage:\n  flush_interval: 1h\n  request_log: {{sample: 1, max_pending: 4, max_rows: 3}}\n"
    ))
    .await;
    for _ in 0..10 {
        assert_eq!(
            chat(&c, &bounded, "/v1/chat/completions", CLIENT_KEY).await,
            200
        );
    }
    assert_eq!(logged(&bounded, "").await.len(), 4, "the first four waited");
    let metrics = bounded.metrics().await;
    assert!(
        metrics.contains("tollgate_request_log_dropped_total 6"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("request_log"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for _ in 0..4 {
        assert_eq!(
            chat(&c, &bounded, "/v1/chat/completions", CLIENT_KEY).await,
            200
        );
    }
    bounded.gateway.stores.flush().await;
    let before: Vec<i64> = logged(&bounded, "")
        .await
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(before.len(), 8);
    let gone = bounded.gateway.stores.prune_requests().await.unwrap();
    assert_eq!(gone, 5);
    let after: Vec<i64> = logged(&bounded, "")
        .await
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(after, before[..3], "the newest three stay");
}

/// Keyset paging (`before`/`next`), the live tail (`after`), bad filters (400 naming the
/// parameter), and the CSV and NDJSON exports.
#[tokio::test]
async fn pages_tail_exports_and_bad_filters() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&log_all(&config_yaml(&[mock.url()], ""))).await;
    let c = client();
    for _ in 0..5 {
        assert_eq!(chat(&c, &gw, "/v1/chat/completions", CLIENT_KEY).await, 200);
    }
    gw.gateway.stores.flush().await;
    let first = api(&gw, "/requests?limit=2").await;
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let next = first["next"].as_i64().unwrap();
    let second = api(&gw, &format!("/requests?limit=2&before={next}")).await;
    let third = api(
        &gw,
        &format!(
            "/requests?limit=2&before={}",
            second["next"].as_i64().unwrap()
        ),
    )
    .await;
    assert_eq!(third["items"].as_array().unwrap().len(), 1);
    assert!(third["next"].is_null());
    let ids: Vec<i64> = [&first, &second, &third]
        .iter()
        .flat_map(|p| p["items"].as_array().unwrap().iter())
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted.dedup();
    assert_eq!(ids, sorted, "newest first, no row twice");
    // The tail: what came after the newest id seen, oldest first.
    let newest = ids[0];
    assert_eq!(chat(&c, &gw, "/v1/chat/completions", "sk-nope").await, 401);
    gw.gateway.stores.flush().await;
    let tail = api(&gw, &format!("/requests?after={newest}")).await;
    assert_eq!(tail["items"].as_array().unwrap().len(), 1);
    assert_eq!(tail["items"][0]["status"], 401);
    assert_eq!(tail["next"], tail["items"][0]["id"]);

    let http = client();
    let admin = gw.admin_addr.unwrap().to_string();
    let token = admin_token(&http, &admin, "ops", "correct horse battery").await;
    for (query, field) in [
        ("status=6xx", "status"),
        ("outcome=maybe", "outcome"),
        ("ip=not-an-ip", "ip"),
        ("from_ms=5&to_ms=1", "from_ms"),
        ("colour=red", "colour"),
    ] {
        let r = http
            .get(format!("http://{admin}/admin/api/requests?{query}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{query}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"]["param"] == field, "{query}: {v}");
    }
    let csv = http
        .get(format!("http://{admin}/admin/api/requests.csv?status=4xx"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let text = csv.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("id,at,request_id,"));
    assert!(
        lines[1].contains(",401,refused,invalid_api_key,auth,"),
        "{text}"
    );
    let nd = http
        .get(format!("http://{admin}/admin/api/requests.ndjson"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rows: Vec<Value> = nd
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 6);
    assert_eq!(rows[0]["status"], 401, "newest first");
}

/// `tollgate requests` reads the same log with the same filters (a bad one names itself), as a
/// table or JSON lines, and `--follow` prints a request written after it started.
#[tokio::test]
async fn the_cli_lists_filters_and_follows_the_log() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    const BIN: &str = env!("CARGO_BIN_EXE_tollgate-under-test");
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gw.yaml");
    std::fs::write(
        &config,
        config_yaml(&[mock.url()], "")
            + "storage:\n  database: sqlite://gw.db\n  flush_interval: 100ms\n  request_log: {sample: 1}\n",
    )
    .unwrap();
    let gw = TestGateway::start_file(&config).await;
    let c = client();
    assert_eq!(chat(&c, &gw, "/v1/chat/completions", CLIENT_KEY).await, 200);
    assert_eq!(chat(&c, &gw, "/v1/chat/completions", "sk-nope").await, 401);
    gw.gateway.stores.flush().await;
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("requests")
            .args(args)
            .arg("-c")
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (ok, table, err) = run(&["--since", "1h"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("time\tstatus\toutcome"));
    assert!(
        lines[1].contains("\t401\trefused\tinvalid_api_key\tauth\t-\t127.0.0.1\t"),
        "{table}"
    );
    assert!(
        lines[2].contains("\t200\tcomplete\t-\t-\ttester\t"),
        "{table}"
    );
    let (ok, json, err) = run(&["--status", "2xx", "--json"]);
    assert!(ok, "{err}");
    let rows: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["key_name"], "tester");
    let (ok, _, err) = run(&["--status", "9xx"]);
    assert!(!ok);
    assert!(err.contains("status"), "{err}");

    let mut follow = Command::new(BIN)
        .args([
            "requests",
            "--follow",
            "--json",
            "--answered-by",
            "route",
            "-c",
        ])
        .arg(&config)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            if tx.send(l.unwrap()).is_err() {
                return;
            }
        }
    });
    // Started, and nothing matches yet: then a request the route table refuses.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(rx.try_recv().is_err());
    assert_eq!(chat(&c, &gw, "/nowhere", CLIENT_KEY).await, 404);
    // Waiting without blocking this runtime: the gateway under test runs on it.
    let mut got = None;
    for _ in 0..50 {
        if let Ok(l) = rx.try_recv() {
            got = Some(l);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    follow.kill().unwrap();
    follow.wait().unwrap();
    let got: Value = serde_json::from_str(&got.expect("the new request within 5 s")).unwrap();
    assert_eq!(got["error"], "unknown_url");
    assert_eq!(got["path"], "/nowhere");
}
