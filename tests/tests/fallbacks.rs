//! Model fallbacks (`routes[].fallbacks`) end to end: a two-step chain across upstreams that
//! refuse (429, 5xx, an error as a stream's first event, a connection refused), with the body
//! renamed for each model, usage counted for the model that served, and the request log saying
//! which model that was.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use serde_json::{Value, json};
use tollgate::state::UsageBy;
use tollgate_tests::*;

/// Upstreams `big` (serves gpt-4o), `mid` (gpt-4o-mini), `small` (gpt-3.5-turbo) and a route with
/// the chain gpt-4o → [gpt-4o-mini, gpt-3.5-turbo]; every request is logged.
fn config(big: &str, mid: &str, small: &str, extra_route: &str) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n  jwt_secret: an-admin-signing-key-of-32-chars!!\n  users:\n    - {{username: ops, password: correct horse battery}}\nauth:\n  secret: test-secret-0123456789\n  keys:\n    - name: tester\n      key: {CLIENT_KEY}\n\
upstreams:\n\
  - {{name: big, url: {big}, credential: c, models: [gpt-4o], max_fails: 100}}\n\
  - {{name: mid, url: {mid}, credential: c, models: [gpt-4o-mini], max_fails: 100}}\n\
  - {{name: small, url: {small}, credential: c, models: [gpt-3.5-turbo], max_fails: 100}}\n\
routes:\n  - path_prefix: /v1/\n    upstreams: [big, mid, small]\n    fallbacks:\n      gpt-4o: [gpt-4o-mini, gpt-3.5-turbo]\n{extra_route}\
storage:\n  request_log: {{sample: 1}}\nlogging:\n  access_log: false\n"
    )
}

