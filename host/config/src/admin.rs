//! `admin:`: the admin plane's listener, users, tokens and lockout.

use crate::{Cidr, Config, Duration, Errors, ListenAddr, Secret, check_name};
use std::collections::HashMap;

use serde::Deserialize;

/// The admin plane: `/metrics`, `/admin/api/…`, `/admin/ui/…` are served here and never on the
/// data-plane listener. Read at start only.
#[derive(Debug, Deserialize, serde::Serialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin listener at all.
    pub enabled: bool,
    /// Where it listens; keep it on loopback or a private network.
    pub listen: ListenAddr,
    /// Client networks allowed to reach the admin listener at all (in addition to the login);
    /// others get 403. Default: loopback only.
    pub allow: Vec<Cidr>,
    /// Operators who may log in to the admin API.
    pub users: Vec<AdminUser>,
    /// HS256 key that signs admin tokens (32+ characters). Unset: a random key per process, so
    /// tokens end with a restart and are not accepted by the other gateways of a cluster; set it
    /// (the same on every gateway) for a cluster.
    pub jwt_secret: Option<Secret>,
    /// Lifetime of an admin token, and how long a console session lasts without activity: the
    /// console renews its session while it is used (or shows a dashboard), up to `session_max`.
    pub token_ttl: Duration,
    /// Longest a console session lasts from its login, however it is renewed.
    pub session_max: Duration,
    /// Wrong passwords tolerated per user and client IP before logins are refused.
    pub lockout: LockoutConfig,
    /// Sign-in to the console through an OpenID Connect provider (authorization code with
    /// PKCE), a claim of the ID token mapped to the role. Optional; `admin.users` still log in.
    pub oidc: Option<OidcConfig>,
}

/// `admin.oidc`: an OpenID Connect provider for the console (Keycloak, Authentik, Okta, Entra ID,
/// Google, Dex…). Register `redirect_url` with it as the client's redirect URI.
#[derive(Debug, Deserialize, serde::Serialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The provider's issuer URL; its discovery document is read from
    /// `{issuer}/.well-known/openid-configuration`. `https://`, or `http://` on loopback only.
    #[serde(deserialize_with = "crate::env::string")]
    pub issuer: String,
    #[serde(deserialize_with = "crate::env::string")]
    pub client_id: String,
    /// For a confidential client (sent as `client_secret_post`); unset for a public one
    /// (PKCE alone).
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// Where the provider sends the browser back: this gateway's
    /// `/admin/api/oidc/callback` as the browser reaches it, e.g.
    /// `https://gw.example.com/admin/api/oidc/callback`.
    #[serde(deserialize_with = "crate::env::string")]
    pub redirect_url: String,
    /// Scopes asked for (`openid` is always sent).
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The ID token claim that holds the user's groups or roles (a string or a list of them).
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
    /// A value of `role_claim` → the role it gives. A user with several gets the highest.
    pub roles: HashMap<String, AdminRole>,
    /// The role of a user none of whose values is in `roles`; unset: such a user is refused.
    #[serde(default)]
    pub default_role: Option<AdminRole>,
    /// The claim shown as the user's name (and in the audit log as `sso:NAME`); `sub` when the
    /// token lacks it.
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    /// The login page's button.
    #[serde(default = "default_button")]
    pub button: String,
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "profile".into(), "email".into()]
}
fn default_role_claim() -> String {
    "groups".into()
}
fn default_username_claim() -> String {
    "preferred_username".into()
}
fn default_button() -> String {
    "Sign in with SSO".into()
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: ListenAddr(std::net::SocketAddr::from(([127, 0, 0, 1], 8318))),
            allow: ["127.0.0.0/8", "::1/128"]
                .iter()
                .filter_map(|c| c.parse().ok().map(Cidr))
                .collect(),
            users: Vec::new(),
            jwt_secret: None,
            token_ttl: Duration::secs(30 * 60),
            session_max: Duration::secs(12 * 3600),
            lockout: LockoutConfig::default(),
            oidc: None,
        }
    }
}

/// An operator of the admin API. Exactly one of `password_hash` (preferred; an argon2 PHC string
/// from `tollgate admin hash-password`) or `password` (hashed at start; for passwords given
/// through the environment) is set.
#[derive(Debug, Deserialize, serde::Serialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminUser {
    pub username: String,
    #[serde(default, serialize_with = "crate::show::redacted_opt")]
    pub password_hash: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// What the user may do (default `admin`, what every user could do before roles existed).
    #[serde(default)]
    pub role: AdminRole,
}

/// What an admin user may do. Each role includes the ones before it.
///
/// - `viewer`: read every page and listing (a NOC's wall screen); captured request and response
///   bodies are withheld; changes nothing.
/// - `operator`: the day-to-day changes: bindings, bans, keys, IP rules, upstream cooldowns,
///   plugin reloads, intercept exports.
/// - `admin`: also the live settings (failsafe, maintenance, log level) and upstream credentials.
#[derive(
    Debug,
    Deserialize,
    serde::Serialize,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Default,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AdminRole {
    Viewer,
    Operator,
    #[default]
    Admin,
}

