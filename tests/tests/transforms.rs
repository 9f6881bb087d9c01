//! Transform plugins in the gateway's pipeline, end to end over loopback HTTP: protocol
//! translation against upstreams that speak one protocol only (with raw HTTP and with the real
//! Anthropic and OpenAI Python SDKs), model aliases, chains, fail modes, and a hot swap under
//! streaming load.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_tests::mock_upstream::Protocol;
use tollgate_tests::*;

/// A gateway whose one route runs `policies` over `mock`; an Anthropic upstream gets its
/// credential as `x-api-key`.
fn yaml(
    mock: &MockUpstream,
    anthropic: bool,
    plugins: &[PluginDef<'_>],
    policies: &[&str],
) -> String {
    let mut y = policy_config_yaml(&[mock.url()], plugins, policies);
    if anthropic {
        y = y.replace(
            "    max_fails: 100\n",
            "    max_fails: 100\n    auth_scheme: x-api-key\n",
        );
    }
    y
}

fn translate(upstream: &str) -> String {
    format!(r#"{{"upstream": "{upstream}"}}"#)
}

async fn gateway(
    mock: &MockUpstream,
    upstream: Protocol,
    extra: &[PluginDef<'_>],
    policies: &[&str],
) -> TestGateway {
    let (name, anthropic) = match upstream {
        Protocol::OpenAi => ("openai", false),
        Protocol::Anthropic => ("anthropic", true),
    };
    let config = translate(name);
    let mut plugins = vec![plugin(
        "translate",
        "transform",
        "tollgate_anthropic_openai",
        &config,
    )];
    for p in extra {
        plugins.push(PluginDef { ..*p });
    }
    TestGateway::start(&yaml(mock, anthropic, &plugins, policies)).await
}

fn anthropic_request(stream: bool) -> Value {
    json!({
        "model": "gpt-4o-mini", "max_tokens": 64, "stream": stream,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
    })
}

async fn post_anthropic(gw: &TestGateway, body: &Value) -> reqwest::Response {
    client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", CLIENT_KEY)
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Each event of an SSE body: its name (if any) and its data.
fn events(text: &str) -> Vec<(Option<String>, String)> {
    text.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let mut name = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push(d);
                }
            }
            (name, data.join("\n"))
        })
        .collect()
}

#[tokio::test]
async fn an_anthropic_client_is_served_by_an_openai_only_upstream() {
    let mock = mock_upstream::MockUpstream::start_only(Protocol::OpenAi).await;
    let gw = gateway(&mock, Protocol::OpenAi, &[], &["translate"]).await;

    let resp = post_anthropic(&gw, &anthropic_request(false)).await;
    assert_eq!(resp.status(), 200);
    let a: Value = resp.json().await.unwrap();
    assert_eq!(a["type"], "message", "{a}");
    assert_eq!(
        a["content"][0],
        json!({"type": "text", "text": "mock answer"})
    );
    assert_eq!(a["stop_reason"], "end_turn");
    assert_eq!(a["usage"]["input_tokens"], 8);
    assert_eq!(a["usage"]["output_tokens"], 2);
    assert_eq!(mock.seen().last().unwrap().1, "/v1/chat/completions");
    let sent: Value = serde_json::from_slice(&mock.last_body()).unwrap();
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert!(!mock.last_headers().contains_key("anthropic-version"));

    // Streamed: Anthropic's event sequence, the text as the upstream streamed it.
    let resp = post_anthropic(&gw, &anthropic_request(true)).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let evs = events(&resp.text().await.unwrap());
    let names: Vec<&str> = evs
        .iter()
        .map(|(n, _)| n.as_deref().unwrap_or("-"))
        .collect();
    assert_eq!(names.first(), Some(&"message_start"), "{evs:?}");
    assert_eq!(names.last(), Some(&"message_stop"));
    let text: String = evs
        .iter()
        .filter(|(n, _)| n.as_deref() == Some("content_block_delta"))
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d).unwrap()["delta"]["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(text, "w0 w1 w2 w3 w4");
    let delta: Value = serde_json::from_str(
        &evs.iter()
            .find(|(n, _)| n.as_deref() == Some("message_delta"))
            .unwrap()
            .1,
    )
    .unwrap();
    assert_eq!(
        delta["usage"]["output_tokens"], 5,
        "the usage the translation asked the upstream for"
    );
    let sent: Value = serde_json::from_slice(&mock.last_body()).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);

    // An upstream error reaches the client in Anthropic's shape, with its status.
    let mut req = anthropic_request(false);
    req["max_tokens"] = json!(1);
    let resp = client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", CLIENT_KEY)
        .header("x-mock-status", "429")
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(
        e,
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": "mock error"}})
    );

    // An OpenAI client on the same route passes untouched.
    assert_eq!(gw.chat().await.status(), 200);
    let sent: Value = serde_json::from_slice(&mock.last_body()).unwrap();
    assert_eq!(sent, chat_body(false));
}

