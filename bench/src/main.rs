//! Load generator for `bench/run.sh`. Two workloads, each against one target URL:
//!
//! - `rps`: `concurrency` keep-alive HTTP/1.1 connections each send small non-streaming
//!   `POST /v1/chat/completions` back to back for `duration`; prints requests/s and p50/p99 latency.
//! - `sse`: `streams` concurrent streaming requests, each asking the mock upstream for `events`
//!   events `delay_ms` apart; prints time-to-first-event and inter-event gap percentiles, and how
//!   many reads carried more than one event (coalescing).
//!
//! Output is one JSON object per run on stdout so the script can compute ratios.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand)]
enum Workload {
    Rps {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value = "10")]
        seconds: u64,
        /// Client key; with `--keys N`, `{n}` in it is replaced by the connection's number modulo
        /// N, so N distinct keys share the load.
        #[arg(long, default_value = "")]
        key: String,
        #[arg(long, default_value_t = 1)]
        keys: usize,
        /// Total requests per second to offer, spread evenly over the connections; 0 = as fast
        /// as the target answers. A fixed rate below every target's capacity makes CPU per
        /// request comparable (at saturation, busier targets batch more work per wakeup).
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
    /// Micro-benchmark: time of one call into each built-in policy kind through the real runtime.
    Policy {
        /// Directory with the built plugin components.
        #[arg(long, default_value = "plugins/target/wasm32-wasip2/release")]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 20_000)]
        iterations: u32,
    },
    /// Micro-benchmark: the in-process cache (`MemoryKv`) holding N live entries (1 h TTL, as
    /// session-affinity keys), for N from 1k to 1M: the time of a new key's insert, of a set
    /// and a compare-and-set of existing keys, and of a read. Flat across N means no call scans
    /// the map.
    Kv {
        /// Operations timed at each size.
        #[arg(long, default_value_t = 50_000)]
        ops: usize,
    },
    /// The floor: a bare hyper proxy (no pipeline, no policy, no limits, no metrics) with
    /// Tollgate's thread layout (one single-threaded runtime per core on one shared socket) and
    /// Tollgate's upstream client, one per thread. What it costs per request is what hyper and
    /// tokio cost; the gap between it and Tollgate is what Tollgate adds.
    Floor {
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Upstream base URL, e.g. http://127.0.0.1:19100
        #[arg(long)]
        upstream: String,
        /// Threads; 0 = one per core.
        #[arg(long, default_value_t = 0)]
        workers: usize,
        /// A listener per thread with `SO_REUSEPORT` (the kernel spreads connections) instead
        /// of one socket shared by every thread.
        #[arg(long)]
        reuseport: bool,
        /// Reach the upstream through hyper-util's pooled client (a connection task per
        /// connection, fed through a channel) instead of Tollgate's `UpstreamClient` (which
        /// drives a plain-HTTP connection in the request's own task).
        #[arg(long)]
        pooled: bool,
    },
    /// Fills the request log of the database a config names with ROWS requests (200 keys, 4
    /// models, 5% refusals, 3 upstreams, a week of traffic oldest first), through the stores'
    /// own writer, `--per-flush` requests a flush (as a gateway at that many requests a second
    /// with 1 s flushes). Prints the id of the 1,000th oldest request and the request id of the
    /// middle one, for the paging bench.
    FillLog {
        #[arg(long)]
        config: std::path::PathBuf,
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        #[arg(long, default_value_t = 5_000)]
        per_flush: u64,
    },
    Sse {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 200)]
        streams: usize,
        #[arg(long, default_value_t = 20)]
        events: usize,
        #[arg(long, default_value_t = 50)]
        delay_ms: u64,
        #[arg(long, default_value = "")]
        key: String,
        /// 0: one stream per client (a batch). More: each client streams again on its
        /// connection until this many seconds have passed (a sustained rate).
        #[arg(long, default_value_t = 0)]
        seconds: u64,
    },
}

