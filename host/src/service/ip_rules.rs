//! IP allow/deny entries stored in the database (on top of the config file's `access` lists):
//! list, add, remove. Each change is audited and reaches every gateway sharing the database within
//! a second (`state::ip_rules`).

use serde::Serialize;

use super::{Actor, ServiceError};
use crate::state::{AuditRecord, IpAction, IpRule, Stores};

/// Longest note kept with an entry, in characters.
pub const MAX_NOTE: usize = 200;

/// An entry as operators see it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct IpRuleView {
    /// The network (a single address is `/32` or `/128`).
    pub cidr: String,
    /// `allow` or `deny`.
    pub action: String,
    pub note: String,
    pub created_ms: u64,
    pub created_by: String,
}

impl From<IpRule> for IpRuleView {
    fn from(r: IpRule) -> Self {
        Self {
            cidr: r.cidr,
            action: r.action.as_str().to_owned(),
            note: r.note,
            created_ms: r.created_ms,
            created_by: r.created_by,
        }
    }
}

/// The stored entries, newest first.
pub async fn list(stores: &Stores) -> Result<Vec<IpRuleView>, ServiceError> {
    Ok(stores
        .ip_rules()
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

/// Adds (or replaces) the entry for `cidr`, audited.
pub async fn add(
    stores: &Stores,
    actor: &Actor,
    cidr: &str,
    action: IpAction,
    note: &str,
) -> Result<IpRuleView, ServiceError> {
    let net = super::bindings::parse_net(cidr)?;
    if note.chars().count() > MAX_NOTE {
        return Err(ServiceError::Invalid {
            field: "note",
            message: format!("at most {MAX_NOTE} characters"),
        });
    }
    let rule: IpRuleView = stores
        .add_ip_rule(net, action, note, &actor.name)
        .await?
        .into();
    let record = AuditRecord::new(
        &actor.name,
        &actor.ip,
        &format!("ip_rule.{}", action.as_str()),
        &rule.cidr,
        "ok",
    )
    .with_change(None, serde_json::to_string(&rule).ok());
    stores.database().record_audit(record).await?;
    Ok(rule)
}

/// Removes the entry for `cidr`, audited.
pub async fn remove(stores: &Stores, actor: &Actor, cidr: &str) -> Result<(), ServiceError> {
    let net = super::bindings::parse_net(cidr)?;
    let removed = stores.remove_ip_rule(net).await?;
    let outcome = if removed { "ok" } else { "not_found" };
    let record = AuditRecord::new(
        &actor.name,
        &actor.ip,
        "ip_rule.remove",
        &crate::state::normalize_net(net).to_string(),
        outcome,
    );
    stores.database().record_audit(record).await?;
    if removed {
        Ok(())
    } else {
        Err(ServiceError::NotFound("ip rule"))
    }
}