#[tokio::test]
async fn an_openai_client_is_served_by_an_anthropic_only_upstream() {
    let mock = mock_upstream::MockUpstream::start_only(Protocol::Anthropic).await;
    let gw = gateway(&mock, Protocol::Anthropic, &[], &["translate"]).await;

    let body = json!({"model": "claude-x", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
    ]});
    let resp = post_chat_json(&gw, &body).await;
    assert_eq!(resp.status(), 200);
    let o: Value = resp.json().await.unwrap();
    assert_eq!(o["object"], "chat.completion", "{o}");
    assert_eq!(o["choices"][0]["message"]["content"], "mock answer");
    assert_eq!(o["choices"][0]["finish_reason"], "stop");
    assert_eq!(o["usage"]["prompt_tokens"], 8);
    assert_eq!(mock.seen().last().unwrap().1, "/v1/messages");
    let sent: Value = serde_json::from_slice(&mock.last_body()).unwrap();
    assert_eq!(sent["system"], "Be brief.");
    assert_eq!(sent["max_tokens"], 4096);
    let headers = mock.last_headers();
    assert_eq!(headers["anthropic-version"], "2023-06-01");
    assert_eq!(headers["x-api-key"], UPSTREAM_CREDENTIAL);

    let mut body = body;
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = post_chat_json(&gw, &body).await;
    assert_eq!(resp.status(), 200);
    let evs = events(&resp.text().await.unwrap());
    assert_eq!(evs.last().unwrap().1, "[DONE]", "{evs:?}");
    assert!(
        evs.iter().all(|(n, _)| n.is_none()),
        "OpenAI events are unnamed"
    );
    let chunks: Vec<Value> = evs[..evs.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "w0 w1 w2 w3 w4");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 5);
}

