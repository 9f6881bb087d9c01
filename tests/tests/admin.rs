//! The admin API over real HTTP on the admin listener: login and lockout, JWT attacks, bindings,
//! usage, upstreams, plugins, reload, audit, `admin.allow`, the OpenAPI document.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use tollgate_tests::services::Redis;
use tollgate_tests::{
    CLIENT_KEY, MockUpstream, TestGateway, chat_body, client, client_from, config_yaml,
};

const PASSWORD: &str = "correct horse battery";
const JWT_SECRET: &str = "an-admin-signing-key-of-32-chars!!";

/// The test config with an admin user `ops` and `admin` settings appended (`extra`, indented 2).
fn admin_yaml(upstream: &str, extra: &str) -> String {
    config_yaml(&[upstream.to_owned()], "").replace(
        "admin:\n  listen: 127.0.0.1:0\n",
        &format!(
            "admin:\n  listen: 127.0.0.1:0\n  jwt_secret: {JWT_SECRET}\n  users:\n    - username: ops\n      password: {PASSWORD}\n{extra}\n"
        ),
    )
}

struct Admin {
    base: String,
    http: reqwest::Client,
}

impl Admin {
    fn new(addr: SocketAddr) -> Self {
        Self {
            base: format!("http://{addr}/admin/api"),
            http: client(),
        }
    }

    /// An admin client whose connections come from `local` (another loopback address).
    fn from(addr: SocketAddr, local: &str) -> Self {
        Self {
            base: format!("http://{addr}/admin/api"),
            http: client_from(local),
        }
    }

    async fn login(&self, user: &str, password: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/login", self.base))
            .json(&json!({"username": user, "password": password}))
            .send()
            .await
            .unwrap()
    }

    async fn token(&self) -> String {
        let resp = self.login("ops", PASSWORD).await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let exp = body["expires_at"].as_u64().unwrap();
        assert!(
            exp > now && exp <= now + 30 * 60 + 5,
            "short lifetime: {exp}"
        );
        body["token"].as_str().unwrap().to_owned()
    }

    async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    async fn send(
        &self,
        method: reqwest::Method,
        token: &str,
        path: &str,
        body: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_owned());
        }
        req.send().await.unwrap()
    }
}

async fn error_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"]["message"].is_string(), "error shape: {body}");
    assert!(body["error"]["code"].is_string(), "error shape: {body}");
    (status, body["error"].clone())
}

async fn audit(admin: &Admin, token: &str, query: &str) -> Vec<Value> {
    let resp = admin.get(token, &format!("/audit?{query}")).await;
    assert_eq!(resp.status(), 200);
    let page: Value = resp.json().await.unwrap();
    page["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn login_gives_a_token_that_opens_the_api_and_every_login_is_audited() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&admin_yaml(&mock.url(), "")).await;
    let admin = Admin::new(gw.admin_addr.unwrap());

    // Without a token, or with garbage, nothing is served.
    let (status, err) = error_of(admin.get("", "/bindings").await).await;
    assert_eq!((status, err["code"].as_str()), (401, Some("invalid_token")));
    let (status, _) = error_of(admin.get("not.a.jwt", "/upstreams").await).await;
    assert_eq!(status, 401);

    let token = admin.token().await;
    let resp = admin.get(&token, "/upstreams").await;
    assert_eq!(resp.status(), 200);
    let ups: Value = resp.json().await.unwrap();
    assert_eq!(ups[0]["name"], "u0");
    assert_eq!(ups[0]["healthy"], true);
    assert_eq!(ups[0]["in_flight"], 0);

    let wrong = admin.login("ops", "wrong password!").await;
    assert_eq!(wrong.status(), 401);
    let log = audit(&admin, &token, "action=login").await;
    let outcomes: Vec<_> = log.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["denied", "ok"], "newest first: {log:?}");
    assert_eq!(log[1]["actor"], "ops");
    assert_eq!(log[1]["ip"], "127.0.0.1");
}

#[tokio::test]
async fn unknown_users_and_wrong_passwords_get_identical_answers_in_similar_time() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&admin_yaml(
        &mock.url(),
        "  lockout: {max_failures: 1000, window: 1h, duration: 1h}",
    ))
    .await;
    let admin = Admin::new(gw.admin_addr.unwrap());
    let answer = |resp: reqwest::Response| async move {
        let mut headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .filter(|(n, _)| *n != "date")
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        headers.sort();
        (resp.status(), headers, resp.bytes().await.unwrap())
    };
    let unknown = answer(admin.login("nobody", "wrong password!").await).await;
    let wrong = answer(admin.login("ops", "wrong password!").await).await;
    assert_eq!(
        unknown, wrong,
        "an unknown user must look like a wrong password"
    );
    assert_eq!(unknown.0, 401);

    // Both check a password hash: neither answers much faster.
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..5 {
        for (i, user) in ["nobody", "ops"].iter().enumerate() {
            let start = Instant::now();
            admin.login(user, "wrong password!").await;
            times[i].push(start.elapsed());
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64()
    };
    let (a, b) = (median(&mut times[0]), median(&mut times[1]));
    assert!(
        a / b > 0.33 && a / b < 3.0,
        "unknown user {a:.4}s vs wrong password {b:.4}s"
    );
}

#[tokio::test]
async fn repeated_failures_lock_the_user_out_from_that_address_and_are_audited() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&admin_yaml(
        &mock.url(),
        "  lockout: {max_failures: 3, window: 10m, duration: 30m}",
    ))
    .await;
    let admin = Admin::new(gw.admin_addr.unwrap());
    // A token from before the lockout keeps working (the lockout is about logins).
    let token = admin.token().await;
    for _ in 0..3 {
        assert_eq!(admin.login("ops", "wrong password!").await.status(), 401);
    }
    let locked = admin.login("ops", PASSWORD).await;
    assert_eq!(
        locked.status(),
        429,
        "the right password is refused while locked"
    );
    let retry: u64 = locked.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 29 * 60 && retry <= 30 * 60, "{retry}");
    let (_, err) = error_of(locked).await;
    assert_eq!(err["code"], "login_locked");
    // Another user name from the same address is not locked.
    assert_eq!(admin.login("other", "wrong password!").await.status(), 401);

    let lockouts = audit(&admin, &token, "action=lockout").await;
    assert_eq!(lockouts.len(), 1, "{lockouts:?}");
    assert_eq!(lockouts[0]["target"], "ops");
    let refused = audit(&admin, &token, "action=login&actor=ops").await;
    assert_eq!(refused[0]["outcome"], "locked");
}

/// `n` wrong-password logins for `ops`, all sent at once, spread over `admins` in turn; the
/// statuses, sorted.
async fn parallel_wrong_logins(admins: &[&Admin], n: usize) -> Vec<u16> {
    let attempts = (0..n).map(|i| async move {
        admins[i % admins.len()]
            .login("ops", "wrong password!")
            .await
            .status()
            .as_u16()
    });
    let mut statuses = futures_util::future::join_all(attempts).await;
    statuses.sort();
    statuses
}

/// What a burst of parallel wrong passwords must come to: at most `max_failures` checked (401),
/// the rest refused unchecked (429), one lockout, and the right password refused afterwards.
async fn assert_burst_locks_after(statuses: &[u16], admin: &Admin, max_failures: usize) {
    let denied = statuses.iter().filter(|&&s| s == 401).count();
    let locked = statuses.iter().filter(|&&s| s == 429).count();
    assert!(
        denied <= max_failures,
        "{denied} passwords checked in a burst, at most {max_failures} may be: {statuses:?}"
    );
    assert_eq!(denied + locked, statuses.len(), "{statuses:?}");
    assert_eq!(
        admin.login("ops", PASSWORD).await.status(),
        429,
        "the pair is locked after the burst"
    );
}

/// Parallel wrong passwords cannot outrun the lockout: each attempt reserves its place in the
/// count before its password is checked. With the documented defaults (5 failures, a 30-minute
/// lock), a burst of 50 gets exactly 5 checks; the lock is per (user, address).
#[tokio::test]
async fn a_burst_of_parallel_wrong_passwords_gets_at_most_max_failures_checks() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&admin_yaml(&mock.url(), "")).await;
    let addr = gw.admin_addr.unwrap();
    let admin = Admin::new(addr);
    let token = admin.token().await;

    let statuses = parallel_wrong_logins(&[&admin], 50).await;
    assert_burst_locks_after(&statuses, &admin, 5).await;
    // Nothing succeeded, so each of the 5 reservations was a failure.
    assert_eq!(statuses.iter().filter(|&&s| s == 401).count(), 5);
    let locked = admin.login("ops", PASSWORD).await;
    let retry: u64 = locked.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        retry > 29 * 60 && retry <= 30 * 60,
        "the documented 30-minute lock: {retry}"
    );
    let lockouts = audit(&admin, &token, "action=lockout").await;
    assert_eq!(lockouts.len(), 1, "one lockout: {lockouts:?}");

    // The same user from another address, and another user from this one, are not locked.
    let elsewhere = Admin::from(addr, "127.0.0.2");
    assert_eq!(elsewhere.login("ops", PASSWORD).await.status(), 200);
    assert_eq!(admin.login("other", "wrong password!").await.status(), 401);
}

/// Two gateways sharing Redis share the reservations: a burst split across them still gets at
/// most `max_failures` checks in all.
#[tokio::test]
async fn a_burst_split_across_two_gateways_on_redis_gets_at_most_max_failures_checks() {
    let (redis, mock) = (Redis::start(), MockUpstream::start().await);
    let yaml = admin_yaml(&mock.url(), "").replace(
        "logging:",
        &format!(
            "storage:\n  cache: {}\n  op_timeout: 10s\nlogging:",
            redis.url()
        ),
    );
    let (a, b) = (
        TestGateway::start(&yaml).await,
        TestGateway::start(&yaml).await,
    );
    let (admin_a, admin_b) = (
        Admin::new(a.admin_addr.unwrap()),
        Admin::new(b.admin_addr.unwrap()),
    );
    let statuses = parallel_wrong_logins(&[&admin_a, &admin_b], 50).await;
    assert_burst_locks_after(&statuses, &admin_a, 5).await;
    assert_eq!(
        admin_b.login("ops", PASSWORD).await.status(),
        429,
        "the lock holds on the other gateway"
    );
    assert_eq!(
        Admin::from(b.admin_addr.unwrap(), "127.0.0.3")
            .login("ops", PASSWORD)
            .await
            .status(),
        200
    );
}

