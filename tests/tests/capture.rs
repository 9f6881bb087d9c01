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
