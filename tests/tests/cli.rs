//! The `tollgate` binary: `check` with golden error output, `key-id`, and SIGTERM draining.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tollgate_tests::*;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate-under-test");

/// Every `tests/fixtures/config/*.yaml` is an invalid config; `tollgate check` must fail and print
/// exactly the matching `.err` file. `UPDATE_GOLDEN=1` rewrites the `.err` files that differ and
/// still fails (run again without it), so it can never turn the check off; under CI it is refused.
#[test]
fn invalid_configs_produce_their_golden_errors() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    assert!(
        !(update && std::env::var_os("CI").is_some()),
        "UPDATE_GOLDEN is refused under CI: the golden files are what is checked"
    );
    let dir = repo_root().join("tests/fixtures/config");
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 6, "fixtures missing in {}", dir.display());
    let mut mismatches = Vec::new();
    for yaml in fixtures {
        let name = yaml.file_name().unwrap().to_str().unwrap().to_owned();
        let out = Command::new(BIN)
            .args(["check", "--config", &name])
            .current_dir(&dir)
            .env_clear()
            .envs(child_env())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{name} must be rejected");
        let got = String::from_utf8(out.stderr).unwrap();
        let golden = yaml.with_extension("err");
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        if got != want {
            if update {
                std::fs::write(&golden, &got).unwrap();
            }
            mismatches.push(format!("--- {name}: expected\n{want}--- got\n{got}"));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn the_example_config_is_valid() {
    let out = Command::new(BIN)
        .args(["check", "--config", "policies.example.yaml"])
        .current_dir(repo_root())
        .env_clear()
        .envs(child_env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `tollgate key-id` prints HMAC-SHA256(secret, key) in hex: checked against a value computed
/// outside Tollgate (Python's `hmac.new(b"dev-only-secret-change-me", b"sk-tollgate-demo",
/// hashlib.sha256).hexdigest()`), and against the gateway's own key ring.
#[test]
fn key_id_is_the_hmac_of_the_key_and_matches_what_the_gateway_computes() {
    let root = repo_root();
    let ran = run_with_stdin(
        Command::new(BIN)
            .args(["key-id", "--config", "policies.example.yaml"])
            .current_dir(&root)
            .env_clear()
            .envs(child_env()),
        "sk-tollgate-demo\n",
    );
    assert!(ran.ok, "{}", ran.stderr);
    let id = ran.stdout.trim().to_owned();
    assert_eq!(
        id,
        "839389c2214bac9bd418ef10b2bcf0618ae97ebeaa9726eef55a9d974ef9bce9"
    );
    let config = tollgate::Config::load(&root.join("policies.example.yaml")).unwrap();
    let ring = tollgate::KeyRing::standalone(&config.auth);
    assert_eq!(id, ring.id_of("sk-tollgate-demo").to_hex());
}

#[tokio::test]
async fn migrate_creates_the_embedded_database_and_check_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = config_yaml(&["http://127.0.0.1:9".into()], "")
        + "storage:\n  database: sqlite://state/gw.db\n";
    let config = dir.path().join("gw.yaml");
    std::fs::write(&config, yaml).unwrap();
    let db = dir.path().join("state/gw.db");

    let run = |command: &str, config: &Path| {
        Command::new(BIN)
            .arg(command)
            .arg("-c")
            .arg(config)
            .output()
            .unwrap()
    };
    let out = run("check", &config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!db.exists(), "check must not create the database");

    for _ in 0..2 {
        // Twice: applying migrations is idempotent.
        let out = run("migrate", &config);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("migrations applied"));
    }
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&pool)
            .await
            .unwrap();
    for t in ["bindings", "bindings_archive", "intercepts", "token_usage"] {
        assert!(tables.iter().any(|n| n == t), "{t} missing from {tables:?}");
    }

    // A database that cannot be reached is a clear error, not a hang.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        config_yaml(&["http://127.0.0.1:9".into()], "")
            + "storage:\n  database: postgres://nobody@127.0.0.1:1/none\n  op_timeout: 2s\n",
    )
    .unwrap();
    let out = run("migrate", &bad);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("database unavailable"));
}

