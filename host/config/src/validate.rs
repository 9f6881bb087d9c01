//! Checks that types cannot express. Every error found is returned, each with its YAML path.

use std::collections::HashMap;

use super::{Config, ConfigError, PluginKind};

/// Shortest server secret accepted: 16 bytes keeps HMAC key ids unguessable offline.
pub(crate) const MIN_SECRET_LEN: usize = 16;
/// Shortest client API key accepted.
pub(crate) const MIN_KEY_LEN: usize = 8;
/// Data-plane threads at most (`server.workers`).
pub(crate) const MAX_WORKERS: usize = 1024;
use super::RESERVED_PATHS;

pub(crate) struct Errors(pub(crate) Vec<ConfigError>);

impl Errors {
    pub(crate) fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            location: None,
            message: message.into(),
        });
    }
}

pub(super) fn validate(c: &Config) -> Vec<ConfigError> {
    let mut e = Errors(Vec::new());
    super::server::validate(c, &mut e);
    super::auth::validate(c, &mut e);
    super::upstreams::validate(c, &mut e);
    super::plugins::validate(c, &mut e);
    validate_routes(c, &mut e);
    super::storage::validate(c, &mut e);
    super::admin::validate(c, &mut e);
    super::pricing::validate(c, &mut e);
    super::budgets::validate(c, &mut e);
    super::telemetry::validate(c, &mut e);
    super::capture::validate(c, &mut e);
    validate_edge(c, &mut e);
    if let Some(f) = &c.logging.file {
        if f.max_files == 0 || f.max_files > 1000 {
            e.add("logging.file.max_files", "must be 1 to 1000");
        }
        if f.max_total_size.0 < 64 << 10 {
            e.add("logging.file.max_total_size", "must be at least 64KiB");
        }
    }
    if let Err(err) = tracing_subscriber::EnvFilter::try_new(&c.logging.level) {
        e.add(
            "logging.level",
            format!("invalid log filter {:?}: {err}", c.logging.level),
        );
    }
    e.0
}

fn validate_routes(c: &Config, e: &mut Errors) {
    if c.routes.is_empty() {
        e.add("routes", "at least one route is required");
    }
    let mut defined: Vec<&str> = c.upstreams.iter().map(|u| u.name.as_str()).collect();
    defined.dedup();
    let mut prefixes = HashMap::new();
    for (i, r) in c.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        if !r.path_prefix.starts_with('/') {
            e.add(format!("{path}.path_prefix"), "must start with `/`");
        }
        // The gateway's own endpoints are matched before routes; a prefix inside one could never
        // receive a request.
        if let Some(own) = RESERVED_PATHS
            .iter()
            .find(|own| r.path_prefix.starts_with(*own))
        {
            e.add(
                format!("{path}.path_prefix"),
                format!("is inside the gateway's own `{own}`"),
            );
        }
        if let Some(first) = prefixes.insert(r.path_prefix.as_str(), i) {
            e.add(
                format!("{path}.path_prefix"),
                format!(
                    "duplicate prefix {:?} (first at routes[{first}])",
                    r.path_prefix
                ),
            );
        }
        if r.upstreams.is_empty() {
            e.add(
                format!("{path}.upstreams"),
                "at least one upstream is required",
            );
        }
        for (j, name) in r.upstreams.iter().enumerate() {
            if !defined.contains(&name.as_str()) {
                e.add(
                    format!("{path}.upstreams[{j}]"),
                    format!(
                        "unknown upstream {name:?} (defined: {})",
                        defined.join(", ")
                    ),
                );
            }
        }
        if r.max_attempts == 0 {
            e.add(format!("{path}.max_attempts"), "must be at least 1");
        }
        if r.methods.is_empty() {
            e.add(format!("{path}.methods"), "at least one method is required");
        }
        let mut singletons: HashMap<PluginKind, usize> = HashMap::new();
        for (j, name) in r.policies.iter().enumerate() {
            let Some(plugin) = c.plugins.iter().find(|p| &p.name == name) else {
                let defined: Vec<&str> = c.plugins.iter().map(|p| p.name.as_str()).collect();
                e.add(
                    format!("{path}.policies[{j}]"),
                    format!("unknown plugin {name:?} (defined: {})", defined.join(", ")),
                );
                continue;
            };
            if matches!(plugin.kind, PluginKind::Router | PluginKind::Quota)
                && let Some(first) = singletons.insert(plugin.kind, j)
            {
                e.add(
                    format!("{path}.policies[{j}]"),
                    format!(
                        "a route takes one {:?} policy (another at policies[{first}])",
                        plugin.kind
                    ),
                );
            }
        }
        for (model, next) in &r.fallbacks {
            let at = format!("{path}.fallbacks.{model}");
            if next.is_empty() {
                e.add(at.clone(), "at least one fallback model is required");
            }
            for (j, fallback) in next.iter().enumerate() {
                if fallback == model || next[..j].contains(fallback) {
                    e.add(
                        format!("{at}[{j}]"),
                        format!("{fallback:?} is already tried before it"),
                    );
                }
                let serving = c
                    .upstreams
                    .iter()
                    .filter(|u| r.upstreams.contains(&u.name))
                    .any(|u| u.serves(fallback));
                if !serving {
                    e.add(
                        format!("{at}[{j}]"),
                        format!("no upstream of this route serves {fallback:?}"),
                    );
                }
            }
        }
        for (live, candidate) in &r.shadow {
            let at = format!("{path}.shadow.{live}");
            if !r.policies.contains(live) {
                e.add(
                    at.clone(),
                    format!("{live:?} is not one of this route's policies"),
                );
            }
            let Some(cand) = c.plugins.iter().find(|p| &p.name == candidate) else {
                e.add(at, format!("unknown plugin {candidate:?}"));
                continue;
            };
            if let Some(l) = c.plugins.iter().find(|p| &p.name == live)
                && l.kind != cand.kind
            {
                e.add(
                    at.clone(),
                    format!(
                        "{candidate:?} has kind {}, {live:?} has kind {}: a shadow has the live policy's kind",
                        cand.kind.as_str(),
                        l.kind.as_str()
                    ),
                );
            }
            if cand.kind == PluginKind::Transform {
                e.add(
                    at.clone(),
                    "a transform cannot be shadowed (its decisions are rewritten bodies, not comparable verdicts)",
                );
            }
            if c.routes.iter().any(|r| r.policies.contains(candidate)) {
                e.add(
                    at,
                    format!("{candidate:?} is a live policy of a route: a shadow runs dry, so it cannot also be live"),
                );
            }
        }
    }
}

