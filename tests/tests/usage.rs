//! Token usage accounting end to end: the counts the upstream reports (OpenAI JSON and streams,
//! Anthropic streams) reach the database, summed per key, upstream and model; a stream the client
//! abandons keeps what it had seen and is marked partial.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate::state::{TokenUsage, UsageBy};
use tollgate_tests::*;

async fn setup() -> (MockUpstream, TestGateway) {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&config_yaml(&[mock.url()], "")).await;
    (mock, gw)
}

/// Everything recorded so far, grouped as asked, after the writer flushed.
async fn usage(gw: &TestGateway, by: UsageBy) -> Vec<TokenUsage> {
    let stores = &gw.gateway.stores;
    stores.flush().await;
    stores
        .database()
        .token_usage(by, 0, u64::MAX)
        .await
        .unwrap()
}

async fn only_row(gw: &TestGateway) -> TokenUsage {
    let rows = usage(gw, UsageBy::Key).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows.into_iter().next().unwrap()
}

fn post(gw: &TestGateway, path: &str, body: &Value) -> reqwest::RequestBuilder {
    client()
        .post(gw.url(path))
        .bearer_auth(CLIENT_KEY)
        .json(body)
}

#[tokio::test]
async fn openai_json_answer_counts_its_usage_object() {
    let (_mock, gw) = setup().await;
    let resp = post(&gw, "/v1/chat/completions", &chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let u = only_row(&gw).await;
    assert_eq!(u.requests, 1);
    assert_eq!(
        (u.input_tokens, u.output_tokens),
        (
            body["usage"]["prompt_tokens"].as_u64().unwrap(),
            body["usage"]["completion_tokens"].as_u64().unwrap()
        )
    );
    assert!(u.input_tokens > 0 && u.output_tokens > 0);
    assert_eq!((u.errors, u.partial), (0, 0));
}

#[tokio::test]
async fn openai_stream_counts_only_when_usage_was_asked_for() {
    let (_mock, gw) = setup().await;
    // Without stream_options the upstream sends no usage: the request counts, its tokens do not.
    let resp = post(&gw, "/v1/chat/completions", &chat_body(true))
        .header("x-mock-events", "4")
        .send()
        .await
        .unwrap();
    let _ = read_events(resp, Instant::now()).await.unwrap();
    let u = only_row(&gw).await;
    assert_eq!((u.requests, u.input_tokens, u.output_tokens), (1, 0, 0));

    let mut body = chat_body(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = post(&gw, "/v1/chat/completions", &body)
        .header("x-mock-events", "4")
        .send()
        .await
        .unwrap();
    let events = read_events(resp, Instant::now()).await.unwrap();
    let last_usage: Value = events
        .iter()
        .filter_map(|(_, e)| serde_json::from_str::<Value>(e).ok())
        .find(|v| v["usage"].is_object())
        .expect("a usage chunk")["usage"]
        .clone();
    let u = only_row(&gw).await;
    assert_eq!(u.requests, 2);
    assert_eq!(
        (u.input_tokens, u.output_tokens),
        (
            last_usage["prompt_tokens"].as_u64().unwrap(),
            last_usage["completion_tokens"].as_u64().unwrap()
        )
    );
    assert_eq!(u.output_tokens, 4);
}

#[tokio::test]
async fn anthropic_stream_counts_input_from_the_start_and_output_from_the_last_delta() {
    let (_mock, gw) = setup().await;
    let body = json!({"model": "claude-test", "max_tokens": 64, "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]});
    let resp = post(&gw, "/v1/messages", &body)
        .header("x-mock-events", "6")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let events = read_events(resp, Instant::now()).await.unwrap();
    assert!(events.last().unwrap().1.contains("message_stop"));
    let u = only_row(&gw).await;
    assert_eq!((u.input_tokens, u.output_tokens, u.partial), (8, 6, 0));
    let models = usage(&gw, UsageBy::Model).await;
    assert_eq!(&*models[0].model, "claude-test");
    let upstreams = usage(&gw, UsageBy::Upstream).await;
    assert_eq!(&*upstreams[0].upstream, "u0");
}

#[tokio::test]
async fn a_stream_the_client_abandons_keeps_what_it_saw_and_is_partial() {
    let (mock, gw) = setup().await;
    let body = json!({"model": "claude-test", "max_tokens": 64, "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]});
    let mut resp = post(&gw, "/v1/messages", &body)
        .header("x-mock-events", "50")
        .header("x-mock-delay-ms", "100")
        .send()
        .await
        .unwrap();
    // The first frames (message_start with the input count) arrive; then the client leaves.
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("message_start"));
    drop(resp);
    assert!(eventually(Duration::from_secs(5), || mock.cancelled() == 1).await);
    let u = only_row(&gw).await;
    assert_eq!((u.requests, u.partial), (1, 1));
    assert_eq!(
        u.input_tokens, 8,
        "input was reported before the client left"
    );
    assert!(u.output_tokens < 50, "{u:?}");
}

#[tokio::test]
async fn upstream_errors_and_refusals_count_as_errors_of_their_key_and_unknown_keys_not_at_all() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&config_yaml(
        &[mock.url()],
        "limits:\n  requests:\n    - {name: per-key, by: key, rate: 1/m, burst: 1, nodelay: true}",
    ))
    .await;
    // An upstream's error answer: one request of the key, on that upstream, an error, no tokens.
    let resp = post(&gw, "/v1/chat/completions", &chat_body(false))
        .header("x-mock-status", "503")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    // A success, so the error count is not simply the request count.
    let ok = post(&gw, "/v1/chat/completions", &chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let ok: Value = ok.json().await.unwrap();
    // The gateway's own refusal after authentication (the limit allows two a minute here): counted for the
    // key as an error, though no upstream saw it.
    let refused = post(&gw, "/v1/chat/completions", &chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(mock.requests(), 2, "the refusal reached no upstream");
    // A key the gateway does not know is refused before it has a key id: not counted anywhere.
    let unknown = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("sk-not-a-key")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 401);

    let rows = usage(&gw, UsageBy::Key).await;
    assert_eq!(rows.len(), 1, "only the known key has a row: {rows:?}");
    let u = &rows[0];
    assert_eq!((u.requests, u.errors, u.partial), (3, 2, 0), "{u:?}");
    assert_eq!(
        u.input_tokens,
        ok["usage"]["prompt_tokens"].as_u64().unwrap(),
        "only the success reported tokens"
    );
    // By upstream, the 503 and the success are u0's; the refusal has no upstream.
    let by_upstream = usage(&gw, UsageBy::Upstream).await;
    let u0 = by_upstream.iter().find(|r| &*r.upstream == "u0").unwrap();
    assert_eq!((u0.requests, u0.errors), (2, 1), "{by_upstream:?}");
    let total: u64 = by_upstream.iter().map(|r| r.requests).sum();
    assert_eq!(total, 3, "{by_upstream:?}");
}

#[tokio::test]
async fn the_built_in_mock_speaks_anthropic_messages_too() {
    let yaml = config_yaml(&[], "").replace(
        "upstreams:\n",
        "upstreams:\n  - name: demo\n    mock: {reply: \"hello from the mock\"}\n",
    );
    let yaml = yaml.replace("upstreams: []", "upstreams: [demo]");
    let gw = TestGateway::start(&yaml).await;
    let body = json!({"model": "claude-test", "max_tokens": 64,
                      "messages": [{"role": "user", "content": "hi"}]});
    let answer: Value = post(&gw, "/v1/messages", &body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["type"], "message");
    assert_eq!(answer["content"][0]["text"], "hello from the mock");

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let resp = post(&gw, "/v1/messages", &streamed).send().await.unwrap();
    let events = read_events(resp, Instant::now()).await.unwrap();
    let text: String = events
        .iter()
        .filter_map(|(_, e)| e.split_once("data: ").map(|(_, d)| d.to_owned()))
        .filter_map(|d| serde_json::from_str::<Value>(&d).ok())
        .filter_map(|v| v["delta"]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "hello from the mock");
    let u = only_row(&gw).await;
    assert_eq!(u.requests, 2);
    assert_eq!((u.input_tokens, u.output_tokens), (16, 8));
}

#[tokio::test]
async fn stream_usage_inject_counts_streams_that_did_not_ask_and_hides_the_extra_chunk() {
    let mock = MockUpstream::start().await;
    let yaml = config_yaml(&[mock.url()], "").replace(
        "    upstreams: [u0]\n",
        "    upstreams: [u0]\n    stream_usage: inject\n",
    );
    let gw = TestGateway::start(&yaml).await;
    let last_sent = || -> Value {
        let body = mock.state.last_body.lock().unwrap().clone().unwrap();
        serde_json::from_slice(&body).unwrap()
    };

    // A client that did not ask: the upstream is asked, the client sees no usage chunk.
    let resp = post(&gw, "/v1/chat/completions", &chat_body(true))
        .header("x-mock-events", "4")
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("content-length").is_none());
    let events = read_events(resp, Instant::now()).await.unwrap();
    assert_eq!(last_sent()["stream_options"]["include_usage"], true);
    assert_eq!(
        last_sent()["messages"],
        chat_body(true)["messages"],
        "the rest is kept"
    );
    let data: Vec<&str> = events.iter().map(|(_, e)| e.as_str()).collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{data:?}");
    assert!(
        !events
            .iter()
            .filter_map(|(_, e)| serde_json::from_str::<Value>(e).ok())
            .any(|v| v["usage"].is_object()),
        "the usage-only chunk reached a client that did not ask: {data:?}"
    );
    let hidden_len = data.len();
    let u = only_row(&gw).await;
    assert!(u.input_tokens > 0 && u.output_tokens > 0, "counted: {u:?}");

    // A client that asked gets its chunk, and the body goes as sent.
    let mut asked = chat_body(true);
    asked["stream_options"] = json!({"include_usage": true});
    let resp = post(&gw, "/v1/chat/completions", &asked)
        .header("x-mock-events", "4")
        .send()
        .await
        .unwrap();
    let events = read_events(resp, Instant::now()).await.unwrap();
    assert!(
        events
            .iter()
            .filter_map(|(_, e)| serde_json::from_str::<Value>(e).ok())
            .any(|v| v["usage"].is_object())
    );
    assert_eq!(
        events.len(),
        hidden_len + 1,
        "the same stream, with the usage chunk: only that chunk was taken out before"
    );
    assert_eq!(last_sent(), asked);

    // Anthropic's Messages API takes no stream_options: its body is left alone.
    let anthropic = json!({"model": "claude-test", "max_tokens": 8, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let resp = post(&gw, "/v1/messages", &anthropic).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    assert_eq!(last_sent(), anthropic);
}

/// Streams framed with each line ending the SSE format allows (LF, CRLF, CR) by the test mock's
/// own writer: relayed in that ending, their tokens counted, and the usage-only chunk the
/// gateway asked for taken out.
#[tokio::test]
async fn streams_with_every_line_ending_are_counted_and_their_extra_chunk_taken_out() {
    let mock = MockUpstream::start().await;
    let yaml = config_yaml(&[mock.url()], "").replace(
        "    upstreams: [u0]\n",
        "    upstreams: [u0]\n    stream_usage: inject\n",
    );
    let gw = TestGateway::start(&yaml).await;
    let mut asked = chat_body(true);
    asked["stream_options"] = json!({"include_usage": true});
    let mut expected = (0, 0);
    for (name, eol) in [("lf", "\n"), ("crlf", "\r\n"), ("cr", "\r")] {
        let mut bodies = Vec::new();
        for body in [&asked, &chat_body(true)] {
            let resp = post(&gw, "/v1/chat/completions", body)
                .header("x-mock-events", "4")
                .header("x-mock-eol", name)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            bodies.push(resp.text().await.unwrap());
        }
        let blank = format!("{eol}{eol}");
        let events = |raw: &str| -> Vec<String> {
            raw.split(blank.as_str())
                .filter(|e| !e.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let (with, without) = (events(&bodies[0]), events(&bodies[1]));
        for raw in &bodies {
            // Only this line ending, as the upstream sent it.
            let other = match eol {
                "\n" => raw.contains('\r'),
                "\r" => raw.contains('\n'),
                _ => raw.replace("\r\n", "").contains(['\r', '\n']),
            };
            assert!(!other, "{name}: {raw:?}");
            assert!(
                raw.ends_with(&format!("data: [DONE]{blank}")),
                "{name}: {raw:?}"
            );
        }
        let usage_chunks = |e: &[String]| e.iter().filter(|e| e.contains("\"usage\":{")).count();
        assert_eq!(usage_chunks(&with), 1, "{name}: {with:?}");
        assert_eq!(usage_chunks(&without), 0, "{name}: {without:?}");
        assert_eq!(
            without.len() + 1,
            with.len(),
            "{name}: only that chunk is taken out"
        );
        // Both streams counted: 8 input and 4 output tokens each (the mock's usage chunk).
        expected = (expected.0 + 16, expected.1 + 8);
        let u = only_row(&gw).await;
        assert_eq!((u.input_tokens, u.output_tokens), expected, "{name}");
    }
}
