//! `tollgate plugin new`: for every kind, the project it writes builds for wasm32-wasip2 as it
//! is, passes its own cases under `tollgate plugin test`, and does what it says in a gateway.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use tollgate_tests::*;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate-under-test");

/// The machine's cores, between this file's tests (they run side by side). Builds (cargo,
/// componentize-py, componentize-js) share them; a plugin's timed calls (`plugin test`, and a
/// gateway serving requests through the plugin) have them alone. Each call is held to the
/// gateway's default 5 ms deadline, and a Python plugin's first call, 0.7 ms on an idle machine,
/// took 13.5 ms beside two compilers on CI's two cores and failed it: the deadline is what these
/// tests check, not how a compiler and a plugin share a core.
static CORES: RwLock<()> = RwLock::new(());

/// Held while building.
fn building() -> RwLockReadGuard<'static, ()> {
    CORES.read().unwrap_or_else(|p| p.into_inner())
}

/// Held while a plugin's calls are timed against their deadline.
fn timed() -> RwLockWriteGuard<'static, ()> {
    CORES.write().unwrap_or_else(|p| p.into_inner())
}

/// The variable a generated `build.sh` of `lang` takes its tool from.
fn tool_var(lang: &str) -> &'static str {
    if lang == "python" {
        "COMPONENTIZE_PY"
    } else {
        "COMPONENTIZE_JS"
    }
}

/// The pinned build tool of `lang`, installed once per version by a generated project's own
/// `build.sh` (kept under target/ as that project, so its installation stays valid).
fn build_tool(lang: &str) -> PathBuf {
    let (version, tool) = match lang {
        "python" => (tollgate::cli::COMPONENTIZE_PY, ".venv/bin/componentize-py"),
        _ => (
            tollgate::cli::COMPONENTIZE_JS,
            "node_modules/.bin/componentize-js",
        ),
    };
    let home = repo_root().join(format!("target/plugin-new/tools/{lang}-{version}"));
    if !home.join(tool).exists() {
        let _ = std::fs::remove_dir_all(&home);
        generate(&home, "tools", "router", lang);
        build_sh(&home, lang, None);
    }
    home.join(tool)
}

/// `tollgate plugin new NAME --kind KIND --lang LANG --dir PROJECT`, which must succeed.
fn generate(project: &Path, name: &str, kind: &str, lang: &str) {
    run_ok(
        Command::new(BIN)
            .args([
                "plugin", "new", name, "--kind", kind, "--lang", lang, "--dir",
            ])
            .arg(project),
        name,
    );
}

/// Runs a Python or JavaScript project's `build.sh`, with the build tool at `tool` (or, without
/// one, installing it into the project), and requires it to succeed; returns what it printed.
fn build_sh(project: &Path, lang: &str, tool: Option<&Path>) -> String {
    let _cores = building();
    let mut build = Command::new(project.join("build.sh"));
    match tool {
        Some(t) => build.env(tool_var(lang), t),
        None => build.env_remove(tool_var(lang)),
    };
    run_ok(&mut build, &project.display().to_string())
}