/// Runs `script` with the test venv's Python (where scripts/test.sh installs the SDKs), with
/// `GW` set to the gateway's base URL and `KEY` to the client key; each line it printed, as JSON.
async fn python(gw: &TestGateway, script: &str) -> Vec<Value> {
    let py = tools::venv_tool("python");
    let out = tokio::process::Command::new(py)
        .arg("-c")
        .arg(script)
        .env("GW", gw.url(""))
        .env("KEY", CLIENT_KEY)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[tokio::test]
async fn the_anthropic_sdk_works_against_an_openai_only_upstream() {
    let mock = mock_upstream::MockUpstream::start_only(Protocol::OpenAi).await;
    let gw = gateway(&mock, Protocol::OpenAi, &[], &["translate"]).await;
    let lines = python(
        &gw,
        r#"
import json, os, anthropic
c = anthropic.Anthropic(base_url=os.environ["GW"].rstrip("/"), api_key=os.environ["KEY"], max_retries=0)
m = c.messages.create(model="gpt-4o-mini", max_tokens=50, system="Be brief.",
                      messages=[{"role": "user", "content": "Hello"}])
print(json.dumps({"text": m.content[0].text, "stop": m.stop_reason, "in": m.usage.input_tokens}))
with c.messages.stream(model="gpt-4o-mini", max_tokens=50, messages=[{"role": "user", "content": "Hello"}]) as s:
    text = "".join(s.text_stream)
    final = s.get_final_message()
print(json.dumps({"text": text, "stop": final.stop_reason, "out": final.usage.output_tokens}))
tools = [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
m = c.messages.create(model="gpt-4o-mini", max_tokens=50, tools=tools,
                      messages=[{"role": "user", "content": "Weather in Paris?"}])
call = [b for b in m.content if b.type == "tool_use"][0]
print(json.dumps({"stop": m.stop_reason, "name": call.name, "input": call.input, "id": call.id}))
m2 = c.messages.create(model="gpt-4o-mini", max_tokens=50, tools=tools, messages=[
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": m.content},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18C"}]}])
print(json.dumps({"text": m2.content[0].text}))
with c.messages.stream(model="gpt-4o-mini", max_tokens=50, tools=tools,
                       messages=[{"role": "user", "content": "Weather in Paris?"}]) as s:
    final = s.get_final_message()
call = [b for b in final.content if b.type == "tool_use"][0]
print(json.dumps({"stop": final.stop_reason, "name": call.name, "input": call.input}))
"#,
    )
    .await;
    assert_eq!(
        lines[0],
        json!({"text": "mock answer", "stop": "end_turn", "in": 8})
    );
    assert_eq!(
        lines[1],
        json!({"text": "w0 w1 w2 w3 w4", "stop": "end_turn", "out": 5})
    );
    assert_eq!(lines[2]["stop"], "tool_use");
    assert_eq!(lines[2]["name"], "get_weather");
    assert_eq!(lines[2]["input"], json!({"city": "Paris"}));
    assert_eq!(
        lines[3]["text"], "mock answer",
        "the tool result went back as an OpenAI tool message"
    );
    assert_eq!(
        lines[4],
        json!({"stop": "tool_use", "name": "get_weather", "input": {"city": "Paris"}})
    );
    let sent: Value = serde_json::from_slice(&mock.last_body()).unwrap();
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");
}

#[tokio::test]
async fn the_openai_sdk_works_against_an_anthropic_only_upstream() {
    let mock = mock_upstream::MockUpstream::start_only(Protocol::Anthropic).await;
    let gw = gateway(&mock, Protocol::Anthropic, &[], &["translate"]).await;
    let lines = python(
        &gw,
        r#"
import json, os, openai
c = openai.OpenAI(base_url=os.environ["GW"].rstrip("/") + "/v1", api_key=os.environ["KEY"], max_retries=0)
r = c.chat.completions.create(model="claude-x", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}])
print(json.dumps({"text": r.choices[0].message.content, "finish": r.choices[0].finish_reason, "prompt": r.usage.prompt_tokens}))
text, usage = "", None
for ch in c.chat.completions.create(model="claude-x", messages=[{"role": "user", "content": "Hello"}], stream=True, stream_options={"include_usage": True}):
    if ch.choices and ch.choices[0].delta.content:
        text += ch.choices[0].delta.content
    if ch.usage:
        usage = ch.usage.completion_tokens
print(json.dumps({"text": text, "usage": usage}))
tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
r = c.chat.completions.create(model="claude-x", tools=tools, messages=[{"role": "user", "content": "Weather in Paris?"}])
call = r.choices[0].message.tool_calls[0]
print(json.dumps({"finish": r.choices[0].finish_reason, "name": call.function.name, "args": json.loads(call.function.arguments)}))
r2 = c.chat.completions.create(model="claude-x", tools=tools, messages=[
    {"role": "user", "content": "Weather in Paris?"}, r.choices[0].message.model_dump(exclude_none=True),
    {"role": "tool", "tool_call_id": call.id, "content": "18C"}])
print(json.dumps({"text": r2.choices[0].message.content}))
args = ""
for ch in c.chat.completions.create(model="claude-x", tools=tools, stream=True, messages=[{"role": "user", "content": "Weather in Paris?"}]):
    for tc in (ch.choices[0].delta.tool_calls or []) if ch.choices else []:
        args += tc.function.arguments or ""