#[tokio::test]
async fn usage_prints_tokens_per_key_name_and_per_model() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gw.yaml");
    std::fs::write(
        &config,
        config_yaml(&[mock.url()], "") + "storage:\n  database: sqlite://state/gw.db\n",
    )
    .unwrap();
    let gw = TestGateway::start_file(&config).await;
    for _ in 0..2 {
        let resp = client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .json(&chat_body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    gw.gateway.stores.flush().await;
    let usage = |by: &str| {
        let out = Command::new(BIN)
            .args(["usage", "--by", by, "--since", "1h", "-c"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // The mock answers 8 prompt and 2 completion tokens ("mock answer").
    let by_key = usage("key");
    assert!(by_key.starts_with("name\trequests\terrors"), "{by_key}");
    assert!(by_key.contains("\ntester\t2\t0\t0\t16\t4\t0\t"), "{by_key}");
    let by_model = usage("model");
    let model = chat_body(false)["model"].as_str().unwrap().to_owned();
    assert!(by_model.contains(&format!("\n{model}\t2\t")), "{by_model}");
}

/// Runs the real binary on `config` (killed when dropped) and waits until `port` accepts.
async fn run_binary(config: &Path, port: u16) -> tokio::process::Child {
    spawn_binary(config, port, "warn", Stdio::inherit()).await
}

/// [`run_binary`] at log level `level`, its stderr (the log) going to `stderr`.
async fn spawn_binary(
    config: &Path,
    port: u16,
    level: &str,
    stderr: Stdio,
) -> tokio::process::Child {
    let child = tokio::process::Command::new(BIN)
        .args([
            "run",
            "--config",
            config.to_str().unwrap(),
            "--log-level",
            level,
        ])
        .env_clear()
        .envs(child_env())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ready = eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    assert!(ready, "gateway did not start");
    child
}

/// Sends `signal` (`-TERM`, `-HUP`) to the child.
fn signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success()
    );
}

/// Runs the real binary, starts a stream, sends SIGTERM, and checks the stream completes and the
/// process exits 0.
#[tokio::test]
async fn sigterm_drains_an_in_flight_stream_then_exits() {
    let mock = MockUpstream::start().await;
    let port = free_port();
    let yaml = config_yaml(&[mock.url()], "").replacen(
        "listen: 127.0.0.1:0",
        &format!("listen: 127.0.0.1:{port}"),
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut child = run_binary(&path, port).await;
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");

    let start = Instant::now();
    let resp = stream_at(&url, 8, 100).await;
    let reader = tokio::spawn(read_events(resp, start));
    tokio::time::sleep(Duration::from_millis(150)).await;
    signal(&child, "-TERM");
    let events = reader.await.unwrap().unwrap();
    assert_eq!(
        events.last().unwrap().1,
        "[DONE]",
        "stream cut by shutdown: {events:?}"
    );
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("exits after draining")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn plugin_inspect_reports_kind_and_linkability() {
    let wasm = tollgate_tests::plugins::wasm("tollgate_round_robin");
    let out = Command::new(BIN)
        .args(["plugin", "inspect"])
        .arg(&wasm)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    // A lean router: kind router, in its lean form.
    assert!(text.contains("kind:    lean-router-policy"), "{text}");
    assert!(text.contains("links:   ok"), "{text}");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name}: in {text}"))
            .trim()
            .to_owned()
    };
    // The file it read, and its exact hash (what a `sha256:` pin in the config must be).
    let bytes = std::fs::read(&wasm).unwrap();
    assert_eq!(
        field("sha256"),
        <sha2::Sha256 as sha2::Digest>::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    assert!(
        field("file").ends_with(&format!("({} bytes)", bytes.len())),
        "{text}"
    );
    assert!(
        field("exports").contains("tollgate:policy/lean-router@"),
        "{text}"
    );
    // What loading it costs, as `plugin test` reports it: compiled or cached, and an instance's
    // memory, a real figure within the default 32 MiB limit.
    let code = field("code");
    assert!(
        code.starts_with("compiled in ") || code.starts_with("read from the compilation cache in "),
        "{text}"
    );
    let memory = field("memory");
    let mib: f64 = memory.split(' ').next().unwrap().parse().unwrap();
    assert!(mib > 0.0 && mib <= 32.0, "{text}");
    assert!(
        memory.contains(" MiB for an instance configured with {}"),
        "{text}"
    );
    // What the sandbox grants, as docs/plugins.md says (policy_runtime.rs reads it from a guest).
    assert!(
        text.contains("sandbox: wall and monotonic clocks")
            && text.contains("random")
            && text.contains("stderr"),
        "{text}"
    );
}

/// A component importing what the host does not provide is reported with what to do about it.
#[test]
fn plugin_inspect_says_what_to_do_about_an_import_the_host_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // What componentize-js builds without `-d http fetch-event`.
        (
            r#"(component (import "wasi:http/types@0.2.10" (instance (export "fields" (type (sub resource))))))"#,
            "-d http fetch-event",
        ),
        // A plugin built against an older WIT.
        (
            r#"(component (import "tollgate:policy/clock@0.1.0" (instance (export "now-ms" (func (result u64))))))"#,
            "another version of Tollgate's WIT",
        ),
    ];
    for (i, (wat, advice)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.wasm"));
        std::fs::write(&path, wat::parse_str(wat).unwrap()).unwrap();
        let out = Command::new(BIN)
            .args(["plugin", "inspect"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("links:   NO:"), "{text}");
        assert!(
            text.contains("What to do:") && text.contains(advice),
            "{text}"
        );
    }
}

/// Every `plugins/<name>/cases/*.yaml` runs against the built `tollgate_<name>.wasm` and passes.
#[test]
fn every_plugin_fixture_file_passes() {
    let plugins = repo_root().join("plugins");
    let mut ran = 0;
    for dir in std::fs::read_dir(&plugins)
        .unwrap()
        .map(|e| e.unwrap().path())
    {
        let Ok(cases) = std::fs::read_dir(dir.join("cases")) else {
            continue;
        };
        let crate_name = format!(
            "tollgate_{}",
            dir.file_name().unwrap().to_str().unwrap().replace('-', "_")
        );
        let wasm = tollgate_tests::plugins::wasm(&crate_name);
        for case in cases.map(|e| e.unwrap().path()) {
            let out = Command::new(BIN)
                .args(["plugin", "test"])
                .arg(&wasm)
                .arg("--cases")
                .arg(&case)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{}:\n{text}{}",
                case.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            ran += 1;
        }
    }
    assert!(
        ran >= 2,
        "no fixture files found under {}",
        plugins.display()
    );
}

#[test]
fn plugin_test_fails_on_a_wrong_expectation_and_shows_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.yaml");
    std::fs::write(&cases, "cases:\n  - name: wrong\n    candidates: [{name: a}, {name: b}]\n    expect: {pick: [1, 0]}\n").unwrap();
    let wasm = tollgate_tests::plugins::wasm("tollgate_fill_first");
    let out = Command::new(BIN)
        .args(["plugin", "test"])
        .arg(&wasm)
        .arg("--cases")
        .arg(&cases)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAILED  wrong") && text.contains(r#"{"pick":[0,1]}"#),
        "{text}"
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[lines.len() - 2], "0 passed, 1 failed", "{text}");
    // Then what it cost: compile (or the compilation cache), first instance and its memory,
    // per case.
    let cost = lines[lines.len() - 1];
    assert!(
        (cost.starts_with("compile ") || cost.starts_with("read from the compilation cache in "))
            && cost.contains("first instance")
            && cost.contains("MiB of memory")
            && cost.ends_with("(1 cases)"),
        "{text}"
    );
}