/// `tollgate-bench fill-log`.
async fn fill_log(path: &std::path::Path, rows: u64, per_flush: u64) -> anyhow::Result<()> {
    use std::sync::Arc;
    use tollgate::state::{
        Attempt, ClientKey, KeyId, KeySource, RequestEntry, RequestQuery, Stores,
    };
    let config = tollgate::Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let stores = Stores::open(
        &config.storage,
        &config.base_dir,
        &config.alerts,
        Arc::new(tollgate::UpstreamClient::new(
            std::time::Duration::from_secs(1),
        )),
    )
    .await?;
    let keys: Vec<Arc<ClientKey>> = (1..=200u32)
        .map(|i| {
            let mut id = [0u8; 32];
            id[28..].copy_from_slice(&i.to_be_bytes());
            let name = format!("key-{i}");
            Arc::new(ClientKey::plain(KeyId(id), &name, KeySource::Database))
        })
        .collect();
    let models: Vec<Arc<str>> = ["gpt-4o", "gpt-4o-mini", "claude-3-haiku", "llama-3"]
        .map(Arc::from)
        .to_vec();
    let upstreams: Vec<Arc<str>> = ["a", "b", "c"].map(Arc::from).to_vec();
    let refusals: [(u16, &str, &str); 5] = [
        (401, "invalid_api_key", "auth"),
        (429, "rate_limit_exceeded", "limits:per-ip"),
        (403, "ip_not_allowed", "plugin:bind"),
        (403, "model_not_allowed", "entitlements"),
        (503, "service_unavailable", "maintenance"),
    ];
    let route: Arc<str> = "/v1/".into();
    let now = tollgate::state::unix_ms();
    let mut middle = String::new();
    let started = Instant::now();
    for i in 0..rows {
        let request_id = format!("{:032x}", fastrand::u128(..));
        if i == rows / 2 {
            middle.clone_from(&request_id);
        }
        let refused = fastrand::f64() < 0.05;
        let (status, error, by) = if refused {
            let r = refusals[fastrand::usize(..refusals.len())];
            (r.0, Some(r.1), Some(r.2))
        } else {
            (200, None, None)
        };
        let upstream = (!refused).then(|| upstreams[fastrand::usize(..3)].clone());
        let attempts: Vec<Attempt> = upstream
            .iter()
            .map(|u| Attempt {
                upstream: u.clone(),
                status: 200,
                error: None,
                ms: fastrand::u32(20..900),
            })
            .collect();
        let key = &keys[fastrand::usize(..keys.len())];
        stores.record_request(RequestEntry {
            at_ms: now - (rows - i) * 600,
            request_id: &request_id,
            key: Some(key),
            client_ip: std::net::IpAddr::from([10, 0, (i % 256) as u8, ((i / 256) % 256) as u8]),
            method: "POST",
            path: "/v1/chat/completions",
            route: Some(&route),
            model: Some(&models[fastrand::usize(..4)]),
            served_model: None,
            upstream: upstream.as_ref(),
            attempts: &attempts,
            status,
            outcome: if refused { "refused" } else { "complete" },
            error,
            answered_by: by,
            first_byte_us: Some(fastrand::u64(1_000..900_000)),
            duration_us: fastrand::u64(2_000..9_000_000),
            tokens: (!refused).then_some((120, 240, 0)),
            partial: false,
            cost_nanos: (!refused).then_some(1_200),
            bytes_in: 512,
            bytes_out: 2048,
            decisions: String::new(),
            bodies: None,
        });
        if (i + 1) % per_flush == 0 || i + 1 == rows {
            stores.flush().await;
        }
    }
    let written = started.elapsed();
    let oldest = stores
        .database()
        .requests_after(&RequestQuery::default(), 0, 1000)
        .await?;
    stores.shutdown().await;
    eprintln!(
        "{rows} requests written in {:.1} s ({:.2} µs each, encoding and writing)",
        written.as_secs_f64(),
        written.as_secs_f64() * 1e6 / rows as f64
    );
    println!("{} {middle}", oldest.last().map_or(0, |r| r.id),);
    Ok(())
}

