//! Client API keys, identified by `HMAC-SHA256(server secret, key)`.
//!
//! The key itself is never stored or logged: the key ring holds only digests, and everything
//! downstream (logs, bindings, metrics) sees the [`KeyId`]. Lookup is by digest, so what an
//! attacker could time is a hash-table probe on an HMAC output they cannot steer without the
//! server secret; the final match is still compared in constant time.

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::AuthConfig;

type HmacSha256 = Hmac<Sha256>;

/// A key's identity: `HMAC-SHA256(secret, key)`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyId(pub [u8; 32]);

/// Hashed by its first eight bytes: a MAC output is already uniform, and nobody without the
/// server secret can choose it, so the key ring's map (looked up on every request) needs neither
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
        hex::encode(&self.0[..4])
    }
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({}…)", self.prefix())
    }
}

/// A key the gateway accepts.
#[derive(Debug)]
pub struct ClientKey {
    pub id: KeyId,
    pub name: Arc<str>,
    /// `id` as hex, computed once (stores and policies use it on every request).
    pub hex: Arc<str>,
}

/// All accepted keys, by id.
pub struct KeyRing {
    mac: HmacSha256,
    keys: HashMap<KeyId, Arc<ClientKey>, rustc_hash::FxBuildHasher>,
}

/// Longest key accepted from a request; longer values are rejected before hashing.
const MAX_PRESENTED_KEY: usize = 512;

impl KeyRing {
    pub fn new(config: &AuthConfig) -> Self {
        let mac = HmacSha256::new_from_slice(config.secret.expose().as_bytes())
            .expect("HMAC accepts keys of any length");
        let mut keys = HashMap::default();
        for k in &config.keys {
            let id = match (&k.key, &k.key_id) {
                (Some(key), _) => key_id(&mac, key.expose()),
                (None, Some(hex_id)) => {
                    let mut id = [0u8; 32];
                    // Validated as 64 hex digits when the config was loaded.
                    hex::decode_to_slice(hex_id, &mut id).expect("validated key_id");
                    KeyId(id)
                }
                (None, None) => unreachable!("validated: key or key_id"),
            };
            keys.insert(
                id,
                Arc::new(ClientKey {
                    id,
                    name: k.name.as_str().into(),
                    hex: id.to_hex().into(),
                }),
            );
        }
        Self { mac, keys }
    }

    /// Identifies the key a request carries, if it is one of ours.
    pub fn authenticate(&self, headers: &HeaderMap) -> Option<Arc<ClientKey>> {
        let presented = presented_key(headers)?;
        if presented.is_empty() || presented.len() > MAX_PRESENTED_KEY {
            return None;
        }
        let id = key_id(&self.mac, presented);
        let found = self.keys.get(&id)?;
        bool::from(found.id.0.ct_eq(&id.0)).then(|| found.clone())
    }

    /// The configured name of the key whose id is `hex_id` (for reports).
    pub fn name_of_id(&self, hex_id: &str) -> Option<String> {
        let mut id = [0u8; 32];
        hex::decode_to_slice(hex_id, &mut id).ok()?;
        self.keys.get(&KeyId(id)).map(|k| k.name.to_string())
    }

    /// The id of `key` under this ring's secret (for `tollgate key-id`).
    pub fn id_of(&self, key: &str) -> KeyId {
        key_id(&self.mac, key)
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
        KeyRing::new(&AuthConfig {
            secret: Secret::new("0123456789abcdef"),
            keys: vec![KeyConfig {
                name: "alice".into(),
                key: Some(Secret::new("sk-alice-1")),
                key_id: None,
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
    fn rejects_unknown_malformed_and_missing_keys() {
        let r = ring();
        assert!(
            r.authenticate(&headers("authorization", "Bearer sk-alice-2"))
                .is_none()
        );
        assert!(
            r.authenticate(&headers("authorization", "Basic sk-alice-1"))
                .is_none()
        );
        assert!(
            r.authenticate(&headers("authorization", "sk-alice-1"))
                .is_none()
        );
        assert!(r.authenticate(&HeaderMap::new()).is_none());
    }

    #[test]
    fn ids_that_share_their_hashed_bytes_are_still_told_apart() {
        // The map hashes an id by its first 8 bytes; two ids equal there collide and must
        // still each find their own key.
        let a = format!("{}{}", "ab".repeat(8), "01".repeat(24));
        let b = format!("{}{}", "ab".repeat(8), "02".repeat(24));
        let r = KeyRing::new(&AuthConfig {
            secret: Secret::new("0123456789abcdef"),
            keys: [("a", &a), ("b", &b)]
                .map(|(name, id)| KeyConfig {
                    name: name.into(),
                    key: None,
                    key_id: Some(id.clone()),
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
        let r = KeyRing::new(&AuthConfig {
            secret: Secret::new("0123456789abcdef"),
            keys: vec![KeyConfig {
                name: "a".into(),
                key: None,
                key_id: Some(id),
            }],
        });
        assert!(
            r.authenticate(&headers("x-api-key", "sk-alice-1"))
                .is_some()
        );
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
        let other = KeyRing::new(&AuthConfig {
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
            let r = KeyRing::new(&AuthConfig {
                secret: Secret::new("0123456789abcdef"),
                keys: vec![KeyConfig { name: "k".into(), key: Some(Secret::new(key.clone())), key_id: None }],
            });
            let bearer = format!("Bearer {key}");
            let basic = format!("Basic {key}");
            let by_bearer = r.authenticate(&headers("authorization", &bearer)).is_some();
            let by_api_key = r.authenticate(&headers("x-api-key", &key)).is_some();
            let by_basic = r.authenticate(&headers("authorization", &basic)).is_some();
            proptest::prop_assert!(by_bearer && by_api_key && !by_basic);
        }
    }
}
