//! Client keys as runtime objects (`/admin/api/keys`, `tollgate keys`): issued, used, rotated,
//! expired and revoked on real gateways, with real stores (SQLite; PostgreSQL and Redis for the
//! cluster), over HTTP on loopback.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use serde_json::{Value, json};
use tollgate_tests::services::{Postgres, Redis};
use tollgate_tests::{
    MockUpstream, TestGateway, admin_token, chat_body, client, config_yaml, eventually_async,
    listed_models,
};

fn with_admin(yaml: &str) -> String {
    yaml.replace(
        "admin:\n  listen: 127.0.0.1:0\n",
        "admin:\n  listen: 127.0.0.1:0\n  jwt_secret: an-admin-signing-key-of-32-chars!!\n  users:\n    - {username: ops, password: correct horse battery}\n",
    )
}

fn gateway_yaml(upstream: &str, sections: &str) -> String {
    with_admin(&format!(
        "{}{sections}\n",
        config_yaml(&[upstream.to_owned()], "")
    ))
}

struct Admin {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Admin {
    async fn of(gw: &TestGateway) -> Self {
        let http = client();
        let addr = gw.admin_addr.unwrap().to_string();
        let token = admin_token(&http, &addr, "ops", "correct horse battery").await;
        Self {
            http,
            base: format!("http://{addr}/admin/api"),
            token,
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn create(&self, body: Value) -> (String, Value) {
        let (status, v) = self.send(reqwest::Method::POST, "/keys", Some(body)).await;
        assert_eq!(status, 201, "{v}");
        (v["secret"].as_str().unwrap().to_owned(), v["key"].clone())
    }
}

async fn chat(gw: &TestGateway, key: &str, model: &str) -> (u16, Value) {
    let mut body = chat_body(false);
    body["model"] = json!(model);
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Issued on one gateway, a key works on another within a second; revoked there, it gets the
/// very answer an unknown key gets on the other within a second. PostgreSQL and Redis.
#[tokio::test]
async fn an_issued_key_works_cluster_wide_and_its_revocation_reaches_every_gateway_within_a_second()
{
    let (pg, redis, mock) = (
        Postgres::start(),
        Redis::start(),
        MockUpstream::start().await,
    );
    let db = pg.create_database("keys").await;
    let yaml = gateway_yaml(
        &mock.url(),
        &format!(
            "storage:\n  database: {db}\n  cache: {}\n  op_timeout: 10s",
            redis.url()
        ),
    );
    let (a, b) = (
        TestGateway::start(&yaml).await,
        TestGateway::start(&yaml).await,
    );
    let admin = Admin::of(&a).await;
    let (secret, key) = admin
        .create(json!({"name": "alice", "owner": "team-a"}))
        .await;
    assert!(
        secret.starts_with("tg-") && secret.len() == 3 + 54,
        "{secret}"
    );
    assert_eq!(key["source"], "database");
    assert_eq!(key["status"], "active");
    assert!(
        key["display_prefix"]
            .as_str()
            .is_some_and(|p| secret.starts_with(p.trim_end_matches('…')))
    );
    assert_eq!(chat(&a, &secret, "gpt-test").await.0, 200);
    assert!(
        eventually_async(Duration::from_secs(1), || async {
            chat(&b, &secret, "gpt-test").await.0 == 200
        })
        .await,
        "the other gateway accepts the new key within a second"
    );
    let (status, revoked) = admin
        .send(reqwest::Method::POST, "/keys/alice/revoke", None)
        .await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["status"], "revoked");
    assert!(
        eventually_async(Duration::from_secs(1), || async {
            chat(&b, &secret, "gpt-test").await.0 == 401
        })
        .await,
        "the other gateway refuses the revoked key within a second"
    );
    let (_, revoked_body) = chat(&b, &secret, "gpt-test").await;
    let (_, unknown_body) = chat(&b, "tg-not-a-key-at-all-0123456789", "gpt-test").await;
    assert_eq!(
        revoked_body, unknown_body,
        "revoked and unknown keys look alike"
    );
    assert_eq!(revoked_body["error"]["code"], "invalid_api_key");
    // Audited, with the key before and after, never the secret.
    let (_, audit) = admin
        .send(reqwest::Method::GET, "/audit?limit=50", None)
        .await;
    let text = audit.to_string();
    assert!(
        text.contains("key.create") && text.contains("key.revoke"),
        "{text}"
    );
    assert!(!text.contains(&secret), "the audit never holds the secret");
}

/// A rotated key: both secrets work during the grace period, then only the new one; the key's id
/// (what bindings and usage follow) stays the same.
#[tokio::test]
async fn rotation_keeps_the_old_secret_for_the_grace_period_only() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&gateway_yaml(&mock.url(), "")).await;
    let admin = Admin::of(&gw).await;
    let (old, key) = admin.create(json!({"name": "bob"})).await;
    let (status, rotated) = admin
        .send(
            reqwest::Method::POST,
            "/keys/bob/rotate",
            Some(json!({"grace_secs": 2})),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(rotated["key"]["id"], key["id"], "the id survives rotation");
    assert_eq!(chat(&gw, &old, "m").await.0, 200, "old secret in its grace");
    assert_eq!(chat(&gw, &new, "m").await.0, 200, "new secret");
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let (status, body) = chat(&gw, &old, "m").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("invalid_api_key"))
    );
    assert_eq!(chat(&gw, &new, "m").await.0, 200);
    // Without grace the old secret stops at once.
    let (status, again) = admin
        .send(reqwest::Method::POST, "/keys/bob/rotate", Some(json!({})))
        .await;
    assert_eq!(status, 200);
    assert_eq!(chat(&gw, &new, "m").await.0, 401);
    assert_eq!(
        chat(&gw, again["secret"].as_str().unwrap(), "m").await.0,
        200
    );
}

