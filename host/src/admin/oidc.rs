//! Console sign-in through an OpenID Connect provider (`admin.oidc`): the authorization code
//! flow with PKCE (RFC 7636, `S256`), a nonce, and the ID token verified against the provider's
//! published keys; a claim of the token (`role_claim`, e.g. `groups`) mapped to the role.
//!
//! 1. `GET /admin/api/oidc/login`: a random `state`, `nonce` and PKCE verifier go into a short
//!    cookie (`tollgate_oidc`: HttpOnly, `SameSite=Lax` so the provider's redirect back carries
//!    it, `Path=/admin/api/oidc`, 10 minutes, HMAC-signed so it needs no server state); the
//!    browser is sent to the provider's authorization endpoint with the code challenge.
//! 2. `GET /admin/api/oidc/callback?code&state`: the state must match the cookie's; the code is
//!    exchanged at the token endpoint with the verifier (and the client secret, if any); the ID
//!    token must be signed by a key of the provider's JWKS with an asymmetric algorithm (never
//!    `HS*` or `none`), name the issuer and this client as audience, be unexpired and carry the
//!    cookie's nonce. Its claim maps to a role, or the sign-in is refused (`no_role`).
//! 3. The console session is then the same cookie a password login gets, for the user
//!    `sso:NAME` with that role; the role is fixed for the session (no refresh token is kept),
//!    which ends after `admin.token_ttl` idle and `admin.session_max` at the latest.
//!
//! The discovery document and the keys are fetched on first use and kept for an hour; an ID
//! token signed by a key not in the set makes one refetch (key rotation).

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{AdminRole, OidcConfig};
use crate::upstream::UpstreamClient;

/// The flow's cookie.
pub const FLOW_COOKIE: &str = "tollgate_oidc";
/// How long a sign-in may take at the provider.
const FLOW_SECS: u64 = 600;
/// How long the discovery document and keys are kept.
const PROVIDER_TTL: Duration = Duration::from_secs(3600);
/// Each call to the provider.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Clock leeway on the ID token's times.
const LEEWAY_SECS: u64 = 60;

/// Why a sign-in failed: a stable code (the console says what it means) and the detail, which
/// is logged and audited, never shown to the browser.
#[derive(Debug)]
pub struct OidcError {
    pub code: &'static str,
    pub detail: String,
}

fn fail(code: &'static str, detail: impl Into<String>) -> OidcError {
    OidcError {
        code,
        detail: detail.into(),
    }
}

/// What the flow cookie holds.
#[derive(Serialize, Deserialize)]
struct Flow {
    state: String,
    nonce: String,
    verifier: String,
    /// Unix seconds.
    exp: u64,
}

struct Provider {
    authorization_endpoint: String,
    token_endpoint: String,
    keys: JwkSet,
    fetched: Instant,
}

/// The provider and what the flow needs, built at start from `admin.oidc`.
pub struct Oidc {
    config: OidcConfig,
    http: UpstreamClient,
    /// Signs the flow cookie; derived from the admin signing key.
    cookie_key: Vec<u8>,
    provider: tokio::sync::Mutex<Option<Provider>>,
}

/// Where the browser goes to sign in, and the cookie to set on the way.
pub struct Start {
    pub location: String,
    pub cookie: String,
}

fn random_b64(bytes: usize) -> String {
    use argon2::password_hash::rand_core::{OsRng, RngCore};
    let mut b = vec![0u8; bytes];
    OsRng.fill_bytes(&mut b);
    B64.encode(b)
}

fn now_secs() -> u64 {
    crate::state::unix_ms() / 1000
}

impl Oidc {
    pub fn new(config: OidcConfig, signing_secret: &[u8]) -> Self {
        Self {
            config,
            http: UpstreamClient::new(CALL_TIMEOUT),
            cookie_key: [b"tollgate-oidc-flow\0".as_slice(), signing_secret].concat(),
            provider: tokio::sync::Mutex::new(None),
        }
    }

    /// The login page's button.
    pub fn button(&self) -> &str {
        &self.config.button
    }

