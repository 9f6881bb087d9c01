//! Client keys issued at run time: create, list, show, update, rotate, revoke. Keys of the config
//! file (`auth.keys`) are listed and shown too, read-only. Every change is audited with the key
//! before and after (never a secret), and reaches every gateway sharing the database within a
//! second (`state::keys`).
//!
//! A new secret is `tg-` and 54 characters of URL-safe base64: 320 bits from the operating
//! system's generator (the 30 bits of its display prefix leave 290 never shown). It is returned
//! once, by `create` or `rotate`, and kept nowhere: only its HMAC digest under the server secret
//! is stored.

mod fields;

pub use fields::{IssuedKey, KeyFields, KeyView};
use fields::{apply, display_prefix, invalid, new_secret};

use super::{Actor, ServiceError};
use crate::pipeline::auth::KeyRing;
use crate::state::{AuditRecord, KeyQuery, KeyRecord, Stores, unix_ms};

/// Longest page served at once.
pub const MAX_PAGE: u32 = 1000;
/// Longest rotation grace period, in seconds (30 days).
pub const MAX_GRACE_SECS: u64 = 30 * 86_400;

fn snapshot(v: &KeyView) -> Option<String> {
    serde_json::to_string(v).ok()
}

async fn audit(
    stores: &Stores,
    actor: &Actor,
    action: &str,
    target: &str,
    before: Option<&KeyView>,
    after: Option<&KeyView>,
) -> Result<(), ServiceError> {
    let record = AuditRecord::new(&actor.name, &actor.ip, action, target, "ok")
        .with_change(before.and_then(snapshot), after.and_then(snapshot));
    stores.database().record_audit(record).await?;
    Ok(())
}

/// Issues a new key; its secret is in the answer and nowhere else.
pub async fn create(
    stores: &Stores,
    ring: &KeyRing,
    actor: &Actor,
    fields: KeyFields,
) -> Result<IssuedKey, ServiceError> {
    if fields.name.is_none() {
        return Err(invalid("name", "required"));
    }
    let secret = new_secret()?;
    let now = unix_ms();
    let mut r = KeyRecord {
        id: ring.id_of(&secret).to_hex(),
        name: String::new(),
        owner: String::new(),
        description: String::new(),
        tags: Vec::new(),
        models: Vec::new(),
        routes: Vec::new(),
        budgets: Vec::new(),
        limits: None,
        capture: None,
        metadata: serde_json::json!({}),
        display_prefix: display_prefix(&secret),
        created_by: actor.name.clone(),
        created_ms: now,
        updated_ms: now,
        expires_ms: None,
        revoked_ms: None,
    };
    apply(&mut r, fields, ring)?;
    if !stores.database().insert_key(&r).await? {
        return Err(invalid("name", format!("a key named {:?} exists", r.name)));
    }
    stores.keys_changed().await;
    let view = KeyView::stored(r, now);
    audit(stores, actor, "key.create", &view.name, None, Some(&view)).await?;
    Ok(IssuedKey { secret, key: view })
}

/// Which keys to list.
#[derive(Debug, Clone, Default)]
pub struct KeyFilter {
    pub name: Option<String>,
    pub owner: Option<String>,
    pub status: Option<String>,
    /// `database` or `config`; none: both.
    pub source: Option<String>,
    pub limit: u32,
    pub offset: u64,
}

/// One page of keys by name (config keys first when both sources are listed), and the number
/// matching in all.
pub async fn list(
    stores: &Stores,
    ring: &KeyRing,
    f: KeyFilter,
) -> Result<(Vec<KeyView>, u64), ServiceError> {
    if let Some(s) = &f.status
        && !["active", "expired", "revoked"].contains(&s.as_str())
    {
        return Err(invalid("status", "one of active, expired, revoked"));
    }
    if let Some(s) = &f.source
        && !["database", "config"].contains(&s.as_str())
    {
        return Err(invalid("source", "one of database, config"));
    }
    let now = unix_ms();
    let limit = f.limit.clamp(1, MAX_PAGE);
    let configured: Vec<KeyView> = if f.source.as_deref() == Some("database") {
        Vec::new()
    } else {
        config_views(ring, now)
            .into_iter()
            .filter(|v| {
                f.name
                    .as_ref()
                    .is_none_or(|n| v.name.starts_with(n.as_str()))
            })
            .filter(|v| f.owner.as_ref().is_none_or(|o| v.owner == *o))
            .filter(|v| f.status.as_ref().is_none_or(|s| v.status == *s))
            .collect()
    };
    let n_config = configured.len() as u64;
    let mut page: Vec<KeyView> = configured
        .into_iter()
        .skip(usize::try_from(f.offset).unwrap_or(usize::MAX))
        .take(limit as usize)
        .collect();
    let mut total = n_config;
    if f.source.as_deref() != Some("config") {
        let q = KeyQuery {
            name: f.name,
            owner: f.owner,
            status: f.status,
            limit: limit - page.len() as u32,
            offset: f.offset.saturating_sub(n_config),
        };
        let (rows, n) = if q.limit == 0 {
            let (_, n) = stores
                .database()
                .keys_page(&KeyQuery { limit: 1, ..q }, now)
                .await?;
            (Vec::new(), n)
        } else {
            stores.database().keys_page(&q, now).await?
        };
        total += n;
        page.extend(rows.into_iter().map(|r| KeyView::stored(r, now)));
    }
    Ok((page, total))
}

