//! Who may use the admin API: the client network (`admin.allow`), then a JWT from `POST /login`.
//!
//! - Passwords are argon2 PHC strings (`tollgate admin hash-password`); a `password` given in the
//!   config (through the environment) is hashed at start.
//! - Tokens are HS256 JWTs, the algorithm pinned (a token naming any other, `none` included, is
//!   refused), with `exp`, `nbf`, `iat`, `iss`, `aud` and `sub` required and checked, a lifetime of
//!   `admin.token_ttl` and [`LEEWAY_SECS`] of clock leeway.
//! - Lockout: `admin.lockout.max_failures` wrong passwords for one user name from one IP within
//!   `window` lock that pair out for `duration`, counted in the cache (shared by a cluster). Each
//!   attempt reserves its number in the count *before* its password is checked, so however many
//!   arrive at once, at most `max_failures` passwords are checked per lock. An
//!   unknown user is counted, checked against a dummy hash and answered exactly like a wrong
//!   password, so user names cannot be probed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{AdminConfig, AdminRole, Cidr, DEMO_ADMIN_PASSWORD, LockoutConfig};
use crate::state::{AuditRecord, Stores, unix_ms};

/// Clock leeway on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 5;
const ISSUER: &str = "tollgate";
const AUDIENCE: &str = "tollgate-admin";
/// Longest user name and password looked at; longer ones fail like a wrong password.
const MAX_USERNAME: usize = 64;
const MAX_PASSWORD: usize = 1024;

/// The claims of an admin token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    /// A random nonce: two logins in the same second get different tokens (and so different
    /// CSRF tokens).
    pub jti: String,
    /// When the session began (Unix seconds): renewals keep it, and none reaches past
    /// `admin.session_max` after it.
    #[serde(default)]
    pub auth_time: u64,
    /// Set for a session signed in through `admin.oidc` (`sub` is then `sso:NAME`): the role
    /// the provider's claim gave at sign-in. A local user's role is read from the config at
    /// each request instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sso_role: Option<AdminRole>,
}

/// Hashes `password` as an argon2id PHC string (default parameters, random salt).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

fn verify(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// Whether a compact JWS's protected header names critical extensions (`crit`). An undecodable
/// header counts as one: the token is refused either way.
fn has_crit_header(token: &str) -> bool {
    use base64::Engine as _;
    let Some(Ok(header)) = token
        .split('.')
        .next()
        .map(|h| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h))
    else {
        return true;
    };
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&header)
        .map_or(true, |h| h.contains_key("crit"))
}

/// An admin user as the gateway keeps it.
#[derive(Debug, Clone)]
pub struct UserEntry {
    /// The argon2 PHC string.
    pub hash: String,
    pub role: AdminRole,
}

/// Admin user name → password hash and role.
pub type AdminUsers = HashMap<String, UserEntry>;

/// Who a valid token belongs to.
#[derive(Debug, Clone)]
pub struct Signed {
    pub user: String,
    pub role: AdminRole,
    /// Unix seconds.
    pub expires_at: u64,
}

/// What a login attempt came to.
#[derive(Debug)]
pub enum Login {
    /// A token, when it expires (Unix seconds) and the user's role.
    Ok {
        token: String,
        expires_at: u64,
        role: AdminRole,
    },
    /// Wrong user name or password (the same answer for both).
    Denied,
    /// Locked out for this many more seconds.
    Locked { retry_after_secs: u64 },
}

/// The admin plane's authentication state, built once at start from `admin`.
pub struct AdminAuth {
    /// Keys the console's CSRF tokens (`csrf_token`); derived from the JWT secret.
    csrf_key: Vec<u8>,
    allow: Vec<Cidr>,
    /// User name → argon2 PHC string; replaced at each reload ([`AdminAuth::set_users`]), so a
    /// user removed from the config can neither log in nor use a token they already have.
    users: arc_swap::ArcSwap<AdminUsers>,
    /// Verified for unknown users so they take as long as known ones.
    dummy_hash: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_secs: u64,
    /// `admin.session_max` in seconds.
    session_max_secs: u64,
    lockout: LockoutConfig,
    /// Console sign-in through an OpenID Connect provider (`admin.oidc`), read at start.
    oidc: Option<crate::admin::oidc::Oidc>,
}

