//! A minimal OpenID Connect provider for the console's SSO tests: discovery, an authorization
//! endpoint that signs the configured user in at once, a token endpoint that checks the code,
//! the redirect URI and the PKCE verifier (S256), and a JWKS with one P-256 key. Tests change
//! who signs in and can make it misbehave (`Trick`) the ways an attacker or a broken provider
//! would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::Deserialize;
use serde_json::json;

/// How the provider misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trick {
    None,
    /// The ID token is signed by a key not in the JWKS.
    ForeignKey,
    /// The ID token names another client as its audience.
    WrongAudience,
    /// The ID token carries another nonce.
    WrongNonce,
    /// The ID token expired an hour ago.
    Expired,
    /// The ID token is HMAC-signed with the JWKS's public key as the secret (algorithm
    /// confusion).
    Hs256,
    /// The ID token names another issuer.
    WrongIssuer,
}

pub const CLIENT_ID: &str = "tollgate-console";

struct Grant {
    challenge: String,
    nonce: String,
    redirect_uri: String,
}

struct Inner {
    user: String,
    groups: Vec<String>,
    trick: Trick,
    grants: HashMap<String, Grant>,
    /// What the authorization endpoint was asked, last.
    last_authorize: HashMap<String, String>,
    /// Token requests refused, with why.
    refused: Vec<String>,
}

#[derive(Clone)]
struct Shared {
    base: String,
    key_der: Arc<Vec<u8>>,
    foreign_der: Arc<Vec<u8>>,
    jwk: serde_json::Value,
    inner: Arc<Mutex<Inner>>,
}

pub struct OidcProvider {
    pub addr: SocketAddr,
    shared: Shared,
    _task: tokio::task::JoinHandle<()>,
}

fn point(key: &rcgen::KeyPair) -> (String, String) {
    let raw = key.public_key_raw();
    (B64.encode(&raw[1..33]), B64.encode(&raw[33..65]))
}

impl OidcProvider {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let key = rcgen::KeyPair::generate().expect("key");
        let foreign = rcgen::KeyPair::generate().expect("key");
        let (x, y) = point(&key);
        let shared = Shared {
            base: format!("http://{addr}"),
            key_der: Arc::new(key.serialize_der()),
            foreign_der: Arc::new(foreign.serialize_der()),
            jwk: json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": "k1", "alg": "ES256", "use": "sig"}),
            inner: Arc::new(Mutex::new(Inner {
                user: "alice".into(),
                groups: vec![],
                trick: Trick::None,
                grants: HashMap::new(),
                last_authorize: HashMap::new(),
                refused: Vec::new(),
            })),
        };
        let app = axum::Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/jwks", get(jwks))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            shared,
            _task: task,
        }
    }

    pub fn issuer(&self) -> String {
        self.shared.base.clone()
    }

    /// Who signs in next, with which groups.
    pub fn sign_in_as(&self, user: &str, groups: &[&str]) {
        let mut i = self.shared.inner.lock().expect("lock");
        i.user = user.into();
        i.groups = groups.iter().map(|g| (*g).to_owned()).collect();
    }

    pub fn trick(&self, t: Trick) {
        self.shared.inner.lock().expect("lock").trick = t;
    }

    /// The query the authorization endpoint got last.
    pub fn last_authorize(&self) -> HashMap<String, String> {
        self.shared
            .inner
            .lock()
            .expect("lock")
            .last_authorize
            .clone()
    }

    /// Why token requests were refused.
    pub fn refused(&self) -> Vec<String> {
        self.shared.inner.lock().expect("lock").refused.clone()
    }
}

async fn discovery(State(s): State<Shared>) -> Response {
    axum::Json(json!({
        "issuer": s.base,
        "authorization_endpoint": format!("{}/authorize", s.base),
        "token_endpoint": format!("{}/token", s.base),
        "jwks_uri": format!("{}/jwks", s.base),
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "id_token_signing_alg_values_supported": ["ES256"],
    }))
    .into_response()
}

async fn jwks(State(s): State<Shared>) -> Response {
    axum::Json(json!({"keys": [s.jwk]})).into_response()
}

