//! IP allow and deny lists: the [`IpTable`] the request path looks clients up in, and the
//! `ip_rules` table of entries added at run time (admin API, `tollgate ip`).
//!
//! The gateway-wide table is the config file's `access` lists plus the stored entries. A change
//! is stored, applied at once on the gateway that took it, announced on the cache's `ip_rules`
//! channel, and picked up by every other gateway sharing the database on the announcement or on
//! the next poll ([`IP_RULES_POLL`]), so within a second cluster-wide.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;
use sqlx::Row;

use super::sql::db_err;
use super::{StoreResult, Stores, normalize_net, unix_ms};

/// How often each gateway checks the table for changes (besides the announcements).
pub const IP_RULES_POLL: Duration = Duration::from_millis(500);
const CHANNEL: &str = "ip_rules";

/// What an entry does to the clients it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpAction {
    Allow,
    Deny,
}

impl IpAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "allow" => Some(Self::Allow),
            "deny" => Some(Self::Deny),
            _ => None,
        }
    }
}

/// A set of allowed and denied networks, looked up by longest prefix (a trie per address
/// family: a lookup costs the same with ten entries or a million).
///
/// Verdict for an address: the most specific entry containing it decides (a network listed both
/// ways is denied); with no entry containing it, the address is allowed unless the table has
/// allow entries (an allow list admits only what it lists).
#[derive(Default)]
pub struct IpTable {
    v4: PrefixMap<Ipv4Net, IpAction>,
    v6: PrefixMap<Ipv6Net, IpAction>,
    allows: usize,
    len: usize,
}

impl IpTable {
    pub fn new(entries: impl IntoIterator<Item = (IpNet, IpAction)>) -> Self {
        let mut t = Self::default();
        for (net, action) in entries {
            t.insert(net, action);
        }
        t
    }

    fn insert(&mut self, net: IpNet, action: IpAction) {
        let old = match normalize_net(net) {
            IpNet::V4(n) => self.v4.get(&n).copied(),
            IpNet::V6(n) => self.v6.get(&n).copied(),
        };
        // Deny wins when one network is listed both ways.
        let action = if old == Some(IpAction::Deny) {
            IpAction::Deny
        } else {
            action
        };
        match normalize_net(net) {
            IpNet::V4(n) => self.v4.insert(n, action),
            IpNet::V6(n) => self.v6.insert(n, action),
        };
        match (old, action) {
            (None, IpAction::Allow) => self.allows += 1,
            (Some(IpAction::Allow), IpAction::Deny) => self.allows -= 1,
            _ => {}
        }
        if old.is_none() {
            self.len += 1;
        }
    }