print(json.dumps({"args": json.loads(args)}))
"#,
    )
    .await;
    assert_eq!(
        lines[0],
        json!({"text": "mock answer", "finish": "stop", "prompt": 8})
    );
    assert_eq!(lines[1], json!({"text": "w0 w1 w2 w3 w4", "usage": 5}));
    assert_eq!(
        lines[2],
        json!({"finish": "tool_calls", "name": "get_weather", "args": {"city": "Paris"}})
    );
    assert_eq!(lines[3]["text"], "mock answer");
    assert_eq!(lines[4], json!({"args": {"city": "Paris"}}));
}

#[tokio::test]
async fn an_alias_is_renamed_and_listed_and_chains_with_translation() {
    let mock = mock_upstream::MockUpstream::start_only(Protocol::OpenAi).await;
    let alias = plugin(
        "alias",
        "transform",
        "tollgate_model_alias",
        r#"{"aliases": {"fast": "gpt-4o-mini"}}"#,
    );
    let gw = gateway(&mock, Protocol::OpenAi, &[alias], &["alias", "translate"]).await;

    let mut body = chat_body(false);
    body["model"] = json!("fast");
    assert_eq!(post_chat_json(&gw, &body).await.status(), 200);
    let sent: Value = serde_json::from_slice(&mock.last_body()).unwrap();
    assert_eq!(sent["model"], "gpt-4o-mini");

    // The alias, then the translation: an Anthropic client asking for `fast`.
    let mut req = anthropic_request(false);
    req["model"] = json!("fast");
    let a: Value = post_anthropic(&gw, &req).await.json().await.unwrap();
    assert_eq!(a["type"], "message", "{a}");
    let sent: Value = serde_json::from_slice(&mock.last_body()).unwrap();
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert!(sent["messages"].is_array());

    let ids = listed_models(&gw, CLIENT_KEY).await;
    assert_eq!(ids, ["gpt-4o-mini", "gpt-4o", "fast"]);
}

fn hostile<'a>(config: &'a str, on_error: &'a str) -> PluginDef<'a> {
    PluginDef {
        on_error,
        ..plugin("hostile", "transform", "tollgate_hostile_transform", config)
    }
}

#[tokio::test]
async fn a_transform_that_traps_or_loops_fails_the_request_by_its_fail_mode() {
    let mock = MockUpstream::start().await;
    for behaviour in ["trap", "loop"] {
        let config = format!(r#"{{"on": "request", "behaviour": "{behaviour}"}}"#);
        let gw = TestGateway::start(&yaml(
            &mock,
            false,
            &[hostile(&config, "deny")],
            &["hostile"],
        ))
        .await;
        let before = mock.requests();
        let resp = gw.chat().await;
        assert_eq!(resp.status(), 503, "{behaviour}");
        let e: Value = resp.json().await.unwrap();
        assert_eq!(e["error"]["code"], "policy_error");
        assert_eq!(mock.requests(), before, "nothing went upstream");

        let gw = TestGateway::start(&yaml(
            &mock,
            false,
            &[hostile(&config, "skip")],
            &["hostile"],
        ))
        .await;
        let resp = gw.chat().await;
        assert_eq!(
            resp.status(),
            200,
            "{behaviour}: skip goes on without the transform"
        );
        let o: Value = resp.json().await.unwrap();
        assert_eq!(o["object"], "chat.completion", "untransformed");
    }
    // Mid-stream: deny ends the stream with an error event after what was sent; skip relays
    // the rest untransformed.
    let config = r#"{"on": "event", "behaviour": "trap", "after": 2}"#;
    let gw = TestGateway::start(&yaml(
        &mock,
        false,
        &[hostile(config, "deny")],
        &["hostile"],
    ))
    .await;
    let resp = gw.stream(5, 0).await;
    assert_eq!(resp.status(), 200);
    let evs = events(&resp.text().await.unwrap());
    assert_eq!(evs.len(), 3, "{evs:?}");
    assert!(
        evs[0].1.contains("CHAT.COMPLETION.CHUNK"),
        "the first events were transformed"
    );
    assert_eq!(evs[2].0.as_deref(), Some("error"));
    assert!(evs[2].1.contains("policy_error"));

    let gw = TestGateway::start(&yaml(
        &mock,
        false,
        &[hostile(config, "skip")],
        &["hostile"],
    ))
    .await;
    let evs = events(&gw.stream(5, 0).await.text().await.unwrap());
    assert_eq!(evs.last().unwrap().1, "[DONE]", "{evs:?}");
    assert!(evs[1].1.contains("CHAT.COMPLETION.CHUNK"));
    assert!(
        evs[3].1.contains("chat.completion.chunk"),
        "after the failure, untransformed"
    );

    // A JSON answer is transformed whole.
    let o = gw.chat().await.text().await.unwrap();
    assert!(o.contains("CHAT.COMPLETION"), "{o}");
}

/// An upstream that answers every request with an event stream: one whole event, then
/// `endless` bytes of an event that never ends, then silence with the connection open.
async fn endless_event_upstream(endless: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let first = "data: {\"object\":\"chat.completion.chunk\",\"choices\":[]}\n\n";
                let start = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n{first}data: "
                );
                if sock.write_all(start.as_bytes()).await.is_err() {
                    return;
                }
                let piece = vec![b'a'; 16 << 10];
                let mut sent = 0;
                while sent < endless {
                    if sock.write_all(&piece).await.is_err() {
                        return;
                    }
                    sent += piece.len();
                }
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    url
}

