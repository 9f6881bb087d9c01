//! The operator's command line (docs/operations.md "The command line"): shell completions,
//! `--output json` on listings, filters, prompts that do not echo a secret, confirmations before
//! a cluster-wide switch, `settings`, `doctor`, and `status`/`reload`/`upstreams` against a
//! running gateway's admin API. Each runs the real binary (`tokio::process`, so the in-process
//! gateway keeps serving while a command waits).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;
use tollgate_tests::*;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate-under-test");
const PASSWORD: &str = "correct horse battery";

/// What a command did.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `tollgate args…` with `stdin` (a pipe, not a terminal) and `env`.
async fn tollgate(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Out {
    let mut child = tokio::process::Command::new(BIN)
        .args(args)
        .env_clear()
        .envs(child_env())
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let _ = input.write_all(stdin.as_bytes()).await;
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn json_of(out: &Out) -> Value {
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

/// A gateway from a config file in `dir` with an embedded database, an admin user `ops` and the
/// ip-binding plugin; `extra` goes at the top level.
async fn gateway(dir: &Path, mock: &MockUpstream, extra: &str) -> (TestGateway, String) {
    let yaml = config_yaml(&[mock.url()], "")
        .replace(
            "admin:\n  listen: 127.0.0.1:0\n",
            &format!("admin:\n  listen: 127.0.0.1:0\n  users:\n    - username: ops\n      password: {PASSWORD}\n"),
        )
        .replace("\nlogging:", "\n    policies: [bind]\nlogging:")
        + &format!(
            "storage:\n  database: sqlite://gw.db\n  op_timeout: 10s\nplugins:\n  - {{name: bind, kind: ip-binding, module: {}}}\n{extra}",
            plugins::wasm("tollgate_ip_binding").display()
        );
    let path = dir.join("gw.yaml");
    std::fs::write(&path, yaml).unwrap();
    let gw = TestGateway::start_file(&path).await;
    (gw, path.to_str().unwrap().to_owned())
}

/// Completion scripts for the three shells: bash's parses (`bash -n`) and offers the commands;
/// zsh's and fish's are the scripts those shells load.
#[tokio::test]
async fn completions_for_bash_zsh_and_fish() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, marker) in [
        ("bash", "_tollgate()"),
        ("zsh", "#compdef tollgate"),
        ("fish", "complete -c tollgate"),
    ] {
        let out = tollgate(&["completions", shell], "", &[]).await;
        assert_eq!(out.code, 0, "{shell}: {}", out.stderr);
        assert!(
            out.stdout.contains(marker),
            "{shell}: {}",
            &out.stdout[..200.min(out.stdout.len())]
        );
        for command in [
            "doctor",
            "upstreams",
            "settings",
            "reload",
            "status",
            "bindings",
        ] {
            assert!(
                out.stdout.contains(command),
                "{shell} does not complete {command}"
            );
        }
        if shell == "bash" {
            let script = dir.path().join("tollgate.bash");
            std::fs::write(&script, &out.stdout).unwrap();
            let check = std::process::Command::new("bash")
                .arg("-n")
                .arg(&script)
                .output()
                .unwrap();
            assert!(
                check.status.success(),
                "{}",
                String::from_utf8_lossy(&check.stderr)
            );
            // Loaded in a shell, it completes `tollgate up` to `upstreams`.
            let complete = std::process::Command::new("bash")
                .arg("-c")
                .arg(format!(
                    "source {}; COMP_WORDS=(tollgate up); COMP_CWORD=1; COMP_LINE='tollgate up'; COMP_POINT=11; _tollgate tollgate up tollgate; echo \"${{COMPREPLY[@]}}\"",
                    script.display()
                ))
                .output()
                .unwrap();
            let offered = String::from_utf8_lossy(&complete.stdout);
            assert!(
                offered.split_whitespace().any(|w| w == "upstreams"),
                "{offered}"
            );
        }
    }
}

/// `--output json` on every listing, and the bindings filters (status, search, offset).
#[tokio::test(flavor = "multi_thread")]
async fn listings_print_json_and_bindings_filter() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockUpstream::start().await;
    let (gw, config) = gateway(dir.path(), &mock, "").await;
    // Two keys bound (the config's and one issued here), one of them banned.
    let issued = json_of(
        &tollgate(
            &[
                "--output", "json", "keys", "-c", &config, "create", "second", "--owner", "team-a",
            ],
            "",
            &[],
        )
        .await,
    );
    assert!(
        issued["secret"].as_str().unwrap().starts_with("tg-"),
        "{issued}"
    );
    assert_eq!(issued["key"]["name"], "second");
    let created = tollgate(&["keys", "-c", &config, "create", "third"], "", &[]).await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    let secret = created
        .stdout
        .split_whitespace()
        .find(|w| w.starts_with("tg-"))
        .unwrap()
        .to_owned();
    // The running gateway takes up a key issued here within a second.
    for key in [CLIENT_KEY, secret.as_str()] {
        let served = eventually_async(std::time::Duration::from_secs(3), || async {
            client()
                .post(gw.url("/v1/chat/completions"))
                .bearer_auth(key)
                .json(&chat_body(false))
                .send()
                .await
                .unwrap()
                .status()
                == 200
        })
        .await;
        assert!(served, "{key} was never served");
    }
    let bindings = json_of(
        &tollgate(
            &["--output", "json", "bindings", "list", "-c", &config],
            "",
            &[],
        )
        .await,
    );
    let rows = bindings.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{bindings}");
    let tester = rows.iter().find(|b| b["key_name"] == "tester").unwrap();
    let tester_id = tester["key_id"].as_str().unwrap().to_owned();
    let ban = tollgate(&["bindings", "-c", &config, "ban", &tester_id], "", &[]).await;
    assert_eq!(ban.code, 0, "{}", ban.stderr);
    let banned = json_of(
        &tollgate(
            &[
                "--output", "json", "bindings", "list", "-c", &config, "--status", "banned",
            ],
            "",
            &[],
        )
        .await,
    );
    assert_eq!(
        banned
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["key_name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["tester"]
    );
    let found = json_of(
        &tollgate(
            &[
                "--output",
                "json",
                "bindings",
                "list",
                "-c",
                &config,
                "--search",
                &tester_id[..10],
            ],
            "",
            &[],
        )
        .await,
    );
    assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    let paged = tollgate(
        &["bindings", "list", "-c", &config, "--limit", "1"],
        "",
        &[],
    )
    .await;
    assert!(
        paged.stdout.contains("… 1 more (use --offset 1)"),
        "{}",
        paged.stdout
    );
    let bad = tollgate(
        &["bindings", "list", "-c", &config, "--status", "sleepy"],
        "",
        &[],
    )
    .await;
    assert!(
        bad.code != 0 && bad.stderr.contains("--status"),
        "{}",
        bad.stderr
    );
    // The other listings, as JSON arrays.
    for args in [
        vec!["keys", "list"],
        vec!["ip", "list"],
        vec!["credentials", "list"],
        vec!["usage"],
        vec!["settings", "show"],
        vec!["bindings", "intercepts"],
    ] {
        let mut full = vec!["--output", "json"];
        full.extend(&args);
        full.extend(["-c", config.as_str()]);
        let v = json_of(&tollgate(&full, "", &[]).await);
        assert!(v.is_array(), "{args:?}: {v}");
    }
    let builtins = json_of(&tollgate(&["--output", "json", "plugin", "builtins"], "", &[]).await);
    assert!(
        builtins
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["module"] == "builtin:ip-binding"
                && b["sha256"].as_str().unwrap().len() == 64),
        "{builtins}"
    );
    let keys = json_of(
        &tollgate(
            &["--output", "json", "keys", "list", "-c", &config],
            "",
            &[],
        )
        .await,
    );
    assert!(
        keys.as_array()
            .unwrap()
            .iter()
            .any(|k| k["name"] == "second" && k["owner"] == "team-a"),
        "{keys}"
    );
    drop(gw);
}

