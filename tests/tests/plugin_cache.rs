//! The compilation cache (`storage.plugin_cache`) and code reuse across reloads: a restart reads
//! unchanged plugins from the cache instead of compiling them, a config-only edit shares the
//! running version's code, a changed module is compiled, and a cache directory others may write
//! is not used.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tollgate::policy::CodeOrigin;
use tollgate_tests::*;

/// A gateway config over `upstream` with the round-robin router `rotate` (config `cfg`) and the
/// compilation cache in `cache`.
fn yaml(upstream: &str, module: &Path, cfg: &str, cache: &Path) -> String {
    let mut y = config_yaml(&[upstream.to_owned()], "")
        .replace("\nlogging:", "\n    policies: [rotate]\nlogging:");
    y.push_str(&format!(
        "plugins:\n  - name: rotate\n    kind: router\n    module: {}\n    config: {cfg}\nstorage:\n  database: \"sqlite::memory:\"\n  plugin_cache: {}\n",
        module.display(),
        cache.display()
    ));
    y
}

fn origin(gw: &TestGateway) -> CodeOrigin {
    gw.gateway.runtime().plugins[0].code_origin
}

async fn serves(gw: &TestGateway) {
    assert_eq!(gw.chat().await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn restarts_read_the_cache_config_edits_reuse_the_code_and_a_new_module_compiles() {
    let up = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    // A module of our own (a copy), so its bytes are new to any cache.
    let module = dir.path().join("rotate.wasm");
    std::fs::copy(plugins::wasm("tollgate_round_robin"), &module).unwrap();
    let config = dir.path().join("gateway.yaml");
    std::fs::write(&config, yaml(&up.url(), &module, "{}", &cache)).unwrap();

    // First start: compiled, and written to the cache (created owner-only).
    let first = TestGateway::start_file(&config).await;
    assert_eq!(origin(&first), CodeOrigin::Compiled);
    serves(&first).await;
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    drop(first);

    // Restart: read from the cache, and it works.
    let gw = TestGateway::start_file(&config).await;
    assert_eq!(origin(&gw), CodeOrigin::DiskCache);
    serves(&gw).await;
    let sha = gw.gateway.runtime().plugins[0].sha256.clone();

    // Config-only edit: a new version (new config) sharing the running version's code.
    std::fs::write(&config, yaml(&up.url(), &module, "{sticky_ms: 5}", &cache)).unwrap();
    tollgate::reload::reload_once(&gw.gateway, &config)
        .await
        .unwrap();
    let rt = gw.gateway.runtime();
    assert_eq!(rt.plugins[0].code_origin, CodeOrigin::Reused);
    assert_eq!(rt.plugins[0].sha256, sha);
    assert!(rt.plugins[0].spec.config_json.contains("sticky_ms"));
    serves(&gw).await;

    // A different module (another plugin's bytes) is compiled.
    std::fs::copy(plugins::wasm("tollgate_weighted"), &module).unwrap();
    std::fs::write(&config, yaml(&up.url(), &module, "{}", &cache)).unwrap();
    tollgate::reload::reload_once(&gw.gateway, &config)
        .await
        .unwrap();
    let rt = gw.gateway.runtime();
    assert_eq!(rt.plugins[0].code_origin, CodeOrigin::Compiled);
    assert_ne!(rt.plugins[0].sha256, sha);
    serves(&gw).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_directory_others_may_write_is_not_used_and_the_gateway_still_starts() {
    let up = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("shared");
    std::fs::create_dir(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let module = plugins::wasm("tollgate_round_robin");
    let config = dir.path().join("gateway.yaml");
    std::fs::write(&config, yaml(&up.url(), &module, "{}", &cache)).unwrap();
    for _ in 0..2 {
        let gw = TestGateway::start_file(&config).await;
        assert_eq!(origin(&gw), CodeOrigin::Compiled);
        serves(&gw).await;
    }
    assert_eq!(
        std::fs::read_dir(&cache).unwrap().count(),
        0,
        "nothing written"
    );
}

/// `plugin_cache: off`: nothing is written or read; every start compiles the module afresh.
#[tokio::test(flavor = "multi_thread")]
async fn with_the_cache_off_every_start_compiles() {
    let up = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("rotate.wasm");
    std::fs::copy(plugins::wasm("tollgate_round_robin"), &module).unwrap();
    let unused = dir.path().join("unused");
    let config = dir.path().join("gateway.yaml");
    let text = yaml(&up.url(), &module, "{}", &unused).replace(
        &format!("plugin_cache: {}", unused.display()),
        "plugin_cache: off",
    );
    assert!(text.contains("plugin_cache: off"));
    std::fs::write(&config, text).unwrap();
    for start in 0..2 {
        let gw = TestGateway::start_file(&config).await;
        assert_eq!(origin(&gw), CodeOrigin::Compiled, "start {start}");
        serves(&gw).await;
    }
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        entries.len(),
        2,
        "only the module and the config: {entries:?}"
    );
}