/// `tollgate-bench kv`: one JSON line per size with nanoseconds per operation.
fn kv(ops: usize) {
    const HOUR_MS: u64 = 3_600_000;
    for size in [1_000usize, 10_000, 100_000, 1_000_000] {
        let kv = tollgate::state::MemoryKv::default();
        for i in 0..size {
            kv.set_now(&format!("affinity:{i}"), "u1", Some(HOUR_MS));
        }
        let per_op = |start: Instant| start.elapsed().as_nanos() as f64 / ops as f64;
        let start = Instant::now();
        for i in 0..ops {
            kv.set_now(&format!("new:{i}"), "u1", Some(HOUR_MS));
        }
        let insert = per_op(start);
        let start = Instant::now();
        for i in 0..ops {
            kv.set_now(&format!("affinity:{}", i % size), "u2", Some(HOUR_MS));
        }
        let set = per_op(start);
        let start = Instant::now();
        for i in 0..ops {
            kv.compare_and_set_now(&format!("new:{i}"), Some("u1"), "u3", Some(HOUR_MS));
        }
        let cas = per_op(start);
        let start = Instant::now();
        for i in 0..ops {
            std::hint::black_box(kv.get_now(&format!("affinity:{}", i % size)));
        }
        let get = per_op(start);
        println!(
            "{}",
            serde_json::json!({"entries": size, "insert_ns": insert.round(), "set_ns": set.round(), "cas_ns": cas.round(), "get_ns": get.round()})
        );
    }
}

const BODY: &str = r#"{"model":"gpt-bench","messages":[{"role":"user","content":"Say hello."}]}"#;
const STREAM_BODY: &str =
    r#"{"model":"gpt-bench","stream":true,"messages":[{"role":"user","content":"Say hello."}]}"#;
/// The same stream asked for in Anthropic's Messages shape (sent to a URL ending in
/// `/messages`, for a route that translates it: bench/transform.sh).
const STREAM_BODY_MESSAGES: &str = r#"{"model":"gpt-bench","max_tokens":256,"stream":true,"messages":[{"role":"user","content":"Say hello."}]}"#;

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(uri: &hyper::Uri) -> Result<Sender> {
    let host = uri.host().context("url host")?;
    let port = uri.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

fn request(
    uri: &hyper::Uri,
    key: &str,
    body: &'static str,
    extra: &[(&str, String)],
) -> Request<Full<Bytes>> {
    let mut b = Request::post(uri.clone())
        .header("host", uri.authority().map_or("localhost", |a| a.as_str()))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"));
    for (k, v) in extra {
        b = b.header(*k, v);
    }
    b.body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("valid request")
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

async fn rps(
    url: &str,
    concurrency: usize,
    seconds: u64,
    key: &str,
    keys: usize,
    rate: u64,
) -> Result<()> {
    let uri: hyper::Uri = url.parse()?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    // Each connection sends on its own schedule, offset so the total is even.
    let period = (rate > 0).then(|| Duration::from_secs_f64(concurrency as f64 / rate as f64));
    let mut tasks = Vec::new();
    for c in 0..concurrency {
        let uri = uri.clone();
        let key = key.replace("{n}", &format!("{:04}", c % keys.max(1)));
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(&uri).await?;
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut next =
                period.map(|p| Instant::now() + p.mul_f64(c as f64 / concurrency as f64));
            while Instant::now() < deadline {
                // Open loop: at a fixed rate, latency counts from when the request was due, so a
                // slow answer that delays the next send is charged to the target (no coordinated
                // omission).
                let mut start = Instant::now();
                if let (Some(at), Some(p)) = (next.as_mut(), period) {
                    tokio::time::sleep_until((*at).into()).await;
                    start = *at;
                    *at += p;
                }
                // A server may close a keep-alive connection at any time (nginx after
                // `keepalive_requests`): count it and reconnect.
                let outcome = async {
                    sender.ready().await?;
                    let resp = sender.send_request(request(&uri, &key, BODY, &[])).await?;
                    let ok = resp.status().is_success();
                    resp.into_body().collect().await?;
                    anyhow::Ok(ok)
                }
                .await;
                match outcome {
                    Ok(true) => latencies.push(start.elapsed()),
                    Ok(false) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        sender = connect(&uri).await?;
                    }
                }
            }
            anyhow::Ok((latencies, errors))
        }));
    }
    let began = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await??;
        all.extend(l);
        errors += e;
    }
    let elapsed = began.elapsed().as_secs_f64();
    all.sort();
    println!(
        "{}",
        serde_json::json!({"requests": all.len(), "errors": errors, "rps": all.len() as f64 / elapsed,
            "p50_ms": percentile(&all, 0.5), "p99_ms": percentile(&all, 0.99)})
    );
    Ok(())
}

/// One stream's event arrival times (after its request was sent) and its reads that carried more
/// than one event.
struct StreamRun {
    arrivals: Vec<Duration>,
    coalesced_reads: u64,
}