/// Secrets are read without echo: under a terminal (`script` gives the command one), the typed
/// password never appears in what the terminal shows, and `hash-password` asks twice. From a
/// pipe, the first line is the secret.
#[tokio::test]
async fn secrets_are_prompted_without_echo_on_a_terminal() {
    let password = "a long operator password";
    // Under a pseudo-terminal: what we type goes to the terminal, and the terminal's output
    // (which holds any echo) comes back on script's stdout.
    let mut child = tokio::process::Command::new("script")
        .args(["-qfec", &format!("{BIN} admin hash-password"), "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    for _ in 0..2 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        input
            .write_all(format!("{password}\n").as_bytes())
            .await
            .unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    drop(input);
    let out = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(
        screen.contains("Password (12 characters or more):") && screen.contains("The same again:"),
        "{screen}"
    );
    assert!(screen.contains("$argon2id$"), "{screen}");
    assert!(
        !screen.contains(password),
        "the password was echoed: {screen}"
    );
    // From a pipe: the first line, no prompt needed.
    let piped = tollgate(
        &["admin", "hash-password"],
        &format!("{password}\nignored\n"),
        &[],
    )
    .await;
    assert!(
        piped.code == 0 && piped.stdout.trim().starts_with("$argon2id$"),
        "{}",
        piped.stderr
    );
    let short = tollgate(&["admin", "hash-password"], "short\n", &[]).await;
    assert!(
        short.code != 0 && short.stderr.contains("at least 12"),
        "{}",
        short.stderr
    );
}

/// Cluster-wide switches ask first: the first `ip allow` (allow-list mode for every gateway) and
/// `settings set maintenance=true` are refused from a script without `--yes`, and nothing
/// changes; with `--yes` they apply. Settings show their source and revert to the file.
#[tokio::test(flavor = "multi_thread")]
async fn cluster_wide_switches_need_a_confirmation_and_settings_revert() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockUpstream::start().await;
    let (gw, config) = gateway(dir.path(), &mock, "").await;
    let refused = tollgate(&["ip", "-c", &config, "allow", "10.0.0.0/8"], "", &[]).await;
    assert!(
        refused.code != 0 && refused.stderr.contains("allow-list mode"),
        "{}",
        refused.stderr
    );
    let stored =
        json_of(&tollgate(&["--output", "json", "ip", "list", "-c", &config], "", &[]).await);
    assert_eq!(stored, json!([]));
    // A deny entry needs no question.
    assert_eq!(
        tollgate(&["ip", "-c", &config, "deny", "192.0.2.0/24"], "", &[])
            .await
            .code,
        0
    );
    let done = tollgate(
        &["ip", "-c", &config, "allow", "127.0.0.0/8", "--yes"],
        "",
        &[],
    )
    .await;
    assert_eq!(done.code, 0, "{}", done.stderr);
    // Allow-list mode already: the next allow entry is added without a question.
    assert_eq!(
        tollgate(&["ip", "-c", &config, "allow", "10.0.0.0/8"], "", &[])
            .await
            .code,
        0
    );

    let refused = tollgate(
        &["settings", "-c", &config, "set", "maintenance=true"],
        "",
        &[],
    )
    .await;
    assert!(
        refused.code != 0 && refused.stderr.contains("--yes"),
        "{}",
        refused.stderr
    );
    assert!(!gw.gateway.stores.maintenance());
    let set = tollgate(
        &[
            "settings",
            "-c",
            &config,
            "set",
            "alert_threshold=9",
            "maintenance=true",
            "--yes",
        ],
        "",
        &[],
    )
    .await;
    assert_eq!(set.code, 0, "{}", set.stderr);
    assert!(
        eventually_async(std::time::Duration::from_secs(3), || async {
            gw.gateway.stores.maintenance()
        })
        .await,
        "the running gateway never saw maintenance"
    );
    let shown = json_of(
        &tollgate(
            &["--output", "json", "settings", "show", "-c", &config],
            "",
            &[],
        )
        .await,
    );
    let row = |name: &str| {
        shown
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(
        (
            row("maintenance")["value"].clone(),
            row("maintenance")["source"].clone(),
            row("maintenance")["file"].clone()
        ),
        (json!(true), json!("override"), json!(false))
    );
    assert!(
        row("maintenance")["updated_by"]
            .as_str()
            .unwrap()
            .starts_with("cli:")
    );
    assert_eq!(row("failsafe")["source"], "file");
    let bad = tollgate(
        &["settings", "-c", &config, "set", "alert_threshold=0"],
        "",
        &[],
    )
    .await;
    assert!(
        bad.code != 0 && bad.stderr.contains("alert_threshold"),
        "{}",
        bad.stderr
    );
    let reverted = tollgate(
        &["settings", "-c", &config, "revert", "maintenance"],
        "",
        &[],
    )
    .await;
    assert_eq!(reverted.code, 0, "{}", reverted.stderr);
    assert!(
        reverted
            .stdout
            .contains("the config file's value applies (false)"),
        "{}",
        reverted.stdout
    );
    assert!(
        eventually_async(std::time::Duration::from_secs(3), || async {
            !gw.gateway.stores.maintenance()
        })
        .await
    );
}

/// `status`, `reload` and `upstreams` reach the running gateway's admin API, signed in with the
/// password from the environment; `status` exits 1 on a warning; a refused reload exits 1 with
/// its reason; a cooldown set from the command line is in the running gateway.
#[tokio::test(flavor = "multi_thread")]
async fn status_reload_and_upstreams_go_through_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockUpstream::start().await;
    let (gw, config) = gateway(dir.path(), &mock, "").await;
    let url = format!("http://{}", gw.admin_addr.unwrap());
    let env = [("TOLLGATE_ADMIN_PASSWORD", PASSWORD)];
    let run = |args: Vec<&'static str>| {
        let (config, url) = (config.clone(), url.clone());
        async move {
            let mut full: Vec<&str> = args.clone();
            full.extend(["-c", &config, "--admin-url", &url, "--user", "ops"]);
            tollgate(&full, "", &env).await
        }
    };
    let status = run(vec!["status"]).await;
    assert_eq!(status.code, 0, "{}{}", status.stdout, status.stderr);
    assert!(
        status.stdout.contains("all clear") && status.stdout.contains("database\tsqlite up"),
        "{}",
        status.stdout
    );
    let s = json_of(&run(vec!["--output", "json", "status"]).await);
    assert!(
        s["config_path"].as_str().unwrap().ends_with("gw.yaml"),
        "{s}"
    );

    let cooled = run(vec!["upstreams", "cooldown", "u0", "--for", "5m"]).await;
    assert_eq!(cooled.code, 0, "{}", cooled.stderr);
    assert!(!gw.gateway.runtime().upstreams[0].cooldowns().is_empty());
    let list = json_of(&run(vec!["--output", "json", "upstreams", "list"]).await);
    assert_eq!(list[0]["name"], "u0");
    assert_eq!(list[0]["cooldowns"].as_array().unwrap().len(), 1, "{list}");
    // Cooling down is `info`; maintenance is a warning: exit 1.
    gw.gateway
        .stores
        .save_settings(
            &tollgate::state::Settings {
                maintenance: true,
                ..gw.gateway.stores.settings()
            },
            "test",
        )
        .await
        .unwrap();
    let warned = run(vec!["status"]).await;
    assert_eq!(warned.code, 1, "{}", warned.stdout);
    assert!(
        warned.stdout.contains("WARNING\tmaintenance mode is on"),
        "{}",
        warned.stdout
    );
    let restored = run(vec!["upstreams", "restore", "u0"]).await;
    assert_eq!(restored.code, 0, "{}", restored.stderr);
    assert!(gw.gateway.runtime().upstreams[0].cooldowns().is_empty());

    // A reload: the file broken, refused with its reason; fixed, in service.
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, good.replace("max_fails: 100", "max_fails: lots")).unwrap();
    let refused = run(vec!["reload"]).await;
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    assert!(
        refused.stderr.contains("reload refused") && refused.stderr.contains("max_fails"),
        "{}",
        refused.stderr
    );
    std::fs::write(&config, &good).unwrap();
    let ok = run(vec!["reload"]).await;
    assert_eq!(
        (ok.code, ok.stdout.trim()),
        (0, "reloaded: the new config is in service"),
        "{}",
        ok.stderr
    );

    // A wrong password: the API's message, exit 1.
    let mut full = vec!["status", "-c", config.as_str(), "--admin-url", url.as_str()];
    full.push("--user");
    full.push("ops");
    let wrong = tollgate(
        &full,
        "",
        &[("TOLLGATE_ADMIN_PASSWORD", "not the password")],
    )
    .await;
    assert!(
        wrong.code != 0 && wrong.stderr.contains("invalid username or password"),
        "{}",
        wrong.stderr
    );
}

