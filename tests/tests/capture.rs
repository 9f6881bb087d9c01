//! Body capture: off by default; `errors` keeps the bodies of failed requests only, `all` of
//! every one (a stream as its text); redaction happens before anything is written (the database
//! file's bytes never hold what was redacted); bodies are capped.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use serde_json::{Value, json};
use tollgate_tests::{
    CLIENT_KEY, MockUpstream, TestGateway, admin_get, admin_token, client, config_yaml,
};

const ADMIN: &str = "admin:\n  listen: 127.0.0.1:0\n  jwt_secret: an-admin-signing-key-of-32-chars!!\n  users:\n    - {username: ops, password: correct horse battery}\n";

fn yaml(mock: &MockUpstream, sections: &str) -> String {
    let base = config_yaml(&[mock.url()], "").replace("admin:\n  listen: 127.0.0.1:0\n", ADMIN);
    format!("{base}storage:\n  database: sqlite://log.db\n  request_log: {{sample: 1}}\n{sections}")
}

async fn rows(gw: &TestGateway) -> Vec<Value> {
    gw.gateway.stores.flush().await;
    let http = client();
    let admin = gw.admin_addr.unwrap().to_string();
    let token = admin_token(&http, &admin, "ops", "correct horse battery").await;
    admin_get(&http, &admin, &token, "/admin/api/requests?limit=100").await["items"]
        .as_array()
        .unwrap()
        .clone()
}

/// A request whose body carries a secret, an e-mail address and a phone number.
fn sensitive(stream: bool) -> Value {
    json!({"model": "gpt-test", "stream": stream,
           "messages": [{"role": "user", "content": "my secret plan"}],
           "metadata": {"email": "alice@example.com", "note": "call 555-1234"},
           "api_key": "sk-live-0123456789abcdefghij"})
}

async fn send(gw: &TestGateway, body: &Value, status: Option<&str>) -> (u16, String) {
    let mut r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(body);
    if let Some(s) = status {
        r = r.header("x-mock-status", s);
    }
    let resp = r.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// Off by default: no body is kept, not even a failed request's.
#[tokio::test]
async fn nothing_is_kept_by_default() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&yaml(&mock, "")).await;
    assert_eq!(send(&gw, &sensitive(false), Some("500")).await.0, 500);
    let rows = rows(&gw).await;
    assert_eq!(rows.len(), 1);
    assert!(rows[0]["request_body"].is_null(), "{}", rows[0]);
    assert!(rows[0]["response_body"].is_null());
}

/// `errors`: the failed request keeps both bodies, redacted (the configured JSON paths and
/// pattern, and always the API key); the successful one keeps none; what was redacted is
/// nowhere in the database file.
#[tokio::test]
async fn errors_keeps_failed_requests_redacted_before_they_are_written() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_in(
        &yaml(
            &mock,
            "capture:\n  requests: errors\n  redact: [\"messages[*].content\", metadata.email, \"/\\\\d{3}-\\\\d{4}/\"]\n",
        ),
        dir.path(),
    )
    .await;
    assert_eq!(send(&gw, &sensitive(false), None).await.0, 200);
    let (status, answer) = send(&gw, &sensitive(false), Some("400")).await;
    assert_eq!(status, 400);
    let rows = rows(&gw).await;
    assert_eq!(rows.len(), 2);
    let (failed, ok) = (&rows[0], &rows[1]);
    assert_eq!(failed["status"], 400);
    assert!(ok["request_body"].is_null(), "a success is not kept: {ok}");
    let kept: Value = serde_json::from_str(failed["request_body"].as_str().unwrap()).unwrap();
    assert_eq!(kept["messages"][0]["content"], "[redacted]");
    assert_eq!(kept["messages"][0]["role"], "user");
    assert_eq!(kept["metadata"]["email"], "[redacted]");
    assert_eq!(kept["metadata"]["note"], "call [redacted]");
    assert_eq!(kept["api_key"], "[redacted]");
    assert_eq!(
        failed["response_body"], answer,
        "the upstream's error answer"
    );
    drop(gw);
    // The bytes on disk: the database and its write-ahead log.
    let mut disk = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().contains("log.db") {
            disk.extend(std::fs::read(path).unwrap());
        }
    }
    assert!(!disk.is_empty());
    for secret in [
        "my secret plan",
        "alice@example.com",
        "555-1234",
        "sk-live-0123456789",
    ] {
        assert!(
            !disk.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} is in the database file"
        );
    }
}