fn body(stream: bool) -> Value {
    json!({"model": "gpt-4o", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

fn model_sent(mock: &MockUpstream) -> String {
    let b: Value = serde_json::from_slice(&mock.last_body()).unwrap();
    b["model"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_two_step_chain_ends_on_the_model_that_answers_and_bills_it() {
    let (big, mid, small) = (
        MockUpstream::start().await,
        MockUpstream::start().await,
        MockUpstream::start().await,
    );
    big.force_status(429);
    mid.force_status(503);
    let gw = TestGateway::start(&config(&big.url(), &mid.url(), &small.url(), "")).await;

    let resp = post_chat_json(&gw, &body(false)).await;
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(
        answer["model"], "gpt-3.5-turbo",
        "the answer names the model that served"
    );
    assert_eq!(
        (big.requests(), mid.requests(), small.requests()),
        (1, 1, 1)
    );
    assert_eq!(model_sent(&big), "gpt-4o");
    assert_eq!(model_sent(&mid), "gpt-4o-mini");
    assert_eq!(model_sent(&small), "gpt-3.5-turbo");

    // Usage is counted for the model that served; the log names both.
    let stores = &gw.gateway.stores;
    stores.flush().await;
    let rows = stores
        .database()
        .token_usage(UsageBy::Model, 0, u64::MAX)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(&*rows[0].model, "gpt-3.5-turbo", "{rows:?}");
    let http = client();
    let admin = gw.admin_addr.unwrap().to_string();
    let token = admin_token(&http, &admin, "ops", "correct horse battery").await;
    let page = admin_get(&http, &admin, &token, "/admin/api/requests?limit=10").await;
    let logged = &page["items"][0];
    assert_eq!(logged["model"], "gpt-4o", "{logged}");
    assert_eq!(logged["served_model"], "gpt-3.5-turbo", "{logged}");
    let attempts: Vec<(&str, u64, &str)> = logged["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["upstream"].as_str().unwrap(),
                a["status"].as_u64().unwrap(),
                a["error"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        attempts,
        [
            ("big", 429, "fallback"),
            ("mid", 503, "fallback"),
            ("small", 200, "")
        ]
    );

    // A model that answers is not fallen back from.
    big.force_status(0);
    assert_eq!(post_chat_json(&gw, &body(false)).await.status(), 200);
    assert_eq!(big.requests(), 2);
    assert_eq!(small.requests(), 1);

    // The last model's refusal reaches the client as it is.
    big.force_status(429);
    small.force_status(500);
    let resp = post_chat_json(&gw, &body(false)).await;
    assert_eq!(resp.status(), 500);
    assert_eq!(small.requests(), 2);

    // A model without fallbacks keeps the old behaviour: the 429 is relayed.
    let mut other = body(false);
    other["model"] = json!("gpt-4o-mini");
    mid.force_status(429);
    assert_eq!(post_chat_json(&gw, &other).await.status(), 429);
}

#[tokio::test]
async fn an_error_before_the_first_token_and_a_dead_upstream_fall_back_too() {
    let (big, small) = (MockUpstream::start().await, MockUpstream::start().await);
    let dead = DeadPort::new();
    big.force_error_event();
    let gw = TestGateway::start(&config(
        &big.url(),
        &dead.url(),
        &small.url(),
        "    stream_bootstrap: true\n",
    ))
    .await;
    let resp = post_chat_json(&gw, &body(true)).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("gpt-3.5-turbo") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    assert!(
        !text.contains("overloaded"),
        "the error event never reached the client"
    );
    assert_eq!((big.requests(), small.requests()), (1, 1));
}

#[tokio::test]
async fn fallbacks_are_validated_with_their_paths() {
    let yaml = config(
        "http://127.0.0.1:1",
        "http://127.0.0.1:1",
        "http://127.0.0.1:1",
        "",
    )
    .replace("[gpt-4o-mini, gpt-3.5-turbo]", "[gpt-4o, no-such-model]");
    let err = tollgate::Config::parse(&yaml, "test.yaml", Box::new(|_| None))
        .map(|_| ())
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("routes[0].fallbacks.gpt-4o[0]: \"gpt-4o\" is already tried before it"),
        "{err}"
    );
    assert!(
        err.contains(
            "routes[0].fallbacks.gpt-4o[1]: no upstream of this route serves \"no-such-model\""
        ),
        "{err}"
    );
}

/// A fallback to a model on the other provider goes through the translation: the client's
/// request is made again for that model, translated for its upstream (`upstream: auto` follows
/// `upstreams[].protocol`), and the answer translated back.
#[tokio::test]
async fn a_fallback_to_the_other_provider_is_translated_both_ways() {
    use tollgate_tests::mock_upstream::Protocol;
    let openai = MockUpstream::start_only(Protocol::OpenAi).await;
    let anthropic = MockUpstream::start_only(Protocol::Anthropic).await;
    openai.force_status(429);
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nauth:\n  secret: test-secret-0123456789\n  keys:\n    - name: tester\n      key: {CLIENT_KEY}\n\
upstreams:\n\
  - {{name: oa, url: {}, credential: c, models: [gpt-4o], max_fails: 100}}\n\
  - {{name: an, url: {}, credential: c, models: [claude-x], protocol: anthropic, auth_scheme: x-api-key, max_fails: 100}}\n\
routes:\n  - path_prefix: /v1/\n    upstreams: [oa, an]\n    policies: [translate]\n    fallbacks:\n      gpt-4o: [claude-x]\n\
plugins:\n  - {{name: translate, kind: transform, module: builtin:anthropic-openai, config: {{upstream: auto}}}}\n\
logging:\n  access_log: false\n",
        openai.url(),
        anthropic.url()
    );
    let gw = TestGateway::start(&yaml).await;

    // An OpenAI client: gpt-4o is refused, claude-x answers in Anthropic's API.
    let mut req = body(false);
    req["messages"] =
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]);
    let resp = post_chat_json(&gw, &req).await;
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["object"], "chat.completion", "{answer}");
    assert_eq!(answer["model"], "claude-x");
    assert_eq!(answer["choices"][0]["message"]["content"], "mock answer");
    assert_eq!(anthropic.seen().last().unwrap().1, "/v1/messages");
    let sent: Value = serde_json::from_slice(&anthropic.last_body()).unwrap();
    assert_eq!(sent["system"], "Be brief.");
    assert_eq!(sent["model"], "claude-x");

    // An Anthropic client: translated for gpt-4o's OpenAI upstream, then sent as it is to
    // claude-x's Anthropic one, and its answer not translated.
    let resp = client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", CLIENT_KEY)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "gpt-4o", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["type"], "message", "{answer}");
    assert_eq!(answer["content"][0]["text"], "mock answer");
    let sent: Value = serde_json::from_slice(&openai.last_body()).unwrap();
    assert!(
        sent["messages"].is_array(),
        "the first attempt was translated: {sent}"
    );
    let sent: Value = serde_json::from_slice(&anthropic.last_body()).unwrap();
    assert_eq!(sent["model"], "claude-x");
    assert_eq!(sent["max_tokens"], 20);
}

/// Fallbacks are looked up by the model the request-body filters leave: an alias that names a
/// model with fallbacks falls back like that model.
#[tokio::test]
async fn an_alias_falls_back_like_the_model_it_names() {
    let (big, mid, small) = (
        MockUpstream::start().await,
        MockUpstream::start().await,
        MockUpstream::start().await,
    );
    big.force_status(429);
    let yaml = config(&big.url(), &mid.url(), &small.url(), "    policies: [alias]\n").replace(
        "storage:",
        "plugins:\n  - {name: alias, kind: transform, module: builtin:model-alias, config: {aliases: {smart: gpt-4o}}}\nstorage:",
    );
    let gw = TestGateway::start(&yaml).await;
    let mut req = body(false);
    req["model"] = json!("smart");
    let resp = post_chat_json(&gw, &req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!((big.requests(), mid.requests()), (1, 1));
    assert_eq!(model_sent(&big), "gpt-4o");
    assert_eq!(model_sent(&mid), "gpt-4o-mini");
}
