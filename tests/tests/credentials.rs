//! Upstream credentials set at run time (`/admin/api/credentials`, `tollgate credentials`):
//! sealed with AES-256-GCM under `storage.credential_keys`, used by every gateway sharing the
//! database within a second, never shown or stored in the clear, and movable to a new key.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tollgate_tests::{
    MockUpstream, TestGateway, UPSTREAM_CREDENTIAL, admin_token, client, config_yaml,
    eventually_async, run_ok,
};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate-under-test");
const NEW: &str = "sk-a-rotated-upstream-account-key-0042";

fn key(byte: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([byte; 32])
}

fn yaml(upstream: &str, keys: Option<&str>) -> String {
    let keys = keys.map_or_else(String::new, |k| format!("\n  credential_keys: \"{k}\""));
    config_yaml(&[upstream.to_owned()], "").replace(
        "admin:\n  listen: 127.0.0.1:0\n",
        "admin:\n  listen: 127.0.0.1:0\n  jwt_secret: an-admin-signing-key-of-32-chars!!\n  users:\n    - {username: ops, password: correct horse battery}\n",
    ) + &format!("storage:\n  database: sqlite://gw.db\n  op_timeout: 10s{keys}\n")
}

async fn admin(
    gw: &TestGateway,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, String) {
    let http = client();
    let addr = gw.admin_addr.unwrap().to_string();
    let token = admin_token(&http, &addr, "ops", "correct horse battery").await;
    let mut req = http
        .request(method, format!("http://{addr}/admin/api{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The credential the upstream got with the last request through `gw`.
async fn sent(gw: &TestGateway, mock: &MockUpstream) -> String {
    assert_eq!(gw.chat().await.status(), 200);
    mock.last_headers()["authorization"]
        .to_str()
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_owned()
}

/// Set on one gateway, the credential is what the upstream gets from both gateways sharing the
/// database (the other within a second); it is shown only as a fingerprint, is in no database
/// file or audit record in the clear, and removing it brings the config file's back.
#[tokio::test]
async fn a_credential_set_at_run_time_reaches_the_upstream_from_every_gateway() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = yaml(&mock.url(), Some(&format!("k1:{}", key(1))));
    let a = TestGateway::start_in(&yaml, dir.path()).await;
    let b = TestGateway::start_in(&yaml, dir.path()).await;
    assert_eq!(sent(&a, &mock).await, UPSTREAM_CREDENTIAL);

    let (status, body) = admin(
        &a,
        reqwest::Method::PUT,
        "/credentials/u0",
        Some(json!({"credential": NEW})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let set: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(set["key_id"], "k1");
    assert!(!body.contains(NEW), "the answer never holds the credential");
    assert_eq!(
        sent(&a, &mock).await,
        NEW,
        "at once on the gateway that set it"
    );
    assert!(
        eventually_async(Duration::from_secs(1), || async {
            sent(&b, &mock).await == NEW
        })
        .await,
        "within a second on the other"
    );

    let (_, listed) = admin(&a, reqwest::Method::GET, "/credentials", None).await;
    assert!(!listed.contains(NEW));
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["source"], "stored");
    assert_eq!(listed[0]["fingerprint"], set["fingerprint"]);
    let (_, audit) = admin(
        &a,
        reqwest::Method::GET,
        "/audit?action=credential.set",
        None,
    )
    .await;
    assert!(
        audit.contains("credential.set") && !audit.contains(NEW),
        "{audit}"
    );
    a.gateway.stores.flush().await;
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(e.unwrap().path()).unwrap();
        assert!(
            !bytes.windows(NEW.len()).any(|w| w == NEW.as_bytes()),
            "a database file holds the credential in the clear"
        );
    }

    let (status, _) = admin(&a, reqwest::Method::DELETE, "/credentials/u0", None).await;
    assert_eq!(status, 204);
    assert_eq!(
        sent(&a, &mock).await,
        UPSTREAM_CREDENTIAL,
        "the config file's again"
    );
    let (status, _) = admin(&a, reqwest::Method::DELETE, "/credentials/u0", None).await;
    assert_eq!(status, 404);
}

/// Without `storage.credential_keys` nothing can be stored, and the answer says what to set;
/// bad input is refused by name; a malformed key list is refused at load with its path.
#[tokio::test]
async fn without_keys_or_with_bad_input_nothing_is_stored() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_in(&yaml(&mock.url(), None), dir.path()).await;
    let (status, body) = admin(
        &gw,
        reqwest::Method::PUT,
        "/credentials/u0",
        Some(json!({"credential": NEW})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("storage.credential_keys"), "{body}");
    drop(gw);
    let gw = TestGateway::start_in(
        &yaml(&mock.url(), Some(&format!("k1:{}", key(1)))),
        dir.path(),
    )
    .await;
    for (path, credential, status) in [
        ("/credentials/u0", json!(""), 400),
        ("/credentials/u0", json!("line\nbreak"), 400),
        ("/credentials/nope", json!(NEW), 404),
    ] {
        let (got, body) = admin(
            &gw,
            reqwest::Method::PUT,
            path,
            Some(json!({"credential": credential})),
        )
        .await;
        assert_eq!(got, status, "{path} {credential}: {body}");
    }
    let bad = tollgate::Config::parse(
        &yaml(&mock.url(), Some("k1:AAAA")),
        "test.yaml",
        Box::new(|_| None),
    )
    .unwrap_err()
    .to_string();
    assert!(
        bad.contains("storage.credential_keys") && bad.contains("32 bytes"),
        "{bad}"
    );
}

/// Key rotation: put a new key first, `tollgate credentials reencrypt`, then drop the old key:
/// the credential still opens (and a record under a key the gateway lacks is left out, the
/// config file's applying, rather than failing the start).
#[tokio::test]
async fn credentials_move_to_a_new_key_with_reencrypt() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let old = format!("old:{}", key(1));
    let new = format!("new:{}", key(2));
    let gw = TestGateway::start_in(&yaml(&mock.url(), Some(&old)), dir.path()).await;
    let (status, _) = admin(
        &gw,
        reqwest::Method::PUT,
        "/credentials/u0",
        Some(json!({"credential": NEW})),
    )
    .await;
    assert_eq!(status, 200);
    drop(gw);

    // Only the new key: the record sealed under the old one does not open.
    let gw = TestGateway::start_in(&yaml(&mock.url(), Some(&new)), dir.path()).await;
    assert_eq!(sent(&gw, &mock).await, UPSTREAM_CREDENTIAL);
    drop(gw);

    let config = dir.path().join("gw.yaml");
    std::fs::write(&config, yaml(&mock.url(), Some(&format!("{new},{old}")))).unwrap();
    let cli = |args: &[&str]| {
        run_ok(
            std::process::Command::new(BIN)
                .args(["credentials", "-c"])
                .arg(&config)
                .args(args),
            "tollgate credentials",
        )
    };
    assert!(
        cli(&["reencrypt"]).starts_with("1 credentials"),
        "one record moved"
    );
    let listed = cli(&["list"]);
    assert!(
        listed.starts_with("u0\tstored\t") && listed.contains("\tnew\t"),
        "{listed}"
    );
    assert!(
        cli(&["reencrypt"]).starts_with("0 credentials"),
        "nothing left to move"
    );

    let gw = TestGateway::start_in(&yaml(&mock.url(), Some(&new)), dir.path()).await;
    assert_eq!(sent(&gw, &mock).await, NEW, "opens under the new key alone");
}
