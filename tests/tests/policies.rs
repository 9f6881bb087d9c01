//! Built-in policy plugins running in the gateway's pipeline, end to end over loopback HTTP.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use serde_json::Value;
use tollgate_tests::*;

async fn chat_from(gw: &TestGateway, local: &str, extra: &[(&str, &str)]) -> reqwest::Response {
    let mut req = reqwest::Client::builder()
        .local_address(Some(local.parse().unwrap()))
        .build()
        .unwrap()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&chat_body(false));
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

async fn chat(gw: &TestGateway, extra: &[(&str, &str)]) -> reqwest::Response {
    chat_from(gw, "127.0.0.1", extra).await
}

#[tokio::test]
async fn ip_binding_binds_the_first_network_and_refuses_others() {
    let mock = MockUpstream::start().await;
    let yaml = policy_config_yaml(
        &[mock.url()],
        &[plugin(
            "bind",
            "ip-binding",
            "tollgate_ip_binding",
            r#"{"prefix_v4": 32}"#,
        )],
        &["bind"],
    );
    let gw = TestGateway::start(&yaml).await;
    assert_eq!(chat_from(&gw, "127.0.0.2", &[]).await.status(), 200);
    let refused = chat_from(&gw, "127.0.0.3", &[]).await;
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "ip_not_allowed");
    assert_eq!(chat_from(&gw, "127.0.0.2", &[]).await.status(), 200);
    assert_eq!(
        mock.requests(),
        2,
        "a refused request must not reach the upstream"
    );
}

/// Calls the gateway has made into the plugin named `name`.
fn plugin_calls(gw: &TestGateway, name: &str) -> u64 {
    let rt = gw.gateway.runtime();
    let p = rt.plugins.iter().find(|p| &*p.spec.name == name).unwrap();
    p.stats.calls.load(std::sync::atomic::Ordering::Relaxed)
}

/// A gateway whose route runs the header-rewrite plugin `hdr` with `config`.
async fn rewrite_gateway(mock: &MockUpstream, config: &str) -> TestGateway {
    let hdr = plugin("hdr", "header-rewrite", "tollgate_header_rewrite", config);
    TestGateway::start(&policy_config_yaml(&[mock.url()], &[hdr], &["hdr"])).await
}

#[tokio::test]
async fn header_rewrite_changes_request_and_response_headers() {
    let mock = MockUpstream::start().await;
    let config = r#"{"request": [{"set": {"name": "x-gw-id", "value": "${request_id}"}}, {"remove": "x-debug"}],
                     "response": [{"set": {"name": "x-served-by", "value": "${upstream}"}}]}"#;
    let gw = rewrite_gateway(&mock, config).await;
    let resp = chat(&gw, &[("x-debug", "1")]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-served-by"], "u0");
    assert_eq!(plugin_calls(&gw, "hdr"), 2, "one call per phase");
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let seen = mock.last_headers();
    assert_eq!(seen["x-gw-id"], id.as_str());
    assert!(!seen.contains_key("x-debug"));
}

/// A policy cannot change how an answer is framed: a response rule setting `content-length`,
/// `transfer-encoding`, `connection` or `upgrade` is skipped, so two pipelined requests on one
/// connection get two whole answers (hyper trusts a `content-length` it is handed: a release
/// build cut each answer to 3 bytes, a debug build panicked).
#[tokio::test]
async fn a_policy_cannot_set_an_answers_framing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = MockUpstream::start().await;
    let config = r#"{"response": [{"set": {"name": "Content-Length", "value": "3"}},
                                  {"set": {"name": "transfer-encoding", "value": "chunked"}},
                                  {"set": {"name": "connection", "value": "keep-alive, upgrade"}},
                                  {"set": {"name": "upgrade", "value": "h2c"}},
                                  {"set": {"name": "x-kept", "value": "yes"}}]}"#;
    let gw = rewrite_gateway(&mock, config).await;
    let body = serde_json::to_string(&chat_body(false)).unwrap();
    let one = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let last = one.replace("host: gw\r\n", "host: gw\r\nconnection: close\r\n");
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(format!("{one}{last}").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tcp.read_to_end(&mut answer),
    )
    .await
    .expect("the connection closes after the second answer")
    .unwrap();
    let text = String::from_utf8_lossy(&answer).to_lowercase();
    assert_eq!(text.matches("http/1.1 200 ok\r\n").count(), 2, "{text}");
    assert_eq!(text.matches("x-kept: yes").count(), 2, "{text}");
    for bad in [
        "content-length: 3\r\n",
        "upgrade: h2c",
        "transfer-encoding: chunked",
    ] {
        assert!(!text.contains(bad), "{bad} in {text}");
    }
    // Each answer is whole JSON, as long as it says.
    for part in text.split("http/1.1 200 ok\r\n").skip(1) {
        let (head, rest) = part.split_once("\r\n\r\n").unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let v: Value = serde_json::from_str(&rest[..len]).unwrap();
        assert_eq!(v["object"], "chat.completion");
    }
}