async fn authorize(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut i = s.inner.lock().expect("lock");
    i.last_authorize = q.clone();
    let ok = q.get("client_id").map(String::as_str) == Some(CLIENT_ID)
        && q.get("response_type").map(String::as_str) == Some("code")
        && q.get("code_challenge_method").map(String::as_str) == Some("S256");
    let (Some(redirect), Some(state)) = (q.get("redirect_uri"), q.get("state")) else {
        return (http::StatusCode::BAD_REQUEST, "no redirect_uri or state").into_response();
    };
    if !ok {
        return Redirect::to(&format!("{redirect}?error=invalid_request&state={state}"))
            .into_response();
    }
    let code = B64.encode(rand_bytes());
    i.grants.insert(
        code.clone(),
        Grant {
            challenge: q.get("code_challenge").cloned().unwrap_or_default(),
            nonce: q.get("nonce").cloned().unwrap_or_default(),
            redirect_uri: redirect.clone(),
        },
    );
    let back = format!(
        "{redirect}?{}",
        form_urlencoded::Serializer::new(String::new())
            .append_pair("code", &code)
            .append_pair("state", state)
            .finish()
    );
    Redirect::to(&back).into_response()
}

fn rand_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_nanos();
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = (t >> ((i % 8) * 8)) as u8 ^ (i as u8).wrapping_mul(151);
    }
    use sha2::Digest as _;
    let h = sha2::Sha256::digest(b);
    b.copy_from_slice(&h[..16]);
    b
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TokenForm {
    grant_type: String,
    code: String,
    redirect_uri: String,
    client_id: String,
    code_verifier: String,
}

async fn token(State(s): State<Shared>, body: bytes::Bytes) -> Response {
    let fields: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let f: TokenForm = serde_json::from_value(json!(fields)).unwrap_or_default();
    let mut i = s.inner.lock().expect("lock");
    let refuse = |i: &mut Inner, why: &str| {
        i.refused.push(why.to_owned());
        (
            http::StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant", "error_description": why})),
        )
            .into_response()
    };
    if f.grant_type != "authorization_code" || f.client_id != CLIENT_ID {
        return refuse(&mut i, "grant_type or client_id");
    }
    // A code is used once.
    let Some(grant) = i.grants.remove(&f.code) else {
        return refuse(&mut i, "unknown or used code");
    };
    if grant.redirect_uri != f.redirect_uri {
        return refuse(&mut i, "redirect_uri differs");
    }
    use sha2::Digest as _;
    if B64.encode(sha2::Sha256::digest(f.code_verifier.as_bytes())) != grant.challenge {
        return refuse(&mut i, "PKCE verifier does not match the challenge");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    let trick = i.trick;
    let claims = json!({
        "iss": if trick == Trick::WrongIssuer { "https://evil.example".to_owned() } else { s.base.clone() },
        "sub": format!("id-{}", i.user),
        "aud": if trick == Trick::WrongAudience { "another-client" } else { CLIENT_ID },
        "iat": now,
        "exp": if trick == Trick::Expired { now - 3600 } else { now + 300 },
        "nonce": if trick == Trick::WrongNonce { "not-the-nonce".to_owned() } else { grant.nonce.clone() },
        "preferred_username": i.user,
        "groups": i.groups,
    });
    let id_token = match trick {
        Trick::Hs256 => {
            let header = jsonwebtoken::Header {
                kid: Some("k1".into()),
                ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
            };
            let secret = s.jwk.to_string();
            jsonwebtoken::encode(
                &header,
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            )
        }
        _ => {
            let der = if trick == Trick::ForeignKey {
                &s.foreign_der
            } else {
                &s.key_der
            };
            let header = jsonwebtoken::Header {
                kid: Some("k1".into()),
                ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256)
            };
            jsonwebtoken::encode(
                &header,
                &claims,
                &jsonwebtoken::EncodingKey::from_ec_der(der),
            )
        }
    }
    .expect("sign");
    axum::Json(json!({"access_token": "not-used", "token_type": "Bearer", "id_token": id_token}))
        .into_response()
}
