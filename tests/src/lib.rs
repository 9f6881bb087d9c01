//! Test harness: a controllable mock OpenAI-compatible upstream, and the gateway started in process
//! on a loopback port. Everything talks real HTTP over loopback.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

pub mod mock_upstream;
pub mod oidc_provider;
pub mod plugins;
pub mod services;
pub mod tools;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tollgate::Listeners;
use tollgate::{Config, Gateway};

pub use mock_upstream::MockUpstream;

/// The key every test config accepts.
pub const CLIENT_KEY: &str = "sk-test-client-key";
/// The credential test configs give upstreams.
pub const UPSTREAM_CREDENTIAL: &str = "sk-upstream-credential";

/// A loopback port that refuses every connection, and stays so while this lives: bound (so no
/// other test can take it) but not listening. Closing a listener after noting its port would let
/// a test running in parallel be given the same port.
pub struct DeadPort {
    addr: std::net::SocketAddr,
    /// Held only to keep the port.
    _socket: tokio::net::TcpSocket,
}

impl DeadPort {
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        Self {
            addr: socket.local_addr().unwrap(),
            _socket: socket,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Default for DeadPort {
    fn default() -> Self {
        Self::new()
    }
}

/// A config with one route `/v1/` over the given upstream URLs (named `u0`, `u1`, …), plus
/// `extra_server` lines under `server:` (indented by the caller with 2 spaces).
pub fn config_yaml(upstream_urls: &[String], extra_server: &str) -> String {
    let mut upstreams = String::new();
    let mut names = Vec::new();
    for (i, url) in upstream_urls.iter().enumerate() {
        upstreams.push_str(&format!(
            "  - name: u{i}\n    url: {url}\n    credential: {UPSTREAM_CREDENTIAL}\n    max_fails: 100\n"
        ));
        names.push(format!("u{i}"));
    }
    format!(
        "server:\n  listen: 127.0.0.1:0\n{extra_server}\nadmin:\n  listen: 127.0.0.1:0\nauth:\n  secret: test-secret-0123456789\n  keys:\n    - name: tester\n      key: {CLIENT_KEY}\nupstreams:\n{upstreams}routes:\n  - path_prefix: /v1/\n    upstreams: [{}]\nlogging:\n  access_log: false\n",
        names.join(", ")
    )
}

/// A gateway serving in this process.
pub struct TestGateway {
    pub addr: SocketAddr,
    /// The admin plane's listener (tests bind it on a free port), unless the config turns it off.
    pub admin_addr: Option<SocketAddr>,
    pub gateway: Arc<Gateway>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    /// Holds the embedded database of a gateway started from a string.
    _dir: Option<tempfile::TempDir>,
}

impl TestGateway {
    /// Starts from a config string. Relative paths (the default SQLite file) resolve in a fresh
    /// temporary directory, so gateways never share state by accident.
    pub async fn start(yaml: &str) -> Self {
        let mut config =
            Config::parse(yaml, "test.yaml", Box::new(|_| None)).unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().expect("temp dir");
        config.base_dir = dir.path().to_path_buf();
        let mut gw = Self::start_config(config, None).await;
        gw._dir = Some(dir);
        gw
    }

    /// Starts from a config string whose relative paths (plugins) resolve against `base`.
    pub async fn start_in(yaml: &str, base: &Path) -> Self {
        let mut config =
            Config::parse(yaml, "test.yaml", Box::new(|_| None)).unwrap_or_else(|e| panic!("{e}"));
        config.base_dir = base.to_path_buf();
        Self::start_config(config, None).await
    }

    /// Starts from a config file and reloads it (and its plugins) when they change, as `run` does.
    pub async fn start_file(path: &Path) -> Self {
        let config = Config::load(path).unwrap_or_else(|e| panic!("{e}"));
        Self::start_config(config, Some(path)).await
    }

    async fn start_config(mut config: Config, reload_from: Option<&Path>) -> Self {
        // Tests run many gateways at once: the admin listener gets a free port, not 8318 (a
        // test that needs to know its port in advance, for an SSO redirect, names one).
        if config.admin.listen.0.port() == 8318 {
            config.admin.listen = tollgate::config::ListenAddr("127.0.0.1:0".parse().unwrap());
        }
        let gateway = Gateway::new(&config)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if let Some(path) = reload_from {
            // Runs until the test's runtime ends.
            drop(tollgate::reload::spawn(
                gateway.clone(),
                path.to_path_buf(),
                &config,
            ));
        }
        let listeners = Listeners::bind(&config).await.expect("gateway binds");
        let addr = listeners.data_addr();
        let admin_addr = listeners.admin_addr();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(listeners.serve(gateway.clone(), async {
            let _ = rx.await;
        }));
        Self {
            addr,
            admin_addr,
            gateway,
            shutdown: Some(tx),
            task,
            _dir: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A streaming chat completion ([`stream_at`]) to this gateway.
    pub async fn stream(&self, events: u32, delay_ms: u64) -> reqwest::Response {
        stream_at(&self.url("/v1/chat/completions"), events, delay_ms).await
    }

    /// The admin plane's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let admin = self.admin_addr.expect("the admin plane is on");
        let resp = client()
            .get(format!("http://{admin}/metrics"))
            .send()
            .await
            .expect("the admin plane answers");
        assert_eq!(resp.status(), 200);
        resp.text().await.expect("a text body")
    }

    /// One non-streaming chat completion with the test key.
    pub async fn chat(&self) -> reqwest::Response {
        self.chat_at("/v1/chat/completions").await
    }

    /// A chat completion request with the test key, to `path` on the data plane.
    pub async fn chat_at(&self, path: &str) -> reqwest::Response {
        post_chat(&client(), &self.url(path), CLIENT_KEY).await
    }

    /// Starts the graceful shutdown; the returned handle completes when the server has stopped.
    pub fn begin_shutdown(&mut self) -> &mut JoinHandle<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        &mut self.task
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A reqwest client that sends the test key.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().build().expect("client builds")
}

/// A client whose connections come from `local` (any 127.x.y.z works on loopback), so one test
/// can be several client addresses.
pub fn client_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(Some(local.parse().unwrap()))
        .build()
        .unwrap()
}

pub fn chat_body(stream: bool) -> serde_json::Value {
    serde_json::json!({"model": "gpt-test", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

/// A non-streamed chat completion request with `key`, from `http` to `url`.
pub async fn post_chat(http: &reqwest::Client, url: &str, key: &str) -> reqwest::Response {
    http.post(url)
        .bearer_auth(key)
        .json(&chat_body(false))
        .send()
        .await
        .expect("the gateway answers")
}

/// Reads an SSE response, returning each event's data with the time it arrived after `start`.
pub async fn read_events(
    resp: reqwest::Response,
    start: Instant,
) -> Result<Vec<(Duration, String)>, reqwest::Error> {
    use futures_util::StreamExt;
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut events = Vec::new();
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk?);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event)
                .trim()
                .trim_start_matches("data: ")
                .to_owned();
            events.push((start.elapsed(), text));
        }
    }
    Ok(events)
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, written as PEM files.
pub struct TestCert {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    pub key_pem: String,
}

impl TestCert {
    pub fn generate() -> Self {
        let key = rcgen::KeyPair::generate().expect("key pair");
        let params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("params");
        let cert = params.self_signed(&key).expect("self-signed");
        Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
        }
    }

    /// One valid from yesterday until `days` from now (negative: already expired), to the day.
    pub fn expiring_in(days: i64) -> Self {
        let ymd = |offset_days: i64| {
            let now = std::time::SystemTime::now();
            let t = if offset_days >= 0 {
                now + std::time::Duration::from_secs(offset_days as u64 * 86_400)
            } else {
                now - std::time::Duration::from_secs(offset_days.unsigned_abs() * 86_400)
            };
            let text = humantime::format_rfc3339_seconds(t).to_string();
            let num = |r: std::ops::Range<usize>| text[r].parse::<i32>().expect("a date");
            rcgen::date_time_ymd(num(0..4), num(5..7) as u8, num(8..10) as u8)
        };
        let key = rcgen::KeyPair::generate().expect("key pair");
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
        params.not_before = ymd(days.min(0) - 2);
        params.not_after = ymd(days);
        let cert = params.self_signed(&key).expect("self-signed");
        Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes `cert.pem` and `key.pem` in `dir` (atomically, as certbot does), returning the paths.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        for (path, text) in [(&cert, &self.cert_pem), (&key, &self.key_pem)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).expect("write pem");
            std::fs::rename(&tmp, path).expect("rename pem");
        }
        (cert, key)
    }
}

