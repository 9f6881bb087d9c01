//! `tollgate keys …`: client keys stored in the database (`service::keys`, audited as
//! `cli:<user>`). Running gateways sharing the database apply a change within a second.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{ms_to_rfc3339, with_stores};
use crate::config::{BudgetSpec, CaptureConfig, CaptureWhen, Period};
use crate::pipeline::auth::KeyRing;
use crate::service::keys::{self, KeyFields, KeyFilter, KeyView};
use crate::service::{Actor, ServiceError};

#[derive(Subcommand)]
pub(super) enum KeysCommand {
    /// Keys by name: name, status, source, owner, secret prefix, models, expiry.
    List {
        /// Names starting with this.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        owner: Option<String>,
        /// active, expired or revoked.
        #[arg(long)]
        status: Option<String>,
        /// database or config.
        #[arg(long)]
        source: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Issue a key. Its secret is printed once and stored nowhere.
    Create {
        name: String,
        #[command(flatten)]
        fields: FieldArgs,
    },
    /// One key (by name or id), as JSON.
    Show { key: String },
    /// Change a key issued at run time (options left out keep their value).
    Update {
        key: String,
        /// A new name.
        #[arg(long)]
        rename: Option<String>,
        #[command(flatten)]
        fields: FieldArgs,
        /// Remove the expiry.
        #[arg(long, conflicts_with_all = ["expires", "expires_in"])]
        no_expiry: bool,
    },
    /// Give a key a new secret (printed once); the old one works on for `--grace`.
    Rotate {
        key: String,
        /// How long the old secret keeps working, e.g. `1h` (default: it stops now).
        #[arg(long, default_value = "0s")]
        grace: humantime::Duration,
    },
    /// Revoke a key on every gateway (its requests get 401).
    Revoke { key: String },
}

/// A key's fields on the command line.
#[derive(Args)]
pub(super) struct FieldArgs {
    #[arg(long)]
    owner: Option<String>,
    #[arg(long)]
    description: Option<String>,
    /// A tag (repeat for more).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// A model it may use: a name or a prefix ending in `*` (repeat for more; none: any).
    #[arg(long = "model")]
    models: Vec<String>,
    /// A route path_prefix it may use (repeat for more; none: every route).
    #[arg(long = "route")]
    routes: Vec<String>,
    /// Refused from this instant (RFC 3339, e.g. 2027-01-01T00:00:00Z).
    #[arg(long)]
    expires: Option<String>,
    /// Refused after this long from now, e.g. `30d`.
    #[arg(long, conflicts_with = "expires")]
    expires_in: Option<humantime::Duration>,
    /// A budget: `AMOUNT/PERIOD` in the price table's currency (`50/month`), or
    /// `TOKENStokens/PERIOD` (`2000000tokens/day`); PERIOD is day, week or month (repeat for
    /// more; on update, replaces them).
    #[arg(long = "budget", value_parser = parse_budget)]
    budgets: Vec<BudgetSpec>,
    /// Keep this key's request bodies in the request log: `errors`, `all` or `off` (whatever its
    /// route says; API keys and bearer tokens redacted, 64 KiB each), or `route` to follow its
    /// route's `capture` again. JSON paths to redact: the admin API's `capture.redact`.
    #[arg(long, value_parser = ["errors", "all", "off", "route"])]
    capture: Option<String>,
}

/// `v`, or `None` (unchanged) when empty.
fn nonempty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

/// `50/month` or `2000000tokens/day`.
fn parse_budget(s: &str) -> Result<BudgetSpec, String> {
    let (what, period) = s
        .split_once('/')
        .ok_or("expected AMOUNT/PERIOD or TOKENStokens/PERIOD, e.g. 50/month")?;
    let period = match period {
        "day" => Period::Day,
        "week" => Period::Week,
        "month" => Period::Month,
        _ => return Err(format!("{period:?}: the period is day, week or month")),
    };
    let (amount, tokens) = match what.strip_suffix("tokens") {
        Some(t) => (
            None,
            Some(t.parse::<u64>().map_err(|e| format!("{t:?}: {e}"))?),
        ),
        None => (
            Some(what.parse::<f64>().map_err(|e| format!("{what:?}: {e}"))?),
            None,
        ),
    };
    let b = BudgetSpec {
        amount,
        tokens,
        period,
        alert_at: Vec::new(),
    };
    match b.problem() {
        Some(p) => Err(p.to_owned()),
        None => Ok(b),
    }
}

impl FieldArgs {
    fn into_fields(self, name: Option<String>) -> Result<KeyFields, String> {
        let expires_ms = match (self.expires, self.expires_in) {
            (Some(t), _) => Some(Some(
                crate::config::parse_instant_ms(&t)
                    .ok_or_else(|| format!("--expires {t:?}: not an RFC 3339 instant\n"))?,
            )),
            (None, Some(d)) => Some(Some(
                crate::state::unix_ms() + std::time::Duration::from(d).as_millis() as u64,
            )),
            (None, None) => None,
        };
        Ok(KeyFields {
            name,
            owner: self.owner,
            description: self.description,
            tags: nonempty(self.tags),
            models: nonempty(self.models),
            routes: nonempty(self.routes),
            budgets: nonempty(self.budgets),
            limits: None,
            capture: self.capture.map(|c| {
                (c != "route").then(|| CaptureConfig {
                    requests: match c.as_str() {
                        "errors" => CaptureWhen::Errors,
                        "all" => CaptureWhen::All,
                        _ => CaptureWhen::Off,
                    },
                    ..CaptureConfig::default()
                })
            }),
            metadata: None,
            expires_ms,
        })
    }
}

fn line(k: &KeyView) -> String {
    let or_any = |v: &[String]| {
        if v.is_empty() {
            "*".to_owned()
        } else {
            v.join(",")
        }
    };
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{}",
        k.name,
        k.status,
        k.source,
        if k.owner.is_empty() { "-" } else { &k.owner },
        if k.display_prefix.is_empty() {
            "-"
        } else {
            &k.display_prefix
        },
        or_any(&k.models),
        k.expires_ms
            .map_or_else(|| "never".to_owned(), ms_to_rfc3339),
    )
}

