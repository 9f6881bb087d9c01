//! The WIT contract, end to end: what each host import and each `request`/`response` method
//! returns to a real component, compared with what `wit/` documents. The component is
//! `plugins/probe` (a test fixture), which reports every value it read as an `x-probe-*` header.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::Write;
use std::sync::{Mutex, Once};
use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::header::HeaderMap;
use serde_json::Value;
use tollgate::state::unix_ms;
use tollgate_tests::*;

/// Everything the gateways of this test binary logged, as JSON lines.
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends this process's log lines to [`LOG`] (once per test binary).
fn capture_logs() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
            .with_writer(|| Capture)
            .init();
    });
}

/// The logged lines whose `target` is `plugin`.
fn plugin_lines() -> Vec<Value> {
    String::from_utf8(LOG.lock().unwrap().clone())
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "plugin")
        .collect()
}

fn text<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(format!("x-probe-{name}"))
        .unwrap_or_else(|| panic!("no x-probe-{name} in {h:?}"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn every_host_import_and_request_method_returns_what_the_wit_documents() {
    capture_logs();
    let mock = MockUpstream::start().await;
    // Two instances of the probe: `other` shows that kv namespaces are per plugin.
    let plugins = [
        plugin("bind", "ip-binding", "tollgate_ip_binding", "{}"),
        plugin("probe", "header-rewrite", "tollgate_probe", "{}"),
        plugin(
            "other",
            "header-rewrite",
            "tollgate_probe",
            r#"{"tag": "other"}"#,
        ),
    ];
    let gw = TestGateway::start(&policy_config_yaml(
        &[mock.url()],
        &plugins,
        &["bind", "probe", "other"],
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
    assert_eq!(
        text(&up, "binding-for"),
        "127.0.0.1/32 active",
        "get-for(request) answers what get(request.key-id()) does"
    );
    assert_eq!(
        text(&up, "binding-match"),
        "BindingMatch::Inside",
        "match-for(request): 127.0.0.1 is inside 127.0.0.1/32"
    );
    assert_eq!(text(&up, "kv"), "1,5,true,false,2,<none>");
    assert_eq!(text(&up, "kv-ttl"), "<none>");
    assert_eq!(text(&up, "kv-incr-ttl"), "1");
    // bind-first: the host normalises the network, the first binding stays in force, and a
    // string that is not a network is an error.
    let bound = text(&up, "bind-first");
    let answers: Vec<&str> = bound.split(';').collect();
    assert_eq!(
        answers[..2],
        ["10.0.0.0/8 active", "10.0.0.0/8 active"],
        "{bound}"
    );
    assert!(
        answers[2].starts_with("error: ") && answers[2].contains("not-a-network"),
        "{bound}"
    );
    assert_eq!(
        gw.gateway
            .stores
            .database()
            .bindings(10)
            .await
            .unwrap()
            .iter()
            .filter(|b| b.key_id == format!("{key_id}-probe"))
            .count(),
        1,
        "bind-first wrote the durable table"
    );

    // log: each line tagged with the plugin's name and the request id, at its level.
    let lines = plugin_lines();
    let of_this = |level: &str, message: &str| {
        lines.iter().any(|l| {
            l["level"] == level
                && l["fields"]["message"] == message
                && l["fields"]["plugin"] == "probe"
                && l["fields"]["request_id"] == id.as_str()
        })
    };
    assert!(
        of_this("INFO", "probe saw /v1/chat/completions?q=1"),
        "{lines:?}"
    );
    assert!(of_this("WARN", "probe warns"), "{lines:?}");

    // The second instance has a kv namespace of its own (its counter starts again at 5) and sees
    // the same bindings.
    assert_eq!(text(&up, "other-kv"), "1,5,true,false,2,<none>");
    assert_eq!(text(&up, "other-kv-incr-ttl"), "1");
    assert!(text(&up, "other-bind-first").starts_with("10.0.0.0/8 active;"));

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

    // The plugin's kv namespace outlives the call: the counter goes on, and `t` (set with a 3 s
    // TTL by the first call) is still there.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let resp = send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let up = mock.last_headers();
    assert_eq!(text(&up, "kv"), "1,10,true,false,2,<none>");
    assert_eq!(text(&up, "kv-ttl"), "x");
    assert_eq!(text(&up, "kv-incr-ttl"), "2");
    // Past the TTL of the first call, `t` and `c` are gone: `incr` did not renew `c`'s TTL.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let resp = send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let up = mock.last_headers();
    assert_eq!(text(&up, "kv-ttl"), "<none>");
    assert_eq!(text(&up, "kv-incr-ttl"), "1");
    assert_eq!(
        text(&up, "kv"),
        "1,15,true,false,2,<none>",
        "no TTL, no expiry"
    );
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