impl AdminRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

/// Login lockout: `max_failures` wrong passwords for one user from one IP within `window` lock
/// that pair out for `duration`. Counted in the cache, so it holds across a cluster.
#[derive(Debug, Deserialize, serde::Serialize, Clone, Copy, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LockoutConfig {
    pub max_failures: u32,
    pub window: Duration,
    pub duration: Duration,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        Self {
            max_failures: 5,
            window: Duration::secs(30 * 60),
            duration: Duration::secs(30 * 60),
        }
    }
}

/// Shortest admin token signing key accepted (HS256 wants at least its 256-bit output size).
pub(crate) const MIN_JWT_SECRET_LEN: usize = 32;
/// The demo admin password of `policies.example.yaml`: refused off loopback.
pub const DEMO_ADMIN_PASSWORD: &str = "tollgate-demo-admin";

pub(crate) fn validate(c: &Config, e: &mut Errors) {
    let a = &c.admin;
    if let Some(s) = &a.jwt_secret
        && s.expose().len() < MIN_JWT_SECRET_LEN
    {
        e.add(
            "admin.jwt_secret",
            format!("must be at least {MIN_JWT_SECRET_LEN} characters"),
        );
    }
    let ttl = a.token_ttl.get();
    if ttl.is_zero() || ttl > std::time::Duration::from_secs(24 * 3600) {
        e.add("admin.token_ttl", "must be greater than 0 and at most 24h");
    }
    if a.session_max.get() < ttl || a.session_max.get() > std::time::Duration::from_secs(7 * 86_400)
    {
        e.add(
            "admin.session_max",
            "must be at least admin.token_ttl and at most 7d",
        );
    }
    if a.lockout.max_failures == 0 {
        e.add("admin.lockout.max_failures", "must be greater than 0");
    }
    for (name, d) in [
        ("window", a.lockout.window),
        ("duration", a.lockout.duration),
    ] {
        if d.get().is_zero() {
            e.add(format!("admin.lockout.{name}"), "must be greater than 0");
        }
    }
    if let Some(o) = &a.oidc {
        validate_oidc(o, e);
    }
    let mut names = HashMap::new();
    for (i, u) in a.users.iter().enumerate() {
        let path = format!("admin.users[{i}]");
        check_name(
            &u.username,
            &format!("{path}.username"),
            "admin user",
            &mut names,
            e,
        );
        match (&u.password_hash, &u.password) {
            (Some(_), Some(_)) => e.add(&path, "set either `password_hash` or `password`, not both"),
            (None, None) => e.add(&path, "one of `password_hash` or `password` is required"),
            (Some(h), None) if !h.starts_with("$argon2") => e.add(
                format!("{path}.password_hash"),
                "must be an argon2 PHC string (see `tollgate admin hash-password`)",
            ),
            (None, Some(p)) if p.expose().len() < 12 => {
                e.add(format!("{path}.password"), "must be at least 12 characters")
            }
            (None, Some(p))
                if p.expose() == DEMO_ADMIN_PASSWORD
                    && a.enabled
                    && !a.listen.0.ip().is_loopback() =>
            {
                e.add(
                    format!("{path}.password"),
                    "the demo password is refused while admin.listen is not on loopback; set TOLLGATE_ADMIN_PASSWORD",
                )
            }
            _ => {}
        }
    }
}

/// Whether `url` is `https://`, or `http://` to a loopback host (a provider on this machine, or a
/// test's).
fn secure_or_loopback(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    match (uri.scheme_str(), uri.host()) {
        (Some("https"), Some(_)) => true,
        (Some("http"), Some(host)) => {
            host == "localhost"
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        _ => false,
    }
}

fn validate_oidc(o: &OidcConfig, e: &mut Errors) {
    for (field, url) in [("issuer", &o.issuer), ("redirect_url", &o.redirect_url)] {
        if !secure_or_loopback(url) {
            e.add(
                format!("admin.oidc.{field}"),
                "must be an https:// URL (http:// only to a loopback address)",
            );
        }
    }
    if !o.redirect_url.ends_with("/admin/api/oidc/callback") {
        e.add(
            "admin.oidc.redirect_url",
            "must end with /admin/api/oidc/callback (this gateway's callback, as the browser reaches it)",
        );
    }
    if o.client_id.is_empty() {
        e.add("admin.oidc.client_id", "must not be empty");
    }
    if o.roles.is_empty() && o.default_role.is_none() {
        e.add(
            "admin.oidc.roles",
            "map at least one claim value to a role (or set default_role)",
        );
    }
}
