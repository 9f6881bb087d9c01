//! Bindings: their types, the near cache of decoded bindings, and the [`Stores`] operations on
//! them (read through the caches, first use, move, ban, delete; each change announced to the
//! other gateways).

use crate::{StoreResult, Stores, unix_ms};
use std::net::IpAddr;
use std::sync::atomic::Ordering;

use ipnet::IpNet;

/// Whether a binding is in force or the key is banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingStatus {
    Active,
    Banned,
}

impl BindingStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Banned => "banned",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "banned" => Some(Self::Banned),
            _ => None,
        }
    }
}

/// One key's binding as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// HMAC-SHA256 key id (hex); never the key.
    pub key_id: String,
    pub cidr: IpNet,
    pub status: BindingStatus,
    pub created_ms: u64,
    pub last_used_ms: u64,
    pub last_ip: Option<String>,
    pub request_count: u64,
}

impl Binding {
    /// The compact form kept in the cache: `status|created_ms|cidr`.
    pub(crate) fn encode(&self) -> String {
        format!("{}|{}|{}", self.status.as_str(), self.created_ms, self.cidr)
    }

    pub(crate) fn decode(key_id: &str, s: &str) -> Option<Self> {
        let mut parts = s.splitn(3, '|');
        let status = BindingStatus::parse(parts.next()?)?;
        let created_ms = parts.next()?.parse().ok()?;
        let cidr = parts.next()?.parse().ok()?;
        Some(Self::cached(key_id, cidr, status, created_ms))
    }

    /// A binding as a cache holds it: what the request path reads; the usage fields, which only
    /// the database keeps, start from creation.
    pub(crate) fn cached(
        key_id: &str,
        cidr: IpNet,
        status: BindingStatus,
        created_ms: u64,
    ) -> Self {
        Self {
            key_id: key_id.to_owned(),
            cidr,
            status,
            created_ms,
            last_used_ms: created_ms,
            last_ip: None,
            request_count: 0,
        }
    }
}

/// Normalises a network: IPv4-mapped IPv6 (`::ffff:a.b.c.d/120`) becomes IPv4 (`a.b.c.d/24`),
/// host bits are cleared.
pub fn normalize_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && v6.prefix_len() >= 96
        && let Ok(n) = IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96)
    {
        return n.trunc();
    }
    net.trunc()
}

/// The channel on which gateways tell each other that a binding changed (message: the key id).
pub(crate) const BINDINGS: &str = "bindings";
/// Longest a binding stays in a gateway's near cache in front of a shared cache; bounds how long a
/// ban can go unseen by a gateway that missed the change message (disconnected from Redis).
pub(crate) const NEAR_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// The bindings a gateway read recently, decoded, by key id: a bound key's request reads one map
/// entry and parses nothing. With an in-process cache this is the binding cache (entries live
/// `storage.binding_cache_ttl`); in front of a shared cache it is the near cache, so a bound key
/// costs no Redis round trip per request (entries live at most [`NEAR_TTL`], and are dropped at
/// once when any gateway publishes a change of the binding: ban, move, archive).
pub(crate) struct NearBindings {
    map: moka::sync::Cache<String, Near, foldhash::fast::RandomState>,
}

/// What [`NearBindings`] keeps of a binding: what the request path reads.
#[derive(Clone)]
pub(crate) struct Near {
    cidr: IpNet,
    status: BindingStatus,
    created_ms: u64,
}

impl NearBindings {
    pub(crate) fn new(ttl: std::time::Duration) -> Self {
        Self {
            map: moka::sync::Cache::builder()
                .time_to_live(ttl)
                .build_with_hasher(foldhash::fast::RandomState::default()),
        }
    }

    pub(crate) fn get(&self, key_id: &str) -> Option<Binding> {
        let n = self.map.get(key_id)?;
        Some(Binding::cached(key_id, n.cidr, n.status, n.created_ms))
    }