/// `plugin test` runs a plugin under the gateway's own default limits (a 5 ms deadline, not a
/// lenient one), or under the cases file's `limits:` (the config file's `plugins[].limits`).
#[test]
fn plugin_test_runs_under_the_gateways_limits_or_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = tollgate_tests::plugins::wasm("tollgate_hostile");
    let run = |limits: &str| {
        let cases = dir.path().join("cases.yaml");
        std::fs::write(
            &cases,
            format!("config: {{behaviour: loop}}\n{limits}cases:\n  - name: spins\n    candidates: [{{name: a}}]\n    expect: {{pick: [0]}}\n"),
        )
        .unwrap();
        let out = Command::new(BIN)
            .args(["plugin", "test"])
            .arg(&wasm)
            .arg("--cases")
            .arg(&cases)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8(out.stdout).unwrap()
    };
    let text = run("");
    assert!(text.contains("exceeded its 5ms deadline"), "{text}");
    let text = run("limits: {deadline: 40ms}\n");
    assert!(text.contains("exceeded its 40ms deadline"), "{text}");
}

/// What a plugin logs during `plugin test` is shown (on stderr), as the gateway would log it.
#[test]
fn plugin_test_shows_the_plugins_log_lines() {
    let wasm = tollgate_tests::plugins::wasm("tollgate_ip_binding");
    let cases = repo_root().join("plugins/ip-binding/cases/basic.yaml");
    let out = Command::new(BIN)
        .args(["plugin", "test"])
        .arg(&wasm)
        .arg("--cases")
        .arg(&cases)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    // ip-binding warns when a bound key is used from another network.
    assert!(
        stderr.contains("used from 198.51.100.1, bound to 203.0.113.0/24"),
        "{stderr}"
    );
}