/// Sends one streaming request on `sender` and reads its events.
async fn one_stream(
    sender: &mut Sender,
    uri: &hyper::Uri,
    key: &str,
    extra: &[(&str, String)],
) -> Result<StreamRun> {
    sender.ready().await?;
    let start = Instant::now();
    let body = if uri.path().ends_with("/messages") {
        STREAM_BODY_MESSAGES
    } else {
        STREAM_BODY
    };
    let resp = sender.send_request(request(uri, key, body, extra)).await?;
    if !resp.status().is_success() {
        bail!("status {}", resp.status());
    }
    let mut body = resp.into_body();
    let mut run = StreamRun {
        arrivals: Vec::new(),
        coalesced_reads: 0,
    };
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        let now = start.elapsed();
        pending.extend_from_slice(&data);
        let mut in_read = 0;
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            pending.drain(..end + 2);
            run.arrivals.push(now);
            in_read += 1;
        }
        if in_read > 1 {
            run.coalesced_reads += 1;
        }
    }
    Ok(run)
}

/// `streams` clients at once, each on its own connection. With `seconds` 0, each sends one
/// stream and streams/s is the batch's size over its makespan (one late connection sets it).
/// Otherwise each client sends stream after stream on its kept-alive connection until `seconds`
/// have passed: streams/s is then a sustained rate at that concurrency.
async fn sse(
    url: &str,
    streams: usize,
    events: usize,
    delay_ms: u64,
    key: &str,
    seconds: u64,
) -> Result<()> {
    let uri: hyper::Uri = url.parse()?;
    let began = Instant::now();
    let until = began + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let uri = uri.clone();
        let key = key.to_owned();
        tasks.push(tokio::spawn(async move {
            let extra = [
                ("x-mock-events", events.to_string()),
                ("x-mock-delay-ms", delay_ms.to_string()),
            ];
            let mut runs = Vec::new();
            let mut sender = match connect(&uri).await {
                Ok(s) => s,
                Err(_) => return (runs, 1),
            };
            loop {
                match one_stream(&mut sender, &uri, &key, &extra).await {
                    Ok(run) => runs.push(run),
                    Err(_) => return (runs, 1),
                }
                if Instant::now() >= until {
                    return (runs, 0);
                }
            }
        }));
    }
    let mut ttfb = Vec::new();
    let mut gaps = Vec::new();
    let mut coalesced = 0;
    let mut total_events = 0;
    let mut completed = 0;
    // A stream the target failed (refused, reset, cut short) is counted, not fatal: at high
    // concurrency that is the figure.
    let mut failed = 0;
    for t in tasks {
        let (runs, lost) = t.await?;
        failed += lost;
        for run in runs {
            completed += 1;
            coalesced += run.coalesced_reads;
            total_events += run.arrivals.len();
            if let Some(first) = run.arrivals.first() {
                ttfb.push(*first);
            }
            gaps.extend(run.arrivals.windows(2).map(|w| w[1] - w[0]));
        }
    }
    let elapsed = began.elapsed().as_secs_f64();
    ttfb.sort();
    gaps.sort();
    println!(
        "{}",
        serde_json::json!({"concurrency": streams, "seconds": seconds, "streams": completed + failed, "failed": failed, "events": total_events, "coalesced_reads": coalesced,
            "streams_per_s": completed as f64 / elapsed,
            "ttfb_p50_ms": percentile(&ttfb, 0.5), "ttfb_p99_ms": percentile(&ttfb, 0.99),
            "gap_p50_ms": percentile(&gaps, 0.5), "gap_p99_ms": percentile(&gaps, 0.99)})
    );
    Ok(())
}

