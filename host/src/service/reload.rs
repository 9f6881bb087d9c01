//! Reload the config file now (as a file change or SIGHUP does), audited with its result.

use super::{Actor, ServiceError};
use crate::gateway::Gateway;
use crate::state::AuditRecord;

/// What a reload did.
#[derive(Debug)]
pub enum Reloaded {
    /// The new config is in service.
    Applied,
    /// The new config was refused (the running one keeps serving): why.
    Refused(String),
    /// This gateway was not started from a config file.
    Unavailable,
}

/// Reloads the config file and audits the outcome (`ok` or `failed` with the error).
pub async fn reload(gateway: &Gateway, actor: &Actor) -> Result<Reloaded, ServiceError> {
    let Some(result) = gateway.request_reload().await else {
        return Ok(Reloaded::Unavailable);
    };
    let outcome = if result.is_ok() { "ok" } else { "failed" };
    let mut record = AuditRecord::new(&actor.name, &actor.ip, "config.reload", "", outcome);
    if let Err(e) = &result {
        record.after = serde_json::json!({ "error": e }).to_string();
    }
    gateway.stores.database().record_audit(record).await?;
    Ok(match result {
        Ok(()) => Reloaded::Applied,
        Err(e) => Reloaded::Refused(e),
    })
}