/// `logging.file`: access and audit lines go to rotated files whose total stays under the cap.
#[tokio::test]
async fn the_log_goes_to_rotated_files_within_the_total_size_cap() {
    let mock = MockUpstream::start().await;
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (port, admin_port) = (free(), free());
    const CAP: u64 = 64 << 10;
    let yaml = config_yaml(&[mock.url()], "")
        .replacen("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{port}"), 1)
        .replace(
            "admin:\n  listen: 127.0.0.1:0\n",
            &format!(
                "admin:\n  listen: 127.0.0.1:{admin_port}\n  users:\n    - username: ops\n      password: file-log-password\n"
            ),
        )
        .replace(
            "logging:\n  access_log: false\n",
            "logging:\n  access_log: true\n  file: {path: logs/tollgate.log, max_total_size: 64KiB, max_files: 3}\n",
        );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.yaml");
    std::fs::write(&path, yaml).unwrap();
    let child = tokio::process::Command::new(BIN)
        .args(["run", "--config", path.to_str().unwrap()])
        .env_clear()
        .envs(child_env())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ready = eventually(Duration::from_secs(10), || {
        [port, admin_port]
            .iter()
            .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok())
    })
    .await;
    assert!(ready, "gateway did not start");
    let http = client();
    // Each access line is ~600 bytes: 400 of them are several times the cap.
    for _ in 0..400 {
        let resp = post_chat(
            &http,
            &format!("http://127.0.0.1:{port}/v1/chat/completions"),
            CLIENT_KEY,
        )
        .await;
        assert_eq!(resp.status(), 200);
    }
    // Last, so its audit line is in the newest file.
    let login = http
        .post(format!("http://127.0.0.1:{admin_port}/admin/api/login"))
        .json(&serde_json::json!({"username": "ops", "password": "file-log-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    signal(&child, "-TERM");
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("exits")
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("\"target\":\"access\""),
        "access lines went to stderr: {stderr}"
    );

    let logs = dir.path().join("logs");
    let mut files: Vec<_> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "tollgate.log",
            "tollgate.log.1",
            "tollgate.log.2",
            "tollgate.log.3"
        ],
        "the current file and max_files rotated ones"
    );
    let total: u64 = files
        .iter()
        .map(|f| std::fs::metadata(logs.join(f)).unwrap().len())
        .sum();
    // Each file may pass its share by the one line that crossed it.
    assert!(total <= CAP + 4 * 2048, "{total} bytes");
    assert!(total >= CAP / 2, "the files hold the log: {total} bytes");
    let newest = std::fs::read_to_string(logs.join("tollgate.log")).unwrap()
        + &std::fs::read_to_string(logs.join("tollgate.log.1")).unwrap();
    let access = newest
        .lines()
        .filter(|l| l.contains("\"target\":\"access\""))
        .count();
    assert!(access > 10, "access lines in the newest files: {access}");
    assert!(
        newest
            .lines()
            .any(|l| l.contains("\"target\":\"audit\"") && l.contains("\"action\":\"login\"")),
        "the login's audit line"
    );
    for l in newest.lines() {
        serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l:?}"));
    }
}

/// `tollgate admin hash-password` prints an argon2 hash the admin plane accepts; short passwords
/// are refused.
#[tokio::test]
async fn admin_hash_password_prints_a_hash_that_logs_in() {
    use std::io::Write as _;
    let hash = |password: &str| {
        let mut child = Command::new(BIN)
            .args(["admin", "hash-password"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )
    };
    let (ok, short) = hash("short");
    assert!(!ok && short.is_empty());
    let (ok, phc) = hash("a long operator password");
    assert!(ok && phc.starts_with("$argon2id$"), "{phc}");

    let mock = MockUpstream::start().await;
    let yaml = config_yaml(&[mock.url()], "").replace(
        "admin:\n  listen: 127.0.0.1:0\n",
        &format!("admin:\n  listen: 127.0.0.1:0\n  users:\n    - username: ops\n      password_hash: '{phc}'\n"),
    );
    let gw = TestGateway::start(&yaml).await;
    let login = |password: &'static str| {
        client()
            .post(format!("http://{}/admin/api/login", gw.admin_addr.unwrap()))
            .json(&serde_json::json!({"username": "ops", "password": password}))
            .send()
    };
    assert_eq!(
        login("a long operator password").await.unwrap().status(),
        200
    );
    assert_eq!(
        login("a wrong operator password").await.unwrap().status(),
        401
    );
}