async fn policy(dir: &std::path::Path, iterations: u32) -> Result<()> {
    use tollgate::policy::authoring::{sample_request, sample_response, sample_upstream};
    use tollgate::policy::view::{Candidates, figures};
    use tollgate::policy::{PluginKind, PluginSpec, PolicyEngine};
    let stores = tollgate::state::Stores::ephemeral()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let engine = PolicyEngine::new(stores).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let spec = |name: &str, kind, config: &str| PluginSpec {
        deadline: Duration::from_millis(50),
        max_calls: u32::MAX,
        ..PluginSpec::with_defaults(name, kind, config)
    };
    let load = |file: &str, s| -> Result<tollgate::policy::Plugin> {
        engine
            .load(dir.join(file), s)
            .map_err(|e| anyhow::anyhow!("{file}: {e}"))
    };
    let bind = load(
        "tollgate_ip_binding.wasm",
        spec("bind", PluginKind::IpBinding, "{}"),
    )?;
    let rewrite = load(
        "tollgate_header_rewrite.wasm",
        spec(
            "hdr",
            PluginKind::HeaderRewrite,
            r#"{"request":[{"set":{"name":"x-gw","value":"${request_id}"}}]}"#,
        ),
    )?;
    let router = load(
        "tollgate_round_robin.wasm",
        spec("rr", PluginKind::Router, "{}"),
    )?;
    let quota = load(
        "tollgate_quota_switch.wasm",
        spec("q", PluginKind::Quota, "{}"),
    )?;
    for p in [&bind, &rewrite, &router, &quota] {
        p.validate().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let req = sample_request("bench");
    let up = sample_upstream;
    let cands = vec![up("a"), up("b")];
    // As the gateway hands them over: figures alone to a lean router.
    let views = if router.lean_router() {
        Candidates::Figures(cands.iter().map(figures).collect())
    } else {
        Candidates::Views(cands.clone())
    };
    let mut out = serde_json::Map::new();
    macro_rules! time {
        ($name:literal, $call:expr) => {{
            for _ in 0..1000 {
                $call.await.map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            let start = Instant::now();
            for _ in 0..iterations {
                $call.await.map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            let ns = start.elapsed().as_nanos() as f64 / f64::from(iterations);
            out.insert($name.into(), serde_json::json!((ns / 10.0).round() / 100.0));
        }};
    }
    time!("ip_binding_us", bind.check(&req));
    time!("header_rewrite_us", rewrite.rewrite_request(&req));
    time!("router_us", router.select(&req, &views));
    // A successful request makes the three calls above: quota-switch does not watch 200s and this
    // header rewrite has no response rules, so the gateway skips those calls.
    let total: f64 = out.values().filter_map(serde_json::Value::as_f64).sum();
    out.insert(
        "chain_ok_us".into(),
        serde_json::json!((total * 100.0).round() / 100.0),
    );
    // The quota call a 429 gets.
    let limited = sample_response("a", 429);
    assert!(quota.watches(429, false) && !quota.watches(200, false));
    time!("quota_429_us", quota.on_response(&req, &cands[0], &limited));

    // Transforms: what translating an Anthropic request, its JSON answer and one streamed event
    // costs (anthropic-openai, upstream openai), and a model alias's request call.
    let translate = load(
        "tollgate_anthropic_openai.wasm",
        spec("tr", PluginKind::Transform, r#"{"upstream": "openai"}"#),
    )?;
    let alias = load(
        "tollgate_model_alias.wasm",
        spec(
            "alias",
            PluginKind::Transform,
            r#"{"aliases": {"fast": "gpt-4o-mini"}}"#,
        ),
    )?;
    for p in [&translate, &alias] {
        p.validate().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let mut messages_req = (*sample_request("bench")).clone();
    messages_req.path = "/v1/messages".into();
    let messages_req = std::sync::Arc::new(messages_req);
    let body = r#"{"model":"gpt-4o-mini","max_tokens":256,"system":"Be brief.","messages":[{"role":"user","content":"Write one sentence about the sea."}]}"#;
    let mut state = None;
    translate
        .transform_request(&messages_req, body, &mut state)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let saved = state.clone();
    time!(
        "transform_request_us",
        translate.transform_request(&messages_req, body, &mut state.clone())
    );
    let answer = tollgate::mock::chat_completion("chatcmpl-1", "gpt-4o-mini", "The sea is wide.")
        .to_string();
    let ok = sample_response("a", 200);
    time!(
        "transform_json_answer_us",
        translate.transform_response_body(&messages_req, &ok, &answer, &mut saved.clone())
    );
    // One text delta in the middle of a stream (the state already past message_start).
    let chunk =
        tollgate::mock::chat_chunk("chatcmpl-1", "gpt-4o-mini", Some("wave "), false).to_string();
    let first = tollgate::policy::transform::SseEvent {
        event: None,
        data: chunk.clone(),
    };
    let mut streaming = saved.clone();
    translate
        .transform_event(&messages_req, &first, &mut streaming)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    time!(
        "transform_event_us",
        translate.transform_event(&messages_req, &first, &mut streaming.clone())
    );
    let mut aliased = (*sample_request("bench")).clone();
    aliased.model = Some("fast".into());
    let aliased = std::sync::Arc::new(aliased);
    let chat = r#"{"model":"fast","messages":[{"role":"user","content":"hi"}]}"#;
    time!(
        "alias_request_us",
        alias.transform_request(&aliased, chat, &mut None)
    );
    time!(
        "alias_passthrough_us",
        alias.transform_request(&req, chat, &mut None)
    );
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Workload::Floor {
        listen,
        upstream,
        workers,
        reuseport,
        pooled,
    } = args.workload
    {
        return floor(listen, &upstream, workers, reuseport, pooled);
    }
    // One worker thread: the generator takes one core at most, the same for every target.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        match args.workload {
            Workload::Rps {
                url,
                concurrency,
                seconds,
                key,
                keys,
                rate,
            } => rps(&url, concurrency, seconds, &key, keys, rate).await,
            Workload::Sse {
                url,
                streams,
                events,
                delay_ms,
                key,
                seconds,
            } => sse(&url, streams, events, delay_ms, &key, seconds).await,
            Workload::Policy { dir, iterations } => policy(&dir, iterations).await,
            Workload::FillLog {
                config,
                rows,
                per_flush,
            } => fill_log(&config, rows, per_flush).await,
            Workload::Kv { ops } => {
                kv(ops);
                Ok(())
            }
            Workload::Floor { .. } => unreachable!("served above"),
        }
    })
}

type FloorBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// Any body, as the floor's (one concrete error type keeps hyper's service bounds simple).
fn io_body<B>(body: B) -> FloorBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    body.map_err(std::io::Error::other).boxed_unsync()
}

/// A listening socket with `SO_REUSEPORT` on `addr`.
fn reuseport_listener(addr: std::net::SocketAddr) -> Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn floor(
    listen: std::net::SocketAddr,
    upstream: &str,
    workers: usize,
    reuseport: bool,
    pooled: bool,
) -> Result<()> {
    let upstream: hyper::Uri = upstream.parse()?;
    let listener = if reuseport {
        reuseport_listener(listen)?
    } else {
        std::net::TcpListener::bind(listen)?
    };
    let local = listener.local_addr()?;
    let workers = match workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let mut threads = Vec::new();
    for n in 0..workers {
        let listener = match (reuseport, n) {
            (true, 0) | (false, _) => listener.try_clone()?,
            (true, _) => reuseport_listener(local)?,
        };
        listener.set_nonblocking(true)?;
        let upstream = upstream.clone();
        threads.push(std::thread::spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let client: hyper_util::client::legacy::Client<_, FloorBody> =
                    hyper_util::client::legacy::Client::builder(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .build_http();
                let own = tollgate::UpstreamClient::new(Duration::from_secs(5));
                loop {
                    let (tcp, _) = listener.accept().await?;
                    tcp.set_nodelay(true)?;
                    let client = client.clone();
                    let own = own.clone();
                    let upstream = upstream.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(
                            move |req: Request<hyper::body::Incoming>| {
                                let client = client.clone();
                                let own = own.clone();
                                let upstream = upstream.clone();
                                async move {
                                    let (mut head, body) = req.into_parts();
                                    let path =
                                        head.uri.path_and_query().map_or("/", |p| p.as_str());
                                    head.uri =
                                        format!("{upstream}{}", path.trim_start_matches('/'))
                                            .parse()
                                            .expect("valid URI");
                                    head.headers.insert(
                                        hyper::header::AUTHORIZATION,
                                        hyper::header::HeaderValue::from_static(
                                            "Bearer sk-upstream",
                                        ),
                                    );
                                    if !pooled {
                                        let body = body.map_err(Into::into).boxed_unsync();
                                        return own
                                            .request(Request::from_parts(head, body))
                                            .await
                                            .map(|r| r.map(io_body))
                                            .map_err(std::io::Error::other);
                                    }
                                    let body = body.map_err(std::io::Error::other).boxed_unsync();
                                    client
                                        .request(Request::from_parts(head, body))
                                        .await
                                        .map(|r| r.map(io_body))
                                        .map_err(std::io::Error::other)
                                }
                            },
                        );
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), service)
                            .await;
                    });
                }
            })
        }));
    }
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
    }
    Ok(())
}
