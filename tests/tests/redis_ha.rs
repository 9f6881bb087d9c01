//! Redis beyond one plain server, with real processes on loopback: TLS with a private CA, a
//! 3-master Cluster, and a Sentinel failover. Each is checked through what the cache does for the
//! gateway: cluster-wide limits exact across two gateways (GCRA scripts), pub/sub, and bindings
//! that stay exact while the cache changes hands.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use tollgate::state::{Kv, RedisKv};
use tollgate_tests::services::{RedisCluster, RedisNode, RedisSentinels};
use tollgate_tests::*;

/// The test config with `keys` as client keys, a per-key limit of `rate`/m (its burst one less:
/// exactly `rate` requests a minute), and `storage` appended.
fn limited_yaml(upstream: &str, keys: &[&str], rate: u32, storage: &str) -> String {
    let listed: String = keys
        .iter()
        .enumerate()
        .map(|(i, k)| format!("    - name: k{i}\n      key: {k}\n"))
        .collect();
    config_yaml(&[upstream.to_owned()], &format!("limits:\n  requests:\n    - {{name: per-key, by: key, rate: {rate}/m, burst: {}, nodelay: true}}", rate - 1))
        .replace(&format!("    - name: tester\n      key: {CLIENT_KEY}\n"), &listed)
        + storage
}

/// Sends `n` requests with `key`, alternating between the gateways; the statuses.
async fn alternate(gws: &[&TestGateway], key: &str, n: usize) -> Vec<u16> {
    let http = client();
    let mut statuses = Vec::new();
    for i in 0..n {
        let gw = gws[i % gws.len()];
        statuses.push(
            post_chat(&http, &gw.url("/v1/chat/completions"), key)
                .await
                .status()
                .as_u16(),
        );
    }
    statuses
}

