//! Reading the request log (`state::RequestQuery`): the filters the admin API and the command
//! line share, validated the same way.

use serde::Deserialize;
use utoipa::IntoParams;

use super::ServiceError;
use crate::state::{KeyTable, RequestQuery};

#[derive(Deserialize, IntoParams, Default, Debug, clap::Args)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RequestFilter {
    /// Unix ms: requests that started at or after it.
    #[arg(long)]
    pub from_ms: Option<u64>,
    /// Unix ms: requests that started at or before it.
    #[arg(long)]
    pub to_ms: Option<u64>,
    /// A key's name, its id, or the id's first hex digits (at least 4).
    #[arg(long)]
    pub key: Option<String>,
    /// The client address, exactly.
    #[arg(long)]
    pub ip: Option<String>,
    /// The route's path prefix, e.g. `/v1/`.
    #[arg(long)]
    pub route: Option<String>,
    #[arg(long)]
    pub model: Option<String>,
    /// The upstream that answered.
    #[arg(long)]
    pub upstream: Option<String>,
    /// The status class: `2xx`, `3xx`, `4xx` or `5xx`.
    #[arg(long)]
    pub status: Option<String>,
    /// `complete`, `client_aborted`, `upstream_aborted`, `refused` or `cut`.
    #[arg(long)]
    pub outcome: Option<String>,
    /// The code of the gateway's own answer (`rate_limit_exceeded`, …), or `any`.
    #[arg(long)]
    pub error: Option<String>,
    /// What answered instead of an upstream: `auth`, `limits:NAME`, `plugin:NAME`, …
    #[arg(long)]
    pub answered_by: Option<String>,
    #[arg(long)]
    pub request_id: Option<String>,
    /// Only rows with a smaller id (the previous page's `next`).
    #[arg(long)]
    pub before: Option<i64>,
    /// Only rows with a larger id, oldest first (a live tail: the newest id seen).
    #[arg(long)]
    pub after: Option<i64>,
    /// Page size (1–1000, default 50); not used by the exports.
    #[arg(long)]
    pub limit: Option<u32>,
}

const OUTCOMES: &[&str] = &[
    "complete",
    "client_aborted",
    "upstream_aborted",
    "refused",
    "cut",
];

impl RequestFilter {
    /// The store query, or the first filter that is wrong.
    pub fn query(&self, keys: &KeyTable) -> Result<RequestQuery, ServiceError> {
        let (mut key_id, mut key_name) = (None, None);
        if let Some(k) = &self.key {
            match keys.by_name(k) {
                Some(found) => key_id = Some(found.hex.to_string()),
                None if k.len() >= 4
                    && k.len() <= 64
                    && k.bytes().all(|b| b.is_ascii_hexdigit()) =>
                {
                    key_id = Some(k.clone());
                }
                // The name of a key no longer in force.
                None if !k.is_empty() => key_name = Some(k.clone()),
                None => return Err(invalid("key", "must not be empty")),
            }
        }
        if let Some(ip) = &self.ip
            && ip.parse::<std::net::IpAddr>().is_err()
        {
            return Err(invalid("ip", "must be an IP address"));
        }
        let status_class = match self.status.as_deref() {
            None => None,
            Some(s) => match s.strip_suffix("xx").and_then(|d| d.parse::<u16>().ok()) {
                Some(c @ 1..=5) => Some(c),
                _ => {
                    return Err(invalid(
                        "status",
                        "must be a status class: 2xx, 3xx, 4xx or 5xx",
                    ));
                }
            },
        };
        if let Some(o) = &self.outcome
            && !OUTCOMES.contains(&o.as_str())
        {
            return Err(invalid(
                "outcome",
                format!("must be one of {}", OUTCOMES.join(", ")),
            ));
        }
        if let (Some(from), Some(to)) = (self.from_ms, self.to_ms)
            && from > to
        {
            return Err(invalid("from_ms", "must not be after to_ms"));
        }
        Ok(RequestQuery {
            from_ms: self.from_ms,
            to_ms: self.to_ms,
            key_id,
            key_name,
            ip: self.ip.clone(),
            route: self.route.clone(),
            model: self.model.clone(),
            upstream: self.upstream.clone(),
            status_class,
            outcome: self.outcome.clone(),
            error: self.error.clone(),
            answered_by: self.answered_by.clone(),
            request_id: self.request_id.clone(),
        })
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::Invalid {
        field,
        message: message.into(),
    }
}