fn config_views(ring: &KeyRing, now: u64) -> Vec<KeyView> {
    let table = ring.table();
    let mut views: Vec<KeyView> = table
        .config_keys()
        .iter()
        .map(|k| KeyView::configured(k, ring.config_key(&k.name), now))
        .collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    views
}

/// The key with id or name `which`, stored or configured.
pub async fn get(stores: &Stores, ring: &KeyRing, which: &str) -> Result<KeyView, ServiceError> {
    let now = unix_ms();
    if let Some(r) = stores.database().key(which).await? {
        return Ok(KeyView::stored(r, now));
    }
    config_views(ring, now)
        .into_iter()
        .find(|v| v.id == which || v.name == which)
        .ok_or(ServiceError::NotFound("key"))
}

/// The stored key `which`, or why it cannot be changed.
async fn stored(stores: &Stores, ring: &KeyRing, which: &str) -> Result<KeyRecord, ServiceError> {
    if let Some(r) = stores.database().key(which).await? {
        return Ok(r);
    }
    if config_views(ring, unix_ms())
        .iter()
        .any(|v| v.id == which || v.name == which)
    {
        return Err(invalid(
            "key",
            "a key of the config file is read-only here: edit auth.keys and reload",
        ));
    }
    Err(ServiceError::NotFound("key"))
}

/// Changes a stored key's fields.
pub async fn update(
    stores: &Stores,
    ring: &KeyRing,
    actor: &Actor,
    which: &str,
    fields: KeyFields,
) -> Result<KeyView, ServiceError> {
    let mut r = stored(stores, ring, which).await?;
    let now = unix_ms();
    let before = KeyView::stored(r.clone(), now);
    apply(&mut r, fields, ring)?;
    r.updated_ms = now.max(r.updated_ms + 1);
    if !stores.database().update_key(&r).await? {
        return Err(invalid("name", format!("a key named {:?} exists", r.name)));
    }
    stores.keys_changed().await;
    let after = KeyView::stored(r, now);
    audit(
        stores,
        actor,
        "key.update",
        &after.name,
        Some(&before),
        Some(&after),
    )
    .await?;
    Ok(after)
}

/// Gives a stored key a new secret; the old one keeps working for `grace_secs` (0: stops now).
pub async fn rotate(
    stores: &Stores,
    ring: &KeyRing,
    actor: &Actor,
    which: &str,
    grace_secs: u64,
) -> Result<IssuedKey, ServiceError> {
    if grace_secs > MAX_GRACE_SECS {
        return Err(invalid(
            "grace_secs",
            format!("must be 0 to {MAX_GRACE_SECS}"),
        ));
    }
    let r = stored(stores, ring, which).await?;
    if r.revoked_ms.is_some() {
        return Err(invalid("key", "a revoked key cannot be rotated"));
    }
    let now = unix_ms();
    let before = KeyView::stored(r.clone(), now);
    let secret = new_secret()?;
    let prefix = display_prefix(&secret);
    let digest = ring.id_of(&secret).to_hex();
    let updated = now.max(r.updated_ms + 1);
    if !stores
        .database()
        .rotate_key(&r.id, &digest, &prefix, updated, now + grace_secs * 1000)
        .await?
    {
        return Err(ServiceError::NotFound("key"));
    }
    stores.keys_changed().await;
    let after = KeyView {
        display_prefix: prefix,
        updated_ms: updated,
        ..before.clone()
    };
    let record = AuditRecord::new(&actor.name, &actor.ip, "key.rotate", &r.name, "ok").with_change(
        snapshot(&before),
        serde_json::to_string(&serde_json::json!({
            "display_prefix": after.display_prefix,
            "old_secret_until_ms": now + grace_secs * 1000,
        }))
        .ok(),
    );
    stores.database().record_audit(record).await?;
    Ok(IssuedKey { secret, key: after })
}

/// Revokes a stored key at once, on every gateway.
pub async fn revoke(
    stores: &Stores,
    ring: &KeyRing,
    actor: &Actor,
    which: &str,
) -> Result<KeyView, ServiceError> {
    let mut r = stored(stores, ring, which).await?;
    let now = unix_ms();
    let before = KeyView::stored(r.clone(), now);
    if r.revoked_ms.is_none() {
        r.revoked_ms = Some(now);
        r.updated_ms = now.max(r.updated_ms + 1);
        stores.database().update_key(&r).await?;
        stores.keys_changed().await;
    }
    let after = KeyView::stored(r, now);
    audit(
        stores,
        actor,
        "key.revoke",
        &after.name,
        Some(&before),
        Some(&after),
    )
    .await?;
    Ok(after)
}