    pub(crate) fn remember(&self, b: &Binding) {
        let near = Near {
            cidr: b.cidr,
            status: b.status,
            created_ms: b.created_ms,
        };
        self.map.insert(b.key_id.clone(), near);
    }

    pub(crate) fn forget(&self, key_id: &str) {
        self.map.invalidate(key_id);
    }
}

impl Stores {
    pub(crate) fn binding_key(key_id: &str) -> String {
        let mut k = String::with_capacity(2 + key_id.len());
        k.push_str("b:");
        k.push_str(key_id);
        k
    }

    pub(crate) fn cache_ttl_ms(&self) -> Option<u64> {
        Some(self.config.binding_cache_ttl.get().as_millis() as u64)
    }

    /// The binding in force for `key_id`: this gateway's near bindings, the shared cache (if
    /// any), then the database.
    pub async fn binding(&self, key_id: &str) -> StoreResult<Option<Binding>> {
        if let Some(b) = self.near.get(key_id) {
            return Ok(Some(b));
        }
        let key = Self::binding_key(key_id);
        let cached = if self.shared {
            self.cache.get(&key).await
        } else {
            Ok(None)
        };
        match &cached {
            Ok(Some(s)) => {
                if let Some(b) = Binding::decode(key_id, s) {
                    self.near.remember(&b);
                    return Ok(Some(b));
                }
            }
            Ok(None) => {}
            Err(e) => self.cache_failed("get binding", e),
        }
        let found = self.db.binding(key_id).await?;
        if let Some(b) = &found {
            self.near.remember(b);
            if self.shared
                && cached.is_ok()
                && let Err(e) = self.cache.set(&key, &b.encode(), self.cache_ttl_ms()).await
            {
                self.cache_failed("fill binding", &e);
            }
        }
        Ok(found)
    }

    /// Binds `key_id` to `net` unless it is bound already; returns the binding in force. Atomic
    /// across every gateway sharing the database.
    pub async fn bind_first(&self, key_id: &str, net: IpNet) -> StoreResult<Binding> {
        let (b, created) = self
            .db
            .bind_first(key_id, normalize_net(net), unix_ms())
            .await?;
        if created {
            self.stats.first_uses.fetch_add(1, Ordering::Relaxed);
        }
        self.near.remember(&b);
        if self.shared
            && let Err(e) = self
                .cache
                .set(&Self::binding_key(key_id), &b.encode(), self.cache_ttl_ms())
                .await
        {
            self.cache_failed("fill binding", &e);
        }
        Ok(b)
    }

    /// Moves a key's binding to `net`; whether a binding existed. The cached copy is dropped.
    pub async fn set_cidr(&self, key_id: &str, net: IpNet) -> StoreResult<bool> {
        let changed = self.db.set_cidr(key_id, normalize_net(net)).await?;
        self.forget(key_id).await;
        Ok(changed)
    }

    /// Bans or reinstates a key; whether a binding existed. The cached copy is dropped.
    pub async fn set_status(&self, key_id: &str, status: BindingStatus) -> StoreResult<bool> {
        let changed = self.db.set_status(key_id, status).await?;
        self.forget(key_id).await;
        Ok(changed)
    }

    /// Removes a key's binding (its next request binds afresh); whether there was one.
    pub async fn delete_binding(&self, key_id: &str) -> StoreResult<bool> {
        let deleted = self.db.delete_binding(key_id).await?;
        self.forget(key_id).await;
        Ok(deleted)
    }

    /// Drops the cached copies of a binding, here and (through the shared cache) on every
    /// gateway.
    pub(crate) async fn forget(&self, key_id: &str) {
        self.near.forget(key_id);
        if !self.shared {
            return;
        }
        let key = Self::binding_key(key_id);
        if let Err(e) = self.cache.delete(&key).await {
            self.cache_failed("forget binding", &e);
        }
        if let Err(e) = self.cache.publish(BINDINGS, key_id).await {
            self.cache_failed("publish binding change", &e);
        }
    }
}
