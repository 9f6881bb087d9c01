//! Token usage per key (by name), upstream or model over a range of hours: the one reading the
//! admin API's `/usage` and `tollgate usage` share.

use serde::Serialize;
use utoipa::ToSchema;

use crate::pipeline::auth::KeyRing;
use crate::state::{StoreError, Stores, UsageBy};

/// One key's, upstream's or model's usage over the range.
#[derive(Serialize, ToSchema)]
pub struct UsageRow {
    /// The key's configured name (or its id's first 12 digits if the config no longer has it),
    /// the upstream or the model; '' for none.
    pub name: String,
    pub key_id: Option<String>,
    pub requests: u64,
    pub errors: u64,
    /// Requests that ended before their answer did (tokens as seen).
    pub partial: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    /// What the tokens cost, in `currency` (requests whose model has no price count 0).
    pub cost: f64,
    /// `pricing.currency`.
    pub currency: String,
    /// Unix ms.
    pub last_used_ms: u64,
}

/// The usage of the hours that start in `from..=to` (`from` is widened to the start of its
/// hour: usage is kept per hour), keys named through `keys`.
pub async fn rows(
    stores: &Stores,
    keys: &KeyRing,
    by: UsageBy,
    from: u64,
    to: u64,
    currency: &str,
) -> Result<Vec<UsageRow>, StoreError> {
    let from = from / 3_600_000 * 3_600_000;
    let rows = stores.database().token_usage(by, from, to).await?;
    Ok(rows
        .into_iter()
        .map(|u| {
            let (name, key_id) = match by {
                UsageBy::Key => (
                    keys.name_of_id(&u.key_id)
                        .unwrap_or_else(|| u.key_id.chars().take(12).collect()),
                    Some(u.key_id.to_string()),
                ),
                UsageBy::Upstream => (u.upstream.to_string(), None),
                UsageBy::Model => (u.model.to_string(), None),
            };
            UsageRow {
                name,
                key_id,
                requests: u.requests,
                errors: u.errors,
                partial: u.partial,
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
                cached_tokens: u.cached_tokens,
                cost: crate::config::from_nanos(u.cost_nanos),
                currency: currency.to_owned(),
                last_used_ms: u.at_ms,
            }
        })
        .collect())
}
