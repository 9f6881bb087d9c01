//! Client keys issued at run time: create, list, show, update, rotate, revoke. Keys of the config
//! file (`auth.keys`) are listed and shown too, read-only. Every change is audited with the key
//! before and after (never a secret), and reaches every gateway sharing the database within a
//! second (`state::keys`).
//!
//! A new secret is `tg-` and 43 characters of URL-safe base64: 256 bits from the operating
//! system's generator. It is returned once, by `create` or `rotate`, and kept nowhere: only its
//! HMAC digest under the server secret is stored.

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::{Actor, ServiceError};
use crate::config::{BudgetSpec, KeyLimits, MAX_BUDGETS};
use crate::pipeline::auth::{KeyMeta, KeyRing};
use crate::state::{AuditRecord, ClientKey, KeyQuery, KeyRecord, Stores, unix_ms};

/// Longest page served at once.
pub const MAX_PAGE: u32 = 1000;
/// Longest rotation grace period, in seconds (30 days).
pub const MAX_GRACE_SECS: u64 = 30 * 86_400;
/// Characters of a secret shown to recognise it (after `tg-`): 30 of its 256 bits.
const SHOWN_CHARS: usize = 5;

/// A key as operators see it: stored or from the config file.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    /// 64 hex digits: the key's id in bindings, usage and audit.
    pub id: String,
    pub name: String,
    /// `database` (issued at run time) or `config` (read-only here).
    pub source: String,
    /// `active`, `expired` or `revoked`.
    pub status: String,
    pub owner: String,
    pub description: String,
    pub tags: Vec<String>,
    /// Models it may ask for (exact, or a prefix ending in `*`); empty: any.
    pub models: Vec<String>,
    /// Route path prefixes it may use; empty: any.
    pub routes: Vec<String>,
    /// Its own spending caps: `{"amount": 50, "period": "month"}` (money, in
    /// `pricing.currency`) or `{"tokens": 1000000, "period": "day"}`, `alert_at` percentages.
    #[schema(value_type = Vec<Object>)]
    pub budgets: Vec<BudgetSpec>,
    /// Its own limits: `{"requests": "60/m", "tokens": "100000/m", "in_flight": 4}` (each
    /// optional), on top of `limits:`.
    #[schema(value_type = Option<Object>)]
    pub limits: Option<KeyLimits>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// The secret's first characters (`tg-AbCdE…`); empty for config keys.
    pub display_prefix: String,
    pub created_by: String,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub expires_ms: Option<u64>,
    pub revoked_ms: Option<u64>,
}

impl KeyView {
    fn stored(r: KeyRecord, now: u64) -> Self {
        Self {
            status: r.status(now).to_owned(),
            id: r.id,
            name: r.name,
            source: "database".into(),
            owner: r.owner,
            description: r.description,
            tags: r.tags,
            models: r.models,
            routes: r.routes,
            budgets: r.budgets,
            limits: r.limits,
            metadata: r.metadata,
            display_prefix: r.display_prefix,
            created_by: r.created_by,
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
            expires_ms: r.expires_ms,
            revoked_ms: r.revoked_ms,
        }
    }

    fn configured(k: &ClientKey, c: Option<&KeyMeta>, now: u64) -> Self {
        let expired = k.expires_ms.is_some_and(|t| now >= t);
        Self {
            id: k.hex.to_string(),
            name: k.name.to_string(),
            source: "config".into(),
            status: if expired { "expired" } else { "active" }.into(),
            owner: c.map(|c| c.owner.clone()).unwrap_or_default(),
            description: c.map(|c| c.description.clone()).unwrap_or_default(),
            tags: c.map(|c| c.tags.clone()).unwrap_or_default(),
            models: k.models.iter().map(|m| m.to_string()).collect(),
            routes: k.routes.iter().map(|m| m.to_string()).collect(),
            budgets: k.budgets.clone(),
            limits: k.limits,
            metadata: serde_json::json!({}),
            display_prefix: String::new(),
            created_by: "config".into(),
            created_ms: 0,
            updated_ms: 0,
            expires_ms: k.expires_ms,
            revoked_ms: None,
        }
    }
}