/// `doctor`: a certificate expiring in five days is a warning, an expired one a failure (exit
/// 1); a config file writable by everyone fails; a clean setup passes.
#[tokio::test(flavor = "multi_thread")]
async fn doctor_checks_the_certificate_the_stores_and_permissions() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let mock = MockUpstream::start().await;
    let (gw, config) = gateway(dir.path(), &mock, "").await;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(
        dir.path().join("gw.db"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let clean = tollgate(&["--output", "json", "doctor", "-c", &config], "", &[]).await;
    let checks = json_of(&clean);
    let result = |name: &str| {
        checks
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == name)
            .map(|c| c["result"].as_str().unwrap().to_owned())
    };
    assert_eq!(result("config").as_deref(), Some("ok"), "{checks}");
    assert_eq!(result("database").as_deref(), Some("ok"), "{checks}");
    assert_eq!(result("cache").as_deref(), Some("ok"), "{checks}");
    assert_eq!(result("config file").as_deref(), Some("ok"), "{checks}");
    drop(gw);

    let base = std::fs::read_to_string(&config).unwrap();
    for (days, want, code) in [(5, "warn", 0), (-1, "fail", 1), (200, "ok", 0)] {
        let (cert, key) = TestCert::expiring_in(days).write(dir.path());
        let tls = base.replace(
            "server:\n  listen: 127.0.0.1:0\n",
            &format!(
                "server:\n  listen: 127.0.0.1:0\n  tls:\n    cert: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ),
        );
        std::fs::write(&config, tls).unwrap();
        let out = tollgate(&["doctor", "-c", &config], "", &[]).await;
        let line = out
            .stdout
            .lines()
            .find(|l| l.contains("\ttls\t"))
            .unwrap_or_else(|| panic!("{}{}", out.stdout, out.stderr))
            .to_owned();
        assert!(line.starts_with(want), "{days} days: {line}");
        assert_eq!(out.code, code, "{days} days: {}", out.stdout);
    }
    std::fs::write(&config, &base).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    let open = tollgate(&["doctor", "-c", &config], "", &[]).await;
    assert_eq!(open.code, 1, "{}", open.stdout);
    assert!(
        open.stdout
            .lines()
            .any(|l| l.starts_with("fail") && l.contains("writable by every user")),
        "{}",
        open.stdout
    );
}