/// An expired key gets 401 `key_expired`, from the database or the config file.
#[tokio::test]
async fn expired_keys_are_refused_as_key_expired() {
    let mock = MockUpstream::start().await;
    let yaml = gateway_yaml(&mock.url(), "").replace(
        "auth:\n  secret: test-secret-0123456789\n  keys:\n",
        "auth:\n  secret: test-secret-0123456789\n  keys:\n    - {name: old, key: sk-an-old-config-key, expires: 2020-01-01T00:00:00Z}\n",
    );
    let gw = TestGateway::start(&yaml).await;
    let (status, body) = chat(&gw, "sk-an-old-config-key", "m").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("key_expired")),
        "{body}"
    );
    let admin = Admin::of(&gw).await;
    let soon = tollgate::state::unix_ms() + 1500;
    let (secret, _) = admin
        .create(json!({"name": "carol", "expires_ms": soon}))
        .await;
    assert_eq!(chat(&gw, &secret, "m").await.0, 200);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let (status, body) = chat(&gw, &secret, "m").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("key_expired")),
        "{body}"
    );
    let (_, listed) = admin
        .send(reqwest::Method::GET, "/keys?status=expired", None)
        .await;
    let names: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["old", "carol"],
        "config keys first, then stored ones"
    );
    // Lifting the expiry lets it back in.
    let (status, _) = admin
        .send(
            reqwest::Method::PATCH,
            "/keys/carol",
            Some(json!({"expires_ms": null})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(chat(&gw, &secret, "m").await.0, 200);
}

/// A key limited to some models and routes is refused elsewhere with 403 before any upstream is
/// asked, on chat and embeddings alike, and `GET /v1/models` lists only its models.
#[tokio::test]
async fn entitlements_limit_models_and_routes() {
    let mock = MockUpstream::start().await;
    let yaml = gateway_yaml(&mock.url(), "").replace(
        "routes:\n  - path_prefix: /v1/\n    upstreams: [u0]\n",
        "routes:\n  - path_prefix: /v1/\n    upstreams: [u0]\n    methods: [GET, POST]\n  - path_prefix: /alt/\n    upstreams: [u0]\n",
    );
    let yaml = yaml.replace(
        "    url: ",
        "    models: [gpt-4o-mini, claude-3-haiku, claude-3-opus, llama-3]\n    url: ",
    );
    let gw = TestGateway::start(&yaml).await;
    let admin = Admin::of(&gw).await;
    let (secret, _) = admin
        .create(json!({"name": "dave", "models": ["gpt-4o-mini", "claude-*"], "routes": ["/v1/"]}))
        .await;
    let before = mock.requests();
    for model in ["gpt-4o-mini", "claude-3-opus"] {
        assert_eq!(chat(&gw, &secret, model).await.0, 200, "{model}");
    }
    let (status, body) = chat(&gw, &secret, "llama-3").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (403, &json!("model_not_allowed")),
        "{body}"
    );
    let embed = client()
        .post(gw.url("/v1/embeddings"))
        .bearer_auth(&secret)
        .json(&json!({"model": "llama-3", "input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(embed.status(), 403);
    assert_eq!(
        mock.requests() - before,
        2,
        "refusals never reach the upstream"
    );
    let alt = client()
        .post(gw.url("/alt/chat/completions"))
        .bearer_auth(&secret)
        .json(&json!({"model": "gpt-4o-mini", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(alt.status(), 403);
    let alt: Value = alt.json().await.unwrap();
    assert_eq!(alt["error"]["code"], "route_not_allowed");
    let ids = listed_models(&gw, &secret).await;
    assert_eq!(ids, ["claude-3-haiku", "claude-3-opus", "gpt-4o-mini"]);
}

/// The secret is shown once and stored nowhere: not in the database files, not in the log
/// records the admin API serves.
#[tokio::test]
async fn the_secret_is_in_no_database_file() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_in(&gateway_yaml(&mock.url(), ""), dir.path()).await;
    let admin = Admin::of(&gw).await;
    let (secret, key) = admin.create(json!({"name": "erin"})).await;
    let (_, rotated) = admin
        .send(
            reqwest::Method::POST,
            "/keys/erin/rotate",
            Some(json!({"grace_secs": 60})),
        )
        .await;
    let second = rotated["secret"].as_str().unwrap().to_owned();
    assert_eq!(chat(&gw, &second, "m").await.0, 200);
    let (_, shown) = admin.send(reqwest::Method::GET, "/keys/erin", None).await;
    assert!(!shown.to_string().contains(&secret[3..]));
    let mut files = 0;
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let path = e.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        files += 1;
        for s in [&secret, &second] {
            // The secret's random part, as any encoding would keep it.
            let needle = &s.as_bytes()[3..];
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds a secret",
                path.display()
            );
        }
    }
    assert!(files > 0, "the SQLite files were searched");
    assert_eq!(key["id"].as_str().unwrap().len(), 64);
}

/// Bad input is refused with 400 naming the field, and nothing is stored.
#[tokio::test]
async fn bad_fields_are_refused_by_name() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&gateway_yaml(&mock.url(), "")).await;
    let admin = Admin::of(&gw).await;
    for (body, field) in [
        (json!({}), "name"),
        (json!({"name": ""}), "name"),
        (json!({"name": "has space"}), "name"),
        (json!({"name": "tester"}), "name"),
        (json!({"name": "x", "models": ["a*b"]}), "models"),
        (json!({"name": "x", "models": [""]}), "models"),
        (json!({"name": "x", "routes": ["/nope/"]}), "routes"),
        (json!({"name": "x", "metadata": [1]}), "metadata"),
        (json!({"name": "x", "owner": "a\u{7}b"}), "owner"),
        (json!({"name": "x", "tags": vec!["t"; 33]}), "tags"),
        (
            json!({"name": "x", "budgets": [{"amount": 5, "tokens": 1, "period": "day"}]}),
            "budgets",
        ),
        (
            json!({"name": "x", "budgets": [{"amount": -5, "period": "day"}]}),
            "budgets",
        ),
    ] {
        let (status, v) = admin
            .send(reqwest::Method::POST, "/keys", Some(body.clone()))
            .await;
        assert_eq!(
            (status, v["error"]["param"].as_str()),
            (400, Some(field)),
            "{body}: {v}"
        );
    }
    let (status, v) = admin
        .send(
            reqwest::Method::POST,
            "/keys",
            Some(json!({"name": "x", "bogus": 1})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    admin.create(json!({"name": "x"})).await;
    let (status, v) = admin
        .send(reqwest::Method::POST, "/keys", Some(json!({"name": "x"})))
        .await;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("name")),
        "a taken name"
    );
    let (status, v) = admin
        .send(
            reqwest::Method::POST,
            "/keys/x/rotate",
            Some(json!({"grace_secs": 99_999_999})),
        )
        .await;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("grace_secs"))
    );
    let (status, v) = admin
        .send(reqwest::Method::POST, "/keys/tester/revoke", None)
        .await;
    assert_eq!(status, 400, "a config key is read-only: {v}");
    let (status, _) = admin.send(reqwest::Method::GET, "/keys/nobody", None).await;
    assert_eq!(status, 404);
    let (_, all) = admin.send(reqwest::Method::GET, "/keys", None).await;
    assert_eq!(all["total"], 2, "tester and x: {all}");
}

