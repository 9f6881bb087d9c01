//! The console in a real browser: Debian's `chromium`, headless, driven over WebDriver by
//! `chromedriver` (both from apt; nothing downloads a browser). Screenshots of every page go to
//! `target/console-screenshots/`.
//!
//! Without `/usr/bin/chromedriver` the test fails and says how to install it (`scripts/test.sh`
//! does).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tollgate_tests::*;

const PASSWORD: &str = "correct horse battery";

/// A chromedriver process and a headless Chromium session on it; both end with the value.
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

async fn browser() -> Browser {
    assert!(
        Path::new("/usr/bin/chromedriver").exists() && Path::new("/usr/bin/chromium").exists(),
        "the console tests need Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; scripts/test.sh installs them)"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let driver = Command::new("/usr/bin/chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let profile = tempfile::tempdir().unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,800",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let url = format!("http://127.0.0.1:{port}");
    let mut last = None;
    for _ in 0..100 {
        match ClientBuilder::new(connector.clone())
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(client) => {
                return Browser {
                    client,
                    driver,
                    _profile: profile,
                };
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not start a session: {last:?}");
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits until the element `css` shows `text` (part of its text).
async fn wait_text(c: &Client, css: &str, text: &str) -> String {
    let mut seen = String::new();
    for _ in 0..100 {
        if let Ok(e) = c.find(Locator::Css(css)).await
            && e.is_displayed().await.unwrap_or(false)
        {
            seen = e.text().await.unwrap_or_default();
            if seen.contains(text) {
                return seen;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{css} never showed {text:?}; last: {seen:?}");
}

async fn log_in(c: &Client, user: &str, password: &str) {
    let name = c.find(Locator::Css("input[name=username]")).await.unwrap();
    name.clear().await.unwrap();
    name.send_keys(user).await.unwrap();
    let pass = c.find(Locator::Css("input[name=password]")).await.unwrap();
    pass.clear().await.unwrap();
    pass.send_keys(password).await.unwrap();
    c.find(Locator::Css("#login-form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn login_lockout_dashboard_after_real_traffic_and_logout_in_chromium() {
    let up = MockUpstream::start().await;
    let mut yaml = config_yaml(&[up.url()], "")
        .replace(
            "admin:\n  listen: 127.0.0.1:0\n",
            &format!(
                "admin:\n  listen: 127.0.0.1:0\n  jwt_secret: a-console-signing-key-of-32-chars!\n  lockout: {{max_failures: 2, window: 10m, duration: 30m}}\n  users:\n    - username: ops\n      password: {PASSWORD}\n"
            ),
        )
        .replace("\nlogging:", "\n    policies: [bind]\nlogging:");
    yaml.push_str(&format!(
        "plugins:\n  - {{name: bind, kind: ip-binding, module: {}}}\n",
        plugins::wasm("tollgate_ip_binding").display()
    ));
    let gw = TestGateway::start(&yaml).await;
    let ui = format!("http://{}/admin/ui/", gw.admin_addr.unwrap());
    let b = browser().await;
    let c = &b.client;
    let shots = screenshots();

    c.goto(&ui).await.unwrap();
    wait_text(c, "#login h1", "Log in").await;
    std::fs::write(shots.join("login.png"), c.screenshot().await.unwrap()).unwrap();

    // A wrong password, then the lockout message, for a user of its own (the lockout is per
    // user and address).
    log_in(c, "ops", "not the password").await;
    wait_text(c, "#login-error", "invalid username or password").await;
    // Two failures are allowed (`max_failures: 2`); the third attempt is locked out.
    for _ in 0..3 {
        log_in(c, "ghost", "guess").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let locked = wait_text(c, "#login-error", "too many failed logins").await;
    std::fs::write(
        shots.join("login-locked.png"),
        c.screenshot().await.unwrap(),
    )
    .unwrap();
    assert!(locked.contains("try again later"), "{locked}");

    // Real traffic: the key's first use binds it.
    assert_eq!(gw.chat().await.status(), 200);

    log_in(c, "ops", PASSWORD).await;
    wait_text(c, "#who", "ops").await;
    wait_text(c, "#dash-state", "Updated").await;
    let tiles = wait_text(c, "#tiles", "Active bindings").await;
    assert!(tiles.contains("1\nActive bindings"), "{tiles}");
    std::fs::write(shots.join("dashboard.png"), c.screenshot().await.unwrap()).unwrap();

    // The session cookie is out of the page's reach, and survives a reload.
    let cookies = c.execute("return document.cookie", vec![]).await.unwrap();
    assert_eq!(cookies, json!(""));
    c.refresh().await.unwrap();
    wait_text(c, "#dash-state", "Updated").await;

    // Logging out (a DELETE with the CSRF token) ends the session: a reload shows the login.
    c.find(Locator::Css("#logout"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(c, "#login h1", "Log in").await;
    c.refresh().await.unwrap();
    wait_text(c, "#login h1", "Log in").await;
    b.client.clone().close().await.unwrap();
}