/// Polls `cond` every 20 ms until it holds or `within` passes.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// Like [`eventually`], for a condition that has to await (e.g. a request).
pub async fn eventually_async<F: Future<Output = bool>>(
    within: Duration,
    mut cond: impl FnMut() -> F,
) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond().await
}

/// A plugin entry for [`policy_config_yaml`].
pub struct PluginDef<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    /// Crate name of the built component, e.g. `tollgate_round_robin`.
    pub wasm: &'a str,
    /// Plugin config as inline YAML/JSON.
    pub config: &'a str,
    pub on_error: &'a str,
}

/// The repository's root directory (the parent of the tests crate).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the repository")
        .to_path_buf()
}

/// A plugin entry with `on_error: deny`.
pub fn plugin<'a>(name: &'a str, kind: &'a str, wasm: &'a str, config: &'a str) -> PluginDef<'a> {
    PluginDef {
        name,
        kind,
        wasm,
        config,
        on_error: "deny",
    }
}

/// [`config_yaml`] plus `plugins:` and the route's `policies:` (in this order).
pub fn policy_config_yaml(
    upstream_urls: &[String],
    plugins: &[PluginDef<'_>],
    policies: &[&str],
) -> String {
    let mut yaml = config_yaml(upstream_urls, "").replace(
        "\nlogging:",
        &format!(
            "\n    policies: [{}]\n    max_attempts: 3\nlogging:",
            policies.join(", ")
        ),
    );
    yaml.push_str("plugins:\n");
    for p in plugins {
        yaml.push_str(&format!(
            "  - name: {}\n    kind: {}\n    module: {}\n    config: {}\n    on_error: {}\n",
            p.name,
            p.kind,
            plugins::wasm(p.wasm).display(),
            p.config,
            p.on_error
        ));
    }
    yaml
}

/// A streaming chat completion with the test key to `url`, asking the mock upstream for
/// `events` events `delay_ms` apart; on a client of its own (its own connection).
pub async fn stream_at(url: &str, events: u32, delay_ms: u64) -> reqwest::Response {
    client()
        .post(url)
        .bearer_auth(CLIENT_KEY)
        .header("x-mock-events", events.to_string())
        .header("x-mock-delay-ms", delay_ms.to_string())
        .json(&chat_body(true))
        .send()
        .await
        .expect("the gateway answers")
}

/// Opens an HTTP/2 streaming chat completion on `h2` (a connection to the gateway at `addr`) with
/// the test key, asking the mock upstream for `events` events `delay_ms` apart; the answer's
/// future.
pub fn h2_chat_stream(
    h2: &mut h2::client::SendRequest<bytes::Bytes>,
    addr: SocketAddr,
    events: u32,
    delay_ms: u64,
) -> h2::client::ResponseFuture {
    let req = http::Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .header("content-type", "application/json")
        .header("x-mock-events", events.to_string())
        .header("x-mock-delay-ms", delay_ms.to_string())
        .body(())
        .expect("a valid request");
    let (resp, mut body) = h2
        .send_request(req, false)
        .expect("the connection takes a stream");
    body.send_data(
        bytes::Bytes::from_static(br#"{"model":"m","stream":true,"messages":[]}"#),
        true,
    )
    .expect("the body is sent");
    resp
}

/// A free loopback port (free when asked; a test binds it soon after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free loopback port")
        .local_addr()
        .expect("a bound socket has an address")
        .port()
}

/// The environment a child `tollgate` process keeps when a test clears the rest: the coverage
/// profile's path under `scripts/coverage.sh`, so child processes are measured too.
pub fn child_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k == "LLVM_PROFILE_FILE")
        .collect()
}