/// A config key whose name a stored key already has is refused at reload, with its YAML path;
/// the running config keeps serving.
#[tokio::test]
async fn a_config_key_named_like_a_stored_one_is_refused_at_load() {
    let mock = MockUpstream::start().await;
    let yaml = gateway_yaml(&mock.url(), "");
    let gw = TestGateway::start(&yaml).await;
    let admin = Admin::of(&gw).await;
    admin.create(json!({"name": "frank"})).await;
    let clash = yaml.replace(
        "auth:\n  secret: test-secret-0123456789\n  keys:\n",
        "auth:\n  secret: test-secret-0123456789\n  keys:\n    - {name: frank, key: sk-franks-config-key}\n",
    );
    let mut config = tollgate::Config::parse(&clash, "test.yaml", Box::new(|_| None)).unwrap();
    config.base_dir = std::env::temp_dir();
    let errors = gw.gateway.reload(&config).await.unwrap_err();
    let text = format!("{errors:?}");
    assert!(text.contains("auth.keys[0].name"), "{text}");
    assert_eq!(chat(&gw, tollgate_tests::CLIENT_KEY, "m").await.0, 200);
}

/// A reload that takes a key out of `auth.keys` stops it and records that in the audit log; a
/// config may list no key at all when keys are issued at run time.
#[tokio::test]
async fn a_config_key_removed_by_a_reload_is_audited() {
    let mock = MockUpstream::start().await;
    let yaml = gateway_yaml(&mock.url(), "");
    let gw = TestGateway::start(&yaml).await;
    let admin = Admin::of(&gw).await;
    let (secret, _) = admin.create(json!({"name": "grace"})).await;
    assert_eq!(chat(&gw, tollgate_tests::CLIENT_KEY, "m").await.0, 200);
    let none = yaml.replace("    - name: tester\n      key: sk-test-client-key\n", "");
    assert_ne!(none, yaml);
    let mut config = tollgate::Config::parse(&none, "test.yaml", Box::new(|_| None)).unwrap();
    config.base_dir = std::env::temp_dir();
    gw.gateway.reload(&config).await.unwrap();
    assert_eq!(chat(&gw, tollgate_tests::CLIENT_KEY, "m").await.0, 401);
    assert_eq!(
        chat(&gw, &secret, "m").await.0,
        200,
        "stored keys are untouched"
    );
    let (_, audit) = admin
        .send(reqwest::Method::GET, "/audit?action=key.remove", None)
        .await;
    let items = audit["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{audit}");
    assert_eq!(items[0]["actor"], "config");
    assert_eq!(items[0]["target"], "tester");
}

