//! Client API keys, identified by `HMAC-SHA256(server secret, key)`.
//!
//! The key itself is never stored or logged: the key table (`state::KeyTable`: the config file's
//! keys and the ones issued at run time) holds only digests, and everything downstream (logs,
//! bindings, metrics) sees the [`KeyId`]. Lookup is by digest, so what an attacker could time is
//! a hash-table probe on an HMAC output they cannot steer without the server secret; the final
//! match is still compared in constant time. The ids of keys the table recognised are remembered
//! by a keyed tag of the key (`memo.rs`), so a known key's next request skips the HMAC.

mod memo;

use std::sync::Arc;

use arc_swap::ArcSwap;
use hmac::{Hmac, Mac};
use http::{HeaderMap, StatusCode};
use sha2::Sha256;

use crate::config::AuthConfig;
use crate::error::{ErrorKind, GatewayError, Refusal};
pub use crate::state::{ClientKey, KeyId};
use crate::state::{KeyEntry, KeyLookup, KeySource, KeyTable};

type HmacSha256 = Hmac<Sha256>;

/// Authenticates requests: the server secret's MAC and the shared key table. Also what the key
/// operations (`service::keys`) need from the config: its keys' descriptions and the routes.
pub struct KeyRing {
    mac: HmacSha256,
    /// Ids of keys the table recognised (they live as long as `mac`'s secret).
    memo: memo::IdMemo,
    table: Arc<ArcSwap<KeyTable>>,
    /// `auth.keys`' descriptive fields, by name.
    config_keys: Vec<KeyMeta>,
    /// Every route's `path_prefix` (what a key's `routes` may name).
    routes: Vec<Box<str>>,
}

/// A config key's descriptive fields (not needed on the request path).
#[derive(Debug, Clone)]
pub struct KeyMeta {
    pub name: String,
    pub owner: String,
    pub description: String,
    pub tags: Vec<String>,
}

/// Longest key accepted from a request; longer values are rejected before hashing.
const MAX_PRESENTED_KEY: usize = 512;

impl KeyRing {
    /// A ring with the server secret of `config`, authenticating against `table`.
    pub fn new(config: &AuthConfig, table: Arc<ArcSwap<KeyTable>>) -> Self {
        let mac = HmacSha256::new_from_slice(config.secret.expose().as_bytes())
            .expect("HMAC accepts keys of any length");
        let config_keys = config
            .keys
            .iter()
            .map(|k| KeyMeta {
                name: k.name.clone(),
                owner: k.owner.clone(),
                description: k.description.clone(),
                tags: k.tags.clone(),
            })
            .collect();
        Self {
            mac,
            memo: memo::IdMemo::new(),
            table,
            config_keys,
            routes: Vec::new(),
        }
    }

    /// With the routes a key's `routes` may name.
    pub fn with_routes<'a>(mut self, prefixes: impl IntoIterator<Item = &'a str>) -> Self {
        self.routes = prefixes.into_iter().map(Into::into).collect();
        self
    }

    pub fn routes(&self) -> &[Box<str>] {
        &self.routes
    }

    /// The names of the config file's keys.
    pub fn config_names(&self) -> impl Iterator<Item = &str> {
        self.config_keys.iter().map(|k| k.name.as_str())
    }

    /// The config file's key named `name`, if any.
    pub fn config_key(&self, name: &str) -> Option<&KeyMeta> {
        self.config_keys.iter().find(|k| k.name == name)
    }

    /// A ring over the config file's keys alone (offline commands and tests).
    pub fn standalone(config: &AuthConfig) -> Self {
        let ring = Self::new(config, Arc::default());
        ring.table
            .store(Arc::new(KeyTable::new(ring.config_entries(config))));
        ring
    }

    /// The table entries of `auth.keys`.
    pub fn config_entries(&self, config: &AuthConfig) -> Vec<KeyEntry> {
        config
            .keys
            .iter()
            .map(|k| {
                let id = match (&k.key, &k.key_id) {
                    (Some(key), _) => key_id(&self.mac, key.expose()),
                    // Validated as 64 hex digits when the config was loaded.
                    (None, Some(hex_id)) => KeyId::from_hex(hex_id).expect("validated key_id"),
                    (None, None) => unreachable!("validated: key or key_id"),
                };
                KeyEntry {
                    digest: id,
                    key: Arc::new(ClientKey {
                        expires_ms: k.expires_ms(),
                        models: k.models.iter().map(|m| m.as_str().into()).collect(),
                        routes: k.routes.iter().map(|m| m.as_str().into()).collect(),
                        owner: k.owner.as_str().into(),
                        budgets: k.budgets.clone(),
                        limits: k.limits.filter(|l| !l.is_empty()),
                        capture: k.capture.as_ref().map(|c| Arc::new(c.compile())),
                        ..ClientKey::plain(id, &k.name, KeySource::Config)
                    }),
                    secret_expires_ms: None,
                }
            })
            .collect()
    }

    /// Identifies the key a request carries: 401 `invalid_api_key` for none, an unknown, revoked
    /// or rotated-away one (told apart nowhere), 401 `key_expired` for an expired one.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<ClientKey>, GatewayError> {
        let presented = presented_key(headers).ok_or(ErrorKind::Unauthorized)?;
        if presented.is_empty() || presented.len() > MAX_PRESENTED_KEY {
            return Err(ErrorKind::Unauthorized.into());
        }
        let tag = self.memo.tag(presented.as_bytes());
        let remembered = self.memo.get(tag);
        let digest = remembered.unwrap_or_else(|| key_id(&self.mac, presented));
        match self.table.load().lookup(&digest, crate::state::unix_ms) {
            KeyLookup::Valid(k) => {
                if remembered.is_none() {
                    self.memo.put(tag, digest);
                }
                Ok(k)
            }
            KeyLookup::Expired(_) => Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "key_expired",
                "this API key has expired",
            )
            .into()),
            KeyLookup::Unknown => Err(ErrorKind::Unauthorized.into()),
        }
    }

    /// The name of the key whose id is `hex_id` (for reports).
    pub fn name_of_id(&self, hex_id: &str) -> Option<String> {
        let id = KeyId::from_hex(hex_id)?;
        self.table.load().by_id(&id).map(|k| k.name.to_string())
    }

    /// The id of `key` under this ring's secret (for `tollgate key-id`, and a new key's id).
    pub fn id_of(&self, key: &str) -> KeyId {
        key_id(&self.mac, key)
    }

    /// The table in force.
    pub fn table(&self) -> Arc<KeyTable> {
        self.table.load_full()
    }
}