/// A key just issued or rotated, with its secret (shown this once): as text, or with
/// `--output json` as the admin API answers it (`{"key": …, "secret": …}`).
fn issued(verb: &str, k: &keys::IssuedKey) -> String {
    if super::output::json()
        && let Ok(text) = serde_json::to_string_pretty(k)
    {
        return text;
    }
    format!(
        "{verb} key {} (id {})\nsecret (shown once, stored nowhere): {}",
        k.key.name, k.key.id, k.secret
    )
}

pub(super) fn keys(path: &std::path::Path, action: KeysCommand) -> ExitCode {
    let actor = Actor::cli();
    with_stores(path, async |stores, config| {
        let ring = KeyRing::new(&config.auth, stores.key_table())
            .with_routes(config.routes.iter().map(|r| r.path_prefix.as_str()));
        let done = |e: ServiceError| format!("{e}\n");
        match action {
            KeysCommand::List {
                name,
                owner,
                status,
                source,
                limit,
            } => {
                let filter = KeyFilter {
                    name,
                    owner,
                    status,
                    source,
                    limit,
                    offset: 0,
                };
                let (rows, total) = keys::list(stores, &ring, filter).await.map_err(done)?;
                let mut out = super::output::listing(&rows, "", line)?;
                if !super::output::json() && total > rows.len() as u64 {
                    out.push_str(&format!(
                        "\n… {} more (use --limit)",
                        total - rows.len() as u64
                    ));
                }
                Ok(out)
            }
            KeysCommand::Create { name, fields } => {
                let fields = fields.into_fields(Some(name))?;
                let k = keys::create(stores, &ring, &actor, fields)
                    .await
                    .map_err(done)?;
                Ok(issued("created", &k))
            }
            KeysCommand::Show { key } => {
                let k = keys::get(stores, &ring, &key).await.map_err(done)?;
                serde_json::to_string_pretty(&k).map_err(|e| format!("{e}\n"))
            }
            KeysCommand::Update {
                key,
                rename,
                fields,
                no_expiry,
            } => {
                let mut fields = fields.into_fields(rename)?;
                if no_expiry {
                    fields.expires_ms = Some(None);
                }
                let k = keys::update(stores, &ring, &actor, &key, fields)
                    .await
                    .map_err(done)?;
                Ok(line(&k))
            }
            KeysCommand::Rotate { key, grace } => {
                let grace = std::time::Duration::from(grace).as_secs();
                let k = keys::rotate(stores, &ring, &actor, &key, grace)
                    .await
                    .map_err(done)?;
                Ok(issued("rotated", &k))
            }
            KeysCommand::Revoke { key } => {
                let k = keys::revoke(stores, &ring, &actor, &key)
                    .await
                    .map_err(done)?;
                Ok(line(&k))
            }
        }
    })
}