/// The cache fallbacks the gateways have counted, together.
fn fallbacks(gws: &[&TestGateway]) -> u64 {
    gws.iter()
        .map(|g| {
            g.gateway
                .stores
                .stats
                .cache_fallbacks
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum()
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn rediss_with_a_private_ca_keeps_limits_exact_and_an_unknown_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::generate();
    let (cert_path, key_path) = cert.write(dir.path());
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (c, k) = (cert_path.to_str().unwrap(), key_path.to_str().unwrap());
    let _redis = RedisNode::start_watching(
        0,
        tls_port,
        &[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            c,
            "--tls-key-file",
            k,
            "--tls-ca-cert-file",
            c,
            "--tls-auth-clients",
            "no",
        ],
    );
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let mock = MockUpstream::start().await;
    let key = "sk-tls-client-key-0000001";
    let yaml = limited_yaml(
        &mock.url(),
        &[key],
        3,
        &format!("storage:\n  cache: {url}\n  redis_tls: {{ca: {c}}}\n"),
    );
    let (a, b) = (
        TestGateway::start(&yaml).await,
        TestGateway::start(&yaml).await,
    );
    // One bucket in Redis for both gateways: exactly 3 of 8.
    let statuses = alternate(&[&a, &b], key, 8).await;
    assert_eq!(
        (count(&statuses, 200), count(&statuses, 429)),
        (3, 5),
        "{statuses:?}"
    );
    assert_eq!(
        fallbacks(&[&a, &b]),
        0,
        "a gateway fell back from the TLS cache"
    );

    // The same server without its CA (the system's trust store): refused, never trusted.
    let untrusting = RedisKv::connect(
        &url,
        &Default::default(),
        std::path::Path::new("."),
        Duration::from_millis(500),
    )
    .await
    .unwrap();
    assert!(untrusting.set("k", "v", None).await.is_err());
    let trusting = RedisKv::connect(
        &url,
        &tollgate::config::RedisTls {
            ca: Some(cert_path.clone()),
            ..Default::default()
        },
        std::path::Path::new("."),
        Duration::from_millis(500),
    )
    .await
    .unwrap();
    trusting.set("k", "v", None).await.unwrap();
    assert_eq!(trusting.get("k").await.unwrap().as_deref(), Some("v"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_three_master_cluster_spreads_keys_and_keeps_limits_exact_across_two_gateways() {
    let cluster = RedisCluster::start(3);
    let mock = MockUpstream::start().await;
    let keys: Vec<String> = (0..6)
        .map(|i| format!("sk-cluster-client-key-{i:04}"))
        .collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let yaml = limited_yaml(
        &mock.url(),
        &key_refs,
        3,
        &format!("storage:\n  cache: {}\n", cluster.url()),
    );
    let (a, b) = (
        TestGateway::start(&yaml).await,
        TestGateway::start(&yaml).await,
    );
    for key in &keys {
        let statuses = alternate(&[&a, &b], key, 6).await;
        assert_eq!(
            (count(&statuses, 200), count(&statuses, 429)),
            (3, 3),
            "{key}: {statuses:?}"
        );
    }
    assert_eq!(
        fallbacks(&[&a, &b]),
        0,
        "a gateway fell back from the cluster"
    );
    // The buckets live on several masters: the keys really were spread over slots.
    let holding = cluster
        .nodes
        .iter()
        .filter(|n| RedisNode::cli(n.port, &["dbsize"]).parse::<u64>().unwrap() > 0)
        .count();
    assert!(holding >= 2, "all keys on one master");

    // Pub/sub (binding invalidation) crosses the cluster: a message published through one client
    // reaches a subscriber whose connection is on another node.
    let kv = |attempt: usize| {
        let url = cluster.url();
        async move {
            let _ = attempt;
            RedisKv::connect(
                &url,
                &Default::default(),
                std::path::Path::new("."),
                Duration::from_secs(1),
            )
            .await
            .unwrap()
        }
    };
    let (sub, publisher) = (kv(0).await, kv(1).await);
    let mut rx = sub.subscribe("changes").unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            publisher.publish("changes", "key-7").await.unwrap();
            if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
                return m;
            }
        }
    })
    .await
    .expect("no message crossed the cluster");
    assert_eq!(got, "key-7");
}

/// The primary is SIGKILLed: while the Sentinels elect the replica, requests go on per the
/// failsafe (bindings from the database: the bound address is served, any other refused, never
/// admitted), and the gateways then reach the new primary by themselves (within
/// `down-after-milliseconds` + the election + one breaker window: under 15 s here).
#[tokio::test(flavor = "multi_thread")]
async fn a_sentinel_failover_keeps_bindings_exact_and_the_gateways_follow_the_new_primary() {
    let mut redis = RedisSentinels::start();
    let mock = MockUpstream::start().await;
    let (bound_key, fresh_key, probe_key) = (
        "sk-sentinel-client-key-01",
        "sk-sentinel-client-key-02",
        "sk-sentinel-client-key-03",
    );
    let db = tempfile::tempdir().unwrap();
    let plugins = [plugin("bind", "ip-binding", "tollgate_ip_binding", "{}")];
    let yaml = policy_config_yaml(&[mock.url()], &plugins, &["bind"])
        .replace(&format!("    - name: tester\n      key: {CLIENT_KEY}\n"), &format!("    - name: k0\n      key: {bound_key}\n    - name: k1\n      key: {fresh_key}\n    - name: k2\n      key: {probe_key}\n"))
        .replace(
            "server:\n  listen: 127.0.0.1:0\n",
            "server:\n  listen: 127.0.0.1:0\n  trusted_proxies: [127.0.0.1/32]\n  real_ip_header: x-forwarded-for\n",
        )
        + &format!(
            "limits:\n  requests:\n    - {{name: per-key, by: key, rate: 4/m, burst: 3, nodelay: true, keys: [k1, k2]}}\nstorage:\n  cache: {}\n  database: sqlite://{}/shared.db\n  failsafe: closed\n  op_timeout: 2s\n",
            redis.url(),
            db.path().display()
        );
    let (a, b) = (
        TestGateway::start(&yaml).await,
        TestGateway::start(&yaml).await,
    );
    let http = client();
    let from = |gw: &TestGateway, ip: &str, key: &str| {
        http.post(gw.url("/v1/chat/completions"))
            .bearer_auth(key)
            .header("x-forwarded-for", ip)
            .json(&chat_body(false))
            .send()
    };
    // The key binds to 10.0.0.1's network on first use.
    assert_eq!(from(&a, "10.0.0.1", bound_key).await.unwrap().status(), 200);
    let old_primary = redis.primary.port;

    redis.primary.kill9();
    let killed = Instant::now();
    // During the failover: exact answers, from the database.
    let mut served = 0;
    while killed.elapsed() < Duration::from_secs(2) {
        for gw in [&a, &b] {
            let ok = from(gw, "10.0.0.1", bound_key).await.unwrap().status();
            let other = from(gw, "10.9.9.9", bound_key).await.unwrap().status();
            assert_eq!(
                other, 403,
                "another network was admitted during the failover"
            );
            served += usize::from(ok == 200 || ok == 429);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served > 0);

    // The Sentinels promote the replica; a client on the same URL finds it.
    let probe = RedisKv::connect(
        &redis.url(),
        &Default::default(),
        std::path::Path::new("."),
        Duration::from_millis(500),
    )
    .await
    .unwrap();
    let reconnected = loop {
        if redis.primary_port() == redis.replica.port && probe.set("probe", "1", None).await.is_ok()
        {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "no new primary within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("the new primary was reached {reconnected:?} after the kill");
    assert_ne!(redis.primary_port(), old_primary);

    // The gateways follow: once each has had one breaker window and a request to probe with
    // (`k2`'s limited requests use the cache on every call; a fallback is counted), both use the
    // new primary, so a fresh key's limit is exact across them again (4 of 8).
    let settled = Instant::now();
    loop {
        let before = fallbacks(&[&a, &b]);
        for gw in [&a, &b] {
            let _ = from(gw, "10.0.0.1", probe_key).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
        if fallbacks(&[&a, &b]) == before {
            break;
        }
        assert!(
            settled.elapsed() < Duration::from_secs(15),
            "the gateways kept falling back"
        );
    }
    let statuses = alternate(&[&a, &b], fresh_key, 8).await;
    assert_eq!(
        (count(&statuses, 200), count(&statuses, 429)),
        (4, 4),
        "{statuses:?}"
    );
    let keys = RedisNode::cli(redis.replica.port, &["--scan", "--pattern", "tollgate:*"]);
    assert!(!keys.is_empty(), "nothing written to the new primary");
}