/// What a finished command said.
pub struct Ran {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// A chat completion request with `body`, as JSON with the test key, to `/v1/chat/completions`.
pub async fn post_chat_json(gw: &TestGateway, body: &serde_json::Value) -> reqwest::Response {
    client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(body)
        .send()
        .await
        .expect("the gateway answers")
}

/// The model ids `GET /v1/models` lists with `key`, in order.
pub async fn listed_models(gw: &TestGateway, key: &str) -> Vec<String> {
    let list: serde_json::Value = client()
        .get(gw.url("/v1/models"))
        .bearer_auth(key)
        .send()
        .await
        .expect("the gateway answers")
        .json()
        .await
        .expect("a JSON listing");
    list["data"]
        .as_array()
        .unwrap_or_else(|| panic!("not a listing: {list}"))
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect()
}

/// Runs `cmd`, which must succeed (else the test fails with its stderr, after `what`); its
/// stdout.
pub fn run_ok(cmd: &mut std::process::Command, what: &str) -> String {
    let out = cmd.output().expect("the command starts");
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` with `stdin` written to it; its exit status and output.
pub fn run_with_stdin(cmd: &mut std::process::Command, stdin: &str) -> Ran {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    // A command that does not read its input may exit first: a broken pipe is its business.
    if let Err(e) = child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin.as_bytes())
    {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe,
            "writing stdin: {e}"
        );
    }
    let out = child.wait_with_output().expect("the command ends");
    Ran {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Waits until every one of `ports` accepts; if they do not within 20 s, kills `child` and fails
/// with what it logged (its stderr must be piped).
pub async fn wait_started(child: &mut tokio::process::Child, ports: &[u16]) {
    let ready = eventually(Duration::from_secs(20), || {
        ports
            .iter()
            .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok())
    })
    .await;
    if !ready {
        let _ = child.start_kill();
        let mut log = String::new();
        if let Some(mut err) = child.stderr.take() {
            use tokio::io::AsyncReadExt;
            let _ = err.read_to_string(&mut log).await;
        }
        panic!("did not start listening on {ports:?}:\n{log}");
    }
}

/// Logs in to the admin API at `admin` (`host:port`) and returns the session token.
pub async fn admin_token(
    http: &reqwest::Client,
    admin: &str,
    user: &str,
    password: &str,
) -> String {
    let resp = http
        .post(format!("http://{admin}/admin/api/login"))
        .json(&serde_json::json!({"username": user, "password": password}))
        .send()
        .await
        .expect("the admin plane answers");
    assert_eq!(resp.status(), 200, "login as {user}");
    let body: serde_json::Value = resp.json().await.expect("a JSON body");
    body["token"].as_str().expect("a token").to_owned()
}

/// `GET http://{admin}{path}` with `token`, as JSON.
pub async fn admin_get(
    http: &reqwest::Client,
    admin: &str,
    token: &str,
    path: &str,
) -> serde_json::Value {
    http.get(format!("http://{admin}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("the admin plane answers")
        .json()
        .await
        .expect("a JSON body")
}

/// A webhook receiver on loopback: its URL, and the JSON documents it accepted (204). The first
/// `fail_first` deliveries are answered 500, so a sender must retry; `attempts` counts them all.
pub struct WebhookSink {
    pub url: String,
    pub received: Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    pub attempts: Arc<std::sync::atomic::AtomicUsize>,
}

impl WebhookSink {
    pub async fn start(fail_first: usize) -> Self {
        use std::sync::atomic::Ordering;
        let received: Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Arc::default();
        let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let app = {
            let (received, attempts) = (received.clone(), attempts.clone());
            axum::Router::new().route(
                "/hook",
                axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
                    let (received, attempts) = (received.clone(), attempts.clone());
                    async move {
                        if attempts.fetch_add(1, Ordering::SeqCst) < fail_first {
                            return http::StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        received.lock().expect("not poisoned").push(v);
                        http::StatusCode::NO_CONTENT
                    }
                }),
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let url = format!("http://{}/hook", listener.local_addr().expect("bound"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url,
            received,
            attempts,
        }
    }

    /// What was accepted so far.
    pub fn received(&self) -> Vec<serde_json::Value> {
        self.received.lock().expect("not poisoned").clone()
    }
}