/// A key's fields as given to `create` (all but `name` optional) or `update` (absent: unchanged).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyFields {
    pub name: Option<String>,
    pub owner: Option<String>,
    pub description: Option<String>,
    pub tags: Option<Vec<String>>,
    pub models: Option<Vec<String>>,
    pub routes: Option<Vec<String>>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub budgets: Option<Vec<BudgetSpec>>,
    /// `{}` removes them.
    #[schema(value_type = Option<Object>)]
    pub limits: Option<KeyLimits>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// Unix ms from which the key is refused (`key_expired`); `null` on update: never.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<u64>)]
    pub expires_ms: Option<Option<u64>>,
}

/// `absent` → None, `null` → Some(None), a value → Some(Some(v)).
fn double_option<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(d).map(Some)
}

/// A key just created or rotated, with its secret: shown this once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IssuedKey {
    /// The secret clients send. Not stored anywhere: copy it now.
    pub secret: String,
    pub key: KeyView,
}

fn invalid(field: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::Invalid {
        field,
        message: message.into(),
    }
}

/// A fresh secret: `tg-` and 256 random bits, URL-safe base64.
fn new_secret() -> Result<String, ServiceError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| ServiceError::Store(crate::state::StoreError::new("random", e)))?;
    Ok(format!(
        "tg-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

fn display_prefix(secret: &str) -> String {
    format!("{}…", &secret[..3 + SHOWN_CHARS])
}

fn check_text(field: &'static str, v: &str, max: usize) -> Result<(), ServiceError> {
    if v.chars().count() > max || v.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!("at most {max} characters, no control characters"),
        ));
    }
    Ok(())
}

/// Applies `f` to `r`, validating each field given.
fn apply(r: &mut KeyRecord, f: KeyFields, ring: &KeyRing) -> Result<(), ServiceError> {
    if let Some(name) = f.name {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
        if !ok {
            return Err(invalid(
                "name",
                "1 to 64 characters: letters, digits, `-`, `_`, `.`, `@`",
            ));
        }
        if ring.config_key(&name).is_some() {
            return Err(invalid(
                "name",
                format!("{name:?} is a key of the config file"),
            ));
        }
        r.name = name;
    }
    if let Some(v) = f.owner {
        check_text("owner", &v, 128)?;
        r.owner = v;
    }
    if let Some(v) = f.description {
        check_text("description", &v, 1024)?;
        r.description = v;
    }
    if let Some(v) = f.tags {
        if v.len() > 32 {
            return Err(invalid("tags", "at most 32 tags"));
        }
        for t in &v {
            check_text("tags", t, 64)?;
        }
        r.tags = v;
    }
    if let Some(v) = f.models {
        if v.len() > 256 || !v.iter().all(|m| crate::config::is_model_pattern(m)) {
            return Err(invalid(
                "models",
                "up to 256 model names or prefixes ending in `*` (e.g. `gpt-4o`, `claude-*`)",
            ));
        }
        r.models = v;
    }
    if let Some(v) = f.routes {
        if let Some(bad) = v
            .iter()
            .find(|p| !ring.routes().iter().any(|r| **r == ***p))
        {
            return Err(invalid(
                "routes",
                format!("no route has path_prefix {:?}", crate::error::truncate(bad)),
            ));
        }
        r.routes = v;
    }
    if let Some(v) = f.budgets {
        if v.len() > MAX_BUDGETS {
            return Err(invalid("budgets", format!("at most {MAX_BUDGETS} budgets")));
        }
        if let Some(p) = v.iter().find_map(BudgetSpec::problem) {
            return Err(invalid("budgets", p));
        }
        r.budgets = v;
    }
    if let Some(v) = f.limits {
        if let Some(p) = v.problem() {
            return Err(invalid("limits", p));
        }
        r.limits = (!v.is_empty()).then_some(v);
    }
    if let Some(v) = f.metadata {
        if !v.is_object() || v.to_string().len() > 16 << 10 {
            return Err(invalid("metadata", "a JSON object of at most 16 KiB"));
        }
        r.metadata = v;
    }
    if let Some(v) = f.expires_ms {
        r.expires_ms = v;
    }
    Ok(())
}

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