/// `tollgate ip deny|list|remove` against the database of a running gateway: the gateway refuses
/// the address within a second of the command, and lets it back in after `remove`; both changes
/// are audited as the CLI user.
#[tokio::test]
async fn ip_deny_from_the_command_line_reaches_a_running_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockUpstream::start().await;
    // A generous op_timeout: the CLI and the gateway share the SQLite file on a loaded machine, and
    // this test is about the change reaching the gateway, not about timeouts.
    let yaml = config_yaml(&[mock.url()], "")
        + "storage:\n  database: sqlite://gw.db\n  op_timeout: 10s\n";
    let config = dir.path().join("gw.yaml");
    std::fs::write(&config, &yaml).unwrap();
    let gw = TestGateway::start_file(&config).await;
    let from = client_from("127.0.0.12");
    let send = || {
        from.post(gw.url("/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .json(&chat_body(false))
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 200);
    let ip = |args: &[&str]| {
        run_ok(
            Command::new(BIN)
                .arg("ip")
                .arg("-c")
                .arg(&config)
                .args(args),
            "tollgate ip",
        )
    };
    // A bad network is refused with the field named, and nothing is stored.
    let bad = Command::new(BIN)
        .args(["ip", "-c"])
        .arg(&config)
        .args(["deny", "127.0.0.300"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("cidr: "),
        "{bad:?}"
    );
    assert_eq!(ip(&["list"]), "");
    assert_eq!(
        ip(&["deny", "127.0.0.12", "--note", "scraper"]).trim(),
        "127.0.0.12/32: deny"
    );
    let since = Instant::now();
    assert!(
        eventually_async(Duration::from_secs(1), || async {
            send().await.unwrap().status() == 403
        })
        .await,
        "not denied within a second"
    );
    let took = since.elapsed();
    assert!(took < Duration::from_secs(1), "{took:?}");
    let listed = ip(&["list"]);
    assert!(
        listed.starts_with("127.0.0.12/32\tdeny\t") && listed.trim_end().ends_with("\tscraper"),
        "{listed}"
    );
    ip(&["remove", "127.0.0.12/32"]);
    assert!(
        eventually_async(Duration::from_secs(1), || async {
            send().await.unwrap().status() == 200
        })
        .await
    );
    let query = tollgate::state::AuditQuery {
        limit: 10,
        ..Default::default()
    };
    let (audit, _) = gw.gateway.stores.database().audit(&query).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(actions, ["ip_rule.remove", "ip_rule.deny"]);
    assert!(audit.iter().all(|a| a.actor.starts_with("cli:")));
}

/// SIGHUP reloads the config file. The file is changed through a hard link in another
/// directory, which the file watcher (it watches the config's directory) does not see, so the
/// change can only come into service through the signal.
#[tokio::test]
async fn sighup_reloads_a_change_the_file_watcher_did_not_see() {
    let mock = MockUpstream::start().await;
    let port = free_port();
    let yaml = config_yaml(&[mock.url()], "").replacen(
        "listen: 127.0.0.1:0",
        &format!("listen: 127.0.0.1:{port}"),
        1,
    );
    let (watched, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let path = watched.path().join("gw.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let link = elsewhere.path().join("same-file.yaml");
    std::fs::hard_link(&path, &link).unwrap();
    let child = run_binary(&path, port).await;
    let with_key = |key: &'static str| {
        client()
            .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
            .bearer_auth(key)
            .json(&chat_body(false))
            .send()
    };
    const NEW_KEY: &str = "sk-added-by-sighup";
    assert_eq!(with_key(NEW_KEY).await.unwrap().status(), 401);
    // A second key, written in place through the other name (same inode).
    let edited = yaml.replace(
        "      key: sk-test-client-key\n",
        &format!("      key: sk-test-client-key\n    - name: added\n      key: {NEW_KEY}\n"),
    );
    assert_ne!(edited, yaml);
    std::fs::write(&link, &edited).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), edited);
    // Well past the watcher's debounce: nothing reloaded on its own.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(with_key(NEW_KEY).await.unwrap().status(), 401);
    signal(&child, "-HUP");
    let reloaded = eventually_async(Duration::from_secs(5), || async {
        with_key(NEW_KEY).await.unwrap().status() == 200
    })
    .await;
    assert!(reloaded, "SIGHUP did not bring the new key into service");
    assert_eq!(with_key(CLIENT_KEY).await.unwrap().status(), 200);
}

/// The access log (`logging.access_log`, JSON on stderr): one line per request, written when it
/// ends, with the outcome that happened, for a request that completed, one refused, one its
/// client abandoned mid-stream and one whose upstream went silent mid-stream.
#[tokio::test]
async fn the_access_log_has_one_line_per_request_with_its_fields_and_outcome() {
    let mock = MockUpstream::start().await;
    let port = free_port();
    let yaml = config_yaml(&[mock.url()], "  timeouts:\n    idle: 500ms\n")
        .replacen(
            "listen: 127.0.0.1:0",
            &format!("listen: 127.0.0.1:{port}"),
            1,
        )
        .replace(
            "logging:\n  access_log: false\n",
            "logging:\n  access_log: true\n",
        )
        // A strict token limit, large enough to stop only the stream that asks to be cut.
        + "limits:\n  tokens:\n    - {name: strict, by: key, tokens: 1000000/m, enforce: strict}\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.yaml");
    std::fs::write(&path, yaml).unwrap();
    let child = spawn_binary(&path, port, "info", Stdio::piped()).await;
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let id = |r: &reqwest::Response| r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let http = client();

    let done = post_chat(&http, &url, CLIENT_KEY).await;
    assert_eq!(done.status(), 200);
    let complete = id(&done);
    done.bytes().await.unwrap();

    let bad = post_chat(&http, &url, "sk-nobody").await;
    assert_eq!(bad.status(), 401);
    let refused = id(&bad);

    let mut left = stream_at(&url, 50, 100).await;
    let client_aborted = id(&left);
    assert!(left.chunk().await.unwrap().is_some());
    drop(left);

    let stalled = http
        .post(&url)
        .bearer_auth(CLIENT_KEY)
        .header("x-mock-stall-after", "2")
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    let upstream_aborted = id(&stalled);
    let _ = stalled.bytes().await;

    // A stream that passes its 3-token budget is cut by the strict limit.
    let over = http
        .post(&url)
        .bearer_auth(CLIENT_KEY)
        .header("x-mock-events", "50")
        .header("x-mock-delay-ms", "10")
        .json(&serde_json::json!({"model": "m", "stream": true, "max_tokens": 3, "messages": []}))
        .send()
        .await
        .unwrap();
    let cut = id(&over);
    let _ = over.bytes().await;

    // Every request has ended; let the last lines out, then stop the gateway to read its log.
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&child, "-TERM");
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("exits")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["target"] == "access")
        .collect();
    let line = |rid: &str| {
        let found: Vec<_> = lines.iter().filter(|l| l["request_id"] == rid).collect();
        assert_eq!(
            found.len(),
            1,
            "{rid} logged {} times:\n{stderr}",
            found.len()
        );
        found[0].clone()
    };
    assert_eq!(lines.len(), 5, "one line per request:\n{stderr}");
    for (rid, status, outcome) in [
        (&complete, 200, "complete"),
        (&refused, 401, "refused"),
        (&client_aborted, 200, "client_aborted"),
        (&upstream_aborted, 200, "upstream_aborted"),
        (&cut, 200, "cut"),
    ] {
        let l = line(rid);
        assert_eq!(
            (l["status"].as_u64(), l["outcome"].as_str()),
            (Some(status), Some(outcome)),
            "{l}"
        );
        assert_eq!(l["method"], "POST", "{l}");
        assert_eq!(l["path"], "/v1/chat/completions", "{l}");
        assert_eq!(l["client_ip"], "127.0.0.1", "{l}");
        assert!(l["total_ms"].as_f64().is_some_and(|t| t > 0.0), "{l}");
        if outcome == "cut" {
            assert_eq!(l["error"], "token_limit_exceeded", "{l}");
        }
        if outcome == "refused" {
            assert_eq!(l["error"], "invalid_api_key", "{l}");
            assert!(l.get("upstream").is_none() && l.get("key").is_none(), "{l}");
        } else {
            assert_eq!(l["upstream"], "u0", "{l}");
            assert_eq!(l["route"], "/v1/", "{l}");
            assert!(l["key"].as_str().is_some_and(|k| k.len() == 8), "{l}");
            assert!(l["first_byte_ms"].as_f64().is_some(), "{l}");
        }
    }
    let l = line(&complete);
    assert!(l["input_tokens"].as_u64().is_some_and(|n| n > 0), "{l}");
    // The gateway's first upstream request opened its connection: the connect time is reported.
    assert!(
        l["upstream_connect_ms"].as_f64().is_some_and(|t| t > 0.0),
        "{l}"
    );
    assert!(l["bytes_out"].as_u64().is_some_and(|n| n > 0), "{l}");
    // The key is never logged whole.
    assert!(!stderr.contains(CLIENT_KEY));
}

