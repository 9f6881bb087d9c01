//! `/metrics` on the admin listener: real requests move the counters, label values stay bounded,
//! and Prometheus's own checker (`promtool check metrics`, Debian's `prometheus` package) accepts
//! the exposition.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::Write;
use std::process::{Command, Stdio};

use tollgate_tests::*;

async fn scrape(gw: &TestGateway) -> (String, String) {
    let resp = client()
        .get(format!("http://{}/metrics", gw.admin_addr.unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    (ct, resp.text().await.unwrap())
}

fn line_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn requests_tokens_and_upstreams_are_exposed_with_bounded_labels() {
    let mock = MockUpstream::start().await;
    let yaml = config_yaml(&[mock.url()], "");
    let gw = TestGateway::start(&yaml).await;
    for _ in 0..2 {
        let resp = client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .json(&chat_body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    let refused = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    refused.bytes().await.unwrap();

    let (content_type, text) = scrape(&gw).await;
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    assert_eq!(
        line_value(
            &text,
            r#"tollgate_requests_total{outcome="complete",route="/v1/",status_class="2xx",upstream="u0"}"#
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        line_value(
            &text,
            r#"tollgate_requests_total{outcome="refused",route="/v1/",status_class="4xx",upstream=""}"#
        ),
        Some(1.0),
        "{text}"
    );
    let model = chat_body(false)["model"].as_str().unwrap().to_owned();
    let tokens = format!(
        r#"gen_ai_client_token_usage_count{{key="tester",model="{model}",type="input",upstream="u0"}}"#
    );
    assert_eq!(line_value(&text, &tokens), Some(2.0), "{text}");
    let input_sum = format!(
        r#"gen_ai_client_token_usage_sum{{key="tester",model="{model}",type="input",upstream="u0"}}"#
    );
    assert_eq!(
        line_value(&text, &input_sum),
        Some(16.0),
        "8 prompt tokens each: {text}"
    );
    assert_eq!(
        line_value(&text, r#"tollgate_upstream_healthy{upstream="u0"}"#),
        Some(1.0)
    );
    assert!(text.contains("gen_ai_server_request_duration_seconds_bucket{"));
    assert!(text.contains("gen_ai_server_time_to_first_token_seconds_bucket{"));
    assert!(line_value(&text, "process_resident_memory_bytes").unwrap() > 0.0);
    // No client address, key or key id ever becomes a label value.
    assert!(!text.contains("127.0.0.1"));
    assert!(!text.contains(CLIENT_KEY));
    let config = tollgate::Config::parse(&yaml, "t.yaml", Box::new(|_| None)).unwrap();
    let id = tollgate::KeyRing::standalone(&config.auth).id_of(CLIENT_KEY);
    assert!(!text.contains(&id.prefix()));

    // promtool (Prometheus's own parser and linter) accepts it.
    promtool_accepts(&text);

    // Never on the data plane.
    let on_data = client().get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(on_data.status(), 404);
}

#[tokio::test]
async fn model_names_past_the_cap_share_one_label_value() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&config_yaml(&[mock.url()], "")).await;
    for i in 0..70 {
        let mut body = chat_body(false);
        body["model"] = format!("model-{i}").into();
        let resp = client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    let (_, text) = scrape(&gw).await;
    let models: std::collections::HashSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("gen_ai_client_token_usage_count{"))
        .filter_map(|l| l.split("model=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(models.len(), 65, "64 names and `other`: {models:?}");
    assert!(models.contains("other"));
    assert_eq!(
        line_value(
            &text,
            r#"gen_ai_client_token_usage_count{key="tester",model="other",type="input",upstream="u0"}"#
        ),
        Some(6.0)
    );
}

/// Put the text through `promtool check metrics`.
fn promtool_accepts(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed by scripts/test.sh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool refused the exposition:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn bindings_intercepts_plugin_call_times_and_model_cooldowns_are_exposed() {
    let mock = MockUpstream::start().await;
    let yaml = config_yaml(&[mock.url()], "").replace(
        "    upstreams: [u0]\n",
        &format!(
            "    upstreams: [u0]\n    policies: [bind]\nplugins:\n  - name: bind\n    kind: ip-binding\n    module: {}\n",
            plugins::wasm("tollgate_ip_binding").display()
        ),
    );
    let gw = TestGateway::start(&yaml).await;
    let from = |ip: &str| {
        reqwest::Client::builder()
            .local_address(ip.parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap()
    };
    let mut statuses = Vec::new();
    for ip in ["127.0.0.1", "127.0.0.1", "127.0.0.2"] {
        let resp = from(ip)
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .json(&chat_body(false))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        resp.bytes().await.unwrap();
    }
    assert_eq!(
        statuses,
        [200, 200, 403],
        "bound on first use, then refused elsewhere"
    );
    let until = tollgate::state::unix_ms() + 60_000;
    gw.gateway.runtime().upstreams[0].cool_down(Some("gpt-x"), until);

    let (_, text) = scrape(&gw).await;
    assert_eq!(
        line_value(&text, "tollgate_binding_first_uses_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        line_value(&text, "tollgate_intercepts_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        line_value(
            &text,
            "tollgate_plugin_call_duration_seconds_count{plugin=\"bind\"}"
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        line_value(
            &text,
            "tollgate_plugin_call_duration_seconds_bucket{plugin=\"bind\",le=\"+Inf\"}"
        ),
        Some(3.0)
    );
    assert!(
        line_value(
            &text,
            "tollgate_plugin_call_duration_seconds_sum{plugin=\"bind\"}"
        )
        .unwrap()
            > 0.0
    );
    assert_eq!(
        line_value(&text, "tollgate_plugin_traps_total{plugin=\"bind\"}"),
        Some(0.0)
    );
    let cooling = line_value(
        &text,
        "tollgate_upstream_model_cooldown_seconds{model=\"gpt-x\",upstream=\"u0\"}",
    )
    .unwrap_or_else(|| panic!("{text}"));
    assert!(cooling > 50.0 && cooling <= 60.0, "{cooling}");
    promtool_accepts(&text);
    documented_as_exposed(&text);
}

/// Every metric family the gateway exposes is documented in `docs/metrics.md`, and every
/// documented one is exposed, except those the docs say appear only under a condition this
/// test's gateway does not meet.
fn documented_as_exposed(text: &str) {
    let docs = std::fs::read_to_string(repo_root().join("docs/metrics.md")).unwrap();
    let documented: std::collections::BTreeSet<&str> = docs
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| {
            ["tollgate_", "process_", "gen_ai_"]
                .iter()
                .any(|p| w.starts_with(p))
                && w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        })
        .collect();
    let exposed: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    let undocumented: Vec<_> = exposed.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "exposed, not in docs/metrics.md: {undocumented:?}"
    );
    // Shown only under a condition: TLS on the data listener; a shadow policy; an all-models
    // cooldown (this test cools one model); a failover (`requests.rs` checks it).
    let conditional = [
        "tollgate_tls_certificate_reloads_total",
        "tollgate_plugin_shadow_decisions_total",
        "tollgate_upstream_cooldown_seconds",
        "tollgate_upstream_failovers_total",
    ];
    let missing: Vec<_> = documented
        .difference(&exposed)
        .filter(|m| !conditional.contains(m))
        .collect();
    assert!(
        missing.is_empty(),
        "in docs/metrics.md, not exposed: {missing:?}"
    );
}