/// Headers the client names in `Connection` are removed on arrival, before the policy runs, so a
/// client cannot delete what the operator's policy sets.
#[tokio::test]
async fn a_clients_connection_header_cannot_remove_headers_a_policy_sets() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = MockUpstream::start().await;
    let config = r#"{"request": [{"set": {"name": "x-tenant", "value": "acme"}},
                                 {"set": {"name": "openai-organization", "value": "org-1"}}]}"#;
    let gw = rewrite_gateway(&mock, config).await;
    let body = serde_json::to_string(&chat_body(false)).unwrap();
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\ncontent-type: application/json\r\nconnection: close, x-tenant, openai-organization\r\nx-tenant: forged\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(raw.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let seen = mock.last_headers();
    assert_eq!(seen["x-tenant"], "acme");
    assert_eq!(seen["openai-organization"], "org-1");
}

#[tokio::test]
async fn header_rewrite_is_called_only_for_the_phases_it_has_rules_for() {
    let mock = MockUpstream::start().await;
    let config =
        r#"{"response": [{"set": {"name": "x-key", "value": "${key_name}/${client_ip}"}}]}"#;
    let gw = rewrite_gateway(&mock, config).await;
    for _ in 0..3 {
        let resp = chat(&gw, &[]).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-key"], "tester/127.0.0.1");
    }
    assert_eq!(plugin_calls(&gw, "hdr"), 3, "no request-phase calls");
}

#[tokio::test]
async fn round_robin_spreads_requests_evenly() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let yaml = policy_config_yaml(
        &[a.url(), b.url()],
        &[plugin("rr", "router", "tollgate_round_robin", "{}")],
        &["rr"],
    );
    let gw = TestGateway::start(&yaml).await;
    for _ in 0..6 {
        assert_eq!(chat(&gw, &[]).await.status(), 200);
    }
    assert_eq!((a.requests(), b.requests()), (3, 3));
}

#[tokio::test]
async fn least_busy_sees_a_stream_in_flight_until_its_body_ends() {
    // An upstream's in-flight count covers the whole relay, not just the head: while a slow
    // stream is open on one upstream, least-busy sends the next requests to the other.
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let yaml = policy_config_yaml(
        &[a.url(), b.url()],
        &[plugin("lb", "router", "tollgate_least_busy", "{}")],
        &["lb"],
    );
    let gw = TestGateway::start(&yaml).await;
    let mut stream = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("x-mock-events", "6")
        .header("x-mock-delay-ms", "300")
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    // The head has arrived; the body is still streaming from the busy upstream.
    let busy_is_a = a.requests() == 1;
    for _ in 0..4 {
        assert_eq!(chat(&gw, &[]).await.status(), 200);
    }
    let (busy, idle) = if busy_is_a { (&a, &b) } else { (&b, &a) };
    assert_eq!(
        (busy.requests(), idle.requests()),
        (1, 4),
        "requests went to the upstream that was still streaming"
    );
    while stream.chunk().await.unwrap().is_some() {}
}

#[tokio::test]
async fn session_affinity_keeps_a_session_on_one_upstream() {
    let ups = [
        MockUpstream::start().await,
        MockUpstream::start().await,
        MockUpstream::start().await,
    ];
    let urls: Vec<String> = ups.iter().map(MockUpstream::url).collect();
    let yaml = policy_config_yaml(
        &urls,
        &[plugin(
            "sticky",
            "router",
            "tollgate_session_affinity",
            "{}",
        )],
        &["sticky"],
    );
    let gw = TestGateway::start(&yaml).await;
    // Twelve sessions of three requests each, one session at a time: each session stays on one
    // upstream, and the sessions are spread (a router that always picks the same upstream would
    // keep every session on one too).
    let mut homes = std::collections::BTreeSet::new();
    for session in 0..12 {
        let before: Vec<usize> = ups.iter().map(MockUpstream::requests).collect();
        let id = format!("session-{session}");
        for _ in 0..3 {
            assert_eq!(chat(&gw, &[("x-session-id", &id)]).await.status(), 200);
        }
        let served: Vec<usize> = ups
            .iter()
            .zip(&before)
            .map(|(u, b)| u.requests() - b)
            .collect();
        let home = served.iter().position(|&n| n == 3);
        assert!(
            home.is_some() && served.iter().sum::<usize>() == 3,
            "{id} was split: {served:?}"
        );
        homes.insert(home.unwrap());
    }
    assert!(
        homes.len() >= 2,
        "every session went to one upstream: {homes:?}"
    );
}