/// Failures further apart than `window` do not add up, and a lock ends after `duration`.
#[tokio::test]
async fn failures_count_within_the_window_and_a_lock_ends_after_its_duration() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&admin_yaml(
        &mock.url(),
        "  lockout: {max_failures: 2, window: 1s, duration: 2s}",
    ))
    .await;
    let admin = Admin::new(gw.admin_addr.unwrap());
    assert_eq!(admin.login("ops", "wrong password!").await.status(), 401);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // The first failure has left the window: this is the first of two again.
    assert_eq!(admin.login("ops", "wrong password!").await.status(), 401);
    assert_eq!(
        admin.login("ops", PASSWORD).await.status(),
        200,
        "two failures more than a window apart do not lock"
    );
    // A success starts the count again: two more failures are needed, and they lock.
    assert_eq!(admin.login("ops", "wrong password!").await.status(), 401);
    assert_eq!(admin.login("ops", "wrong password!").await.status(), 401);
    let locked = admin.login("ops", PASSWORD).await;
    assert_eq!(locked.status(), 429);
    assert_eq!(locked.headers()["retry-after"], "2");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(
        admin.login("ops", PASSWORD).await.status(),
        200,
        "the lock ends after its duration"
    );
}

type HmacSha256 = Hmac<sha2::Sha256>;
type HmacSha384 = Hmac<sha2::Sha384>;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> Value {
    let now = now();
    json!({"sub": "ops", "iss": "tollgate", "aud": "tollgate-admin", "iat": now, "nbf": now, "exp": now + 300, "jti": "0123456789abcdef"})
}

/// A JWT with the given header and claims, signed with HMAC-SHA256 (or 384) under `secret`.
fn forge(header: &Value, claims: &Value, secret: &str, sha384: bool) -> String {
    let signing_input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let sig = if sha384 {
        let mut m = HmacSha384::new_from_slice(secret.as_bytes()).unwrap();
        m.update(signing_input.as_bytes());
        m.finalize().into_bytes().to_vec()
    } else {
        let mut m = HmacSha256::new_from_slice(secret.as_bytes()).unwrap();
        m.update(signing_input.as_bytes());
        m.finalize().into_bytes().to_vec()
    };
    format!("{signing_input}.{}", B64.encode(sig))
}

#[tokio::test]
async fn forged_and_stale_tokens_are_refused() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&admin_yaml(&mock.url(), "")).await;
    let admin = Admin::new(gw.admin_addr.unwrap());
    let hs256 = json!({"alg": "HS256", "typ": "JWT"});
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims();
        f(&mut c);
        c
    };

    // Control: a token made the way the gateway makes them is accepted, so the refusals below
    // are about what each one changes.
    let good = forge(&hs256, &claims(), JWT_SECRET, false);
    assert_eq!(admin.get(&good, "/plugins").await.status(), 200);

    let unsigned = |alg: &str| {
        format!(
            "{}.{}.",
            B64.encode(json!({"alg": alg, "typ": "JWT"}).to_string()),
            B64.encode(claims().to_string())
        )
    };
    let stripped = good.rsplit_once('.').unwrap().0.to_owned() + ".";
    let now = now();
    let attacks: Vec<(&str, String)> = vec![
        ("alg none", unsigned("none")),
        ("alg None", unsigned("None")),
        ("alg NONE", unsigned("NONE")),
        ("alg nOnE", unsigned("nOnE")),
        ("signature stripped", stripped),
        (
            "another secret",
            forge(
                &hs256,
                &claims(),
                "some-other-secret-of-32-characters",
                false,
            ),
        ),
        (
            "HS384 with the right secret",
            forge(&json!({"alg": "HS384"}), &claims(), JWT_SECRET, true),
        ),
        (
            "expired",
            forge(
                &hs256,
                &with(&|c| c["exp"] = json!(now - 60)),
                JWT_SECRET,
                false,
            ),
        ),
        (
            "no exp",
            forge(
                &hs256,
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("exp");
                }),
                JWT_SECRET,
                false,
            ),
        ),
        (
            "nbf in the future",
            forge(
                &hs256,
                &with(&|c| c["nbf"] = json!(now + 120)),
                JWT_SECRET,
                false,
            ),
        ),
        (
            "wrong aud",
            forge(
                &hs256,
                &with(&|c| c["aud"] = json!("someone-else")),
                JWT_SECRET,
                false,
            ),
        ),
        (
            "wrong iss",
            forge(
                &hs256,
                &with(&|c| c["iss"] = json!("evil")),
                JWT_SECRET,
                false,
            ),
        ),
        (
            "no iss",
            forge(
                &hs256,
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("iss");
                }),
                JWT_SECRET,
                false,
            ),
        ),
        (
            "unknown user",
            forge(
                &hs256,
                &with(&|c| c["sub"] = json!("mallory")),
                JWT_SECRET,
                false,
            ),
        ),
        (
            "iat in the future",
            forge(
                &hs256,
                &with(&|c| c["iat"] = json!(now + 120)),
                JWT_SECRET,
                false,
            ),
        ),
        (
            // The default token_ttl is 30 minutes; this one claims a year.
            "a lifetime beyond token_ttl",
            forge(
                &hs256,
                &with(&|c| c["exp"] = json!(now + 365 * 24 * 3600)),
                JWT_SECRET,
                false,
            ),
        ),
        (
            "a crit header parameter",
            forge(
                &json!({"alg": "HS256", "typ": "JWT", "crit": ["exp"]}),
                &claims(),
                JWT_SECRET,
                false,
            ),
        ),
        (
            "an empty crit header parameter",
            forge(
                &json!({"alg": "HS256", "crit": []}),
                &claims(),
                JWT_SECRET,
                false,
            ),
        ),
    ];
    // Each required claim, missing.
    let mut attacks = attacks;
    for claim in ["sub", "aud", "iat", "nbf", "jti"] {
        attacks.push((
            claim,
            forge(
                &hs256,
                &with(&|c| {
                    c.as_object_mut().unwrap().remove(claim);
                }),
                JWT_SECRET,
                false,
            ),
        ));
    }
    for (what, token) in attacks {
        let resp = admin.get(&token, "/plugins").await;
        assert_eq!(resp.status(), 401, "{what} must be refused");
        let (_, err) = error_of(resp).await;
        assert_eq!(err["code"], "invalid_token", "{what}");
    }
}

/// The 5 s of leeway and the lifetime cap, from the accepted side: the refusals above are about
/// going past them, not about any clock skew at all.
#[tokio::test]
async fn tokens_within_the_leeway_and_the_lifetime_cap_are_accepted_and_logins_differ() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&admin_yaml(&mock.url(), "  token_ttl: 10m")).await;
    let admin = Admin::new(gw.admin_addr.unwrap());
    let hs256 = json!({"alg": "HS256", "typ": "JWT"});
    let now = now();
    let accepted = [
        (
            "expired 2 s ago",
            json!({"exp": now - 2, "iat": now - 600, "nbf": now - 600}),
        ),
        ("nbf 2 s ahead", json!({"nbf": now + 2})),
        ("iat 2 s ahead", json!({"iat": now + 2, "exp": now + 300})),
        (
            "a lifetime of exactly token_ttl",
            json!({"iat": now, "exp": now + 600}),
        ),
    ];
    for (what, change) in accepted {
        let mut c = claims();
        for (k, v) in change.as_object().unwrap() {
            c[k] = v.clone();
        }
        let token = forge(&hs256, &c, JWT_SECRET, false);
        assert_eq!(admin.get(&token, "/plugins").await.status(), 200, "{what}");
    }
    let mut c = claims();
    c["exp"] = json!(now + 601);
    let too_long = forge(&hs256, &c, JWT_SECRET, false);
    assert_eq!(
        admin.get(&too_long, "/plugins").await.status(),
        401,
        "a second over token_ttl"
    );

    // Two logins in the same second: different tokens.
    let (a, b) = tokio::join!(admin.token(), admin.token());
    assert_ne!(a, b);
}