impl AdminAuth {
    /// Hashes plain passwords, and refuses the demo password off loopback (also when it is given
    /// as a hash).
    pub fn new(c: &AdminConfig) -> Result<Arc<Self>, String> {
        let users = Self::users_of(c)?;
        let secret: Vec<u8> = match &c.jwt_secret {
            Some(s) => s.expose().as_bytes().to_vec(),
            None => {
                let mut b = vec![0u8; 32];
                OsRng.fill_bytes(&mut b);
                b
            }
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub", "jti"]);
        Ok(Arc::new(Self {
            csrf_key: [b"tollgate-console-csrf\0".as_slice(), &secret].concat(),
            allow: c.allow.clone(),
            users: arc_swap::ArcSwap::from_pointee(users),
            dummy_hash: hash_password("not a password of anyone")?,
            encoding: EncodingKey::from_secret(&secret),
            decoding: DecodingKey::from_secret(&secret),
            validation,
            ttl_secs: c.token_ttl.get().as_secs().max(1),
            session_max_secs: c.session_max.get().as_secs().max(1),
            lockout: c.lockout,
            oidc: c
                .oidc
                .clone()
                .map(|o| crate::admin::oidc::Oidc::new(o, &secret)),
        }))
    }

    /// The users of `c` with their password hashes: plain passwords hashed, and the demo
    /// password refused off loopback (also when it is given as a hash).
    pub fn users_of(c: &AdminConfig) -> Result<AdminUsers, String> {
        let mut users = HashMap::new();
        let loopback = c.listen.0.ip().is_loopback();
        for (i, u) in c.users.iter().enumerate() {
            let hash = match (&u.password_hash, &u.password) {
                (Some(h), _) => h.clone(),
                (None, Some(p)) => hash_password(p.expose())?,
                (None, None) => return Err(format!("admin.users[{i}]: no password")),
            };
            if PasswordHash::new(&hash).is_err() {
                return Err(format!("admin.users[{i}].password_hash: not a PHC string"));
            }
            if c.enabled && !loopback && verify(DEMO_ADMIN_PASSWORD, &hash) {
                return Err(format!(
                    "admin.users[{i}]: the demo password is refused while admin.listen ({}) is not on loopback",
                    c.listen.0
                ));
            }
            users.insert(u.username.clone(), UserEntry { hash, role: u.role });
        }
        Ok(users)
    }

    /// Puts a reloaded config's users in service (from [`AdminAuth::users_of`]).
    pub fn set_users(&self, users: AdminUsers) {
        self.users.store(Arc::new(users));
    }

    /// Whether `ip` may reach the admin listener at all.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|n| n.contains(ip))
    }