#[tokio::test]
async fn quota_switch_fails_over_and_skips_the_cooling_upstream_until_it_recovers() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let yaml = policy_config_yaml(
        &[a.url(), b.url()],
        &[
            plugin("first", "router", "tollgate_fill_first", "{}"),
            plugin("quota", "quota", "tollgate_quota_switch", "{}"),
        ],
        &["first", "quota"],
    );
    let gw = TestGateway::start(&yaml).await;
    a.force_status(429); // A is over quota and says: retry after 1 s.
    let resp = chat(&gw, &[]).await;
    assert_eq!(resp.status(), 200, "served by B after A's 429");
    assert_eq!((a.requests(), b.requests()), (1, 1));
    // quota-switch watches only quota and overload statuses: A's 429 was shown to it, B's 200
    // passed without a call.
    assert_eq!(plugin_calls(&gw, "quota"), 1);

    // A is cooling: skipped without being asked.
    assert_eq!(chat(&gw, &[]).await.status(), 200);
    assert_eq!((a.requests(), b.requests()), (1, 2));

    // After the cooldown A (first in order) serves again.
    a.force_status(0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(chat(&gw, &[]).await.status(), 200);
    assert_eq!((a.requests(), b.requests()), (2, 2));
}

#[tokio::test]
async fn when_every_upstream_is_cooling_the_client_gets_429_with_retry_after() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let yaml = policy_config_yaml(
        &[a.url(), b.url()],
        &[plugin("quota", "quota", "tollgate_quota_switch", "{}")],
        &["quota"],
    );
    let gw = TestGateway::start(&yaml).await;
    a.force_status(429);
    b.force_status(429);
    // Both answer 429: the last answer goes back to the client as it is.
    assert_eq!(chat(&gw, &[]).await.status(), 429);
    // Now both are cooling: the gateway answers without asking them.
    let resp = chat(&gw, &[]).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_quota_exhausted");
    assert_eq!((a.requests(), b.requests()), (1, 1));
}

#[tokio::test]
async fn stream_bootstrap_fails_over_on_an_error_inside_a_200_stream() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.force_error_event();
    let plugins = [
        plugin("first", "router", "tollgate_fill_first", "{}"),
        plugin("quota", "quota", "tollgate_quota_switch", "{}"),
    ];
    let yaml = policy_config_yaml(&[a.url(), b.url()], &plugins, &["first", "quota"]);
    let stream = |gw: &TestGateway| {
        client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .json(&chat_body(true))
            .send()
    };

    // Without bootstrap the head has gone out before the error: the client sees it.
    let plain = TestGateway::start(&yaml).await;
    let events = read_events(stream(&plain).await.unwrap(), std::time::Instant::now())
        .await
        .unwrap();
    assert!(events[0].1.contains("overloaded_error"), "{events:?}");

    // With bootstrap the error is seen first: A cools down, B serves a clean stream.
    let gw = TestGateway::start(&yaml.replace(
        "    max_attempts: 3\n",
        "    max_attempts: 3\n    stream_bootstrap: true\n",
    ))
    .await;
    let resp = stream(&gw).await.unwrap();
    assert_eq!(resp.status(), 200);
    let events = read_events(resp, std::time::Instant::now()).await.unwrap();
    assert!(events.iter().all(|e| !e.1.contains("error")), "{events:?}");
    assert_eq!(events.last().unwrap().1, "[DONE]");
    assert_eq!((a.requests(), b.requests()), (2, 1));

    // The error event is found whatever line ending the upstream's stream uses (a gateway of
    // its own each time: A is cooling down on the one above).
    for (eol, done) in [("crlf", "data: [DONE]\r\n\r\n"), ("cr", "data: [DONE]\r\r")] {
        let gw = TestGateway::start(&yaml.replace(
            "    max_attempts: 3\n",
            "    max_attempts: 3\n    stream_bootstrap: true\n",
        ))
        .await;
        let (a0, b0) = (a.requests(), b.requests());
        let resp = client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .header("x-mock-eol", eol)
            .json(&chat_body(true))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{eol}");
        let raw = resp.text().await.unwrap();
        assert!(
            !raw.contains("error") && raw.ends_with(done),
            "{eol}: {raw:?}"
        );
        assert_eq!((a.requests() - a0, b.requests() - b0), (1, 1), "{eol}");
    }
}

