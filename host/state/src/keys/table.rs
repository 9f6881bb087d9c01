//! The request path's view of client keys: a key's identity ([`KeyId`]), what it may do
//! ([`ClientKey`]), and the [`KeyTable`] a presented secret's digest is looked up in.

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A key's identity: `HMAC-SHA256(server secret, key)`.
#[derive(Clone, Copy)]
pub struct KeyId(pub [u8; 32]);

/// Compared in constant time: the table's final match on a presented secret's digest.
impl PartialEq for KeyId {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for KeyId {}

/// Hashed by its first eight bytes: a MAC output is already uniform, and nobody without the
/// server secret can choose it, so the key table (looked up on every request) needs neither
/// SipHash nor all 32 bytes: FxHash of one `u64`. Equality still compares all 32 bytes.
impl Hash for KeyId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut head = [0u8; 8];
        head.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_ne_bytes(head));
    }
}

impl KeyId {
    /// The first 8 hex digits, enough to tell keys apart in logs.
    pub fn prefix(&self) -> String {
        to_hex(&self.0[..4])
    }

    pub fn to_hex(self) -> String {
        to_hex(&self.0)
    }

    /// From 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 {
            return None;
        }
        let mut id = [0u8; 32];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(id))
    }
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({}…)", self.prefix())
    }
}

/// Where a key is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeySource {
    /// `auth.keys` of the config file: read-only at run time.
    Config,
    /// Issued at run time and stored in the database.
    Database,
}

/// A key the gateway accepts, as the request path sees it.
#[derive(Debug)]
pub struct ClientKey {
    pub id: KeyId,
    pub name: Arc<str>,
    /// `id` as hex, computed once (stores and policies use it on every request).
    pub hex: Arc<str>,
    pub source: KeySource,
    /// Unix ms from which the key is refused as `key_expired`.
    pub expires_ms: Option<u64>,
    /// Models it may ask for (exact, or a prefix ending in `*`); empty: any.
    pub models: Vec<Box<str>>,
    /// Route path prefixes it may use; empty: any.
    pub routes: Vec<Box<str>>,
    /// Who it belongs to ('' for nobody): owner budgets apply to every key of an owner.
    pub owner: Arc<str>,
    /// Its own spending caps.
    pub budgets: Vec<tollgate_config::BudgetSpec>,
    /// Its own rate and concurrency limits.
    pub limits: Option<tollgate_config::KeyLimits>,
    /// Its own body capture, instead of its route's (`off` included); `None`: the route's.
    pub capture: Option<Arc<tollgate_config::CaptureRules>>,
}

impl ClientKey {
    /// A key with no expiry and no entitlement limits.
    pub fn plain(id: KeyId, name: &str, source: KeySource) -> Self {
        Self {
            id,
            name: name.into(),
            hex: id.to_hex().into(),
            source,
            expires_ms: None,
            models: Vec::new(),
            routes: Vec::new(),
            owner: Arc::from(""),
            budgets: Vec::new(),
            limits: None,
            capture: None,
        }
    }

    /// Whether the key may ask for `model`.
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|p| pattern_matches(p, model))
    }

    /// Whether the key may use the route whose prefix is `route`.
    pub fn allows_route(&self, route: &str) -> bool {
        self.routes.is_empty() || self.routes.iter().any(|r| **r == *route)
    }
}

/// `pattern` is a name, or a prefix ending in `*`.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// One way into the table: a secret's digest, the key it authenticates as, and when that secret
/// stops working (a rotated-away secret in its grace period).
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub digest: KeyId,
    pub key: Arc<ClientKey>,
    pub secret_expires_ms: Option<u64>,
}

/// What a presented secret's digest is.
#[derive(Debug)]
pub enum KeyLookup {
    Valid(Arc<ClientKey>),
    /// A known key past its `expires_ms`.
    Expired(Arc<ClientKey>),
    /// Unknown, revoked, or a rotated-away secret past its grace period: told apart nowhere.
    Unknown,
}

/// Every accepted secret digest, looked up on every request.
#[derive(Default)]
pub struct KeyTable {
    by_digest: HashMap<KeyId, KeyEntry, rustc_hash::FxBuildHasher>,
    /// Each key once, by its id (reports name keys by id).
    by_id: HashMap<KeyId, Arc<ClientKey>, rustc_hash::FxBuildHasher>,
}

impl KeyTable {
    pub fn new(entries: impl IntoIterator<Item = KeyEntry>) -> Self {
        let by_digest: HashMap<KeyId, KeyEntry, rustc_hash::FxBuildHasher> =
            entries.into_iter().map(|e| (e.digest, e)).collect();
        let by_id = by_digest
            .values()
            .map(|e| (e.key.id, e.key.clone()))
            .collect();
        Self { by_digest, by_id }
    }