/// Bindings and intercepts show the key's name beside its id, and a name finds them.
#[tokio::test]
async fn bindings_and_intercepts_show_and_find_keys_by_name() {
    let mock = MockUpstream::start().await;
    let yaml = gateway_yaml(&mock.url(), "").replace(
        "    upstreams: [u0]\n",
        "    upstreams: [u0]\n    policies: [bind-ip]\n",
    ) + "plugins:\n  - {name: bind-ip, kind: ip-binding, module: builtin:ip-binding, config: {prefix_v4: 32}}\n";
    let gw = TestGateway::start(&yaml).await;
    let admin = Admin::of(&gw).await;
    let (secret, key) = admin.create(json!({"name": "heidi"})).await;
    assert_eq!(
        chat(&gw, &secret, "m").await.0,
        200,
        "first use binds 127.0.0.1"
    );
    let (_, page) = admin
        .send(reqwest::Method::GET, "/bindings?search=heidi", None)
        .await;
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["items"][0]["key_name"], "heidi");
    assert_eq!(page["items"][0]["key_id"], key["id"]);
    // Moved elsewhere, the key's next request from here is an intercept.
    let id = key["id"].as_str().unwrap();
    let (status, _) = admin
        .send(
            reqwest::Method::PUT,
            &format!("/bindings/{id}"),
            Some(json!({"cidr": "203.0.113.0/24"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(chat(&gw, &secret, "m").await.0, 403);
    assert!(
        eventually_async(Duration::from_secs(5), || async {
            let (_, page) = admin
                .send(reqwest::Method::GET, "/intercepts?key=heidi", None)
                .await;
            page["total"] == 1 && page["items"][0]["key_name"] == "heidi"
        })
        .await,
        "the intercept is found by the key's name and shows it"
    );
    let (status, v) = admin
        .send(reqwest::Method::GET, "/intercepts?key=no-such-key", None)
        .await;
    assert_eq!((status, v["error"]["param"].as_str()), (400, Some("key")));
}

const BIN: &str = env!("CARGO_BIN_EXE_tollgate-under-test");

/// `tollgate keys create|list|show|rotate|revoke` on the database of a running gateway: the
/// printed secret works there within a second, and the revocation stops it within a second.
///
/// Multi-threaded, and each command run with `block_in_place`: the gateway runs in this process,
/// and a command run on the only thread of a current-thread runtime would freeze it — with its
/// writer part way through a SQLite write transaction, the command then waited out the busy
/// timeout and failed with `database is locked` (seen twice under CI's load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_issues_and_revokes_keys_a_running_gateway_honours() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockUpstream::start().await;
    let yaml = config_yaml(&[mock.url()], "")
        + "storage:\n  database: sqlite://gw.db\n  op_timeout: 10s\n";
    let config = dir.path().join("gw.yaml");
    std::fs::write(&config, &yaml).unwrap();
    let gw = TestGateway::start_file(&config).await;
    let keys = |args: &[&str]| {
        let out = tokio::task::block_in_place(|| {
            std::process::Command::new(BIN)
                .args(["keys", "-c"])
                .arg(&config)
                .args(args)
                .output()
                .unwrap()
        });
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (ok, out, err) = keys(&["create", "ivan", "--owner", "team-b", "--model", "gpt-*"]);
    assert!(ok, "{err}");
    let secret = out
        .lines()
        .find_map(|l| l.split(": ").nth(1).filter(|s| s.starts_with("tg-")))
        .unwrap()
        .to_owned();
    assert!(
        eventually_async(Duration::from_secs(1), || async {
            chat(&gw, &secret, "gpt-test").await.0 == 200
        })
        .await,
        "the running gateway accepts the key within a second"
    );
    assert_eq!(chat(&gw, &secret, "other").await.0, 403);
    let (ok, out, _) = keys(&["list", "--owner", "team-b"]);
    assert!(ok);
    assert!(
        out.starts_with("ivan\tactive\tdatabase\tteam-b\ttg-"),
        "{out}"
    );
    let (ok, out, _) = keys(&["list", "--source", "config"]);
    assert!(ok && out.starts_with("tester\tactive\tconfig"), "{out}");
    let (ok, out, _) = keys(&["show", "ivan"]);
    assert!(ok);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["models"], json!(["gpt-*"]));
    assert!(!out.contains(&secret[3..]), "show never prints the secret");
    let (ok, _, err) = keys(&["create", "tester"]);
    assert!(!ok && err.contains("name"), "a config key's name: {err}");
    let (ok, _, err) = keys(&["revoke", "tester"]);
    assert!(!ok && err.contains("read-only"), "{err}");
    let (ok, _, err) = keys(&["revoke", "ivan"]);
    assert!(ok, "{err}");
    assert!(
        eventually_async(Duration::from_secs(1), || async {
            chat(&gw, &secret, "gpt-test").await.0 == 401
        })
        .await,
        "the running gateway refuses the revoked key within a second"
    );
}

/// A key's own limits: requests per period, tokens per period and requests at once, each
/// refused with 429 and the reason, on top of (and independent of) `limits:`; other keys are not
/// affected.
#[tokio::test]
async fn a_keys_own_limits_apply_to_it_alone() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&gateway_yaml(&mock.url(), "")).await;
    let admin = Admin::of(&gw).await;
    let (requests, judy) = admin
        .create(json!({"name": "judy", "limits": {"requests": "2/m"}}))
        .await;
    assert_eq!(judy["limits"], json!({"requests": "2/m"}), "{judy}");
    assert_eq!(chat(&gw, &requests, "m").await.0, 200);
    assert_eq!(chat(&gw, &requests, "m").await.0, 200);
    let (status, body) = chat(&gw, &requests, "m").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (429, &json!("rate_limit_exceeded")),
        "{body}"
    );
    assert!(body["error"]["message"].as_str().unwrap().contains("2/m"));
    assert_eq!(
        chat(&gw, tollgate_tests::CLIENT_KEY, "m").await.0,
        200,
        "other keys pass"
    );

    // One at a time: a second request while a slow stream runs is refused, then admitted.
    let (single, _) = admin
        .create(json!({"name": "karl", "limits": {"in_flight": 1}}))
        .await;
    let slow = {
        let url = gw.url("/v1/chat/completions");
        let key = single.clone();
        tokio::spawn(async move {
            let r = client()
                .post(url)
                .bearer_auth(key)
                .header("x-mock-events", "10")
                .header("x-mock-delay-ms", "100")
                .json(&tollgate_tests::chat_body(true))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let _ = r.text().await;
            status
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = chat(&gw, &single, "m").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (429, &json!("concurrency_limit_exceeded")),
        "{body}"
    );
    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(chat(&gw, &single, "m").await.0, 200, "the slot came back");

    // Tokens: a request that reserves more than the whole allowance is refused outright.
    let (tokens, _) = admin
        .create(json!({"name": "lena", "limits": {"tokens": "50/m"}}))
        .await;
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&tokens)
        .json(&json!({"model": "m", "max_tokens": 100, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "tokens", "{body}");
    let fits = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&tokens)
        .json(&json!({"model": "m", "max_tokens": 10, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(fits.status(), 200);
    // Bad limits are refused by name.
    let (status, v) = admin
        .send(
            reqwest::Method::POST,
            "/keys",
            Some(json!({"name": "x", "limits": {"in_flight": 0}})),
        )
        .await;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("limits"))
    );
    let (status, _) = admin
        .send(
            reqwest::Method::POST,
            "/keys",
            Some(json!({"name": "x", "limits": {"requests": "lots"}})),
        )
        .await;
    assert_eq!(status, 400);
}