#[tokio::test]
async fn bindings_are_listed_changed_and_audited_through_the_api() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&admin_yaml(&mock.url(), "")).await;
    let admin = Admin::new(gw.admin_addr.unwrap());
    let token = admin.token().await;
    let stores = &gw.gateway.stores;
    let ids: Vec<String> = (0..3).map(|i| format!("{i:x}").repeat(64)).collect();
    for (i, id) in ids.iter().enumerate() {
        let net = format!("10.0.0.{}/32", i + 1).parse().unwrap();
        stores.bind_first(id, net).await.unwrap();
    }

    let page: Value = admin
        .get(&token, "/bindings?limit=2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["total"], 3);
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let page: Value = admin
        .get(&token, "/bindings?search=10.0.0.2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["total"], 1);
    assert_eq!(page["items"][0]["key_id"], ids[1]);

    // Ban, then filter by status.
    let banned: Value = admin
        .send(
            reqwest::Method::POST,
            &token,
            &format!("/bindings/{}/ban", ids[0]),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(banned["status"], "banned");
    let page: Value = admin
        .get(&token, "/bindings?status=banned")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (page["total"].as_u64(), &page["items"][0]["key_id"]),
        (Some(1), &json!(ids[0]))
    );
    let record = &audit(&admin, &token, "action=binding.ban").await[0];
    assert_eq!(record["target"], ids[0]);
    assert_eq!(record["actor"], "ops");
    let before: Value = serde_json::from_str(record["before"].as_str().unwrap()).unwrap();
    let after: Value = serde_json::from_str(record["after"].as_str().unwrap()).unwrap();
    assert_eq!(
        (before["status"].as_str(), after["status"].as_str()),
        (Some("active"), Some("banned"))
    );

    // Move to another network; the gateway's view changes with it.
    let moved = admin
        .send(
            reqwest::Method::PUT,
            &token,
            &format!("/bindings/{}", ids[1]),
            Some(r#"{"cidr": "192.0.2.7"}"#),
        )
        .await;
    assert_eq!(moved.status(), 200);
    assert_eq!(
        stores
            .binding(&ids[1])
            .await
            .unwrap()
            .unwrap()
            .cidr
            .to_string(),
        "192.0.2.7/32"
    );

    // Bad input names the field.
    for (body, field) in [
        (r#"{"cidr": "not-a-network"}"#, "cidr"),
        (r#"{"cidr": 7}"#, "cidr"),
        (r#"{"cidr": "10.0.0.0/8", "extra": 1}"#, "extra"),
        (r#"{"cidr": "10.0.0.0/8""#, "body"),
    ] {
        let resp = admin
            .send(
                reqwest::Method::PUT,
                &token,
                &format!("/bindings/{}", ids[1]),
                Some(body),
            )
            .await;
        let (status, err) = error_of(resp).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(err["param"], field, "{body}: {err}");
    }
    let (status, err) = error_of(admin.get(&token, "/bindings/xyz").await).await;
    assert_eq!((status, err["param"].as_str()), (400, Some("key_id")));
    let (status, _) = error_of(admin.get(&token, "/bindings?status=sleepy").await).await;
    assert_eq!(status, 400);
    let (status, _) = error_of(
        admin
            .get(&token, &format!("/bindings/{}", "f".repeat(64)))
            .await,
    )
    .await;
    assert_eq!(status, 404);

    // Unbind.
    let gone = admin
        .send(
            reqwest::Method::DELETE,
            &token,
            &format!("/bindings/{}", ids[2]),
            None,
        )
        .await;
    assert_eq!(gone.status(), 204);
    assert!(stores.binding(&ids[2]).await.unwrap().is_none());
    let (status, _) = error_of(
        admin
            .send(
                reqwest::Method::DELETE,
                &token,
                &format!("/bindings/{}", ids[2]),
                None,
            )
            .await,
    )
    .await;
    assert_eq!(status, 404);
    let unbinds = audit(&admin, &token, "action=binding.unbind").await;
    let outcomes: Vec<_> = unbinds
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["not_found", "ok"]);
}

#[tokio::test]
async fn usage_is_reported_per_key_name() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&admin_yaml(&mock.url(), "")).await;
    let admin = Admin::new(gw.admin_addr.unwrap());
    let token = admin.token().await;
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    // The usage record is written when the request ends, then flushed by the writer.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        gw.gateway.stores.flush().await;
        let rows: Value = admin
            .get(&token, "/usage?by=key")
            .await
            .json()
            .await
            .unwrap();
        if let Some(row) = rows.as_array().unwrap().first() {
            assert_eq!(row["name"], "tester");
            assert_eq!(row["requests"], 1);
            assert!(row["input_tokens"].as_u64().unwrap() > 0, "{row}");
            break;
        }
        assert!(Instant::now() < deadline, "usage never appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, err) = error_of(admin.get(&token, "/usage?by=colour").await).await;
    assert_eq!((status, err["param"].as_str()), (400, Some("by")));
}

#[tokio::test]
async fn admin_allow_refuses_other_networks_before_anything_else() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&admin_yaml(&mock.url(), "  allow: [10.0.0.0/8]")).await;
    let base = format!("http://{}", gw.admin_addr.unwrap());
    for path in [
        "/admin/api/login",
        "/admin/api/openapi.json",
        "/metrics",
        "/admin/ui/",
    ] {
        let (status, err) =
            error_of(client().get(format!("{base}{path}")).send().await.unwrap()).await;
        assert_eq!(
            (status, err["code"].as_str()),
            (403, Some("forbidden")),
            "{path}"
        );
    }
}

#[tokio::test]
async fn the_openapi_document_is_generated_and_covers_every_endpoint() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&admin_yaml(&mock.url(), "")).await;
    let doc: Value = client()
        .get(format!(
            "http://{}/admin/api/openapi.json",
            gw.admin_addr.unwrap()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let served = served_routes();
    assert!(
        served.len() >= 25,
        "routes not found in the source: {served:?}"
    );
    for (path, method) in &served {
        if path == "/openapi.json" {
            continue;
        }
        let full = format!("/admin/api{path}");
        assert!(
            paths.get(&full).is_some_and(|p| p.get(*method).is_some()),
            "{} {full} is served but not in the OpenAPI document",
            method.to_uppercase()
        );
    }
    // And nothing documented that is not served.
    for (full, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let path = full.strip_prefix("/admin/api").unwrap();
            assert!(
                served.iter().any(|(p, m)| p == path && m == method),
                "{method} {full} is documented but not served"
            );
        }
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(doc["components"]["schemas"]["BindingView"].is_object());
}

/// Every route the API's router serves, read from its source, with each of its methods.
fn served_routes() -> Vec<(String, &'static str)> {
    let source =
        std::fs::read_to_string(tollgate_tests::repo_root().join("host/src/admin/api/mod.rs"))
            .unwrap();
    let routes = &source[source.find("pub fn routes()").unwrap()..];
    let routes = &routes[..routes.find("\n}\n").unwrap()];
    let mut served = Vec::new();
    for chunk in routes.split(".route(").skip(1) {
        let path = chunk.split('"').nth(1).unwrap();
        for method in ["get", "post", "put", "delete", "patch"] {
            let call = format!("{method}(");
            let called = chunk.match_indices(&call).any(|(i, _)| {
                i == 0 || {
                    let before = chunk.as_bytes()[i - 1];
                    !(before.is_ascii_alphanumeric() || before == b'_' || before == b':')
                }
            });
            if called {
                served.push((path.to_owned(), method));
            }
        }
    }
    served
}

/// docs/admin.md "Roles": on every route the router serves (read from its source), a `viewer`
/// may read but every change gets 403 `forbidden_role` before its body is even looked at; an
/// `operator` may change all but the settings and the credentials; the role is the config's at
/// each request, so a reload that promotes a user promotes their token. A viewer sees that a
/// body was captured, not what it says.
#[tokio::test]
async fn roles_are_enforced_on_every_route_the_api_serves() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.yaml");
    let users = |viewer_role: &str| {
        format!(
            "    - username: noc\n      password: {PASSWORD}\n      role: {viewer_role}\n    - username: oncall\n      password: {PASSWORD}\n      role: operator"
        )
    };
    let yaml = admin_yaml(&mock.url(), &users("viewer"))
        .replace("routes:\n", "capture:\n  requests: all\nroutes:\n");
    std::fs::write(&path, &yaml).unwrap();
    let gw = TestGateway::start_file(&path).await;
    let admin = Admin::new(gw.admin_addr.unwrap());
    let token_of = |user: &'static str| {
        let admin = &admin;
        async move {
            let resp = admin.login(user, PASSWORD).await;
            assert_eq!(resp.status(), 200, "{user} logs in");
            resp.json::<Value>().await.unwrap()["token"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let (viewer, operator, full) = (
        token_of("noc").await,
        token_of("oncall").await,
        admin.token().await,
    );
    let admin_only = [
        ("/settings", "put"),
        ("/settings/{name}", "delete"),
        ("/credentials/{upstream}", "put"),
        ("/credentials/{upstream}", "delete"),
    ];
    let open = ["/openapi.json", "/login", "/session", "/session/renew"];
    let served = served_routes();
    let mut checked = 0;
    for (route, method) in &served {
        if open.contains(&route.as_str()) {
            continue;
        }
        let concrete = route
            .split('/')
            .map(|seg| {
                if seg.starts_with('{') {
                    "nothing-here"
                } else {
                    seg
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let body = (*method != "get").then_some("{}");
        let as_viewer = admin.send(m.clone(), &viewer, &concrete, body).await;
        if *method == "get" {
            assert_ne!(as_viewer.status(), 403, "a viewer may read {route}");
        } else {
            let (status, err) = error_of(as_viewer).await;
            assert_eq!(
                (status, err["code"].as_str()),
                (403, Some("forbidden_role")),
                "viewer: {method} {route}"
            );
            assert!(
                err["message"].as_str().unwrap().contains("noc has viewer"),
                "{err}"
            );
            checked += 1;
        }
        let as_operator = admin.send(m.clone(), &operator, &concrete, body).await;
        let status = as_operator.status().as_u16();
        if admin_only.contains(&(route.as_str(), *method)) {
            let (status, err) = error_of(as_operator).await;
            assert_eq!(
                (status, err["code"].as_str()),
                (403, Some("forbidden_role")),
                "operator: {method} {route}"
            );
            let as_admin = admin.send(m, &full, &concrete, body).await;
            assert_ne!(as_admin.status(), 403, "an admin may {method} {route}");
        } else {
            assert_ne!(status, 403, "an operator may {method} {route}");
        }
    }
    assert!(checked >= 15, "changes checked: {checked} of {served:?}");

    // A captured body: the operator reads it, the viewer learns only that there is one.
    let resp = gw.chat().await;
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    let row = loop {
        let r = admin
            .get(&operator, &format!("/requests/{request_id}"))
            .await;
        if r.status() == 200 {
            break r.json::<Value>().await.unwrap();
        }
        assert!(Instant::now() < deadline, "the request was never logged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        row["request_body"].as_str().unwrap().contains("gpt-test"),
        "{row}"
    );
    let seen: Value = admin
        .get(&viewer, &format!("/requests/{request_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seen["request_body"], "withheld");
    let listed: Value = admin.get(&viewer, "/requests").await.json().await.unwrap();
    let items = listed["items"].as_array().unwrap();
    assert!(
        !items.is_empty() && items.iter().all(|r| r["request_body"] == "withheld"),
        "{listed}"
    );

    // A reload that promotes the viewer: the same token may now change things.
    let rule = r#"{"cidr": "198.51.100.9", "action": "deny"}"#;
    assert_eq!(
        admin
            .send(reqwest::Method::POST, &viewer, "/ip-rules", Some(rule))
            .await
            .status(),
        403
    );
    std::fs::write(
        dir.path().join("tmp.yaml"),
        admin_yaml(&mock.url(), &users("operator"))
            .replace("routes:\n", "capture:\n  requests: all\nroutes:\n"),
    )
    .unwrap();
    std::fs::rename(dir.path().join("tmp.yaml"), &path).unwrap();
    let ok: Value = admin
        .send(reqwest::Method::POST, &full, "/reload", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ok["ok"], true, "{ok}");
    let added = admin
        .send(reqwest::Method::POST, &viewer, "/ip-rules", Some(rule))
        .await;
    assert!(added.status().is_success(), "{}", added.status());
}

/// docs/console.md "Sessions": the console renews its session while used; a renewal gives a new
/// cookie (and CSRF token) that ends later, never past `admin.session_max` after the login, and
/// a session at its maximum gets 401 `session_at_maximum`.
#[tokio::test]
async fn a_console_session_is_renewed_up_to_its_maximum() {
    let up = MockUpstream::start().await;
    let http = client();
    for (max, renews) in [("1h", true), ("2m", false)] {
        let gw = TestGateway::start(&admin_yaml(
            &up.url(),
            &format!("  token_ttl: 2m\n  session_max: {max}"),
        ))
        .await;
        let base = format!("http://{}/admin/api", gw.admin_addr.unwrap());
        let resp = http
            .post(format!("{base}/session"))
            .json(&json!({"username": "ops", "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let cookie = resp.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let first: Value = resp.json().await.unwrap();
        assert_eq!(first["role"], "admin");
        // Tokens are issued per second: wait for the next one so the expiry can move.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let renewed = http
            .post(format!("{base}/session/renew"))
            .header("cookie", &cookie)
            .header("x-csrf-token", first["csrf"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        if !renews {
            let (status, err) = error_of(renewed).await;
            assert_eq!(
                (status, err["code"].as_str()),
                (401, Some("session_at_maximum"))
            );
            continue;
        }
        assert_eq!(renewed.status(), 200);
        let fresh_cookie = renewed.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        assert_ne!(fresh_cookie, cookie);
        let second: Value = renewed.json().await.unwrap();
        assert!(
            second["expires_at"].as_u64() > first["expires_at"].as_u64(),
            "{first} {second}"
        );
        assert_ne!(second["csrf"], first["csrf"]);
        // The new cookie works with the new CSRF token; without the CSRF token a renewal is
        // refused like any change.
        let me: Value = http
            .get(format!("{base}/session"))
            .header("cookie", &fresh_cookie)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(me["csrf"], second["csrf"]);
        let no_csrf = http
            .post(format!("{base}/session/renew"))
            .header("cookie", &fresh_cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(no_csrf.status(), 403);
    }
}

/// docs/admin.md: removing a user from the config ends their tokens at the next reload, and they
/// can no longer log in; the other users are untouched. A reload whose users are unusable is
/// refused as a whole.
#[tokio::test]
async fn a_user_removed_from_the_config_loses_their_tokens_at_the_reload() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.yaml");
    let second = format!("    - username: second\n      password: {PASSWORD}-2");
    let yaml = admin_yaml(&mock.url(), &second);
    std::fs::write(&path, &yaml).unwrap();
    let gw = TestGateway::start_file(&path).await;
    let admin = Admin::new(gw.admin_addr.unwrap());
    let ops = admin.token().await;
    let login = admin.login("second", &format!("{PASSWORD}-2")).await;
    assert_eq!(login.status(), 200);
    let second_token = login.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(admin.get(&second_token, "/plugins").await.status(), 200);

    let replace = |text: &str| {
        std::fs::write(dir.path().join("tmp.yaml"), text).unwrap();
        std::fs::rename(dir.path().join("tmp.yaml"), &path).unwrap();
    };
    // A user without a password: the reload is refused, and both users keep working.
    replace(&yaml.replace(&format!("      password: {PASSWORD}-2\n"), ""));
    let refused: Value = admin
        .send(reqwest::Method::POST, &ops, "/reload", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(admin.get(&second_token, "/plugins").await.status(), 200);

    replace(&admin_yaml(&mock.url(), ""));
    let ok: Value = admin
        .send(reqwest::Method::POST, &ops, "/reload", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ok["ok"], true, "{ok}");
    assert_eq!(
        admin.get(&second_token, "/plugins").await.status(),
        401,
        "the removed user's token still works"
    );
    assert_eq!(
        admin
            .login("second", &format!("{PASSWORD}-2"))
            .await
            .status(),
        401,
        "the removed user still logs in"
    );
    assert_eq!(admin.get(&ops, "/plugins").await.status(), 200);
}

#[tokio::test]
async fn reload_through_the_api_reports_a_refused_config_verbatim() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.yaml");
    let yaml = admin_yaml(&mock.url(), "");
    std::fs::write(&path, &yaml).unwrap();
    let gw = TestGateway::start_file(&path).await;
    let admin = Admin::new(gw.admin_addr.unwrap());
    let token = admin.token().await;

    let ok: Value = admin
        .send(reqwest::Method::POST, &token, "/reload", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ok, json!({"ok": true, "error": null}));

    // Written atomically so the file watcher never reads half a file.
    let broken = yaml.clone() + "routes_typo: 1\n";
    std::fs::write(dir.path().join("tmp.yaml"), &broken).unwrap();
    std::fs::rename(dir.path().join("tmp.yaml"), &path).unwrap();
    let refused: Value = admin
        .send(reqwest::Method::POST, &token, "/reload", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(refused["ok"], false);
    assert!(
        refused["error"].as_str().unwrap().contains("routes_typo"),
        "{refused}"
    );
    let plugins: Value = admin.get(&token, "/plugins").await.json().await.unwrap();
    assert_eq!(plugins["last_reload"]["ok"], false);
    let record = &audit(&admin, &token, "action=config.reload").await[0];
    assert_eq!(record["outcome"], "failed");
    // The running config still serves.
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn the_demo_password_is_refused_off_loopback() {
    let mock = MockUpstream::start().await;
    let yaml = config_yaml(&[mock.url()], "").replace(
        "admin:\n  listen: 127.0.0.1:0\n",
        "admin:\n  listen: 0.0.0.0:0\n  users:\n    - username: admin\n      password: tollgate-demo-admin\n",
    );
    let err = tollgate::Config::parse(&yaml, "demo.yaml", Box::new(|_| None)).unwrap_err();
    assert!(err.to_string().contains("admin.users[0].password"), "{err}");

    // Given as a hash it is caught when the admin plane starts.
    let hash = tollgate::admin_hash_password("tollgate-demo-admin").unwrap();
    let yaml = config_yaml(&[mock.url()], "").replace(
        "admin:\n  listen: 127.0.0.1:0\n",
        &format!("admin:\n  listen: 0.0.0.0:0\n  users:\n    - username: admin\n      password_hash: \"{hash}\"\n"),
    );
    let config = tollgate::Config::parse(&yaml, "demo.yaml", Box::new(|_| None)).unwrap();
    let err = tollgate::Listeners::bind(&config)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("demo password"), "{err}");
}

#[tokio::test]
async fn intercepts_are_filtered_paged_and_exported_as_streamed_csv() {
    use tollgate::state::Intercept;
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&admin_yaml(&mock.url(), "")).await;
    let admin = Admin::new(gw.admin_addr.unwrap());
    let token = admin.token().await;
    const N: usize = 100_000;
    let rows: Vec<Intercept> = (0..N)
        .map(|i| Intercept {
            at_ms: 1_700_000_000_000 + i as u64,
            key_id_prefix: if i % 10 == 0 {
                "aaaaaaaaaaaa"
            } else {
                "bbbbbbbbbbbb"
            }
            .into(),
            bound_cidr: Some("10.0.0.0/8".into()),
            attempted_ip: format!("192.0.2.{}", i % 200),
            method: "POST".into(),
            // A value that needs CSV quoting.
            path: format!("/v1/chat,\"{i}\""),
            reason: "ip_not_allowed".into(),
        })
        .collect();
    // In small batches: each is one store operation, bounded by `storage.op_timeout`.
    for chunk in rows.chunks(1_000) {
        gw.gateway
            .stores
            .database()
            .record_intercepts(chunk)
            .await
            .unwrap();
    }

    let page: Value = admin
        .get(&token, "/intercepts?key=aaaaaaaaaaaa&limit=3&offset=1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["total"], N / 10);
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    // Newest first; the second-newest of the key is row N-20.
    assert_eq!(items[0]["at_ms"], 1_700_000_000_000u64 + (N - 20) as u64);
    let by_ip: Value = admin
        .get(
            &token,
            "/intercepts?ip=192.0.2.7&from_ms=1700000000000&to_ms=1700000000999",
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(by_ip["total"], 5, "rows 7, 207, 407, 607, 807");
    let (status, err) = error_of(admin.get(&token, "/intercepts?ip=nope").await).await;
    assert_eq!((status, err["param"].as_str()), (400, Some("ip")));

    // The export arrives in many pieces (pages), not as one buffered body.
    let resp = admin.get(&token, "/intercepts.csv").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    let mut chunks = 0;
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    use futures_util::StreamExt;
    while let Some(c) = stream.next().await {
        body.extend_from_slice(&c.unwrap());
        chunks += 1;
    }
    assert!(chunks >= N / 1000, "streamed in {chunks} pieces");
    let mut reader = csv_reader(&body);
    let header = reader.headers().unwrap().clone();
    assert_eq!(&header[1], "at");
    let records: Vec<Vec<String>> = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect();
    assert_eq!(records.len(), N);
    assert_eq!(
        records[0][6],
        format!("/v1/chat,\"{}\"", N - 1),
        "quoted and newest first"
    );
    let ids: Vec<i64> = records.iter().map(|r| r[0].parse().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "each row once, in order"
    );
    assert_eq!(
        audit(&admin, &token, "action=intercepts.export")
            .await
            .len(),
        1
    );
}

fn csv_reader(body: &[u8]) -> csv::Reader<&[u8]> {
    csv::Reader::from_reader(body)
}

#[tokio::test]
async fn an_operator_cools_an_upstream_down_and_restores_it() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&admin_yaml(&mock.url(), "")).await;
    let admin = Admin::new(gw.admin_addr.unwrap());
    let token = admin.token().await;
    let chat = || async {
        client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .json(&chat_body(false))
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(chat().await, 200);

    let view: Value = admin
        .send(
            reqwest::Method::POST,
            &token,
            "/upstreams/u0/cooldown",
            Some(r#"{"seconds": 60}"#),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["cooldowns"][0]["model"], Value::Null);
    assert_eq!(chat().await, 429, "the only upstream is cooling down");

    let view: Value = admin
        .send(
            reqwest::Method::POST,
            &token,
            "/upstreams/u0/restore",
            Some("{}"),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["cooldowns"], json!([]));
    assert_eq!(chat().await, 200);

    for (path, body, field) in [
        ("/upstreams/u0/cooldown", r#"{"seconds": 0}"#, "seconds"),
        ("/upstreams/u0/cooldown", r#"{"seconds": -5}"#, "seconds"),
    ] {
        let (status, err) = error_of(
            admin
                .send(reqwest::Method::POST, &token, path, Some(body))
                .await,
        )
        .await;
        assert_eq!(
            (status, err["param"].as_str()),
            (400, Some(field)),
            "{body}"
        );
    }
    let (status, _) = error_of(
        admin
            .send(
                reqwest::Method::POST,
                &token,
                "/upstreams/nope/restore",
                Some("{}"),
            )
            .await,
    )
    .await;
    assert_eq!(status, 404);
    let actions: Vec<_> = audit(&admin, &token, "target=u0")
        .await
        .iter()
        .map(|r| r["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(actions, ["upstream.restore", "upstream.cooldown"]);
}

#[tokio::test]
async fn the_dashboard_sums_today_and_the_last_24_hours() {
    use tollgate::state::Intercept;
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&admin_yaml(&mock.url(), "")).await;
    let admin = Admin::new(gw.admin_addr.unwrap());
    let token = admin.token().await;
    let stores = &gw.gateway.stores;
    let sent_from_ms = now() * 1000;
    for _ in 0..2 {
        let resp = client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .json(&chat_body(false))
            .send()
            .await
            .unwrap();
        resp.bytes().await.unwrap();
    }
    let now_ms = now() * 1000;
    let intercept = |at_ms| Intercept {
        at_ms,
        key_id_prefix: "aaaaaaaaaaaa".into(),
        bound_cidr: None,
        attempted_ip: "192.0.2.1".into(),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        reason: "ip_not_allowed".into(),
    };
    // One now, one two days ago (outside both ranges).
    stores
        .database()
        .record_intercepts(&[intercept(now_ms), intercept(now_ms - 48 * 3_600_000)])
        .await
        .unwrap();
    for (i, id) in ["1", "2"].iter().enumerate() {
        stores
            .bind_first(&id.repeat(64), format!("10.0.0.{i}/32").parse().unwrap())
            .await
            .unwrap();
    }
    stores
        .set_status(&"2".repeat(64), tollgate::state::BindingStatus::Banned)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let d = loop {
        stores.flush().await;
        let d: Value = admin.get(&token, "/dashboard").await.json().await.unwrap();
        if d["last_24h"]["requests"] == 2 {
            break d;
        }
        assert!(Instant::now() < deadline, "usage never arrived: {d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(d["last_24h"]["intercepts"], 1, "{d}");
    // "Today" starts at 00:00 UTC: both requests, unless midnight fell between the first one
    // and the dashboard's answer (then only those after it, so fewer).
    let day = |ms: u64| ms / 86_400_000;
    let today = d["today"]["requests"].as_u64().unwrap();
    if day(sent_from_ms) == day(d["now_ms"].as_u64().unwrap()) {
        assert_eq!(today, 2, "{d}");
    } else {
        assert!(today < 2, "{d}");
    }
    assert!(d["last_24h"]["input_tokens"].as_u64().unwrap() > 0);
    let hours = d["hours"].as_array().unwrap();
    assert_eq!(hours.len(), 24);
    let last_two = |f: &str| hours[22][f].as_u64().unwrap() + hours[23][f].as_u64().unwrap();
    assert_eq!(last_two("requests"), 2, "the current hour is last");
    assert_eq!(last_two("intercepts"), 1);
    // The last hour, per minute, on this gateway: the two proxied requests and their tokens,
    // but not the intercepts, which this test wrote straight into the database (another
    // gateway's, as far as this one knows).
    let minutes = d["minutes"].as_array().unwrap();
    assert_eq!(minutes.len(), 60);
    assert!(
        minutes
            .windows(2)
            .all(|w| w[1]["minute_ms"].as_u64().unwrap()
                == w[0]["minute_ms"].as_u64().unwrap() + 60_000),
        "{d}"
    );
    let last_minutes =
        |f: &str| minutes[58][f].as_u64().unwrap() + minutes[59][f].as_u64().unwrap();
    assert_eq!(last_minutes("requests"), 2, "{d}");
    assert!(last_minutes("input_tokens") > 0);
    assert!(minutes.iter().all(|m| m["intercepts"] == 0), "{d}");
    assert_eq!(
        (d["active_bindings"].as_u64(), d["banned_bindings"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        (d["upstreams"].as_u64(), d["healthy_upstreams"].as_u64()),
        (Some(1), Some(1))
    );
    // Requests that reached the upstream have a latency and a time to first byte; a minute
    // without any has none (not 0).
    let latest = minutes
        .iter()
        .rev()
        .find(|m| m["requests"].as_u64() > Some(0))
        .unwrap();
    assert!(latest["latency_p95_ms"].as_f64().unwrap() > 0.0, "{latest}");
    assert!(
        latest["first_byte_p50_ms"].as_f64().unwrap() > 0.0,
        "{latest}"
    );
    assert!(minutes[0]["latency_p50_ms"].is_null(), "{}", minutes[0]);

    // "Today" from the reader's midnight: an hour ago counts this hour and the last (whole
    // hours); the future or more than 48 hours back is refused with the parameter named.
    let now = d["now_ms"].as_u64().unwrap();
    let from = now - 3_600_000;
    let local: Value = admin
        .get(&token, &format!("/dashboard?today_from_ms={from}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(local["today_from_ms"], json!(from / 3_600_000 * 3_600_000));
    assert_eq!(local["today"]["requests"], 2, "{local}");
    for bad in [now + 60_000, now - 49 * 3_600_000] {
        let (status, err) = error_of(
            admin
                .get(&token, &format!("/dashboard?today_from_ms={bad}"))
                .await,
        )
        .await;
        assert_eq!(
            (status, err["param"].as_str()),
            (400, Some("today_from_ms")),
            "{err}"
        );
    }
}

#[tokio::test]
async fn live_settings_are_validated_applied_and_audited() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&admin_yaml(&mock.url(), "")).await;
    let admin = Admin::new(gw.admin_addr.unwrap());
    let token = admin.token().await;
    let current: Value = admin.get(&token, "/settings").await.json().await.unwrap();
    assert_eq!(current["failsafe"], "closed");
    assert_eq!(current["alert_threshold"], 5);

    for (body, field) in [
        (r#"{"failsafe": "sideways"}"#, "failsafe"),
        (r#"{"alert_threshold": 0}"#, "alert_threshold"),
        (r#"{"alert_window_secs": 0}"#, "alert_window_secs"),
        (r#"{"archive_days": 99999}"#, "archive_days"),
        (r#"{"log_level": "tollgate=loud"}"#, "log_level"),
        (r#"{"colour": "blue"}"#, "colour"),
    ] {
        let (status, err) = error_of(
            admin
                .send(reqwest::Method::PUT, &token, "/settings", Some(body))
                .await,
        )
        .await;
        assert_eq!(
            (status, err["param"].as_str()),
            (400, Some(field)),
            "{body}: {err}"
        );
    }
    assert_eq!(
        gw.gateway.stores.settings().failsafe,
        "closed",
        "nothing changed"
    );

    let after: Value = admin
        .send(
            reqwest::Method::PUT,
            &token,
            "/settings",
            Some(r#"{"failsafe": "open", "archive_days": 30, "log_level": "debug"}"#),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (after["failsafe"].as_str(), after["archive_days"].as_u64()),
        (Some("open"), Some(30))
    );
    assert_eq!(
        gw.gateway.stores.failsafe(),
        tollgate::config::Failsafe::Open
    );
    assert_eq!(gw.gateway.stores.settings().log_level, "debug");
    let record = &audit(&admin, &token, "action=settings.update").await[0];
    let before: Value = serde_json::from_str(record["before"].as_str().unwrap()).unwrap();
    let now: Value = serde_json::from_str(record["after"].as_str().unwrap()).unwrap();
    assert_eq!(
        (before["failsafe"].as_str(), now["failsafe"].as_str()),
        (Some("closed"), Some("open"))
    );
}

/// docs/admin.md "Live settings": every setting says where its value comes from. The file's
/// `maintenance.enabled` shows as on; an override beats the file (also across a reload that
/// changes the file) until it is reverted, and then the file's current value applies. Reverting
/// is audited and needs the admin role.
#[tokio::test]
async fn overridden_settings_show_their_source_and_revert_to_the_file() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.yaml");
    let file = |maintenance: bool, threshold: u32| {
        admin_yaml(&mock.url(), "").replace(
            "routes:\n",
            &format!("maintenance:\n  enabled: {maintenance}\nalerts:\n  threshold: {threshold}\nroutes:\n"),
        )
    };
    std::fs::write(&path, file(true, 7)).unwrap();
    let gw = TestGateway::start_file(&path).await;
    let admin = Admin::new(gw.admin_addr.unwrap());
    let token = admin.token().await;
    let settings = || async {
        admin
            .get(&token, "/settings")
            .await
            .json::<Value>()
            .await
            .unwrap()
    };
    let chat = || async { gw.chat().await.status() };
    let s = settings().await;
    assert_eq!(
        (
            s["maintenance"].as_bool(),
            s["file"]["maintenance"].as_bool()
        ),
        (Some(true), Some(true)),
        "{s}"
    );
    assert_eq!(s["alert_threshold"], 7);
    assert_eq!(s["overrides"], json!([]));
    assert_eq!(chat().await, 503);

    // Overridden in the console: off, though the file says on.
    let put = admin
        .send(
            reqwest::Method::PUT,
            &token,
            "/settings",
            Some(r#"{"maintenance": false, "alert_threshold": 9}"#),
        )
        .await;
    assert_eq!(put.status(), 200);
    let s: Value = put.json().await.unwrap();
    assert_eq!(
        (
            s["maintenance"].as_bool(),
            s["file"]["maintenance"].as_bool()
        ),
        (Some(false), Some(true)),
        "{s}"
    );
    let names: Vec<&str> = s["overrides"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alert_threshold", "maintenance"]);
    assert_eq!(s["overrides"][0]["updated_by"], "ops");
    assert_eq!(chat().await, 200);

    // A reload that changes the file: the override still wins, the file's new value shows.
    std::fs::write(dir.path().join("tmp.yaml"), file(true, 11)).unwrap();
    std::fs::rename(dir.path().join("tmp.yaml"), &path).unwrap();
    let ok: Value = admin
        .send(reqwest::Method::POST, &token, "/reload", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ok["ok"], true, "{ok}");
    let s = settings().await;
    assert_eq!(
        (
            s["alert_threshold"].as_u64(),
            s["file"]["alert_threshold"].as_u64()
        ),
        (Some(9), Some(11)),
        "{s}"
    );

    // Reverted: the file's values apply again, here and in the answer.
    for name in ["maintenance", "alert_threshold"] {
        let r = admin
            .send(
                reqwest::Method::DELETE,
                &token,
                &format!("/settings/{name}"),
                None,
            )
            .await;
        assert_eq!(r.status(), 200, "{name}");
    }
    let s = settings().await;
    assert_eq!(
        (s["maintenance"].as_bool(), s["alert_threshold"].as_u64()),
        (Some(true), Some(11)),
        "{s}"
    );
    assert_eq!(s["overrides"], json!([]));
    assert_eq!(chat().await, 503);
    let (status, err) = error_of(
        admin
            .send(reqwest::Method::DELETE, &token, "/settings/colour", None)
            .await,
    )
    .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (404, Some("not_found")),
        "{err}"
    );
    let records = audit(&admin, &token, "action=settings.revert").await;
    assert_eq!(records.len(), 2, "{records:?}");
    let before: Value = serde_json::from_str(records[1]["before"].as_str().unwrap()).unwrap();
    let after: Value = serde_json::from_str(records[1]["after"].as_str().unwrap()).unwrap();
    assert_eq!(
        (
            records[1]["target"].as_str(),
            before["maintenance"].as_bool(),
            after["maintenance"].as_bool()
        ),
        (Some("maintenance"), Some(false), Some(true))
    );
}

/// docs/admin.md "Status": version, uptime, the config file, both stores' health and the
/// conditions that need attention; the cache going down shows as critical. `/config` shows the
/// running config with every secret redacted; `/alerts` the conditions and the alerts sent.
#[tokio::test]
async fn status_says_what_needs_attention_and_config_shows_no_secret() {
    let mock = MockUpstream::start().await;
    let mut redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.yaml");
    let yaml = admin_yaml(&mock.url(), "").replace(
        "routes:\n",
        &format!(
            "storage:\n  cache: redis://127.0.0.1:{}\nalerts:\n  webhook: https://hooks.example.invalid/services/T0/B0/s3cret-path\nroutes:\n",
            redis.port
        ),
    );
    std::fs::write(&path, &yaml).unwrap();
    let gw = TestGateway::start_file(&path).await;
    let admin = Admin::new(gw.admin_addr.unwrap());
    let token = admin.token().await;
    let s: Value = admin.get(&token, "/status").await.json().await.unwrap();
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        s["config_path"].as_str(),
        Some(std::fs::canonicalize(&path).unwrap().to_str().unwrap()),
        "{s}"
    );
    assert!(s["uptime_secs"].as_u64().is_some());
    assert_eq!(
        (
            s["stores"]["database"]["kind"].as_str(),
            s["stores"]["database"]["up"].as_bool()
        ),
        (Some("sqlite"), Some(true))
    );
    assert_eq!(
        (
            s["stores"]["cache"]["kind"].as_str(),
            s["stores"]["cache"]["up"].as_bool()
        ),
        (Some("redis"), Some(true))
    );
    assert_eq!(s["conditions"], json!([]), "{s}");

    // Maintenance on and the cache gone: both show, the critical one first.
    admin
        .send(
            reqwest::Method::PUT,
            &token,
            "/settings",
            Some(r#"{"maintenance": true}"#),
        )
        .await;
    redis.kill9();
    let s: Value = admin.get(&token, "/status").await.json().await.unwrap();
    assert_eq!(s["stores"]["cache"]["up"], false, "{s}");
    let codes: Vec<(&str, &str)> = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["level"].as_str().unwrap(), c["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        codes,
        [("critical", "cache_down"), ("warning", "maintenance")],
        "{s}"
    );
    let alerts: Value = admin.get(&token, "/alerts").await.json().await.unwrap();
    assert_eq!(
        alerts["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["code"].clone())
            .collect::<Vec<_>>(),
        [json!("cache_down"), json!("maintenance")]
    );
    assert_eq!(
        (
            alerts["webhook"].as_bool(),
            alerts["sent"].as_array().map(Vec::len)
        ),
        (Some(true), Some(0))
    );

    // The running config: routes and upstreams in full, no secret anywhere.
    let shown = admin.get(&token, "/config").await.text().await.unwrap();
    let config: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(config["upstreams"][0]["name"], "u0");
    assert_eq!(config["upstreams"][0]["credential"], "<redacted>");
    assert_eq!(config["routes"][0]["upstreams"], json!(["u0"]));
    assert_eq!(config["admin"]["users"][0]["password"], "<redacted>");
    assert_eq!(
        config["alerts"]["webhook"],
        "https://hooks.example.invalid/<redacted>"
    );
    for secret in [
        CLIENT_KEY,
        tollgate_tests::UPSTREAM_CREDENTIAL,
        PASSWORD,
        JWT_SECRET,
        "test-secret-0123456789",
        "s3cret-path",
    ] {
        assert!(!shown.contains(secret), "{secret} is shown: {shown}");
    }
}

#[tokio::test]
async fn the_audit_log_exports_as_csv_with_its_filters() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&admin_yaml(&mock.url(), "")).await;
    let admin = Admin::new(gw.admin_addr.unwrap());
    let token = admin.token().await;
    for _ in 0..3 {
        assert_eq!(admin.login("ops", "wrong password!").await.status(), 401);
    }
    let csv_of = |query: &'static str| {
        let (admin, token) = (&admin, &token);
        async move {
            let resp = admin.get(token, &format!("/audit.csv{query}")).await;
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
            let body = resp.bytes().await.unwrap();
            let mut r = csv::Reader::from_reader(&body[..]);
            assert_eq!(
                r.headers().unwrap().iter().collect::<Vec<_>>(),
                [
                    "id", "at", "actor", "ip", "action", "target", "outcome", "before", "after"
                ]
            );
            r.records()
                .map(|x| x.unwrap().iter().map(str::to_owned).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        }
    };
    let all = csv_of("").await;
    assert_eq!(all.len(), 4, "one login and three failures: {all:?}");
    let denied: Vec<_> = all.iter().filter(|r| r[6] == "denied").collect();
    assert_eq!(denied.len(), 3);
    assert_eq!(all[3][6], "ok", "oldest last");
    let ids: Vec<i64> = all.iter().map(|r| r[0].parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]));
    let filtered = csv_of("?action=login&ip=127.0.0.1&to_ms=99999999999999").await;
    assert_eq!(filtered.len(), 4);
    assert!(csv_of("?actor=nobody").await.is_empty());
}

#[tokio::test]
async fn upstreams_show_their_recent_errors() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&admin_yaml(&mock.url(), "")).await;
    let admin = Admin::new(gw.admin_addr.unwrap());
    let token = admin.token().await;
    for status in [503u16, 429] {
        mock.state
            .force_status
            .store(status, std::sync::atomic::Ordering::SeqCst);
        let resp = client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .json(&chat_body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status);
    }
    let ups: Value = admin.get(&token, "/upstreams").await.json().await.unwrap();
    let errors: Vec<&str> = ups[0]["recent_errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["error"].as_str().unwrap())
        .collect();
    assert_eq!(errors, ["status 503", "status 429"]);
    assert!(ups[0]["recent_errors"][0]["at_ms"].as_u64().unwrap() > 0);
}

/// Shadow evaluation: a round-robin candidate beside a fill-first router. The live router alone
/// decides (every request goes to u0); the candidate's decisions are compared, half agree, and
/// the disagreements carry the requests' ids and both decisions, in the API and the metrics.
#[tokio::test(flavor = "multi_thread")]
async fn a_shadow_router_is_compared_with_the_live_one_and_never_decides() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let wasm = |n: &str| tollgate_tests::plugins::wasm(n).display().to_string();
    let yaml = config_yaml(&[a.url(), b.url()], "")
        .replace(
            "admin:\n  listen: 127.0.0.1:0\n",
            &format!(
                "admin:\n  listen: 127.0.0.1:0\n  jwt_secret: {JWT_SECRET}\n  users:\n    - username: ops\n      password: {PASSWORD}\n"
            ),
        )
        .replace(
            "\nlogging:",
            "\n    policies: [first]\n    shadow: {first: rotate}\nlogging:",
        )
        + &format!(
            "plugins:\n  - {{name: first, kind: router, module: {}}}\n  - {{name: rotate, kind: router, module: {}}}\n",
            wasm("tollgate_fill_first"),
            wasm("tollgate_round_robin")
        );
    let gw = TestGateway::start(&yaml).await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        let resp = gw.chat().await;
        assert_eq!(resp.status(), 200);
        ids.push(resp.headers()["x-request-id"].to_str().unwrap().to_owned());
    }
    // The live router decided every request.
    assert_eq!((a.requests(), b.requests()), (10, 0));

    let admin = Admin::new(gw.admin_addr.unwrap());
    let token = admin.token().await;
    // The comparisons finish in the background, after the answers.
    let deadline = Instant::now() + Duration::from_secs(5);
    let view = loop {
        let view: Value = admin.get(&token, "/plugins").await.json().await.unwrap();
        let s = &view["shadows"][0];
        let done = s["agree"].as_u64().unwrap_or(0) + s["disagree"].as_u64().unwrap_or(0) == 10;
        if done || Instant::now() > deadline {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let s = &view["shadows"][0];
    assert_eq!(
        (
            s["route"].as_str(),
            s["live"].as_str(),
            s["candidate"].as_str()
        ),
        (Some("/v1/"), Some("first"), Some("rotate"))
    );
    // Round-robin alternates [0, 1] and [1, 0]; fill-first always answers [0, 1].
    assert_eq!(
        (s["agree"].as_u64(), s["disagree"].as_u64()),
        (Some(5), Some(5)),
        "{view}"
    );
    assert_eq!(s["agreement"].as_f64(), Some(0.5));
    let sample = s["disagreements"].as_array().unwrap();
    assert_eq!(sample.len(), 5);
    for d in sample {
        assert!(
            ids.contains(&d["request_id"].as_str().unwrap().to_owned()),
            "{d}"
        );
        assert_eq!(d["live"], json!({"pick": [0, 1]}));
        assert_eq!(d["candidate"], json!({"pick": [1, 0]}));
    }
    // The metrics say the same.
    let metrics = gw.metrics().await;
    for (outcome, n) in [("agree", 5), ("disagree", 5), ("error", 0), ("skipped", 0)] {
        let line = format!(
            "tollgate_plugin_shadow_decisions_total{{candidate=\"rotate\",live=\"first\",outcome=\"{outcome}\",route=\"/v1/\"}} {n}"
        );
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
}

/// The console's session: the token only in an HttpOnly, SameSite=Strict cookie; requests with
/// the cookie that change something need the session's CSRF token; the cookie alone, a wrong
/// token or a forged cookie get nothing done.
#[tokio::test]
async fn a_console_session_keeps_the_token_in_an_httponly_cookie_and_needs_csrf_to_change_anything()
{
    let up = MockUpstream::start().await;
    let gw = TestGateway::start(&admin_yaml(&up.url(), "")).await;
    let base = format!("http://{}/admin/api", gw.admin_addr.unwrap());
    let http = client();

    let resp = http
        .post(format!("{base}/session"))
        .json(&json!({"username": "ops", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let set_cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert_eq!(resp.headers()["cache-control"], "no-store");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/admin", "Max-Age="] {
        assert!(set_cookie.contains(attr), "{attr} in {set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "plain HTTP: {set_cookie}");
    // Behind a TLS proxy (the admin listener itself serves plain HTTP), the cookie is Secure.
    for (name, value) in [
        ("x-forwarded-proto", "https"),
        ("forwarded", "for=192.0.2.1;proto=https"),
    ] {
        let proxied = http
            .post(format!("{base}/session"))
            .header(name, value)
            .json(&json!({"username": "ops", "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(proxied.status(), 200);
        let cookie = proxied.headers()["set-cookie"].to_str().unwrap();
        assert!(cookie.ends_with("; Secure"), "{name}: {cookie}");
    }
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["user"], "ops");
    let csrf = body["csrf"].as_str().unwrap().to_owned();
    assert_eq!(csrf.len(), 64);
    assert!(
        body.get("token").is_none(),
        "the token stays out of page scripts' reach: {body}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let jwt = cookie.strip_prefix("tollgate_session=").unwrap().to_owned();
    assert!(!body.to_string().contains(&jwt));

    // Reading with the cookie alone works; the session says who and repeats its CSRF token.
    let read = |path: &str| {
        http.get(format!("{base}{path}"))
            .header("cookie", &cookie)
            .send()
    };
    assert_eq!(read("/plugins").await.unwrap().status(), 200);
    let me: Value = read("/session").await.unwrap().json().await.unwrap();
    assert_eq!(
        (me["user"].as_str(), me["csrf"].as_str()),
        (Some("ops"), Some(csrf.as_str()))
    );

    // A change with the cookie: refused without the CSRF token or with a wrong one, done with it.
    let rule = json!({"cidr": "198.51.100.7", "action": "deny"});
    let add = |token: Option<&str>| {
        let mut req = http
            .post(format!("{base}/ip-rules"))
            .header("cookie", &cookie)
            .json(&rule);
        if let Some(t) = token {
            req = req.header("x-csrf-token", t);
        }
        req.send()
    };
    let (status, err) = error_of(add(None).await.unwrap()).await;
    assert_eq!((status, err["code"].as_str()), (403, Some("csrf_failed")));
    let wrong = "0".repeat(64);
    let (status, _) = error_of(add(Some(&wrong)).await.unwrap()).await;
    assert_eq!(status, 403);
    let rules: Value = read("/ip-rules").await.unwrap().json().await.unwrap();
    assert!(
        !rules.to_string().contains("198.51.100.7"),
        "nothing was added: {rules}"
    );
    assert_eq!(add(Some(&csrf)).await.unwrap().status(), 201);

    // Bad input to the session endpoint: a wrong password, an unknown field.
    let wrong_password = http
        .post(format!("{base}/session"))
        .json(&json!({"username": "ops", "password": "not it"}))
        .send()
        .await
        .unwrap();
    assert!(wrong_password.headers().get("set-cookie").is_none());
    let (status, err) = error_of(wrong_password).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (401, Some("invalid_credentials"))
    );
    let (status, _) = error_of(
        http.post(format!("{base}/session"))
            .json(&json!({"username": "ops", "password": PASSWORD, "remember": true}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);

    // Another session's CSRF token does not fit this one.
    let other: Value = http
        .post(format!("{base}/session"))
        .json(&json!({"username": "ops", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(
        other["csrf"], csrf,
        "two logins in the same second get different CSRF tokens"
    );
    let (status, _) = error_of(add(Some(other["csrf"].as_str().unwrap())).await.unwrap()).await;
    assert_eq!(status, 403);

    // A forged cookie (signed with another secret) is no session.
    let forged = forge(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &claims(),
        "another-secret-of-thirty-two-chars!",
        false,
    );
    let (status, _) = error_of(
        http.get(format!("{base}/plugins"))
            .header("cookie", format!("tollgate_session={forged}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);

    // Logging out needs the token too, and clears the cookie.
    let out = http
        .delete(format!("{base}/session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 403);
    let out = http
        .delete(format!("{base}/session"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    let cleared = out.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cleared.starts_with("tollgate_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
}

/// The console is served by the admin listener from the binary, under a strict CSP, with
/// versioned asset URLs that may be cached for good; a stale version is not cached.
#[tokio::test]
async fn the_console_is_served_with_a_strict_policy_and_versioned_assets() {
    let up = MockUpstream::start().await;
    let gw = TestGateway::start(&admin_yaml(&up.url(), "")).await;
    let base = format!("http://{}", gw.admin_addr.unwrap());
    let http = client();
    let strict = |h: &reqwest::header::HeaderMap| {
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
    };
    for path in ["/admin/ui", "/admin/ui/"] {
        let page = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(page.status(), 200);
        strict(page.headers());
        assert_eq!(page.headers()["cache-control"], "no-cache");
        let html = page.text().await.unwrap();
        assert!(html.contains("<form id=\"login-form\">"), "{html}");
        // No inline code for the CSP to block: only same-origin files.
        assert!(
            !html.contains("<script>") && !html.contains("<style"),
            "{html}"
        );
        for asset in ["app.js", "app.css", "uPlot.iife.min.js", "uPlot.min.css"] {
            let at = html.find(&format!("/admin/ui/assets/{asset}?v=")).unwrap();
            let url: String = html[at..].chars().take_while(|c| *c != '"').collect();
            let resp = http.get(format!("{base}{url}")).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{url}");
            strict(resp.headers());
            assert_eq!(
                resp.headers()["cache-control"],
                "public, max-age=31536000, immutable"
            );
            let stale = http
                .get(format!("{base}/admin/ui/assets/{asset}?v=0000"))
                .send()
                .await
                .unwrap();
            assert_eq!(stale.headers()["cache-control"], "no-cache");
        }
    }
    // A module imported without a version (`import … from "./ui.js"`) is revalidated: its ETag
    // brings a 304 with no body, and a stale one the file.
    let module = http
        .get(format!("{base}/admin/ui/assets/ui.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        module.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let etag = module.headers()["etag"].clone();
    assert!(module.text().await.unwrap().contains("export function"));
    let again = http
        .get(format!("{base}/admin/ui/assets/ui.js"))
        .header("if-none-match", etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    strict(again.headers());
    assert_eq!(again.headers()["etag"], etag);
    assert!(again.bytes().await.unwrap().is_empty());
    let changed = http
        .get(format!("{base}/admin/ui/assets/ui.js"))
        .header("if-none-match", "\"0000000000000000\"")
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    let (status, _) = error_of(
        http.get(format!("{base}/admin/ui/assets/nope.js"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    // Never on the data plane.
    let (status, _) = error_of(http.get(gw.url("/admin/ui/")).send().await.unwrap()).await;
    assert_eq!(status, 404);
}

/// docs/admin.md: a stored live setting stays in force across a restart (it lives in the
/// database, and beats the file until changed again).
#[tokio::test]
async fn live_settings_survive_a_restart() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = admin_yaml(&mock.url(), "").replace(
        "logging:",
        &format!(
            "storage:\n  database: sqlite://{}\nlogging:",
            dir.path().join("state.db").display()
        ),
    );
    {
        let gw = TestGateway::start(&yaml).await;
        let admin = Admin::new(gw.admin_addr.unwrap());
        let token = admin.token().await;
        let resp = admin
            .send(
                reqwest::Method::PUT,
                &token,
                "/settings",
                Some(r#"{"alert_threshold": 17, "archive_days": 9}"#),
            )
            .await;
        assert_eq!(resp.status(), 200);
        gw.gateway.stores.flush().await;
    }
    let gw = TestGateway::start(&yaml).await;
    let admin = Admin::new(gw.admin_addr.unwrap());
    let token = admin.token().await;
    let after: Value = admin.get(&token, "/settings").await.json().await.unwrap();
    assert_eq!(
        (&after["alert_threshold"], &after["archive_days"]),
        (&json!(17), &json!(9)),
        "{after}"
    );
    assert_eq!(gw.gateway.stores.settings().alert_threshold, 17);
}

/// Follows one SSO sign-in by hand, as a browser would: the gateway's login redirect (its flow
/// cookie kept), the provider's authorization redirect, then the callback, with `tamper` free to
/// change the callback's query and cookie. The console URL the callback sends the browser to,
/// and the session cookie it set, if any.
async fn sso_sign_in(
    admin: &str,
    tamper: impl FnOnce(&mut String, &mut String),
) -> (String, Option<String>) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let start = http
        .get(format!("{admin}/admin/api/oidc/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 302);
    let flow = start.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attr in [
        "HttpOnly",
        "SameSite=Lax",
        "Path=/admin/api/oidc",
        "Max-Age=600",
    ] {
        assert!(flow.contains(attr), "{attr}: {flow}");
    }
    let mut cookie = flow.split(';').next().unwrap().to_owned();
    let authorize = start.headers()["location"].to_str().unwrap().to_owned();
    let at_provider = http.get(&authorize).send().await.unwrap();
    assert_eq!(at_provider.status(), 303, "{authorize}");
    let back = at_provider.headers()["location"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut query = back.split_once('?').unwrap().1.to_owned();
    tamper(&mut query, &mut cookie);
    let done = http
        .get(format!("{admin}/admin/api/oidc/callback?{query}"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 302);
    let to = done.headers()["location"].to_str().unwrap().to_owned();
    let session = done
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("tollgate_session=") && !c.starts_with("tollgate_session=;"))
        .map(|c| c.split(';').next().unwrap().to_owned());
    (to, session)
}

/// docs/console.md "Single sign-on": the authorization code flow with PKCE against a provider the
/// test runs. The gateway sends an S256 challenge and a nonce, the provider's `groups` claim maps
/// to the role (the highest of several), the session works like a password one and the role is
/// enforced; every way an attacker or a broken provider can bend the flow is refused and
/// audited: a wrong or missing state, a forged flow cookie, a replayed code, an ID token signed
/// by another key, with HS256, for another audience or issuer, expired, or with another nonce;
/// a user whose groups map to nothing gets no session.
#[tokio::test]
async fn sso_signs_in_with_pkce_and_refuses_every_bent_flow() {
    use tollgate_tests::oidc_provider::{CLIENT_ID, OidcProvider, Trick};
    let mock = MockUpstream::start().await;
    let idp = OidcProvider::start().await;
    let extra = format!(
        "  oidc:\n    issuer: {}\n    client_id: {CLIENT_ID}\n    redirect_url: http://127.0.0.1:9/admin/api/oidc/callback\n    roles: {{noc: viewer, ops: operator, admins: admin}}",
        idp.issuer()
    );
    let gw = TestGateway::start(&admin_yaml(&mock.url(), &extra)).await;
    let admin = format!("http://{}", gw.admin_addr.unwrap());
    let info: Value = client()
        .get(format!("{admin}/admin/api/oidc"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info, json!({"enabled": true, "button": "Sign in with SSO"}));

    idp.sign_in_as("alice", &["noc", "ops"]);
    // Providers add their own parameters to the redirect (Keycloak: `session_state`, RFC 9207:
    // `iss`); they are ignored.
    let (to, session) = sso_sign_in(&admin, |q, _| {
        q.push_str("&session_state=abc&iss=https%3A%2F%2Fsso.example")
    })
    .await;
    assert_eq!(to, "/admin/ui/");
    let session = session.expect("a session cookie");
    let asked = idp.last_authorize();
    assert_eq!(asked["code_challenge_method"], "S256");
    assert_eq!(asked["code_challenge"].len(), 43, "{asked:?}");
    assert!(
        asked["nonce"].len() >= 32 && asked["scope"].split(' ').any(|s| s == "openid"),
        "{asked:?}"
    );
    let me: Value = client()
        .get(format!("{admin}/admin/api/session"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (me["user"].as_str(), me["role"].as_str()),
        (Some("sso:alice"), Some("operator")),
        "{me}"
    );
    // The operator may cool an upstream down but not change settings.
    let csrf = me["csrf"].as_str().unwrap();
    let change = |path: &str, body: Value, method: reqwest::Method| {
        client()
            .request(method, format!("{admin}/admin/api{path}"))
            .header("cookie", &session)
            .header("x-csrf-token", csrf)
            .json(&body)
            .send()
    };
    assert_eq!(
        change(
            "/upstreams/u0/cooldown",
            json!({"seconds": 5}),
            reqwest::Method::POST
        )
        .await
        .unwrap()
        .status(),
        200
    );
    assert_eq!(
        change(
            "/settings",
            json!({"maintenance": true}),
            reqwest::Method::PUT
        )
        .await
        .unwrap()
        .status(),
        403
    );
    idp.sign_in_as("root", &["admins", "noc"]);
    let (_, session) = sso_sign_in(&admin, |_, _| {}).await;
    let me: Value = client()
        .get(format!("{admin}/admin/api/session"))
        .header("cookie", session.unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["role"], "admin", "the highest of the user's groups");

    // Groups that map to nothing: no session.
    idp.sign_in_as("mallory", &["interns"]);
    let (to, session) = sso_sign_in(&admin, |_, _| {}).await;
    assert_eq!(
        (to.as_str(), session),
        ("/admin/ui/?sso_error=no_role", None)
    );
    idp.sign_in_as("alice", &["ops"]);

    // A bent flow.
    let (to, session) = sso_sign_in(&admin, |q, _| *q = q.replace("state=", "state=x")).await;
    assert_eq!((to.as_str(), session), ("/admin/ui/?sso_error=state", None));
    let (to, _) = sso_sign_in(&admin, |_, c| *c = String::new()).await;
    assert_eq!(to, "/admin/ui/?sso_error=state");
    let (to, _) = sso_sign_in(&admin, |_, c| {
        // The flow cookie's payload swapped for another, its signature kept.
        let (name, value) = c.split_once('=').unwrap();
        let (_, mac) = value.split_once('.').unwrap();
        let forged = B64.encode(br#"{"state":"s","nonce":"n","verifier":"v","exp":99999999999}"#);
        *c = format!("{name}={forged}.{mac}");
    })
    .await;
    assert_eq!(to, "/admin/ui/?sso_error=state");
    // A code replayed: the provider refuses it the second time.
    let mut replay = None;
    let (to, _) = sso_sign_in(&admin, |q, c| replay = Some((q.clone(), c.clone()))).await;
    assert_eq!(to, "/admin/ui/");
    let (q, c) = replay.unwrap();
    let again = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{admin}/admin/api/oidc/callback?{q}"))
        .header("cookie", c)
        .send()
        .await
        .unwrap();
    assert_eq!(again.headers()["location"], "/admin/ui/?sso_error=code");
    assert!(
        idp.refused().iter().any(|r| r.contains("used code")),
        "{:?}",
        idp.refused()
    );
    for trick in [
        Trick::ForeignKey,
        Trick::Hs256,
        Trick::WrongAudience,
        Trick::WrongIssuer,
        Trick::Expired,
        Trick::WrongNonce,
    ] {
        idp.trick(trick);
        let (to, session) = sso_sign_in(&admin, |_, _| {}).await;
        assert_eq!(
            (to.as_str(), session),
            ("/admin/ui/?sso_error=token", None),
            "{trick:?}"
        );
    }
    idp.trick(Trick::None);
    // The provider said no.
    let (to, _) = sso_sign_in(&admin, |q, _| *q = format!("error=access_denied&{q}")).await;
    assert_eq!(to, "/admin/ui/?sso_error=denied");

    // Every outcome is audited, the refusals with why.
    let token = Admin::new(gw.admin_addr.unwrap()).token().await;
    let records = audit(
        &Admin::new(gw.admin_addr.unwrap()),
        &token,
        "action=login.sso&limit=100",
    )
    .await;
    let ok = records.iter().filter(|r| r["outcome"] == "ok").count();
    let denied: Vec<&str> = records
        .iter()
        .filter(|r| r["outcome"] == "denied")
        .map(|r| r["target"].as_str().unwrap())
        .collect();
    assert_eq!(ok, 3, "{records:?}");
    assert_eq!(
        denied.iter().filter(|t| **t == "token").count(),
        6,
        "{denied:?}"
    );
    for code in ["no_role", "state", "code", "denied"] {
        assert!(denied.contains(&code), "{code}: {denied:?}");
    }
}

/// Without `admin.oidc` the SSO endpoints answer 404 in the OpenAI error shape, and a token that
/// claims an SSO role is refused (only a gateway with SSO issues them).
#[tokio::test]
async fn without_sso_its_endpoints_and_tokens_are_refused() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&admin_yaml(&mock.url(), "")).await;
    let admin = format!("http://{}", gw.admin_addr.unwrap());
    let info: Value = client()
        .get(format!("{admin}/admin/api/oidc"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["enabled"], false);
    let (status, err) = error_of(
        client()
            .get(format!("{admin}/admin/api/oidc/login"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (404, Some("sso_not_configured"))
    );
    let mut claims = claims();
    claims["sub"] = json!("sso:eve");
    claims["sso_role"] = json!("admin");
    let forged = forge(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &claims,
        JWT_SECRET,
        false,
    );
    let resp = Admin::new(gw.admin_addr.unwrap())
        .get(&forged, "/settings")
        .await;
    assert_eq!(
        resp.status(),
        401,
        "a well-signed SSO token on a gateway without SSO"
    );
}