#[tokio::test]
async fn a_failing_policy_fails_closed_or_open_as_configured() {
    let mock = MockUpstream::start().await;
    for (on_error, expected) in [("deny", 503), ("skip", 200)] {
        let hostile = PluginDef {
            name: "bad",
            kind: "router",
            wasm: "tollgate_hostile",
            config: r#"{"behaviour": "trap"}"#,
            on_error,
        };
        let gw = TestGateway::start(&policy_config_yaml(&[mock.url()], &[hostile], &["bad"])).await;
        let resp = chat(&gw, &[]).await;
        assert_eq!(resp.status(), expected, "on_error: {on_error}");
        if expected == 503 {
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["code"], "policy_error");
        }
    }
}

/// Reading the config or a plugin file (a backup job, `sha256sum`, another gateway loading the
/// same module) is not a change: nothing is reloaded. Writing one is, and replacing the module
/// with another puts the new code in service.
#[tokio::test]
async fn reading_watched_files_reloads_nothing_and_writing_one_does() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("router.wasm");
    std::fs::copy(
        tollgate_tests::plugins::wasm("tollgate_round_robin"),
        &module,
    )
    .unwrap();
    let yaml = policy_config_yaml(
        &[mock.url()],
        &[plugin("r", "router", "tollgate_round_robin", "{}")],
        &["r"],
    )
    .replace(
        &tollgate_tests::plugins::wasm("tollgate_round_robin")
            .display()
            .to_string(),
        &module.display().to_string(),
    );
    let path = dir.path().join("tollgate.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let gw = TestGateway::start_file(&path).await;
    // A write is a change (and proves the watcher is up before the reads below; it starts in
    // the background, so the write is repeated until one is seen).
    let mut reloaded = false;
    for _ in 0..20 {
        std::fs::write(&module, std::fs::read(&module).unwrap()).unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        if gw.gateway.last_reload().is_some() {
            reloaded = true;
            break;
        }
    }
    assert!(reloaded, "writing the module did not reload");
    // Let the write's events settle, then take the last reload as the reference.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = gw.gateway.last_reload();
    for _ in 0..3 {
        std::fs::read(&module).unwrap();
        std::fs::read_to_string(&path).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Past the debounce and a reload's time: no reload since.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        gw.gateway.last_reload(),
        before,
        "reading a watched file reloaded"
    );

    // Replacing the module with another (a new file renamed over it, as a deploy does) puts
    // the new code in service, with the config unchanged.
    use sha2::Digest;
    let new = std::fs::read(tollgate_tests::plugins::wasm("tollgate_fill_first")).unwrap();
    let want: String = sha2::Sha256::digest(&new)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        gw.gateway
            .runtime()
            .plugins
            .iter()
            .all(|p| p.sha256 != want)
    );
    let staged = dir.path().join("router.wasm.new");
    std::fs::write(&staged, &new).unwrap();
    std::fs::rename(&staged, &module).unwrap();
    let gateway = gw.gateway.clone();
    assert!(
        eventually(Duration::from_secs(5), || {
            gateway.runtime().plugins.iter().any(|p| p.sha256 == want)
        })
        .await,
        "the replaced module never came into service: {:?}",
        gw.gateway.last_reload()
    );
    assert_eq!(chat(&gw, &[]).await.status(), 200);
}