/// Names are identifiers that appear in logs, metrics and the admin API.
pub(crate) fn check_name<'a>(
    name: &'a str,
    path: &str,
    what: &str,
    seen: &mut HashMap<&'a str, String>,
    e: &mut Errors,
) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !ok {
        e.add(
            path,
            format!("{what} name must be 1-64 characters of A-Z a-z 0-9 - _ ."),
        );
    }
    if let Some(first) = seen.insert(name, path.to_owned()) {
        e.add(
            path,
            format!("duplicate {what} name {name:?} (first at {first})"),
        );
    }
}

/// Most request (and token) limits: a request's share of them is a 64-bit set.
const MAX_LIMITS: usize = 64;

/// Largest `burst` of a request limit (nginx accepts any; a bigger one is no limit).
const MAX_BURST: u32 = 1_000_000;

fn validate_edge(c: &Config, e: &mut Errors) {
    use super::LimitBy;
    let l = &c.limits;
    if l.max_tracked_keys == 0 {
        e.add("limits.max_tracked_keys", "must be at least 1");
    }
    for (list, n) in [("requests", l.requests.len()), ("tokens", l.tokens.len())] {
        if n > MAX_LIMITS {
            e.add(
                format!("limits.{list}"),
                format!("at most {MAX_LIMITS} limits"),
            );
        }
    }
    if l.estimate.bytes_per_token == 0 {
        e.add("limits.estimate.bytes_per_token", "must be at least 1");
    }
    let check_scope = |path: &str, scope: &super::LimitScope, by: LimitBy, e: &mut Errors| {
        for (j, r) in scope.routes.iter().enumerate() {
            if !c.routes.iter().any(|route| &route.path_prefix == r) {
                e.add(
                    format!("{path}.routes[{j}]"),
                    format!("no route has path_prefix {r:?}"),
                );
            }
        }
        for (j, k) in scope.keys.iter().enumerate() {
            if by == LimitBy::Ip {
                e.add(
                    format!("{path}.keys"),
                    "a limit by ip is checked before the key is known; drop `keys`",
                );
                break;
            }
            if !c.auth.keys.iter().any(|key| &key.name == k) {
                e.add(
                    format!("{path}.keys[{j}]"),
                    format!("no key is named {k:?}"),
                );
            }
        }
    };
    let mut names = HashMap::new();
    let mut unique = |path: &str, name: &str, e: &mut Errors| {
        if name.is_empty() {
            e.add(format!("{path}.name"), "must not be empty");
        } else if let Some(first) = names.insert(name.to_owned(), path.to_owned()) {
            e.add(
                format!("{path}.name"),
                format!("duplicate limit name {name:?} (first at {first})"),
            );
        }
    };
    for (i, r) in l.requests.iter().enumerate() {
        let path = format!("limits.requests[{i}]");
        unique(&path, &r.name, e);
        if r.burst > MAX_BURST {
            e.add(
                format!("{path}.burst"),
                format!("must be at most {MAX_BURST}"),
            );
        }
        if r.rate.count as u128 > r.rate.period.as_micros() {
            e.add(format!("{path}.rate"), "must be at most 1000000/s");
        }
        check_scope(&path, &r.scope, r.by, e);
    }
    let key_only = |path: &str, by: LimitBy, e: &mut Errors| {
        if !matches!(by, LimitBy::Key | LimitBy::KeyModel) {
            e.add(format!("{path}.by"), "must be `key` or `key-model`");
        }
    };
    for (i, t) in l.tokens.iter().enumerate() {
        let path = format!("limits.tokens[{i}]");
        unique(&path, &t.name, e);
        key_only(&path, t.by, e);
        check_scope(&path, &t.scope, t.by, e);
    }
    for (i, f) in l.in_flight.iter().enumerate() {
        let path = format!("limits.in_flight[{i}]");
        unique(&path, &f.name, e);
        key_only(&path, f.by, e);
        if f.max == 0 {
            e.add(format!("{path}.max"), "must be at least 1");
        }
        check_scope(&path, &f.scope, f.by, e);
    }
    let h = &c.server.response_headers;
    for (name, value) in &h.set {
        let path = format!("server.response_headers.set.{name}");
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            e.add(&path, "is not a valid header name");
        } else if [
            "connection",
            "keep-alive",
            "transfer-encoding",
            "te",
            "trailer",
            "upgrade",
            "content-length",
            "proxy-connection",
        ]
        .contains(&name.to_ascii_lowercase().as_str())
        {
            e.add(&path, "is a connection header the gateway manages itself");
        }
        if http::HeaderValue::from_str(value).is_err() {
            e.add(&path, "is not a valid header value");
        }
    }
    if http::HeaderValue::from_str(&h.hsts).is_err() {
        e.add(
            "server.response_headers.hsts",
            "is not a valid header value",
        );
    }
    if let Some(cors) = &c.server.cors {
        if cors.allow_origins.is_empty() {
            e.add(
                "server.cors.allow_origins",
                "at least one origin (or \"*\") is required",
            );
        }
        for (j, o) in cors.allow_origins.iter().enumerate() {
            let valid = o == "*"
                || (o.parse::<http::Uri>().is_ok_and(|u| {
                    u.scheme().is_some() && u.authority().is_some() && u.path() == "/"
                }) && !o.ends_with('/'));
            if !valid {
                e.add(
                    format!("server.cors.allow_origins[{j}]"),
                    format!("{o:?} is not an origin (scheme://host[:port], no path) or \"*\""),
                );
            }
        }
        if cors.allow_credentials && cors.allow_origins.iter().any(|o| o == "*") {
            e.add(
                "server.cors.allow_credentials",
                "browsers refuse credentials with the origin \"*\"; list the origins",
            );
        }
        for (list, items) in [
            ("allow_methods", &cors.allow_methods),
            ("allow_headers", &cors.allow_headers),
            ("expose_headers", &cors.expose_headers),
        ] {
            for (j, item) in items.iter().enumerate() {
                if http::HeaderName::from_bytes(item.as_bytes()).is_err() && item != "*" {
                    e.add(
                        format!("server.cors.{list}[{j}]"),
                        format!("{item:?} is not a token"),
                    );
                }
            }
        }
    }
    if let Some(r) = &c.server.new_connections_per_ip
        && r.count as u128 > r.period.as_micros()
    {
        e.add("server.new_connections_per_ip", "must be at most 1000000/s");
    }
    if c.maintenance.retry_after.get().is_zero() {
        e.add("maintenance.retry_after", "must be greater than 0");
    }
}