    /// Whether `ip` (IPv4-mapped IPv6 counts as IPv4) may pass.
    pub fn allows(&self, ip: IpAddr) -> bool {
        if self.len == 0 {
            return true;
        }
        let found = match tollgate_config::canonical_ip(ip) {
            IpAddr::V4(a) => self.v4.get_lpm(&Ipv4Net::from(a)).map(|(_, a)| *a),
            IpAddr::V6(a) => self.v6.get_lpm(&Ipv6Net::from(a)).map(|(_, a)| *a),
        };
        match found {
            Some(action) => action == IpAction::Allow,
            None => self.allows == 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table holds allow entries: then it admits only what they list (every
    /// address no entry names is refused).
    pub fn is_allow_list(&self) -> bool {
        self.allows > 0
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One stored entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IpRule {
    pub cidr: String,
    pub action: IpAction,
    pub note: String,
    pub created_ms: u64,
    pub created_by: String,
}

/// The gateway-wide list: the config file's entries and the stored ones, as one table.
pub(crate) struct IpLists {
    base: std::sync::Mutex<Vec<(IpNet, IpAction)>>,
    stored: std::sync::Mutex<Vec<(IpNet, IpAction)>>,
    table: ArcSwap<IpTable>,
    /// `(rows, newest created_ms)` last read, to skip rebuilding an unchanged table.
    seen: AtomicU64,
    seen_rows: AtomicU64,
}

impl IpLists {
    pub(crate) fn new() -> Self {
        Self {
            base: Default::default(),
            stored: Default::default(),
            table: ArcSwap::from_pointee(IpTable::default()),
            seen: AtomicU64::new(u64::MAX),
            seen_rows: AtomicU64::new(u64::MAX),
        }
    }

    fn rebuild(&self) {
        let base = self.base.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let stored = self
            .stored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.table
            .store(Arc::new(IpTable::new(base.into_iter().chain(stored))));
    }
}

impl Stores {
    /// The gateway-wide allow/deny table in force (config file and stored entries).
    pub fn ip_table(&self) -> Arc<IpTable> {
        self.ip_lists.table.load_full()
    }

    /// Whether the gateway-wide table lets `ip` in (the request path: no reference count is
    /// taken on the shared table).
    pub fn ip_allowed(&self, ip: IpAddr) -> bool {
        self.ip_lists.table.load().allows(ip)
    }

    /// The config file's `access` entries (on start and on every reload).
    pub fn set_config_ip_rules(&self, entries: Vec<(IpNet, IpAction)>) {
        *self.ip_lists.base.lock().unwrap_or_else(|p| p.into_inner()) = entries;
        self.ip_lists.rebuild();
    }

    /// The stored entries, newest first.
    pub async fn ip_rules(&self) -> StoreResult<Vec<IpRule>> {
        let rows = self
            .db
            .timed(
                sqlx::query(
                    "SELECT cidr, action, note, created_ms, created_by FROM ip_rules \
                     ORDER BY created_ms DESC, cidr",
                )
                .fetch_all(&self.db.pool),
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(IpRule {
                    cidr: r.try_get("cidr").map_err(db_err)?,
                    action: IpAction::parse(&r.try_get::<String, _>("action").map_err(db_err)?)
                        .unwrap_or(IpAction::Deny),
                    note: r.try_get("note").map_err(db_err)?,
                    created_ms: r.try_get::<i64, _>("created_ms").map_err(db_err)?.max(0) as u64,
                    created_by: r.try_get("created_by").map_err(db_err)?,
                })
            })
            .collect()
    }

    /// Adds (or replaces) an entry for every gateway; returns it as stored.
    pub async fn add_ip_rule(
        &self,
        net: IpNet,
        action: IpAction,
        note: &str,
        by: &str,
    ) -> StoreResult<IpRule> {
        let rule = IpRule {
            cidr: normalize_net(net).to_string(),
            action,
            note: note.to_owned(),
            created_ms: unix_ms(),
            created_by: by.to_owned(),
        };
        self.db
            .timed(
                sqlx::query(
                    "INSERT INTO ip_rules (cidr, action, note, created_ms, created_by) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (cidr) DO UPDATE SET \
                     action = excluded.action, note = excluded.note, \
                     created_ms = excluded.created_ms, created_by = excluded.created_by",
                )
                .bind(&rule.cidr)
                .bind(action.as_str())
                .bind(&rule.note)
                .bind(rule.created_ms as i64)
                .bind(&rule.created_by)
                .execute(&self.db.pool),
            )
            .await?;
        self.ip_rules_changed().await;
        Ok(rule)
    }

    /// Removes the entry for `net`; whether there was one.
    pub async fn remove_ip_rule(&self, net: IpNet) -> StoreResult<bool> {
        let done = self
            .db
            .timed(
                sqlx::query("DELETE FROM ip_rules WHERE cidr = $1")
                    .bind(normalize_net(net).to_string())
                    .execute(&self.db.pool),
            )
            .await?;
        self.ip_rules_changed().await;
        Ok(done.rows_affected() > 0)
    }

    async fn ip_rules_changed(&self) {
        if let Err(e) = self.refresh_ip_rules(true).await {
            tracing::warn!(target: "state", error = %e, "cannot re-read the IP rules");
        }
        if let Err(e) = self.cache.publish(CHANNEL, "changed").await {
            self.cache_failed("publish ip rules", &e);
        }
    }

    /// Re-reads the stored entries and rebuilds the table if they changed (or if `force`).
    pub async fn refresh_ip_rules(&self, force: bool) -> StoreResult<()> {
        if !force {
            let row = self
                .db
                .timed(
                    sqlx::query(
                        "SELECT CAST(COUNT(*) AS BIGINT) AS n, \
                         CAST(COALESCE(MAX(created_ms), 0) AS BIGINT) AS newest FROM ip_rules",
                    )
                    .fetch_one(&self.db.pool),
                )
                .await?;
            let n = row.try_get::<i64, _>("n").map_err(db_err)?.max(0) as u64;
            let newest = row.try_get::<i64, _>("newest").map_err(db_err)?.max(0) as u64;
            if n == self.ip_lists.seen_rows.load(Ordering::Relaxed)
                && newest == self.ip_lists.seen.load(Ordering::Relaxed)
            {
                return Ok(());
            }
        }
        let rules = self.ip_rules().await?;
        let newest = rules.iter().map(|r| r.created_ms).max().unwrap_or(0);
        let entries = rules
            .iter()
            .filter_map(|r| Some((r.cidr.parse().ok()?, r.action)))
            .collect();
        *self
            .ip_lists
            .stored
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = entries;
        self.ip_lists.rebuild();
        self.ip_lists
            .seen_rows
            .store(rules.len() as u64, Ordering::Relaxed);
        self.ip_lists.seen.store(newest, Ordering::Relaxed);
        Ok(())
    }

    /// Keeps this gateway's table in step with the stored entries.
    pub(crate) fn follow_ip_rules(self: &Arc<Self>) {
        self.follow(
            CHANNEL,
            IP_RULES_POLL,
            "IP rules",
            |stores, force| async move { stores.refresh_ip_rules(force).await },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, IpAction)]) -> IpTable {
        IpTable::new(entries.iter().map(|(n, a)| (n.parse().unwrap(), *a)))
    }

    #[test]
    fn the_most_specific_entry_decides() {
        use IpAction::*;
        let t = table(&[
            ("10.0.0.0/8", Deny),
            ("10.1.2.0/24", Allow),
            ("2001:db8::/32", Deny),
        ]);
        assert!(!t.allows("10.9.9.9".parse().unwrap()));
        assert!(t.allows("10.1.2.3".parse().unwrap()));
        assert!(
            t.allows("::ffff:10.1.2.3".parse().unwrap()),
            "IPv4-mapped is IPv4"
        );
        assert!(!t.allows("::ffff:10.9.9.9".parse().unwrap()));
        assert!(!t.allows("2001:db8::1".parse().unwrap()));
        // There is an allow entry, so what no entry matches is refused.
        assert!(!t.allows("192.0.2.1".parse().unwrap()));
        // Deny-only lists let everyone else through.
        let t = table(&[("192.0.2.0/24", Deny)]);
        assert!(t.allows("198.51.100.1".parse().unwrap()));
        assert!(!t.allows("192.0.2.200".parse().unwrap()));
        // Listed both ways: denied.
        let t = table(&[("192.0.2.0/24", Deny), ("192.0.2.0/24", Allow)]);
        assert!(!t.allows("192.0.2.1".parse().unwrap()));
        let t = table(&[("192.0.2.0/24", Allow), ("192.0.2.0/24", Deny)]);
        assert!(!t.allows("192.0.2.1".parse().unwrap()));
        assert_eq!((t.len(), t.allows), (1, 0));
        assert!(IpTable::default().allows("192.0.2.1".parse().unwrap()));
    }

    /// The verdict, the slow way: reduce the entries to one action per network (deny wins when
    /// a network is listed both ways; an IPv4-mapped /104 is the IPv4 /8), then scan them all for
    /// the longest containing prefix.
    fn reference(entries: &[(IpNet, IpAction)], ip: IpAddr) -> bool {
        let ip = tollgate_config::canonical_ip(ip);
        let mut effective = std::collections::BTreeMap::new();
        for (n, a) in entries {
            let slot = effective.entry(normalize_net(*n)).or_insert(*a);
            if *a == IpAction::Deny {
                *slot = IpAction::Deny;
            }
        }
        let best = effective
            .iter()
            .filter(|(n, _)| n.contains(&ip))
            .map(|(n, a)| (n.prefix_len(), *a == IpAction::Deny))
            .max();
        match best {
            Some((_, deny)) => !deny,
            None => !effective.values().any(|a| *a == IpAction::Allow),
        }
    }

    proptest::proptest! {
        /// The trie decides like a linear scan, for any mix of v4 networks (some IPv4-mapped)
        /// and any address.
        #[test]
        fn lookups_match_a_linear_scan(
            nets in proptest::collection::vec((proptest::prelude::any::<[u8; 4]>(), 8u8..=32, proptest::prelude::any::<bool>(), proptest::prelude::any::<bool>()), 0..60),
            probes in proptest::collection::vec(proptest::prelude::any::<[u8; 4]>(), 1..40),
        ) {
            let entries: Vec<(IpNet, IpAction)> = nets
                .iter()
                .map(|(a, len, deny, mapped)| {
                    let v4 = std::net::Ipv4Addr::from(*a);
                    let net = if *mapped {
                        IpNet::new(IpAddr::V6(v4.to_ipv6_mapped()), len + 96).unwrap()
                    } else {
                        IpNet::new(IpAddr::V4(v4), *len).unwrap()
                    };
                    (net, if *deny { IpAction::Deny } else { IpAction::Allow })
                })
                .collect();
            let table = IpTable::new(entries.iter().copied());
            for p in probes {
                // Probe near the listed networks too, not only at random.
                for ip in [IpAddr::from(p), entries.first().map_or(IpAddr::from(p), |(n, _)| normalize_net(*n).addr())] {
                    proptest::prop_assert_eq!(table.allows(ip), reference(&entries, ip), "{}", ip);
                }
            }
        }
    }
}