/// An upstream's event that never ends is not held past the transforms' `max_body`: the client
/// gets the events before it, then an error event, at once (not when the upstream gives up).
#[tokio::test]
async fn an_endless_upstream_event_ends_the_stream_at_the_transforms_limit() {
    let url = endless_event_upstream(1 << 20).await;
    let config = r#"{"on": "event", "behaviour": "trap", "after": 1000}"#;
    let yaml = policy_config_yaml(&[url], &[hostile(config, "deny")], &["hostile"]).replace(
        "    on_error: deny\n",
        "    on_error: deny\n    limits: {max_body: 64KiB}\n",
    );
    let gw = TestGateway::start(&yaml).await;
    let began = Instant::now();
    let resp = gw.stream(1, 0).await;
    assert_eq!(resp.status(), 200);
    let text = tokio::time::timeout(Duration::from_secs(10), resp.text())
        .await
        .expect("the stream ends at the limit, not when the upstream stops")
        .unwrap();
    let evs = events(&text);
    assert_eq!(evs.len(), 2, "{:?}", &text[..text.len().min(300)]);
    assert!(evs[0].1.contains("CHAT.COMPLETION.CHUNK"), "{evs:?}");
    assert_eq!(evs[1].0.as_deref(), Some("error"));
    assert!(evs[1].1.contains("bad_upstream_response"), "{evs:?}");
    assert!(began.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_transform_swapped_under_streaming_load_drops_nothing() {
    let mock = mock_upstream::MockUpstream::start_only(Protocol::OpenAi).await;
    let dir = tempfile::tempdir().unwrap();
    let config_for = |target: &str| {
        let alias = format!(r#"{{"aliases": {{"fast": "{target}"}}}}"#);
        yaml(
            &mock,
            false,
            &[
                plugin(
                    "translate",
                    "transform",
                    "tollgate_anthropic_openai",
                    &translate("openai"),
                ),
                plugin("alias", "transform", "tollgate_model_alias", &alias),
            ],
            &["alias", "translate"],
        )
    };
    let path = dir.path().join("tollgate.yaml");
    std::fs::write(&path, config_for("gpt-4o-mini")).unwrap();
    let gw = TestGateway::start_file(&path).await;
    let url = gw.url("/v1/messages");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (url, stop) = (url.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let http = client();
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut req = anthropic_request(true);
                req["model"] = json!("fast");
                let resp = http
                    .post(&url)
                    .header("x-api-key", CLIENT_KEY)
                    .header("x-mock-delay-ms", "5")
                    .json(&req)
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == 200 => {
                        let text = r.text().await.unwrap_or_default();
                        if text.contains("event: message_stop") {
                            ok += 1;
                        } else {
                            failed.push(text);
                        }
                    }
                    Ok(r) => failed.push(format!("status {}", r.status())),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::write(&path, config_for("gpt-4o")).unwrap();
    let swapped = Instant::now();
    let seen_new = eventually(Duration::from_secs(10), || {
        serde_json::from_slice::<Value>(&mock.last_body()).is_ok_and(|b| b["model"] == "gpt-4o")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        let (ok, failed) = w.await.unwrap();
        assert!(failed.is_empty(), "failed streams: {failed:?}");
        total += ok;
    }
    assert!(
        seen_new,
        "the new version serves within {:?}",
        swapped.elapsed()
    );
    assert!(total > 20, "streams completed: {total}");
}

/// Every plugin's cases files (`plugins/*/cases/*.yaml`; the translation's are golden fixtures
/// in the shapes of both providers' published examples) pass through `tollgate plugin test`, as
/// a plugin author would run them.
#[test]
fn every_plugins_cases_pass_through_plugin_test() {
    let mut files = Vec::new();
    for plugin in std::fs::read_dir(repo_root().join("plugins")).unwrap() {
        let dir = plugin.unwrap().path().join("cases");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(repo_root()).unwrap().display().to_string())
        .collect();
    for expected in [
        "plugins/anthropic-openai/cases/anthropic-client.yaml",
        "plugins/anthropic-openai/cases/openai-client.yaml",
        "plugins/headroom/cases/basic.yaml",
    ] {
        assert!(names.iter().any(|n| n == expected), "{names:?}");
    }
    for cases in files {
        let crate_dir = cases.parent().unwrap().parent().unwrap();
        let wasm = format!(
            "tollgate_{}",
            crate_dir
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .replace('-', "_")
        );
        let out = run_ok(
            std::process::Command::new(env!("CARGO_BIN_EXE_tollgate-under-test"))
                .args(["plugin", "test"])
                .arg(plugins::wasm(&wasm))
                .arg("--cases")
                .arg(&cases),
            "plugin test",
        );
        assert!(
            out.contains(" passed, 0 failed"),
            "{}: {out}",
            cases.display()
        );
    }
}

#[tokio::test]
async fn redact_masks_what_must_not_leave_or_refuses_it() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&yaml(
        &mock,
        false,
        &[plugin("redact", "transform", "tollgate_redact", "{}")],
        &["redact"],
    ))
    .await;
    let body = json!({"model": "gpt-test", "messages": [
        {"role": "user", "content": "I am jane@example.com, key sk-live-0123456789abcdefXYZ"},
    ]});
    assert_eq!(post_chat_json(&gw, &body).await.status(), 200);
    let sent: Value = serde_json::from_slice(&mock.last_body()).unwrap();
    assert_eq!(
        sent["messages"][0]["content"],
        "I am [REDACTED:email], key [REDACTED:key]"
    );
    assert_eq!(mock.last_headers()["x-tollgate-redacted"], "2");
    // Nothing to mask: the body goes as it came, byte for byte.
    let clean = br#"{"model": "gpt-test",  "messages": [{"role": "user", "content": "hello"}]}"#;
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/json")
        .body(&clean[..])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(&mock.last_body()[..], &clean[..]);

    let gw = TestGateway::start(&yaml(
        &mock,
        false,
        &[plugin(
            "redact",
            "transform",
            "tollgate_redact",
            r#"{"action": "deny"}"#,
        )],
        &["redact"],
    ))
    .await;
    let before = mock.requests();
    let resp = post_chat_json(&gw, &body).await;
    assert_eq!(resp.status(), 400);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["code"], "sensitive_content");
    assert_eq!(mock.requests(), before);
}
