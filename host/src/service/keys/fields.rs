//! What a key looks like to operators ([`KeyView`]), what they give to create or change one
//! ([`KeyFields`], validated field by field in [`apply`]), and how a secret is made.

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::super::ServiceError;
use crate::config::{BudgetSpec, CaptureConfig, KeyLimits, MAX_BUDGETS};
use crate::pipeline::auth::{KeyMeta, KeyRing};
use crate::state::{ClientKey, KeyRecord};

/// Characters of a secret shown to recognise it (after `tg-`): 30 of its 320 bits, so what is
/// never shown is still more than 256 bits.
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
    /// Its own body capture, instead of its route's: `{"requests": "errors" | "all" | "off",
    /// "max_bytes": 65536, "redact": ["messages[*].content", "/regex/"]}`; null: its route's.
    #[schema(value_type = Option<Object>)]
    pub capture: Option<CaptureConfig>,
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
    pub(super) fn stored(r: KeyRecord, now: u64) -> Self {
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
            capture: r.capture,
            metadata: r.metadata,
            display_prefix: r.display_prefix,
            created_by: r.created_by,
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
            expires_ms: r.expires_ms,
            revoked_ms: r.revoked_ms,
        }
    }

    pub(super) fn configured(k: &ClientKey, c: Option<&KeyMeta>, now: u64) -> Self {
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
            capture: k.capture.as_ref().map(|c| c.config.clone()),
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
    /// Its own body capture (see [`KeyView::capture`]); `null` on update: its route's again.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Object>)]
    pub capture: Option<Option<CaptureConfig>>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// Unix ms from which the key is refused (`key_expired`); `null` on update: never.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<u64>)]
    pub expires_ms: Option<Option<u64>>,
}

/// `absent` → None, `null` → Some(None), a value → Some(Some(v)).
fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A key just created or rotated, with its secret: shown this once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IssuedKey {
    /// The secret clients send. Not stored anywhere: copy it now.
    pub secret: String,
    pub key: KeyView,
}

pub(super) fn invalid(field: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::Invalid {
        field,
        message: message.into(),
    }
}

/// A fresh secret: `tg-` and 320 random bits (54 characters of URL-safe base64).
pub(super) fn new_secret() -> Result<String, ServiceError> {
    let mut bytes = [0u8; 40];
    getrandom::fill(&mut bytes)
        .map_err(|e| ServiceError::Store(crate::state::StoreError::new("random", e)))?;
    Ok(format!(
        "tg-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

pub(super) fn display_prefix(secret: &str) -> String {
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
pub(super) fn apply(r: &mut KeyRecord, f: KeyFields, ring: &KeyRing) -> Result<(), ServiceError> {
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
    if let Some(v) = f.capture {
        if let Some((field, p)) = v.as_ref().and_then(|c| c.problems().into_iter().next()) {
            return Err(invalid("capture", format!("{field}: {p}")));
        }
        r.capture = v;
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