/// A plugin whose breaker is open refuses every request at once; a flood of such requests must
/// not become a flood of log lines (each was an ERROR line: 337k lines in 45 s). The refusals
/// are counted in the metrics; the log has the failures that opened the breaker, the opening,
/// and one summary line per 10 s.
#[tokio::test]
async fn an_open_plugin_breaker_refuses_a_flood_without_a_log_line_per_request() {
    let mock = MockUpstream::start().await;
    let (port, admin_port) = (free_port(), free_port());
    let yaml = policy_config_yaml(
        &[mock.url()],
        &[plugin(
            "broken",
            "router",
            "tollgate_hostile",
            "{behaviour: trap}",
        )],
        &["broken"],
    )
    .replacen(
        "listen: 127.0.0.1:0",
        &format!("listen: 127.0.0.1:{port}"),
        1,
    )
    .replace(
        "admin:\n  listen: 127.0.0.1:0\n",
        &format!("admin:\n  listen: 127.0.0.1:{admin_port}\n"),
    )
    .replace(
        "    on_error: deny\n",
        "    on_error: deny\n    limits: {breaker_failures: 3, breaker_window: 10s, breaker_cooldown: 1h}\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut child = spawn_binary(&path, port, "info", Stdio::piped()).await;
    // Read as it comes: a gateway that logs per request would otherwise block on a full pipe.
    let mut log = child.stderr.take().unwrap();
    let reader = tokio::spawn(async move {
        let mut all = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut log, &mut all)
            .await
            .unwrap();
        all
    });
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let http = client();
    const FLOOD: usize = 300;
    for _ in 0..FLOOD {
        let resp = post_chat(&http, &url, CLIENT_KEY).await;
        assert_eq!(resp.status(), 503);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "policy_error");
    }
    let metrics = reqwest::get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rejected = metrics
        .lines()
        .find(|l| l.starts_with("tollgate_plugin_rejected_total{") && l.contains("\"broken\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(
        rejected,
        Some((FLOOD - 3) as f64),
        "every refusal after the 3 failures is counted:\n{metrics}"
    );
    signal(&child, "-TERM");
    tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits")
        .unwrap();
    let stderr = reader.await.unwrap();
    let stderr = String::from_utf8_lossy(&stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let about_requests = lines
        .iter()
        .filter(|l| l["level"] == "ERROR" || l["level"] == "WARN")
        .count();
    // 3 failures (a warn each from the runtime and an error each from the pipeline), the
    // opening, and the first summary of refused calls.
    assert!(
        about_requests <= 3 * 2 + 1 + 1,
        "{about_requests} warn/error lines for {FLOOD} refused requests:\n{stderr}"
    );
    let summaries: Vec<_> = lines.iter().filter(|l| l["refused"].is_u64()).collect();
    assert_eq!(summaries.len(), 1, "one summary within 10 s:\n{stderr}");
}

/// `tollgate health`: exit 0 on a 200, 1 with the reason otherwise (`/ready` while draining, a
/// closed port, a server that never answers within `--timeout`).
#[tokio::test(flavor = "multi_thread")]
async fn health_exits_zero_only_on_a_200() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&config_yaml(&[mock.url()], "")).await;
    let health = |url: String, timeout: &'static str| {
        tokio::task::spawn_blocking(move || {
            let out = Command::new(BIN)
                .args(["health", "--url", &url, "--timeout", timeout])
                .env_clear()
                .envs(child_env())
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // The exit code itself: 1, not a panic's 101.
            (out.status.code(), text)
        })
    };
    let (code, text) = health(gw.url("/health"), "3s").await.unwrap();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("answered 200"), "{text}");
    let (code, text) = health(gw.url("/ready"), "3s").await.unwrap();
    assert_eq!(code, Some(0), "{text}");

    gw.gateway.start_draining();
    let (code, text) = health(gw.url("/ready"), "3s").await.unwrap();
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("answered 503") && text.contains("draining"),
        "{text}"
    );

    let closed = format!("http://127.0.0.1:{}/health", free_port());
    let (code, text) = health(closed, "3s").await.unwrap();
    assert_eq!(code, Some(1), "{text}");

    // Accepts, never answers: bounded by --timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/health", silent.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let start = Instant::now();
    let (code, text) = health(url, "1s").await.unwrap();
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("no answer within 1s"), "{text}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    hold.abort();

    let (code, text) = health("not a url".into(), "1s").await.unwrap();
    assert_eq!(code, Some(1), "{text}");
}