    /// The CSRF token of a console session: an HMAC of its JWT, so only the server can make
    /// it, it changes with every login, and it needs no state.
    pub fn csrf_token(&self, session_token: &str) -> String {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&self.csrf_key)
            .expect("HMAC takes a key of any length");
        mac.update(session_token.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Whether `offered` is the CSRF token of `session_token` (constant time).
    pub fn csrf_matches(&self, session_token: &str, offered: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.csrf_token(session_token)
            .as_bytes()
            .ct_eq(offered.as_bytes())
            .into()
    }

    /// The user a token was issued to and their role now, if it is valid now. The role is the
    /// config's at this moment: a reload that changes it changes what existing tokens may do,
    /// and one that removes the user ends their sessions.
    pub fn verify_token(&self, token: &str) -> Option<Signed> {
        let claims = self.claims(token)?;
        let role = self.role_of(&claims)?;
        Some(Signed {
            user: claims.sub,
            role,
            expires_at: claims.exp,
        })
    }

    /// The role a valid token's claims carry now: an SSO session's own (only this gateway signs
    /// tokens, and only the OIDC callback sets it), or a local user's from the config.
    fn role_of(&self, claims: &Claims) -> Option<AdminRole> {
        match claims.sso_role {
            Some(role) if self.oidc.is_some() && claims.sub.starts_with("sso:") => Some(role),
            Some(_) => None,
            None => self.users.load().get(&claims.sub).map(|u| u.role),
        }
    }

    /// A fresh token for the session of a valid `token`: the same user and login time, a new
    /// expiry `admin.token_ttl` from now but never past `admin.session_max` after the login.
    /// `None` when the token is not valid or the session has reached its maximum.
    pub fn renew(&self, token: &str) -> Option<(String, u64)> {
        let claims = self.claims(token)?;
        self.role_of(&claims)?;
        let started = if claims.auth_time == 0 {
            claims.iat
        } else {
            claims.auth_time
        };
        let now = unix_ms() / 1000;
        let end = started.saturating_add(self.session_max_secs);
        // Less than a minute left of the session: nothing worth renewing.
        (end > now + 60 && end > claims.exp)
            .then(|| self.issue_at(&claims.sub, started, end, claims.sso_role))?
    }

    /// The OpenID Connect sign-in, when `admin.oidc` is set.
    pub fn oidc(&self) -> Option<&crate::admin::oidc::Oidc> {
        self.oidc.as_ref()
    }

    /// A session for `user` (`sso:NAME`) signed in through the OpenID provider with `role`.
    pub fn issue_sso(&self, user: &str, role: AdminRole) -> Option<(String, u64)> {
        let now = unix_ms() / 1000;
        self.issue_at(
            user,
            now,
            now.saturating_add(self.session_max_secs),
            Some(role),
        )
    }

    /// The claims of a token that is valid now: signature, algorithm and the registered claims
    /// (`jsonwebtoken`), then what that crate does not check: no `crit` header parameter (we
    /// understand no extension, so RFC 7515 §4.1.11 says refuse), no `iat` in the future beyond
    /// the leeway, and a lifetime (`exp - iat`) no longer than `admin.token_ttl`, so a token
    /// made with a stolen key still cannot outlive what this gateway would issue.
    fn claims(&self, token: &str) -> Option<Claims> {
        if has_crit_header(token) {
            return None;
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .ok()?
            .claims;
        let now = unix_ms() / 1000;
        (claims.iat <= now + LEEWAY_SECS && claims.exp.saturating_sub(claims.iat) <= self.ttl_secs)
            .then_some(claims)
    }

    fn issue(&self, user: &str) -> Option<(String, u64)> {
        let now = unix_ms() / 1000;
        self.issue_at(user, now, now.saturating_add(self.session_max_secs), None)
    }

    /// A token for `user`, whose session began at `auth_time`, valid for `admin.token_ttl` but
    /// not past `session_end`.
    fn issue_at(
        &self,
        user: &str,
        auth_time: u64,
        session_end: u64,
        sso_role: Option<AdminRole>,
    ) -> Option<(String, u64)> {
        let now = unix_ms() / 1000;
        let claims = Claims {
            sub: user.to_owned(),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            iat: now,
            nbf: now,
            exp: (now + self.ttl_secs).min(session_end),
            auth_time,
            sso_role,
            jti: {
                let mut nonce = [0u8; 16];
                OsRng.fill_bytes(&mut nonce);
                hex::encode(nonce)
            },
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding);
        token.ok().map(|t| (t, claims.exp))
    }

    /// Checks a login, counts failures, locks out, and audits every outcome (before answering).
    pub async fn login(
        self: &Arc<Self>,
        stores: &Stores,
        username: &str,
        password: &str,
        ip: IpAddr,
    ) -> Result<Login, crate::state::StoreError> {
        let kv = stores.admin_kv();
        // User names are config identifiers (no ':'), so the key cannot collide across users.
        let pair = format!(
            "{}:{ip}",
            username.chars().take(MAX_USERNAME).collect::<String>()
        );
        let audit = |action: &str, outcome: &str| {
            AuditRecord::new(username, &ip.to_string(), action, username, outcome)
        };
        let l = &self.lockout;
        let (fail_key, lock_key) = (format!("fail:{pair}"), format!("lock:{pair}"));
        let window_ms = l.window.get().as_millis() as u64;
        let duration_ms = l.duration.get().as_millis() as u64;
        // The attempt is reserved before the password is checked: concurrent attempts each get
        // their own number, so at most `max_failures` of them are ever verified (a check of the
        // count followed by a later increment let dozens of parallel guesses through).
        let attempt = kv.incr(&fail_key, 1, Some(window_ms)).await;
        let now = unix_ms();
        let locked_until = kv
            .get(&lock_key)
            .await
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&until| until > now);
        let over = attempt > i64::from(l.max_failures);
        if locked_until.is_some() || over {
            // An attempt within the limit that finds the lock counted on a fresh counter (the
            // lock cleared the old one): give it back, so a lock does not outlast `duration`.
            // One over the limit counted on the counter the lock cleared (or is about to).
            if !over {
                kv.incr(&fail_key, -1, Some(window_ms)).await;
            }
            stores
                .database()
                .record_audit(audit("login", "locked"))
                .await?;
            // Over the limit with no lock yet: the attempt that reached the limit is still being
            // checked and is about to set it.
            let until = locked_until.unwrap_or(now + duration_ms);
            return Ok(Login::Locked {
                retry_after_secs: (until - now).div_ceil(1000).max(1),
            });
        }
        let this = self.clone();
        let (user, pass) = (username.to_owned(), password.to_owned());
        // argon2 takes tens of milliseconds of CPU: off the async workers.
        let ok = tokio::task::spawn_blocking(move || {
            let users = this.users.load();
            let known = users
                .get(&user)
                .filter(|_| user.len() <= MAX_USERNAME && pass.len() <= MAX_PASSWORD);
            let hash = known.map_or(&this.dummy_hash, |u| &u.hash);
            let matched = verify(&pass[..pass.len().min(MAX_PASSWORD)], hash);
            known.filter(|_| matched).map(|u| u.role)
        })
        .await
        .unwrap_or(None);
        if let Some(role) = ok {
            // The right password: the pair's count starts again (this attempt's reservation
            // with it).
            kv.delete(&fail_key).await;
            let Some((token, expires_at)) = self.issue(username) else {
                stores
                    .database()
                    .record_audit(audit("login", "failed"))
                    .await?;
                return Ok(Login::Denied);
            };
            stores.database().record_audit(audit("login", "ok")).await?;
            return Ok(Login::Ok {
                token,
                expires_at,
                role,
            });
        }
        stores
            .database()
            .record_audit(audit("login", "denied"))
            .await?;
        // Exactly one attempt holds the number `max_failures`; its failure locks the pair. The
        // lock is written before the count is cleared, so an attempt counted on the cleared
        // counter finds it.
        if attempt == i64::from(l.max_failures) {
            let until = unix_ms() + duration_ms;
            kv.set(&lock_key, &until.to_string(), Some(duration_ms))
                .await;
            kv.delete(&fail_key).await;
            stores
                .database()
                .record_audit(audit("lockout", "ok"))
                .await?;
            tracing::warn!(target: "audit", user = %crate::error::truncate(username), %ip, "admin login locked out");
        }
        Ok(Login::Denied)
    }
}

/// A reload replaces the users (and so ends the sessions of removed ones); a config whose users
/// cannot be prepared refuses the reload.
impl crate::gateway::ReloadPart for AdminAuth {
    fn prepare(
        self: Arc<Self>,
        config: &crate::config::Config,
    ) -> Result<crate::gateway::Commit, Vec<crate::config::ConfigError>> {
        let users = Self::users_of(&config.admin).map_err(|message| {
            vec![crate::config::ConfigError {
                path: "admin.users".into(),
                location: None,
                message,
            }]
        })?;
        Ok(Box::new(move || self.set_users(users)))
    }
}
