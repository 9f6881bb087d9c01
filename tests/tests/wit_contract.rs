//! The WIT contract, end to end: what each host import and each `request`/`response` method
//! returns to a real component, compared with what `wit/` documents. The component is
//! `plugins/probe` (a test fixture), which reports every value it read as an `x-probe-*` header.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use hmac::{Hmac, Mac};
use reqwest::header::HeaderMap;
use tollgate::state::unix_ms;
use tollgate_tests::*;

fn text<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(format!("x-probe-{name}"))
        .unwrap_or_else(|| panic!("no x-probe-{name} in {h:?}"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn every_host_import_and_request_method_returns_what_the_wit_documents() {
    let mock = MockUpstream::start().await;
    let plugins = [
        plugin("bind", "ip-binding", "tollgate_ip_binding", "{}"),
        plugin("probe", "header-rewrite", "tollgate_probe", "{}"),
    ];
    let gw = TestGateway::start(&policy_config_yaml(
        &[mock.url()],
        &plugins,
        &["bind", "probe"],
    ))
    .await;
    let send = || {
        client()
            .post(gw.url("/v1/chat/completions?q=1"))
            .bearer_auth(CLIENT_KEY)
            .header("X-In", "a")
            .header("x-in", "b")
            .json(&serde_json::json!({
                "model": "gpt-probe",
                "messages": [],
                "user": "u-7",
                "prompt_cache_key": "pk-1",
            }))
            .send()
    };
    let before = unix_ms();
    let resp = send().await.unwrap();
    let after = unix_ms();
    assert_eq!(resp.status(), 200);
    let up = mock.last_headers();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();

    // request: every method.
    assert_eq!(text(&up, "id"), id);
    assert_eq!(text(&up, "method"), "POST");
    assert_eq!(text(&up, "path"), "/v1/chat/completions?q=1");
    assert_eq!(
        text(&up, "header"),
        "a, b",
        "any case; repeated values joined"
    );
    assert_eq!(text(&up, "header-authorization"), "<none>");
    let names = text(&up, "headers");
    assert!(names.split(',').any(|n| n == "x-in"), "{names}");
    assert!(
        names
            .split(',')
            .all(|n| n == n.to_ascii_lowercase() && n != "authorization" && n != "x-api-key"),
        "{names}"
    );
    assert_eq!(text(&up, "client-ip"), "127.0.0.1");
    // HMAC-SHA256(server secret, key), computed here rather than by the gateway.
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"test-secret-0123456789").unwrap();
    mac.update(CLIENT_KEY.as_bytes());
    let key_id: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(text(&up, "key-id"), key_id);
    assert_eq!(text(&up, "key-name"), "tester");
    assert_eq!(text(&up, "model"), "gpt-probe");
    assert_eq!(text(&up, "stream"), "false");
    assert_eq!(
        text(&up, "session-hint"),
        "pk-1",
        "prompt_cache_key before user"
    );

    // clock, bindings, kv.
    let now: u64 = text(&up, "now-ms").parse().unwrap();
    assert!(
        (before..=after).contains(&now),
        "{before} ≤ {now} ≤ {after}"
    );
    assert_eq!(
        text(&up, "binding"),
        "127.0.0.1/32 active",
        "the binding ip-binding made before this policy ran"
    );
    assert_eq!(text(&up, "kv"), "1,5,true,false,2,<none>");

    // response: every method, on the head the client gets.
    let down = resp.headers();
    assert_eq!(text(down, "request-id"), id);
    assert_eq!(text(down, "upstream"), "u0");
    assert_eq!(text(down, "status"), "200");
    assert_eq!(text(down, "content-type"), "application/json");
    let names = text(down, "response-headers");
    assert!(names.split(',').any(|n| n == "content-type"), "{names}");
    assert_eq!(
        text(down, "first-event"),
        "<none>",
        "no stream bootstrap on this route"
    );

    // The plugin's kv namespace outlives the call: the counter goes on.
    let resp = send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(text(&mock.last_headers(), "kv"), "1,10,true,false,2,<none>");
}

/// A streamed request: `stream` is true. The first event of a held stream (`stream_bootstrap`)
/// goes to the quota policy's `on-response` only (it fails the stream over below when it is an
/// error); a header rewrite of the response head sees none, as `wit/types.wit` says.
#[tokio::test]
async fn a_streamed_request_and_first_event_under_stream_bootstrap() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.force_error_event();
    let plugins = [
        plugin("first", "router", "tollgate_fill_first", "{}"),
        plugin("quota", "quota", "tollgate_quota_switch", "{}"),
        plugin("probe", "header-rewrite", "tollgate_probe", "{}"),
    ];
    let yaml = policy_config_yaml(&[a.url(), b.url()], &plugins, &["first", "quota", "probe"])
        .replace(
            "    max_attempts: 3\n",
            "    max_attempts: 3\n    stream_bootstrap: true\n",
        );
    let gw = TestGateway::start(&yaml).await;
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(text(&b.last_headers(), "stream"), "true");
    assert_eq!(
        (a.requests(), b.requests()),
        (1, 1),
        "quota saw A's error event"
    );
    assert_eq!(text(resp.headers(), "upstream"), "u1");
    assert_eq!(text(resp.headers(), "first-event"), "<none>");
    let events = read_events(resp, std::time::Instant::now()).await.unwrap();
    assert_eq!(events.last().unwrap().1, "[DONE]");
}
