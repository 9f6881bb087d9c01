//! Test fixture for the WIT contract: a header-rewrite policy that calls every host import and
//! every `request`/`response` method, and reports what each returned as `x-probe-*` headers (on
//! the upstream request, and on the response), so an end-to-end test can compare them with what
//! `wit/` documents. Config: `{"tag": "b"}` (optional) names its headers `x-probe-b-*` instead,
//! so two instances on one route report apart.
//!
//! The `kv` sequence runs on each request in the plugin's own namespace:
//! `set a=1`, `get a`, `incr n by 5`, `compare-and-set a 1→2` (succeeds), `compare-and-set a
//! 1→3` (fails), `get a`, `delete a`, `get a`, reported in that order. Then `kv-ttl` reports
//! `get t` and, only when `t` was absent, sets `t=x` with a 3 s TTL; `kv-incr-ttl` reports
//! `incr c by 1` with a 3 s TTL (which applies only when `c` is created).
//!
//! `binding` is `bindings.get(request.key-id())`, `binding-for` is `bindings.get-for(request)`:
//! the same binding, two ways; `binding-match` is `bindings.match-for(request)`.
//!
//! `bind-first` binds the made-up key id `<key id>-probe` to `10.1.2.3/8`, then to
//! `192.0.2.1/32`, then to `not-a-network`, and reports each answer, `;`-separated.

use std::sync::OnceLock;

use tollgate_sdk::host::{Level, bindings, kv, log, now_ms};
use tollgate_sdk::{
    Deserialize, Header, HeaderOp, HeaderRewrite, Phases, Plugin, Request, Response,
};

struct Probe;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    tag: Option<String>,
}

static PREFIX: OnceLock<String> = OnceLock::new();

impl Plugin for Probe {
    fn configure(config: String) -> Result<(), String> {
        let c: Config = tollgate_sdk::parse_config(&config)?;
        let prefix = match c.tag {
            Some(tag) => format!("x-probe-{tag}-"),
            None => "x-probe-".into(),
        };
        let _ = PREFIX.set(prefix);
        Ok(())
    }
}

fn set(name: &str, value: impl Into<String>) -> HeaderOp {
    let prefix = PREFIX.get().map_or("x-probe-", String::as_str);
    HeaderOp::Set(Header {
        name: format!("{prefix}{name}"),
        value: value.into(),
    })
}

fn binding_text(b: &bindings::Binding) -> String {
    format!(
        "{} {}",
        b.cidr,
        match b.status {
            bindings::BindingStatus::Active => "active",
            bindings::BindingStatus::Banned => "banned",
        }
    )
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
        let ttl = kv::get("t");
        if ttl.is_none() {
            kv::set("t", "x", Some(3000));
        }
        let incr_ttl = kv::incr("c", 1, Some(3000));
        log(Level::Info, &format!("probe saw {}", request.path()));
        log(Level::Warn, "probe warns");
        let binding =
            bindings::get(&request.key_id()).map_or("<none>".into(), |b| binding_text(&b));
        let binding_for = bindings::get_for(request).map_or("<none>".into(), |b| binding_text(&b));
        let binding_match = format!("{:?}", bindings::match_for(request));
        let made_up = format!("{}-probe", request.key_id());
        let bind_first = ["10.1.2.3/8", "192.0.2.1/32", "not-a-network"]
            .map(|cidr| match bindings::bind_first(&made_up, cidr) {
                Ok(b) => binding_text(&b),
                Err(e) => format!("error: {e}"),
            })
            .join(";");
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
            set("kv-ttl", or_none(ttl)),
            set("kv-incr-ttl", incr_ttl.to_string()),
            set("binding", binding),
            set("binding-for", binding_for),
            set("binding-match", binding_match),
            set("bind-first", bind_first),
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
