//! Test fixture for the WIT contract: a header-rewrite policy that calls every host import and
//! every `request`/`response` method, and reports what each returned as `x-probe-*` headers (on
//! the upstream request, and on the response), so an end-to-end test can compare them with what
//! `wit/` documents. Takes no configuration.
//!
//! The `kv` sequence runs on each request in the plugin's own namespace:
//! `set a=1`, `get a`, `incr n by 5`, `compare-and-set a 1→2` (succeeds), `compare-and-set a
//! 1→3` (fails), `get a`, `delete a`, `get a`, reported in that order.

use tollgate_sdk::host::{Level, bindings, kv, log, now_ms};
use tollgate_sdk::{Header, HeaderOp, HeaderRewrite, Phases, Plugin, Request, Response};

struct Probe;

impl Plugin for Probe {
    fn configure(_config: String) -> Result<(), String> {
        Ok(())
    }
}

fn set(name: &str, value: impl Into<String>) -> HeaderOp {
    HeaderOp::Set(Header {
        name: format!("x-probe-{name}"),
        value: value.into(),
    })
}

fn or_none(v: Option<String>) -> String {
    v.unwrap_or_else(|| "<none>".into())
}

/// Header names in order, joined by `,`.
fn names(headers: &[Header]) -> String {
    headers
        .iter()
        .map(|h| h.name.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

impl HeaderRewrite for Probe {
    fn rewrites() -> Phases {
        Phases::REQUEST | Phases::RESPONSE
    }

    fn on_request(request: &Request) -> Vec<HeaderOp> {
        kv::set("a", "1", None);
        let kv_steps = [
            or_none(kv::get("a")),
            kv::incr("n", 5, None).to_string(),
            kv::compare_and_set("a", Some("1"), "2", None).to_string(),
            kv::compare_and_set("a", Some("1"), "3", None).to_string(),
            or_none(kv::get("a")),
            {
                kv::delete("a");
                or_none(kv::get("a"))
            },
        ];
        log(Level::Info, &format!("probe saw {}", request.path()));
        let binding = match bindings::get(&request.key_id()) {
            Some(b) => format!(
                "{} {}",
                b.cidr,
                match b.status {
                    bindings::BindingStatus::Active => "active",
                    bindings::BindingStatus::Banned => "banned",
                }
            ),
            None => "<none>".into(),
        };
        vec![
            set("id", request.id()),
            set("method", request.method()),
            set("path", request.path()),
            set("header", or_none(request.header("X-In"))),
            set(
                "header-authorization",
                or_none(request.header("authorization")),
            ),
            set("headers", names(&request.headers())),
            set("client-ip", request.client_ip()),
            set("key-id", request.key_id()),
            set("key-name", request.key_name()),
            set("model", or_none(request.model())),
            set("stream", request.stream().to_string()),
            set("session-hint", or_none(request.session_hint())),
            set("now-ms", now_ms().to_string()),
            set("kv", kv_steps.join(",")),
            set("binding", binding),
        ]
    }

    fn on_response(request: &Request, response: &Response) -> Vec<HeaderOp> {
        vec![
            set("request-id", request.id()),
            set("upstream", response.upstream()),
            set("status", response.status().to_string()),
            set("content-type", or_none(response.header("Content-Type"))),
            set("response-headers", names(&response.headers())),
            set("first-event", or_none(response.first_event())),
        ]
    }
}

tollgate_sdk::export!(Probe);
