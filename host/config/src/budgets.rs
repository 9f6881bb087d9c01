//! `budgets:`: spending caps per client key (a key's own `budgets`) and per owner (a team, every
//! key whose `owner` it is), in money (`amount`, in `pricing.currency`) or tokens, per calendar
//! day, week (from Monday) or month, in `timezone`.

use serde::{Deserialize, Serialize};

use crate::edge::Enforce;
use crate::{Config, Errors};

/// A calendar period a budget counts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    /// From Monday 00:00.
    Week,
    /// From the 1st, 00:00.
    Month,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
        }
    }
}

/// One budget: exactly one of `amount` (money) and `tokens`, per `period`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    /// Money, in `pricing.currency`: what the requests' tokens cost at their model's price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<f64>,
    /// Tokens: input plus output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    pub period: Period,
    /// Percentages of the budget whose passing sends one webhook alert (`alerts.webhook`) per
    /// period, e.g. `[80, 100]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alert_at: Vec<u8>,
}

/// The largest money budget, in its currency: 10^18 billionths, so a counter (an `i64`) holds
/// the budget plus any reservation that fits in it.
pub const MAX_AMOUNT: f64 = 1e9;
/// The largest token budget, for the same reason.
pub const MAX_TOKENS: u64 = 1_000_000_000_000_000_000;

impl BudgetSpec {
    /// What is wrong with it, if anything.
    pub fn problem(&self) -> Option<&'static str> {
        match (self.amount, self.tokens) {
            (Some(_), Some(_)) | (None, None) => Some("set exactly one of `amount` and `tokens`"),
            (Some(a), None) if !a.is_finite() || a <= 0.0 || a > MAX_AMOUNT => {
                Some("`amount` must be a positive amount of money, at most 1000000000")
            }
            (None, Some(0)) => Some("`tokens` must be positive"),
            (None, Some(t)) if t > MAX_TOKENS => Some("`tokens` must be at most 10^18"),
            _ if self.alert_at.iter().any(|p| *p == 0 || *p > 100) => {
                Some("`alert_at` percentages must be 1 to 100")
            }
            _ => None,
        }
    }

    /// The cap in the budget's unit: billionths of the currency, or tokens.
    pub fn limit_units(&self) -> u64 {
        match (self.amount, self.tokens) {
            (Some(a), _) => crate::to_nanos(a),
            (None, Some(t)) => t,
            (None, None) => 0,
        }
    }

    pub fn is_money(&self) -> bool {
        self.amount.is_some()
    }
}

/// An owner's (a team's) budget, shared by every key it owns.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnerBudget {
    pub owner: String,
    #[serde(flatten)]
    pub budget: BudgetSpec,
}

#[derive(Debug, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetsConfig {
    /// The zone the calendar periods follow: `UTC` (default) or an IANA name such as
    /// `Europe/Berlin`.
    #[serde(default = "utc")]
    pub timezone: String,
    /// A stream that runs past its reservation takes more from the budget as it goes, and is
    /// ended when the budget cannot give more. `strict` (default): up to the budget, which is
    /// never exceeded; `admission`: up to one reservation beyond it, so answers finish more
    /// often and all streams together overrun the budget by at most one reservation.
    #[serde(default = "strict")]
    pub enforce: Enforce,
    /// Budgets per owner (`auth.keys[].owner`, or a key's owner issued at run time).
    #[serde(default)]
    pub owners: Vec<OwnerBudget>,
}

fn utc() -> String {
    "UTC".into()
}

fn strict() -> Enforce {
    Enforce::Strict
}

impl Default for BudgetsConfig {
    fn default() -> Self {
        Self {
            timezone: utc(),
            enforce: strict(),
            owners: Vec::new(),
        }
    }
}

/// Most budgets one key (or owner) may have.
pub const MAX_BUDGETS: usize = 8;

/// Checks a list of budgets at `path`.
pub(crate) fn check_budgets(budgets: &[BudgetSpec], path: &str, e: &mut Errors) {
    if budgets.len() > MAX_BUDGETS {
        e.add(path, format!("at most {MAX_BUDGETS} budgets"));
    }
    for (i, b) in budgets.iter().enumerate() {
        if let Some(p) = b.problem() {
            e.add(format!("{path}[{i}]"), p);
        }
    }
}

pub(crate) fn validate(c: &Config, e: &mut Errors) {
    let b = &c.budgets;
    if jiff::tz::TimeZone::get(&b.timezone).is_err() {
        e.add(
            "budgets.timezone",
            format!(
                "unknown time zone {:?} (e.g. UTC, Europe/Berlin)",
                b.timezone
            ),
        );
    }
    for (i, o) in b.owners.iter().enumerate() {
        let path = format!("budgets.owners[{i}]");
        if o.owner.is_empty() {
            e.add(format!("{path}.owner"), "must not be empty");
        }
        if let Some(p) = o.budget.problem() {
            e.add(path, p);
        }
    }
    for (i, k) in c.auth.keys.iter().enumerate() {
        check_budgets(&k.budgets, &format!("auth.keys[{i}].budgets"), e);
    }
}
