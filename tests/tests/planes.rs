//! The data plane and the admin plane on their own listeners.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use serde_json::Value;
use tollgate_tests::*;

/// A gateway whose one route is `/`, so every path that is not the gateway's own would be proxied.
async fn catch_all() -> (MockUpstream, TestGateway) {
    let mock = MockUpstream::start().await;
    let yaml = config_yaml(&[mock.url()], "").replace("path_prefix: /v1/", "path_prefix: /");
    (mock, TestGateway::start(&yaml).await)
}

async fn get(url: String) -> (u16, Value) {
    let resp = client()
        .get(url)
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn admin_paths_are_never_proxied_even_by_a_catch_all_route() {
    let (mock, gw) = catch_all().await;
    for path in [
        "/metrics",
        "/admin/api/bindings",
        "/admin/ui/",
        "/v1/../admin/api/bindings",
        "/v1/%2e%2e/metrics",
    ] {
        let (status, body) = get(gw.url(path)).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["error"]["code"], "unknown_url", "{path}");
    }
    assert_eq!(mock.requests(), 0, "{:?}", mock.seen());
    // The catch-all route still proxies everything else.
    assert_eq!(get(gw.url("/v1/models")).await.0, 200);
    assert_eq!(mock.requests(), 1);
}

#[tokio::test]
async fn the_admin_plane_has_its_own_listener_and_no_routes() {
    let (mock, gw) = catch_all().await;
    let admin = gw.admin_addr.expect("the admin listener is on by default");
    assert_ne!(admin, gw.addr);
    // It serves its own endpoints (`/metrics`); anything else answers like the gateway does:
    // 404 in OpenAI shape.
    assert_eq!(
        client()
            .get(format!("http://{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for path in ["/admin/api/anything", "/metrics/x", "/v1/chat/completions"] {
        let (status, body) = get(format!("http://{admin}{path}")).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["error"]["code"], "unknown_url");
    }
    let resp = client()
        .post(format!("http://{admin}/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        404,
        "routes are not served on the admin listener"
    );
    assert_eq!(mock.requests(), 0);
}

#[tokio::test]
async fn the_admin_listener_can_be_turned_off() {
    let mock = MockUpstream::start().await;
    let yaml = config_yaml(&[mock.url()], "").replace("admin:\n", "admin:\n  enabled: false\n");
    let gw = TestGateway::start(&yaml).await;
    assert!(gw.admin_addr.is_none());
    assert_eq!(get(gw.url("/health")).await.0, 200);
}
