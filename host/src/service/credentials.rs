//! Upstream credentials set at run time (`state::credentials`): list them (fingerprints only),
//! set one (it takes the place of the upstream's `credential` in the config file on every gateway
//! within a second), remove one (the config file's applies again), seal every record under the
//! first key again. Each change is audited with the fingerprints before and after, never a
//! credential.

use serde::Serialize;

use super::{Actor, ServiceError};
use crate::config::UpstreamConfig;
use crate::state::{AuditRecord, CredentialInfo, Stores};

/// Longest credential accepted, in bytes.
pub const MAX_CREDENTIAL: usize = 4096;

/// An upstream and where its credential comes from.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CredentialView {
    pub upstream: String,
    /// `stored` (set at run time), `config` (the config file's) or `none`.
    pub source: String,
    /// The first 16 hex digits of the credential's SHA-256; never the credential.
    pub fingerprint: Option<String>,
    /// The `storage.credential_keys` id that sealed a stored one.
    pub key_id: Option<String>,
    pub updated_by: Option<String>,
    pub updated_ms: Option<u64>,
}

fn invalid(field: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::Invalid {
        field,
        message: message.into(),
    }
}

/// Every upstream of `upstreams` (the running config's), with the source of its credential.
pub async fn list(
    stores: &Stores,
    upstreams: &[&UpstreamConfig],
) -> Result<Vec<CredentialView>, ServiceError> {
    let stored = stores.credentials().await?;
    Ok(upstreams
        .iter()
        .map(|u| {
            let s = stored.iter().find(|c| c.upstream == u.name);
            let configured = !u.credential.is_empty();
            CredentialView {
                upstream: u.name.clone(),
                source: match (s, configured) {
                    (Some(_), _) => "stored",
                    (None, true) => "config",
                    (None, false) => "none",
                }
                .into(),
                fingerprint: s.map(|c| c.fingerprint.clone()).or_else(|| {
                    configured.then(|| crate::state::fingerprint(u.credential.expose()))
                }),
                key_id: s.map(|c| c.key_id.clone()),
                updated_by: s.map(|c| c.updated_by.clone()),
                updated_ms: s.map(|c| c.updated_ms),
            }
        })
        .collect())
}

fn check_upstream(upstreams: &[&UpstreamConfig], upstream: &str) -> Result<(), ServiceError> {
    let u = upstreams
        .iter()
        .find(|u| u.name == upstream)
        .ok_or(ServiceError::NotFound("upstream"))?;
    if u.url.is_none() {
        return Err(invalid("upstream", "the built-in mock takes no credential"));
    }
    Ok(())
}

fn enabled(stores: &Stores) -> Result<(), ServiceError> {
    if stores.credentials_enabled() {
        Ok(())
    } else {
        Err(invalid(
            "credential",
            "credentials cannot be stored: set storage.credential_keys (from the environment)",
        ))
    }
}

async fn audit(
    stores: &Stores,
    actor: &Actor,
    action: &str,
    upstream: &str,
    before: Option<&str>,
    after: Option<&str>,
) -> Result<(), ServiceError> {
    let fp = |f: Option<&str>| f.map(|f| serde_json::json!({ "fingerprint": f }).to_string());
    let record = AuditRecord::new(&actor.name, &actor.ip, action, upstream, "ok")
        .with_change(fp(before), fp(after));
    stores.database().record_audit(record).await?;
    Ok(())
}

async fn stored_fingerprint(
    stores: &Stores,
    upstream: &str,
) -> Result<Option<String>, ServiceError> {
    Ok(stores
        .credentials()
        .await?
        .into_iter()
        .find(|c| c.upstream == upstream)
        .map(|c| c.fingerprint))
}

/// Sets `upstream`'s credential for every gateway.
pub async fn set(
    stores: &Stores,
    upstreams: &[&UpstreamConfig],
    actor: &Actor,
    upstream: &str,
    credential: &str,
) -> Result<CredentialInfo, ServiceError> {
    check_upstream(upstreams, upstream)?;
    enabled(stores)?;
    let credential = credential.trim();
    if credential.is_empty()
        || credential.len() > MAX_CREDENTIAL
        || credential.bytes().any(|b| b.is_ascii_control())
    {
        return Err(invalid(
            "credential",
            format!("1 to {MAX_CREDENTIAL} bytes, no control characters"),
        ));
    }
    let before = stored_fingerprint(stores, upstream).await?;
    let info = stores
        .set_credential(upstream, credential, &actor.name)
        .await?;
    audit(
        stores,
        actor,
        "credential.set",
        upstream,
        before.as_deref(),
        Some(&info.fingerprint),
    )
    .await?;
    Ok(info)
}

/// Removes `upstream`'s stored credential: the config file's applies again.
pub async fn remove(stores: &Stores, actor: &Actor, upstream: &str) -> Result<(), ServiceError> {
    let before = stored_fingerprint(stores, upstream).await?;
    if !stores.remove_credential(upstream).await? {
        return Err(ServiceError::NotFound("stored credential"));
    }
    audit(
        stores,
        actor,
        "credential.remove",
        upstream,
        before.as_deref(),
        None,
    )
    .await
}

/// Seals every record under the first key of `storage.credential_keys`; how many were.
pub async fn reencrypt(stores: &Stores, actor: &Actor) -> Result<usize, ServiceError> {
    enabled(stores)?;
    let n = stores.reencrypt_credentials(&actor.name).await?;
    let record = AuditRecord::new(&actor.name, &actor.ip, "credential.reencrypt", "", "ok")
        .with_change(None, Some(serde_json::json!({ "records": n }).to_string()));
    stores.database().record_audit(record).await?;
    Ok(n)
}
