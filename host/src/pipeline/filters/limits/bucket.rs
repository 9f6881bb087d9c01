//! One bucketed limit (a request or a token limit): its GCRA parameters, the subjects it applies
//! to, and its buckets (in the shared cache, or in process).

use std::sync::Arc;

use http::HeaderValue;

use crate::config::{LimitBy, LimitScope};
use crate::pipeline::session::RequestRecord;
use crate::state::{Gcra, LocalBuckets, Op, Stores};

/// A bucket key without an allocation for the common subjects (an address, a key id).
pub(super) type Subject = smallvec::SmallVec<[u8; 80]>;

/// One bucketed limit (a request or a token limit).
pub(super) struct Bucket {
    pub(super) name: Arc<str>,
    pub(super) by: LimitBy,
    pub(super) gcra: Gcra,
    pub(super) local: Arc<LocalBuckets>,
    /// Shared-cache key prefix: the limit's kind, name and parameters.
    pub(super) prefix: String,
    pub(super) routes: Vec<String>,
    pub(super) keys: Vec<String>,
    /// `x-ratelimit-limit-*`: what the bucket holds when idle.
    pub(super) capacity: HeaderValue,
}

impl Bucket {
    pub(super) fn new(
        stores: &Stores,
        kind: &str,
        name: &str,
        by: LimitBy,
        gcra: Gcra,
        scope: &LimitScope,
        max_keys: usize,
    ) -> Self {
        let prefix = format!("rl:{kind}:{name}:{}:{}:", gcra.t_us, gcra.tau_us);
        Self {
            name: name.into(),
            by,
            gcra,
            local: stores.kept(&format!("{prefix}{max_keys}"), || {
                LocalBuckets::new(max_keys)
            }),
            prefix,
            routes: scope.routes.clone(),
            keys: scope.keys.clone(),
            capacity: HeaderValue::from(gcra.capacity()),
        }
    }

    /// Whether the limit applies to this request (its route and key, as far as known).
    pub(super) fn applies(&self, r: &RequestRecord) -> bool {
        let Some(route) = r.route.as_deref() else {
            return false;
        };
        (self.routes.is_empty() || self.routes.iter().any(|p| p == route))
            && (self.keys.is_empty()
                || r.key
                    .as_ref()
                    .is_some_and(|k| self.keys.iter().any(|n| **n == *k.name)))
    }

    /// The request's bucket in this limit, written to `out`; `false` if the limit does not apply.
    pub(super) fn subject(&self, r: &RequestRecord, out: &mut Subject) -> bool {
        out.clear();
        if !self.applies(r) {
            return false;
        }
        match self.by {
            LimitBy::Ip => {
                let mut text = smallvec::SmallVec::<[u8; 48]>::new();
                let _ = std::io::Write::write_fmt(
                    &mut text,
                    format_args!("{}", crate::config::canonical_ip(r.client_ip)),
                );
                out.extend_from_slice(&text);
            }
            LimitBy::Route => out.extend_from_slice(r.route.as_deref().unwrap_or("").as_bytes()),
            LimitBy::Key | LimitBy::KeyModel => {
                let Some(k) = &r.key else { return false };
                out.extend_from_slice(k.hex.as_bytes());
                if self.by == LimitBy::KeyModel {
                    out.push(0);
                    out.extend_from_slice(r.model.as_deref().unwrap_or("").as_bytes());
                }
            }
        }
        true
    }

    /// Applies `op` to `subject`'s bucket.
    pub(super) async fn apply(
        &self,
        stores: &Stores,
        subject: &Subject,
        op: Op,
    ) -> crate::state::Decision {
        // Subjects are UTF-8 (addresses, hex ids, route prefixes, model names) and a NUL.
        let text = std::str::from_utf8(subject).unwrap_or_default();
        stores
            .rate(&self.prefix, text, &self.gcra, op, &self.local)
            .await
    }

    /// Before authentication: limits by IP and route that do not depend on the key.
    pub(super) fn early(&self) -> bool {
        matches!(self.by, LimitBy::Ip | LimitBy::Route) && self.keys.is_empty()
    }
}