/// On a host, the CLI reads the deployment's environment file as the service does
/// (`TOLLGATE_ENV_FILE`, default `/etc/tollgate/env`): with no `--config` and from any directory,
/// `key-id` uses the deployed secret and `usage` the deployed database. It refuses rather than
/// guess: an unreadable file, the development secret on such a host, and an embedded database
/// that does not exist (it would create an empty one).
#[tokio::test]
async fn the_cli_reads_the_deployments_environment_file() {
    let etc = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let config = etc.path().join("policies.yaml");
    std::fs::copy(repo_root().join("policies.example.yaml"), &config).unwrap();
    let db = state.path().join("tollgate.db");
    let env_file = etc.path().join("env");
    let secret = "a-deployed-secret-0123456789abcdef";
    std::fs::write(
        &env_file,
        format!(
            "# written by scripts/install.sh\nTOLLGATE_CONFIG={}\nTOLLGATE_SECRET={secret}\nTOLLGATE_DATABASE=\"sqlite://{}\"\n",
            config.display(),
            db.display()
        ),
    )
    .unwrap();
    let cli = |args: &[&str], env_file: &Path, stdin: &str| {
        let ran = run_with_stdin(
            Command::new(BIN)
                .args(args)
                .current_dir(elsewhere.path())
                .env_clear()
                .envs(child_env())
                .env("TOLLGATE_ENV_FILE", env_file),
            stdin,
        );
        (ran.ok, ran.stdout.trim().to_owned(), ran.stderr)
    };

    let (ok, id, err) = cli(&["key-id"], &env_file, "sk-tollgate-demo\n");
    assert!(ok, "{err}");
    let config_loaded = tollgate::Config::parse(
        &std::fs::read_to_string(&config).unwrap(),
        "policies.yaml",
        Box::new(move |k| (k == "TOLLGATE_SECRET").then(|| secret.to_owned())),
    )
    .unwrap();
    assert_eq!(
        id,
        tollgate::KeyRing::standalone(&config_loaded.auth)
            .id_of("sk-tollgate-demo")
            .to_hex(),
        "the id under the secret of the environment file"
    );

    // The database the file names does not exist yet: refused, and not created.
    let (ok, _, err) = cli(&["usage"], &env_file, "");
    assert!(!ok);
    assert!(
        err.contains(&format!("no database at {}", db.display())),
        "{err}"
    );
    assert!(!db.exists());
    // Once the gateway (here: migrate) has created it, the same command reads it.
    let (ok, _, err) = cli(&["migrate"], &env_file, "");
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&["usage"], &env_file, "");
    assert!(ok, "{err}");
    assert!(out.starts_with("name\trequests"), "{out}");

    // A host whose file lacks TOLLGATE_SECRET: the example's development default would apply.
    let no_secret = etc.path().join("env-without-secret");
    std::fs::write(
        &no_secret,
        format!("TOLLGATE_CONFIG={}\n", config.display()),
    )
    .unwrap();
    let (ok, _, err) = cli(&["key-id"], &no_secret, "sk-tollgate-demo\n");
    assert!(!ok);
    assert!(
        err.contains("auth.secret is the development default"),
        "{err}"
    );

    // A file that cannot be read (here: a directory) stops every command that reads the config.
    let (ok, _, err) = cli(&["key-id"], etc.path(), "sk-tollgate-demo\n");
    assert!(!ok);
    assert!(err.contains("cannot read the environment file"), "{err}");
}