/// `all` on one route: a stream is kept as the text its events carried; `max_bytes` cuts it.
#[tokio::test]
async fn all_keeps_a_stream_as_its_text_cut_to_max_bytes() {
    let mock = MockUpstream::start().await;
    let yaml = yaml(&mock, "").replace(
        "    upstreams: [u0]\n",
        "    upstreams: [u0]\n    capture: {requests: all, max_bytes: 24}\n",
    );
    let gw = TestGateway::start(&yaml).await;
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("x-mock-events", "20")
        .json(&sensitive(true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap();
    let rows = rows(&gw).await;
    let answer = rows[0]["response_body"].as_str().unwrap();
    // The mock streams the words "w0 ", "w1 ", …: 24 bytes of their text, then the mark.
    assert_eq!(answer, "w0 w1 w2 w3 w4 w5 w6 w7  …[cut]");
    let request = rows[0]["request_body"].as_str().unwrap();
    assert!(request.ends_with(" …[cut]") && request.len() <= 24 + " …[cut]".len());
    assert!(!request.contains("sk-live"), "{request}");
}

async fn send_as(gw: &TestGateway, key: &str, status: Option<&str>) -> u16 {
    let mut r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&sensitive(false));
    if let Some(s) = status {
        r = r.header("x-mock-status", s);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    resp.text().await.unwrap();
    status
}

/// The rows of `key_name`'s requests, oldest first, as (status, whether bodies were kept).
fn kept_by(rows: &[Value], key_name: &str) -> Vec<(u64, bool)> {
    let mut out: Vec<(u64, bool)> = rows
        .iter()
        .filter(|r| r["key_name"] == key_name)
        .map(|r| (r["status"].as_u64().unwrap(), r["request_body"].is_string()))
        .collect();
    out.reverse();
    out
}

/// A key's own `capture` beats its route's: a config key with `all` keeps every request where the
/// route keeps none, a key with `off` keeps nothing where the top-level says `errors`, and the
/// other keys follow the route.
#[tokio::test]
async fn a_config_keys_capture_beats_its_routes() {
    let mock = MockUpstream::start().await;
    const WATCHED: &str = "sk-watched-client-key-0123456789";
    const PRIVATE: &str = "sk-private-client-key-0123456789";
    let keys = format!(
        "    - name: watched\n      key: {WATCHED}\n      capture: {{requests: all, redact: [metadata.email]}}\n    - name: private\n      key: {PRIVATE}\n      capture: {{requests: off}}\nupstreams:\n"
    );
    let yaml = yaml(&mock, "capture: {requests: errors}\n").replacen("upstreams:\n", &keys, 1);
    let gw = TestGateway::start(&yaml).await;
    for key in [CLIENT_KEY, WATCHED, PRIVATE] {
        assert_eq!(send_as(&gw, key, None).await, 200);
        assert_eq!(send_as(&gw, key, Some("500")).await, 500);
    }
    let rows = rows(&gw).await;
    assert_eq!(rows.len(), 6);
    assert_eq!(kept_by(&rows, "tester"), [(200, false), (500, true)]);
    assert_eq!(kept_by(&rows, "watched"), [(200, true), (500, true)]);
    assert_eq!(kept_by(&rows, "private"), [(200, false), (500, false)]);
    // The key's own redaction applies to its bodies.
    let watched = rows.iter().find(|r| r["key_name"] == "watched").unwrap();
    let kept: Value = serde_json::from_str(watched["request_body"].as_str().unwrap()).unwrap();
    assert_eq!(kept["metadata"]["email"], "[redacted]");
    assert_eq!(kept["messages"][0]["content"], "my secret plan");
}

/// A stored key's `capture` is set, shown and cleared through the admin API, and the request
/// path follows it at once: kept while set, the route's (none) once cleared; a bad one is
/// refused naming its field.
#[tokio::test]
async fn a_stored_keys_capture_is_set_and_cleared_at_run_time() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&yaml(&mock, "")).await;
    let http = client();
    let admin = gw.admin_addr.unwrap().to_string();
    let token = admin_token(&http, &admin, "ops", "correct horse battery").await;
    let api = |method: reqwest::Method, path: &str, body: Value| {
        http.request(method, format!("http://{admin}/admin/api{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let resp = api(
        reqwest::Method::POST,
        "/keys",
        json!({"name": "carol", "capture": {"requests": "errors", "redact": ["/(/"]}}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["param"], "capture", "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("redact[0]: is not a valid regular expression"),
        "{err}"
    );
    let resp = api(
        reqwest::Method::POST,
        "/keys",
        json!({"name": "carol", "capture": {"requests": "errors", "max_bytes": 1000}}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 201);
    let created: Value = resp.json().await.unwrap();
    assert_eq!(created["key"]["capture"]["requests"], "errors");
    assert_eq!(created["key"]["capture"]["max_bytes"], 1000);
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert_eq!(send_as(&gw, &secret, None).await, 200);
    assert_eq!(send_as(&gw, &secret, Some("503")).await, 503);
    let resp = api(
        reqwest::Method::PATCH,
        "/keys/carol",
        json!({"capture": null}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let updated: Value = resp.json().await.unwrap();
    assert!(updated["capture"].is_null(), "{updated}");
    assert_eq!(send_as(&gw, &secret, Some("503")).await, 503);
    let rows = rows(&gw).await;
    assert_eq!(
        kept_by(&rows, "carol"),
        [(200, false), (503, true), (503, false)]
    );
    let failed = rows.iter().rev().find(|r| r["status"] == 503).unwrap();
    assert!(
        !failed["request_body"].as_str().unwrap().contains("sk-live"),
        "secrets are always redacted"
    );
}