/// `tollgate plugin test WASM --cases PROJECT/cases/basic.yaml`: whether it passed, and its output.
fn plugin_test(project: &Path, wasm: &Path) -> (bool, String) {
    let _cores = timed();
    let out = Command::new(BIN)
        .args(["plugin", "test"])
        .arg(wasm)
        .arg("--cases")
        .arg(project.join("cases/basic.yaml"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Builds the Rust project `name` as its README says; returns its component. One target
/// directory serves every generated project, kept between runs.
fn cargo_build(project: &Path, name: &str) -> PathBuf {
    let target = repo_root().join("target/plugin-new");
    let _cores = building();
    run_ok(
        Command::new("cargo")
            .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(project),
        name,
    );
    target.join(format!(
        "wasm32-wasip2/release/{}.wasm",
        name.replace('-', "_")
    ))
}

/// Writes the project with `plugin new` into `dir`, builds it as its README says, runs its
/// cases; returns the component.
fn new_project(dir: &Path, name: &str, kind: &str, lang: &str) -> PathBuf {
    let project = dir.join(name);
    generate(&project, name, kind, lang);
    let wasm = match lang {
        "rust" => {
            // The SDK was found from the project's directory upwards (it is under the repository).
            let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
            assert!(manifest.contains("plugins/sdk"), "{manifest}");
            cargo_build(&project, name)
        }
        _ => {
            let tool = build_tool(lang);
            build_sh(&project, lang, Some(&tool));
            let wasm = project.join(format!("{name}.wasm"));
            // Built again with nothing changed: the same bytes (the gateway's compilation cache
            // hits), where componentize-py and -js alone would give new ones every time.
            let first = std::fs::read(&wasm).unwrap();
            let again = build_sh(&project, lang, Some(&tool));
            assert!(again.contains("is up to date"), "{again}");
            assert!(std::fs::read(&wasm).unwrap() == first, "{name}: rebuilt");
            if kind == "router" {
                // A changed source is built again.
                let source = project.join(if lang == "python" { "app.py" } else { "app.js" });
                let mut text = std::fs::read_to_string(&source).unwrap();
                text.push_str(if lang == "python" {
                    "\n# edited\n"
                } else {
                    "\n// edited\n"
                });
                std::fs::write(&source, text).unwrap();
                let rebuilt = build_sh(&project, lang, Some(&tool));
                assert!(!rebuilt.contains("is up to date"), "{rebuilt}");
            }
            wasm
        }
    };
    let (passed, text) = plugin_test(&project, &wasm);
    assert!(passed, "{name}: {text}");
    assert!(text.contains(" passed, 0 failed"), "{text}");
    wasm
}

/// A gateway over `upstreams` whose route runs the one plugin `wasm` of `kind` with `config`.
fn config_with(upstreams: &[String], kind: &str, wasm: &Path, config: &str) -> String {
    let mut yaml = config_yaml(upstreams, "").replace(
        "\nlogging:",
        "\n    policies: [generated]\n    max_attempts: 3\nlogging:",
    );
    yaml.push_str(&format!(
        "plugins:\n  - name: generated\n    kind: {kind}\n    module: {}\n    config: {config}\n",
        wasm.display()
    ));
    yaml
}

/// For every kind in `lang`: the generated project builds, passes its cases, and does in a
/// gateway what its source says.
#[allow(
    clippy::await_holding_lock,
    reason = "`timed()` is held across the gateway's requests on purpose; the tests that wait for it run on their own runtimes"
)]
async fn every_kind_works(lang: &str) {
    // Under the repository, so `plugin new` finds plugins/sdk on its own.
    std::fs::create_dir_all(repo_root().join("target")).unwrap();
    let dir = tempfile::tempdir_in(repo_root().join("target")).unwrap();
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let urls = [a.url(), b.url()];

    // ip-binding: refuses the configured prefixes.
    let wasm = new_project(dir.path(), "gen-binding", "ip-binding", lang);
    let cores = timed();
    let gw = TestGateway::start(&config_with(
        &urls,
        "ip-binding",
        &wasm,
        r#"{deny_prefixes: ["127.0.0."]}"#,
    ))
    .await;
    let resp = gw.chat().await;
    assert_eq!(resp.status(), 403);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "ip_not_allowed", "{body}");

    drop(cores);

    // router: the preferred upstream first.
    let wasm = new_project(dir.path(), "gen-router", "router", lang);
    let cores = timed();
    let gw = TestGateway::start(&config_with(&urls, "router", &wasm, "{prefer: u1}")).await;
    let before = (a.requests(), b.requests());
    assert_eq!(gw.chat().await.status(), 200);
    assert_eq!((a.requests(), b.requests()), (before.0, before.1 + 1));

    drop(cores);

    // quota: a 429 cools u0 down and the request is retried on u1.
    let wasm = new_project(dir.path(), "gen-quota", "quota", lang);
    let cores = timed();
    let gw = TestGateway::start(&config_with(&urls, "quota", &wasm, "{cooldown_ms: 60000}")).await;
    a.force_status(429);
    let before = (a.requests(), b.requests());
    assert_eq!(gw.chat().await.status(), 200);
    assert_eq!((a.requests(), b.requests()), (before.0 + 1, before.1 + 1));
    // Cooling down: the next request goes to u1 without asking u0.
    assert_eq!(gw.chat().await.status(), 200);
    assert_eq!(a.requests(), before.0 + 1);
    a.force_status(0);

    drop(cores);

    // header-rewrite: the key's name goes upstream.
    let wasm = new_project(dir.path(), "gen-rewrite", "header-rewrite", lang);
    let cores = timed();
    let gw = TestGateway::start(&config_with(
        &urls[..1],
        "header-rewrite",
        &wasm,
        "{key_header: x-team}",
    ))
    .await;
    assert_eq!(gw.chat().await.status(), 200);
    assert_eq!(a.last_headers().get("x-team").unwrap(), "tester");

    drop(cores);

    // transform: a request without a budget goes upstream with the configured one.
    let transform = new_project(dir.path(), "gen-transform", "transform", lang);
    let cores = timed();
    let gw = TestGateway::start(&config_with(
        &urls[..1],
        "transform",
        &transform,
        "{default_max_tokens: 77}",
    ))
    .await;
    assert_eq!(gw.chat().await.status(), 200);
    let sent: serde_json::Value = serde_json::from_slice(&a.last_body()).unwrap();
    assert_eq!(sent["max_tokens"], 77, "{sent}");

    // A config the plugin refuses: the gateway names the plugin's own message.
    let mut refused_config = tollgate::Config::parse(
        &config_with(&urls[..1], "header-rewrite", &wasm, "{key_headr: x-team}"),
        "test.yaml",
        Box::new(|_| None),
    )
    .unwrap();
    // Its database in a temporary directory, not the source tree.
    let scratch = tempfile::tempdir().unwrap();
    refused_config.base_dir = scratch.path().to_path_buf();
    let refused = tollgate::Gateway::new(&refused_config).await;
    let err = refused.err().expect("refused").to_string();
    assert!(
        err.contains("unknown field") && err.contains("key_headr"),
        "{err}"
    );

    drop(cores);

    // An exception in the plugin: `plugin test` shows its message (and Python's traceback)
    // instead of a bare trap.
    if lang != "rust" {
        let project = dir.path().join("gen-router");
        let (file, from, to) = match lang {
            "python" => (
                "app.py",
                "        order = sorted(",
                "        raise ValueError(\"no route for this one\")\n        order = sorted(",
            ),
            _ => (
                "app.js",
                "    const rank = ",
                "    throw new Error(\"no route for this one\");\n    const rank = ",
            ),
        };
        let source = std::fs::read_to_string(project.join(file)).unwrap();
        assert!(source.contains(from), "{source}");
        std::fs::write(project.join(file), source.replacen(from, to, 1)).unwrap();
        build_sh(&project, lang, Some(&build_tool(lang)));
        let (passed, text) = plugin_test(&project, &project.join("gen-router.wasm"));
        assert!(!passed, "{text}");
        assert!(text.contains("no route for this one"), "{text}");
        if lang == "python" {
            assert!(
                text.contains("Traceback") && text.contains("ValueError"),
                "{text}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rust_kind_builds_passes_its_cases_and_works_in_the_gateway() {
    every_kind_works("rust").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_python_kind_builds_passes_its_cases_and_works_in_the_gateway() {
    every_kind_works("python").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_javascript_kind_builds_passes_its_cases_and_works_in_the_gateway() {
    every_kind_works("js").await;
}

#[test]
fn plugin_new_refuses_a_bad_name_an_unknown_kind_and_a_non_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let sdk = repo_root().join("plugins/sdk");
    let run = |args: &[&str], to: &Path| {
        let out = Command::new(BIN)
            .args(["plugin", "new"])
            .args(args)
            .arg("--dir")
            .arg(to)
            .arg("--sdk")
            .arg(&sdk)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run(&["Bad Name", "--kind", "router"], &dir.path().join("x"));
    assert!(!ok && err.contains("invalid name"), "{err}");
    let (ok, err) = run(&["fine", "--kind", "firewall"], &dir.path().join("y"));
    assert!(
        !ok && err.contains("ip-binding, router, quota, header-rewrite or transform"),
        "{err}"
    );
    std::fs::write(dir.path().join("keep.txt"), "mine").unwrap();
    let (ok, err) = run(&["fine", "--kind", "router"], dir.path());
    assert!(!ok && err.contains("is not empty"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("keep.txt")).unwrap(),
        "mine"
    );
}

/// A plugin author with only the binary: a Rust project written outside any Tollgate checkout
/// carries the SDK and the WIT the binary holds, builds as its README says, and passes its
/// cases.
#[test]
fn a_rust_project_outside_a_checkout_carries_the_sdk_and_builds() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        !dir.path()
            .ancestors()
            .any(|d| d.join("plugins/sdk").exists()),
        "the project must be outside any checkout"
    );
    let project = dir.path().join("outside");
    generate(&project, "outside", "router", "rust");
    let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains("path = \"vendor/tollgate-sdk\""),
        "{manifest}"
    );
    for file in [
        "vendor/tollgate-sdk/Cargo.toml",
        "vendor/tollgate-sdk/src/lib.rs",
        "wit/worlds.wit",
        "wit/policies.wit",
    ] {
        assert!(project.join(file).is_file(), "{file} missing");
    }
    assert_eq!(
        std::fs::read_to_string(project.join("vendor/tollgate-sdk/src/lib.rs")).unwrap(),
        std::fs::read_to_string(repo_root().join("plugins/sdk/src/lib.rs")).unwrap(),
        "the carried SDK is the checkout's"
    );
    let wasm = cargo_build(&project, "outside");
    let (passed, text) = plugin_test(&project, &wasm);
    assert!(passed && text.contains(" passed, 0 failed"), "{text}");
}

/// `--sdk` must name Tollgate's SDK, and a `plugin new` that fails leaves nothing: no directory
/// it made, nothing in an empty one it was given.
#[test]
fn a_failed_plugin_new_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let run = |to: &Path, sdk: &Path| {
        let out = Command::new(BIN)
            .args(["plugin", "new", "fine", "--kind", "router", "--dir"])
            .arg(to)
            .arg("--sdk")
            .arg(sdk)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let fresh = dir.path().join("fresh");
    let err = run(&fresh, &dir.path().join("no-such-sdk"));
    assert!(
        err.contains("--sdk") && err.contains("no-such-sdk"),
        "{err}"
    );
    assert!(!fresh.exists(), "a directory was left behind");
    // A directory that is not the SDK (here: the repository's own plugins/).
    let err = run(&fresh, &repo_root().join("plugins"));
    assert!(err.contains("not Tollgate's Rust SDK"), "{err}");
    assert!(!fresh.exists());
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    run(&empty, &dir.path().join("no-such-sdk"));
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    // The real SDK is accepted.
    run_ok(
        Command::new(BIN)
            .args(["plugin", "new", "fine", "--kind", "router", "--dir"])
            .arg(&fresh)
            .arg("--sdk")
            .arg(repo_root().join("plugins/sdk")),
        "plugin new --sdk plugins/sdk",
    );
    assert!(!fresh.join("vendor").exists(), "--sdk: nothing carried");
}

/// `plugin install` replaces the file a gateway loads only with a checked component: one that
/// fails its cases, or is not a policy, leaves the installed one as it was (and no staged copy
/// behind); one that passes is renamed over it, byte for byte.
#[test]
fn plugin_install_replaces_only_with_a_checked_component() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("binding.wasm");
    let installed_before = b"the component in service".to_vec();
    std::fs::write(&dest, &installed_before).unwrap();
    let good = tollgate_tests::plugins::wasm("tollgate_ip_binding");
    let cases = repo_root().join("plugins/ip-binding/cases/basic.yaml");
    let wrong = dir.path().join("wrong.yaml");
    std::fs::write(
        &wrong,
        "config: {prefix_v4: 24}\ncases:\n  - name: expects a refusal it does not get\n    request: {client_ip: 203.0.113.7}\n    expect: {deny: {status: 403}}\n",
    )
    .unwrap();
    let not_wasm = dir.path().join("notes.txt");
    std::fs::write(&not_wasm, "not a component").unwrap();
    let install = |file: &Path, cases: Option<&Path>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["plugin", "install"]).arg(file).arg(&dest);
        if let Some(c) = cases {
            cmd.arg("--cases").arg(c);
        }
        let _cores = timed();
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let left = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("installing"))
            .count()
    };
    let (ok, out) = install(&good, Some(&wrong));
    assert!(!ok && out.contains("1 of 1 cases failed"), "{out}");
    assert_eq!(std::fs::read(&dest).unwrap(), installed_before);
    let (ok, out) = install(&not_wasm, None);
    assert!(!ok && out.contains("is unchanged"), "{out}");
    assert_eq!(std::fs::read(&dest).unwrap(), installed_before);
    assert_eq!(left(), 0, "a staged copy was left behind");
    let (ok, out) = install(&good, Some(&cases));
    assert!(ok && out.contains("4 cases passed"), "{out}");
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&good).unwrap());
    assert_eq!(left(), 0);
}