#[tokio::test]
async fn editing_the_router_while_requests_flow_drops_nothing_and_takes_effect_within_a_second() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let urls = [a.url(), b.url()];
    // Responses name the config version and the upstream that served them
    // (`x-served-by: rr:u0`), so a probe needs no counters and cannot be fooled by chance.
    let config = |version: &str, router: &str| {
        policy_config_yaml(
            &urls,
            &[
                plugin(
                    "tag",
                    "header-rewrite",
                    "tollgate_header_rewrite",
                    &format!(
                        r#"{{"response": [{{"set": {{"name": "x-served-by", "value": "{version}:${{upstream}}"}}}}]}}"#
                    ),
                ),
                plugin("r", "router", router, "{}"),
            ],
            &["tag", "r"],
        )
    };
    let rr = config("rr", "tollgate_round_robin");
    let sticky = config("sticky", "tollgate_session_affinity");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    std::fs::write(&path, &rr).unwrap();
    let gw = TestGateway::start_file(&path).await;

    let served_by = |session: &str| {
        let gw_url = gw.url("/v1/chat/completions");
        let session = session.to_owned();
        async move {
            let mut sides = Vec::new();
            for _ in 0..6 {
                let r = client()
                    .post(&gw_url)
                    .bearer_auth(CLIENT_KEY)
                    .header("x-session-id", &session)
                    .json(&chat_body(false))
                    .send()
                    .await
                    .unwrap();
                sides.push(r.headers()["x-served-by"].to_str().unwrap().to_owned());
            }
            sides
        }
    };
    // Round-robin, before any other traffic shares its counter: one session's requests
    // alternate between the upstreams.
    let spread = served_by("s").await;
    assert_eq!(
        spread,
        ["rr:u0", "rr:u1", "rr:u0", "rr:u1", "rr:u0", "rr:u1"]
    );

    // Background load for the whole test: every response must be a 200.
    let url = gw.url("/v1/chat/completions");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0, Vec::new());
            let c = client();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match c
                    .post(&url)
                    .bearer_auth(CLIENT_KEY)
                    .json(&chat_body(false))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => failed.push(format!(
                        "{} {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    )),
                    Err(e) => failed.push(e.to_string()),
                }
                // A steady flow (about 200/s), not a flood: the gateway's workers run on their
                // own threads, and an unpaced loop would starve the reload's compilation of CPU
                // on a 2-core machine running the other tests too.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failed)
        })
    };

    // A stream opened now, held open across the reloads below (4 s of events).
    let open_stream = || {
        let req = client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .header("x-mock-events", "40")
            .header("x-mock-delay-ms", "100")
            .json(&chat_body(true))
            .send();
        async move {
            let resp = req.await.unwrap();
            let version = resp.headers()["x-served-by"].to_str().unwrap().to_owned();
            let body = tokio::spawn(async move { resp.text().await });
            (version, body)
        }
    };
    // Edits the file and waits (at most 1 s) until the gateway reports it in service.
    let edit = |yaml: &str| {
        let edited_ms = tollgate::state::unix_ms();
        std::fs::write(&path, yaml).unwrap();
        let gateway = gw.gateway.clone();
        async move {
            let reloaded = eventually(Duration::from_secs(1), || {
                gateway
                    .last_reload()
                    .is_some_and(|r| r.at_ms >= edited_ms && r.error.is_none())
            })
            .await;
            assert!(
                reloaded,
                "the edit was not in service within 1 s: {:?}",
                gateway.last_reload()
            );
        }
    };
    let mut streams = vec![open_stream().await];
    edit(&sticky).await;
    streams.push(open_stream().await);
    edit(&rr).await;
    streams.push(open_stream().await);
    edit(&sticky).await;
    // In service: every session sticks to one upstream, under the sticky version.
    for session in ["x", "y", "z"] {
        let sides = served_by(session).await;
        assert!(
            sides[0].starts_with("sticky:") && sides.windows(2).all(|w| w[0] == w[1]),
            "session {session}: {sides:?}"
        );
    }
    // Each stream started on the version in service when it started and finished whole across
    // the reloads.
    let versions: Vec<&str> = streams
        .iter()
        .map(|(v, _)| v.split(':').next().unwrap())
        .collect();
    assert_eq!(versions, ["rr", "sticky", "rr"]);
    for (version, body) in streams {
        let text = body.await.unwrap().unwrap();
        assert!(
            text.contains("w39") && text.trim_end().ends_with("data: [DONE]"),
            "the stream begun on {version} was cut: {text}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "requests failed during the reloads ({ok} succeeded): {failed:?}"
    );
    assert!(ok > 10);

    // A broken edit is refused: the reload is attempted and fails, naming the missing module,
    // and the version in service stays the same and keeps serving.
    let running = gw.gateway.runtime();
    let broken_ms = tollgate::state::unix_ms();
    std::fs::write(
        &path,
        sticky.replace("tollgate_session_affinity", "does_not_exist"),
    )
    .unwrap();
    let gateway = gw.gateway.clone();
    let refused = eventually(Duration::from_secs(5), || {
        gateway.last_reload().is_some_and(|r| {
            r.at_ms >= broken_ms
                && r.error
                    .as_deref()
                    .is_some_and(|e| e.contains("does_not_exist"))
        })
    })
    .await;
    assert!(
        refused,
        "the broken edit was never refused: {:?}",
        gw.gateway.last_reload()
    );
    assert!(std::sync::Arc::ptr_eq(&running, &gw.gateway.runtime()));
    assert_eq!(chat(&gw, &[]).await.status(), 200);
}