    fn mac(&self, data: &[u8]) -> String {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&self.cookie_key)
            .expect("HMAC takes a key of any length");
        mac.update(data);
        hex::encode(mac.finalize().into_bytes())
    }

    /// The discovery document and keys, fetched if missing, stale or `refresh`.
    async fn provider(
        &self,
        refresh: bool,
    ) -> Result<tokio::sync::MappedMutexGuard<'_, Provider>, OidcError> {
        let mut slot = self.provider.lock().await;
        let stale = slot
            .as_ref()
            .is_none_or(|p| refresh || p.fetched.elapsed() > PROVIDER_TTL);
        if stale {
            let issuer = self.config.issuer.trim_end_matches('/');
            let doc = self
                .get_json(&format!("{issuer}/.well-known/openid-configuration"))
                .await?;
            // The document must be the issuer's own (OpenID Connect Discovery §4.3).
            if doc["issuer"].as_str().map(|i| i.trim_end_matches('/')) != Some(issuer) {
                return Err(fail(
                    "provider",
                    format!("the discovery document names issuer {}", doc["issuer"]),
                ));
            }
            let field = |name: &str| {
                doc[name].as_str().map(str::to_owned).ok_or_else(|| {
                    fail("provider", format!("the discovery document has no {name}"))
                })
            };
            let jwks_uri = field("jwks_uri")?;
            let keys: JwkSet = serde_json::from_value(self.get_json(&jwks_uri).await?)
                .map_err(|e| fail("provider", format!("the provider's keys: {e}")))?;
            *slot = Some(Provider {
                authorization_endpoint: field("authorization_endpoint")?,
                token_endpoint: field("token_endpoint")?,
                keys,
                fetched: Instant::now(),
            });
        }
        tokio::sync::MutexGuard::try_map(slot, Option::as_mut)
            .map_err(|_| fail("provider", "no provider"))
    }

    async fn get_json(&self, url: &str) -> Result<serde_json::Value, OidcError> {
        let (status, body) = self
            .http
            .exchange_json(http::Method::GET, url, &[], None, CALL_TIMEOUT)
            .await
            .map_err(|e| fail("provider", format!("{url}: {e}")))?;
        if !status.is_success() {
            return Err(fail("provider", format!("{url} answered {status}")));
        }
        Ok(body)
    }

    /// Step 1: the provider's authorization URL and the flow cookie.
    pub async fn start(&self, secure: bool) -> Result<Start, OidcError> {
        let authorize = self.provider(false).await?.authorization_endpoint.clone();
        let flow = Flow {
            state: random_b64(24),
            nonce: random_b64(24),
            verifier: random_b64(32),
            exp: now_secs() + FLOW_SECS,
        };
        let challenge = B64.encode(<sha2::Sha256 as sha2::Digest>::digest(
            flow.verifier.as_bytes(),
        ));
        let mut scopes = vec!["openid".to_owned()];
        scopes.extend(
            self.config
                .scopes
                .iter()
                .filter(|s| *s != "openid")
                .cloned(),
        );
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.config.client_id)
            .append_pair("redirect_uri", &self.config.redirect_url)
            .append_pair("scope", &scopes.join(" "))
            .append_pair("state", &flow.state)
            .append_pair("nonce", &flow.nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .finish();
        let sep = if authorize.contains('?') { '&' } else { '?' };
        let payload = B64.encode(serde_json::to_vec(&flow).unwrap_or_default());
        let value = format!("{payload}.{}", self.mac(payload.as_bytes()));
        let secure = if secure { "; Secure" } else { "" };
        Ok(Start {
            location: format!("{authorize}{sep}{query}"),
            cookie: format!(
                "{FLOW_COOKIE}={value}; Path=/admin/api/oidc; Max-Age={FLOW_SECS}; HttpOnly; SameSite=Lax{secure}"
            ),
        })
    }

    /// The flow cookie's content, if it is this gateway's, unexpired and for `state`.
    fn flow(&self, cookie: Option<&str>, state: &str) -> Result<Flow, OidcError> {
        let value = cookie.ok_or_else(|| fail("state", "no flow cookie"))?;
        let (payload, mac) = value
            .split_once('.')
            .ok_or_else(|| fail("state", "a malformed flow cookie"))?;
        let expected = self.mac(payload.as_bytes());
        let same: bool = subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), mac.as_bytes()).into();
        if !same {
            return Err(fail("state", "the flow cookie's signature does not match"));
        }
        let flow: Flow = B64
            .decode(payload)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| fail("state", "an unreadable flow cookie"))?;
        if flow.exp < now_secs() {
            return Err(fail("expired", "the sign-in took longer than 10 minutes"));
        }
        let same: bool =
            subtle::ConstantTimeEq::ct_eq(flow.state.as_bytes(), state.as_bytes()).into();
        if !same {
            return Err(fail("state", "the state does not match the flow cookie's"));
        }
        Ok(flow)
    }

    /// Step 2: the user's name (`sso:NAME`) and role, from the provider's answer.
    pub async fn finish(
        &self,
        code: &str,
        state: &str,
        cookie: Option<&str>,
    ) -> Result<(String, AdminRole), OidcError> {
        let flow = self.flow(cookie, state)?;
        let token_endpoint = self.provider(false).await?.token_endpoint.clone();
        // Built in a block, so the serializer (not `Send`) is gone before the await.
        let form = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "authorization_code")
                .append_pair("code", code)
                .append_pair("redirect_uri", &self.config.redirect_url)
                .append_pair("client_id", &self.config.client_id)
                .append_pair("code_verifier", &flow.verifier);
            if let Some(secret) = &self.config.client_secret {
                form.append_pair("client_secret", secret.expose());
            }
            form.finish()
        };
        let (status, answer) = self
            .http
            .exchange_json(
                http::Method::POST,
                &token_endpoint,
                &[(http::header::ACCEPT, "application/json".into())],
                Some(("application/x-www-form-urlencoded", Bytes::from(form))),
                CALL_TIMEOUT,
            )
            .await
            .map_err(|e| fail("provider", format!("{token_endpoint}: {e}")))?;
        if !status.is_success() {
            return Err(fail(
                "code",
                format!("the token endpoint answered {status}: {answer}"),
            ));
        }
        let id_token = answer["id_token"]
            .as_str()
            .ok_or_else(|| fail("token", "the token endpoint answered no id_token"))?;
        let claims = self.verify(id_token).await?;
        if claims["nonce"].as_str() != Some(flow.nonce.as_str()) {
            return Err(fail("token", "the ID token's nonce is not this sign-in's"));
        }
        let name = claims[&self.config.username_claim]
            .as_str()
            .or_else(|| claims["sub"].as_str())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| fail("token", "the ID token names no user"))?;
        let name: String = name.chars().take(64).collect();
        let role = self
            .role_of(&claims[&self.config.role_claim])
            .ok_or_else(|| {
                fail(
                    "no_role",
                    format!(
                        "{name}: no value of the {} claim maps to a role",
                        self.config.role_claim
                    ),
                )
            })?;
        Ok((format!("sso:{name}"), role))
    }

    /// The highest role the claim's values map to, else `default_role`.
    fn role_of(&self, claim: &serde_json::Value) -> Option<AdminRole> {
        let values: Vec<&str> = match claim {
            serde_json::Value::String(s) => vec![s.as_str()],
            serde_json::Value::Array(items) => items.iter().filter_map(|v| v.as_str()).collect(),
            _ => Vec::new(),
        };
        values
            .iter()
            .filter_map(|v| self.config.roles.get(*v).copied())
            .max()
            .or(self.config.default_role)
    }

    /// The ID token's claims, if its signature, algorithm, issuer, audience and times hold.
    async fn verify(&self, token: &str) -> Result<serde_json::Value, OidcError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| fail("token", format!("the ID token's header: {e}")))?;
        // Asymmetric algorithms only: an HMAC "signed" with a public key, or none, is refused.
        let allowed = [
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
        ];
        if !allowed.contains(&header.alg) {
            return Err(fail(
                "token",
                format!("the ID token is signed with {:?}", header.alg),
            ));
        }
        let key = {
            let find = |keys: &JwkSet| match &header.kid {
                Some(kid) => keys.find(kid).cloned(),
                None if keys.keys.len() == 1 => keys.keys.first().cloned(),
                None => None,
            };
            let known = find(&self.provider(false).await?.keys);
            match known {
                Some(k) => k,
                // A key not seen yet: the provider may have rotated its keys.
                None => find(&self.provider(true).await?.keys).ok_or_else(|| {
                    fail("token", "the ID token's key is not among the provider's")
                })?,
            }
        };
        let key = DecodingKey::from_jwk(&key)
            .map_err(|e| fail("token", format!("the provider's key: {e}")))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.set_issuer(&[
            self.config.issuer.trim_end_matches('/'),
            &self.config.issuer,
        ]);
        validation.set_audience(&[&self.config.client_id]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .map(|t| t.claims)
            .map_err(|e| fail("token", format!("the ID token: {e}")))
    }
}