    /// The entry for `digest`, judged at `now_ms` (read only when a time limit applies).
    pub fn lookup(&self, digest: &KeyId, now_ms: impl FnOnce() -> u64) -> KeyLookup {
        let Some(e) = self.by_digest.get(digest) else {
            return KeyLookup::Unknown;
        };
        if e.secret_expires_ms.is_none() && e.key.expires_ms.is_none() {
            return KeyLookup::Valid(e.key.clone());
        }
        let now = now_ms();
        if e.secret_expires_ms.is_some_and(|t| now >= t) {
            KeyLookup::Unknown
        } else if e.key.expires_ms.is_some_and(|t| now >= t) {
            KeyLookup::Expired(e.key.clone())
        } else {
            KeyLookup::Valid(e.key.clone())
        }
    }

    /// The key whose id (not secret digest) is `id`.
    pub fn by_id(&self, id: &KeyId) -> Option<&Arc<ClientKey>> {
        self.by_id.get(id)
    }

    /// The name of the key whose id is `hex` (64 digits), or whose id starts with `hex` (a
    /// shorter prefix, as the intercept log keeps) when one key alone does.
    pub fn name_of(&self, hex: &str) -> Option<Arc<str>> {
        if let Some(id) = KeyId::from_hex(hex) {
            return self.by_id.get(&id).map(|k| k.name.clone());
        }
        let hex = hex.to_ascii_lowercase();
        let mut found = self.by_id.values().filter(|k| k.hex.starts_with(&hex));
        match (found.next(), found.next()) {
            (Some(k), None) => Some(k.name.clone()),
            _ => None,
        }
    }

    /// The ids (hex) of the keys `owner` owns.
    pub fn owned_by(&self, owner: &str) -> Vec<Arc<str>> {
        self.by_id
            .values()
            .filter(|k| *k.owner == *owner)
            .map(|k| k.hex.clone())
            .collect()
    }

    /// The key named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<ClientKey>> {
        self.by_id.values().find(|k| *k.name == *name)
    }

    /// The configured keys (`auth.keys`), once each.
    pub fn config_keys(&self) -> Vec<Arc<ClientKey>> {
        let mut keys: Vec<_> = self
            .by_id
            .values()
            .filter(|k| k.source == KeySource::Config)
            .cloned()
            .collect();
        keys.sort_by(|a, b| a.name.cmp(&b.name));
        keys
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8, expires_ms: Option<u64>) -> Arc<ClientKey> {
        Arc::new(ClientKey {
            expires_ms,
            ..ClientKey::plain(KeyId([n; 32]), &format!("k{n}"), KeySource::Database)
        })
    }

    #[test]
    fn expiry_and_grace_are_judged_at_lookup() {
        let k = key(1, Some(1000));
        let t = KeyTable::new([
            KeyEntry {
                digest: KeyId([1; 32]),
                key: k.clone(),
                secret_expires_ms: Some(500),
            },
            KeyEntry {
                digest: KeyId([2; 32]),
                key: k,
                secret_expires_ms: None,
            },
        ]);
        assert!(matches!(
            t.lookup(&KeyId([1; 32]), || 499),
            KeyLookup::Valid(_)
        ));
        assert!(matches!(
            t.lookup(&KeyId([1; 32]), || 500),
            KeyLookup::Unknown
        ));
        assert!(matches!(
            t.lookup(&KeyId([2; 32]), || 999),
            KeyLookup::Valid(_)
        ));
        assert!(matches!(
            t.lookup(&KeyId([2; 32]), || 1000),
            KeyLookup::Expired(_)
        ));
        assert!(matches!(
            t.lookup(&KeyId([3; 32]), || 0),
            KeyLookup::Unknown
        ));
        // No time limit: the clock is not read.
        let t = KeyTable::new([KeyEntry {
            digest: KeyId([4; 32]),
            key: key(4, None),
            secret_expires_ms: None,
        }]);
        assert!(matches!(
            t.lookup(&KeyId([4; 32]), || panic!("clock read")),
            KeyLookup::Valid(_)
        ));
    }

    #[test]
    fn model_patterns_are_exact_or_prefixes() {
        let k = ClientKey {
            models: vec!["gpt-4o".into(), "claude-*".into()],
            ..ClientKey::plain(KeyId([0; 32]), "k", KeySource::Config)
        };
        assert!(k.allows_model("gpt-4o"));
        assert!(!k.allows_model("gpt-4o-mini"));
        assert!(k.allows_model("claude-3-5-sonnet"));
        assert!(!k.allows_model("claud"));
        assert!(ClientKey::plain(KeyId([0; 32]), "k", KeySource::Config).allows_model("any"));
    }

    #[test]
    fn ids_round_trip_through_hex() {
        let id = KeyId([0xab; 32]);
        assert_eq!(KeyId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(KeyId::from_hex("ab"), None);
        assert_eq!(KeyId::from_hex(&"zz".repeat(32)), None);
    }
}