fn key_id(mac: &HmacSha256, key: &str) -> KeyId {
    let mut m = mac.clone();
    m.update(key.as_bytes());
    KeyId(m.finalize().into_bytes().into())
}

/// The key from `Authorization: Bearer <key>` or `x-api-key: <key>`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, rest) = v.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim());
    }
    headers.get("x-api-key")?.to_str().ok().map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{KeyConfig, Secret};

    fn ring() -> KeyRing {
        KeyRing::standalone(&AuthConfig {
            secret: Secret::new("0123456789abcdef"),
            keys: vec![KeyConfig {
                name: "alice".into(),
                key: Some(Secret::new("sk-alice-1")),
                key_id: None,
                ..KeyConfig::default()
            }],
        })
    }

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        h
    }

    #[test]
    fn accepts_bearer_and_x_api_key() {
        let r = ring();
        assert_eq!(
            &*r.authenticate(&headers("authorization", "Bearer sk-alice-1"))
                .unwrap()
                .name,
            "alice"
        );
        assert_eq!(
            &*r.authenticate(&headers("authorization", "bearer  sk-alice-1"))
                .unwrap()
                .name,
            "alice"
        );
        assert_eq!(
            &*r.authenticate(&headers("x-api-key", "sk-alice-1"))
                .unwrap()
                .name,
            "alice"
        );
    }

    #[test]
    fn a_recognised_keys_id_is_remembered_and_unknown_keys_are_not() {
        let r = ring();
        let alice = headers("authorization", "Bearer sk-alice-1");
        let first = r.authenticate(&alice).unwrap();
        assert_eq!(r.memo.len(), 1);
        // The remembered id is the HMAC's, and the key found through it is the same.
        let again = r.authenticate(&alice).unwrap();
        assert_eq!(again.id.0, r.id_of("sk-alice-1").0);
        assert!(Arc::ptr_eq(&first, &again));
        for i in 0..100 {
            let h = headers("authorization", &format!("Bearer sk-guess-{i}"));
            assert!(r.authenticate(&h).is_err());
        }
        assert_eq!(r.memo.len(), 1, "unknown keys are not remembered");
    }

    #[test]
    fn a_remembered_key_that_leaves_the_table_is_refused() {
        let r = ring();
        let alice = headers("x-api-key", "sk-alice-1");
        r.authenticate(&alice).unwrap();
        assert_eq!(r.memo.len(), 1);
        // Revoked (or rotated away): the table no longer holds its id.
        r.table.store(Arc::new(KeyTable::new(Vec::new())));
        let e = r.authenticate(&alice).unwrap_err();
        assert_eq!(e.code(), "invalid_api_key");
    }

    #[test]
    fn the_memo_is_emptied_when_full_and_tags_depend_on_its_random_key() {
        let m = memo::IdMemo::new();
        let id = KeyId([7; 32]);
        for tag in 0..memo::CAPACITY as u128 {
            m.put(tag, id);
        }
        assert_eq!(m.len(), memo::CAPACITY);
        m.put(u128::MAX, id);
        assert_eq!(m.len(), 1);
        assert!(m.get(u128::MAX).is_some() && m.get(0).is_none());
        // Two memos (two rings) tag the same key differently, and one never reads the ids the
        // other remembered on this thread.
        let other = memo::IdMemo::new();
        assert_ne!(m.tag(b"sk-alice-1"), other.tag(b"sk-alice-1"));
        assert_eq!(m.tag(b"sk-alice-1"), m.tag(b"sk-alice-1"));
        assert!(other.get(u128::MAX).is_none());
        other.put(1, id);
        assert!(m.get(1).is_none() && m.len() == 0);
    }

    #[test]
    fn rejects_unknown_malformed_and_missing_keys() {
        let r = ring();
        assert!(
            r.authenticate(&headers("authorization", "Bearer sk-alice-2"))
                .is_err()
        );
        assert!(
            r.authenticate(&headers("authorization", "Basic sk-alice-1"))
                .is_err()
        );
        assert!(
            r.authenticate(&headers("authorization", "sk-alice-1"))
                .is_err()
        );
        assert!(r.authenticate(&HeaderMap::new()).is_err());
    }

    #[test]
    fn ids_that_share_their_hashed_bytes_are_still_told_apart() {
        // The map hashes an id by its first 8 bytes; two ids equal there collide and must
        // still each find their own key.
        let a = format!("{}{}", "ab".repeat(8), "01".repeat(24));
        let b = format!("{}{}", "ab".repeat(8), "02".repeat(24));
        let r = KeyRing::standalone(&AuthConfig {
            secret: Secret::new("0123456789abcdef"),
            keys: [("a", &a), ("b", &b)]
                .map(|(name, id)| KeyConfig {
                    name: name.into(),
                    key: None,
                    key_id: Some(id.clone()),
                    ..KeyConfig::default()
                })
                .into(),
        });
        assert_eq!(r.name_of_id(&a).as_deref(), Some("a"));
        assert_eq!(r.name_of_id(&b).as_deref(), Some("b"));
        let c = format!("{}{}", "ab".repeat(8), "03".repeat(24));
        assert_eq!(r.name_of_id(&c), None);
    }

    #[test]
    fn key_id_config_matches_the_plain_key() {
        let id = ring().id_of("sk-alice-1").to_hex();
        let r = KeyRing::standalone(&AuthConfig {
            secret: Secret::new("0123456789abcdef"),
            keys: vec![KeyConfig {
                name: "a".into(),
                key: None,
                key_id: Some(id),
                ..KeyConfig::default()
            }],
        });
        assert!(r.authenticate(&headers("x-api-key", "sk-alice-1")).is_ok());
    }

    #[test]
    fn key_id_is_hmac_sha256_of_the_key_under_the_secret() {
        // Python: hmac.new(b"0123456789abcdef", b"sk-alice-1", hashlib.sha256).hexdigest()
        assert_eq!(
            ring().id_of("sk-alice-1").to_hex(),
            "aba41b6745db251a5bd047872aceb75ab262a7266690da981e9d8ab310b7e31a"
        );
    }

    #[test]
    fn key_id_depends_on_the_server_secret() {
        let other = KeyRing::standalone(&AuthConfig {
            secret: Secret::new("another-secret-value"),
            keys: vec![],
        });
        assert_ne!(ring().id_of("sk-alice-1"), other.id_of("sk-alice-1"));
    }

    proptest::proptest! {
        /// Whatever the headers hold, parsing never panics, and a key is only ever what follows
        /// a `Bearer` scheme or the whole `x-api-key` value, trimmed.
        #[test]
        fn presented_keys_come_only_from_the_two_headers(
            auth in "\\PC{0,40}",
            api in "\\PC{0,40}",
            use_auth in proptest::bool::ANY,
        ) {
            let mut h = HeaderMap::new();
            if use_auth {
                if let Ok(v) = auth.parse() { h.insert(http::header::AUTHORIZATION, v); }
            } else if let Ok(v) = api.parse() {
                h.insert("x-api-key", v);
            }
            match presented_key(&h) {
                None => {}
                Some(k) if use_auth => {
                    let (scheme, rest) = auth.split_once(' ').unwrap();
                    proptest::prop_assert!(scheme.eq_ignore_ascii_case("bearer"));
                    proptest::prop_assert_eq!(k, rest.trim());
                }
                Some(k) => proptest::prop_assert_eq!(k, api.trim()),
            }
            let _ = ring().authenticate(&h);
        }

        #[test]
        fn a_configured_key_is_found_in_either_header(key in "[!-~]{1,64}") {
            let r = KeyRing::standalone(&AuthConfig {
                secret: Secret::new("0123456789abcdef"),
                keys: vec![KeyConfig { name: "k".into(), key: Some(Secret::new(key.clone())), key_id: None, ..KeyConfig::default() }],
            });
            let bearer = format!("Bearer {key}");
            let basic = format!("Basic {key}");
            let by_bearer = r.authenticate(&headers("authorization", &bearer)).is_ok();
            let by_api_key = r.authenticate(&headers("x-api-key", &key)).is_ok();
            let by_basic = r.authenticate(&headers("authorization", &basic)).is_ok();
            proptest::prop_assert!(by_bearer && by_api_key && !by_basic);
        }
    }
}
