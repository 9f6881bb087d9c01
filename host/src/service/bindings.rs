//! Bindings: list, show, unbind, move to another network, ban, unban.

use ipnet::IpNet;
use serde::Serialize;

use super::{Actor, ServiceError};
use crate::state::{AuditRecord, Binding, BindingQuery, BindingStatus, Stores};

/// A binding as operators see it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct BindingView {
    /// HMAC-SHA256 key id (64 hex digits); never the key.
    pub key_id: String,
    /// The key's name, when the key is in force (config file or issued at run time).
    pub key_name: Option<String>,
    /// The network the key is bound to.
    pub cidr: String,
    /// `active` or `banned`.
    pub status: String,
    pub created_ms: u64,
    pub last_used_ms: u64,
    /// Address of the last request (batched: up to `storage.flush_interval` behind).
    pub last_ip: Option<String>,
    pub request_count: u64,
}

impl From<Binding> for BindingView {
    fn from(b: Binding) -> Self {
        Self {
            key_id: b.key_id,
            key_name: None,
            cidr: b.cidr.to_string(),
            status: b.status.as_str().to_owned(),
            created_ms: b.created_ms,
            last_used_ms: b.last_used_ms,
            last_ip: b.last_ip,
            request_count: b.request_count,
        }
    }
}

/// A change to one binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Forget it; the key's next request binds afresh.
    Unbind,
    Ban,
    Unban,
    /// Bind the key to another network.
    Move(IpNet),
}

impl Change {
    fn action(self) -> &'static str {
        match self {
            Self::Unbind => "binding.unbind",
            Self::Ban => "binding.ban",
            Self::Unban => "binding.unban",
            Self::Move(_) => "binding.move",
        }
    }
}

/// Longest page served at once.
pub const MAX_PAGE: u32 = 1000;

/// A key id as the API and the CLI take it: 64 hex digits (lower-cased).
pub fn parse_key_id(s: &str) -> Result<String, ServiceError> {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(ServiceError::Invalid {
            field: "key_id",
            message: "must be 64 hex digits (see `tollgate key-id`)".into(),
        })
    }
}

/// A network to bind to: a CIDR or a single address.
pub fn parse_net(s: &str) -> Result<IpNet, ServiceError> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map(crate::state::normalize_net)
        .map_err(|_| ServiceError::Invalid {
            field: "cidr",
            message: format!(
                "{:?} is not an IP network (e.g. 203.0.113.7/32 or 2001:db8::/64)",
                crate::error::truncate(s)
            ),
        })
}

/// One page of bindings, most recently used first, and the number matching in all.
pub async fn list(
    stores: &Stores,
    mut q: BindingQuery,
) -> Result<(Vec<BindingView>, u64), ServiceError> {
    q.limit = q.limit.clamp(1, MAX_PAGE);
    let keys = stores.key_table().load_full();
    // A key's name finds its binding too.
    if let Some(found) = q.search.as_deref().and_then(|s| keys.by_name(s)) {
        q.search = Some(found.hex.to_string());
    }
    let (rows, total) = stores.database().bindings_page(&q).await?;
    Ok((
        rows.into_iter().map(|b| named(b.into(), stores)).collect(),
        total,
    ))
}

/// `view` with its key's name filled in.
fn named(mut view: BindingView, stores: &Stores) -> BindingView {
    view.key_name = stores
        .key_table()
        .load()
        .name_of(&view.key_id)
        .map(|n| n.to_string());
    view
}

/// One key's binding.
pub async fn get(stores: &Stores, key_id: &str) -> Result<BindingView, ServiceError> {
    let key_id = parse_key_id(key_id)?;
    stores
        .database()
        .binding(&key_id)
        .await?
        .map(|b| named(b.into(), stores))
        .ok_or(ServiceError::NotFound("binding"))
}

/// Applies `change` to `key_id`'s binding and audits it (also when there is no such binding);
/// the binding after the change (`None` once unbound).
pub async fn change(
    stores: &Stores,
    actor: &Actor,
    key_id: &str,
    change: Change,
) -> Result<Option<BindingView>, ServiceError> {
    let key_id = parse_key_id(key_id)?;
    let db = stores.database();
    let before: Option<BindingView> = db.binding(&key_id).await?.map(Into::into);
    let snapshot = |b: &Option<BindingView>| b.as_ref().and_then(|b| serde_json::to_string(b).ok());
    let audit =
        |outcome: &str| AuditRecord::new(&actor.name, &actor.ip, change.action(), &key_id, outcome);
    if before.is_none() {
        db.record_audit(audit("not_found")).await?;
        return Err(ServiceError::NotFound("binding"));
    }
    let done = match change {
        Change::Unbind => stores.delete_binding(&key_id).await?,
        Change::Ban => stores.set_status(&key_id, BindingStatus::Banned).await?,
        Change::Unban => stores.set_status(&key_id, BindingStatus::Active).await?,
        Change::Move(net) => stores.set_cidr(&key_id, net).await?,
    };
    let after: Option<BindingView> = db.binding(&key_id).await?.map(|b| named(b.into(), stores));
    let outcome = if done { "ok" } else { "not_found" };
    db.record_audit(audit(outcome).with_change(snapshot(&before), snapshot(&after)))
        .await?;
    if !done {
        return Err(ServiceError::NotFound("binding"));
    }
    Ok(after)
}
