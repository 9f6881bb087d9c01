//! State: bindings, intercepts, usage, retention, plugin kv, alerts, cluster behaviour and store
//! failures, against real SQLite files and real `postgres` and `redis-server` processes.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tollgate::Config;
use tollgate::KeyRing;
use tollgate::UpstreamClient;
use tollgate::config::{
    AlertsConfig, CacheUrl, DatabaseUrl, Duration as CfgDuration, Secret, StorageConfig,
};
use tollgate::state::unix_ms;
use tollgate::state::{BindingStatus, Intercept, Stores, TokenUsage, UsageBy};
use tollgate_tests::services::{Postgres, Redis};
use tollgate_tests::*;

// ---------------------------------------------------------------------------------------------
// The behaviour suite: the same checks on the embedded and the production backends.

fn storage(database: DatabaseUrl, cache: CacheUrl) -> StorageConfig {
    StorageConfig {
        database,
        cache,
        archive_days: 1,
        op_timeout: CfgDuration(Duration::from_millis(500)),
        ..StorageConfig::default()
    }
}

async fn open_stores(config: &StorageConfig) -> Arc<Stores> {
    Stores::open(
        config,
        std::path::Path::new("/nonexistent"),
        &AlertsConfig::default(),
        std::sync::Arc::new(UpstreamClient::new(Duration::from_secs(1))),
    )
    .await
    .unwrap()
}

fn net(s: &str) -> ipnet::IpNet {
    s.parse().unwrap()
}

async fn behaviour_suite(stores: Arc<Stores>) {
    let key = "a".repeat(64);
    assert_eq!(stores.binding(&key).await.unwrap(), None);

    // First use is atomic: 32 racing first uses from different networks agree on one binding.
    let racers: Vec<_> = (0..32)
        .map(|i| {
            let (stores, key) = (stores.clone(), key.clone());
            tokio::spawn(async move {
                stores
                    .bind_first(&key, net(&format!("10.0.{i}.1/32")))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut cidrs = Vec::new();
    for r in racers {
        cidrs.push(r.await.unwrap().cidr);
    }
    assert!(cidrs.iter().all(|c| *c == cidrs[0]), "{cidrs:?}");
    let in_db = stores.database().binding(&key).await.unwrap().unwrap();
    assert_eq!(in_db.cidr, cidrs[0]);
    assert_eq!(stores.binding(&key).await.unwrap().unwrap().cidr, cidrs[0]);
    assert_eq!(stores.database().bindings(100).await.unwrap().len(), 1);

    // IPv4-mapped IPv6 is stored as IPv4; host bits are cleared.
    let mapped = stores
        .bind_first(&"b".repeat(64), net("::ffff:10.9.8.7/120"))
        .await
        .unwrap();
    assert_eq!(mapped.cidr.to_string(), "10.9.8.0/24");

    // Usage is batched and applied on flush.
    let ip: IpAddr = "10.0.0.42".parse().unwrap();
    for _ in 0..3 {
        stores.record_use(&key, ip);
    }
    stores.flush().await;
    let used = stores.database().binding(&key).await.unwrap().unwrap();
    assert_eq!(used.request_count, 3);
    assert_eq!(used.last_ip.as_deref(), Some("10.0.0.42"));
    assert!(used.last_used_ms >= used.created_ms);

    // Intercepts are stored with the bound network filled in, and queryable per key.
    stores.record_intercept(
        &key,
        Intercept {
            at_ms: unix_ms(),
            key_id_prefix: key[..12].to_owned(),
            bound_cidr: None,
            attempted_ip: "192.0.2.9".into(),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            reason: "ip_not_allowed".into(),
        },
    );
    stores.flush().await;
    let logged = stores
        .database()
        .intercepts(Some(&key[..12]), 10)
        .await
        .unwrap();
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0].bound_cidr, Some(cidrs[0].to_string()));
    assert_eq!(logged[0].attempted_ip, "192.0.2.9");
    assert!(
        stores
            .database()
            .intercepts(Some("ffffffffffff"), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // A ban replaces the cached copy at once.
    assert!(
        stores
            .set_status(&key, BindingStatus::Banned)
            .await
            .unwrap()
    );
    assert_eq!(
        stores.binding(&key).await.unwrap().unwrap().status,
        BindingStatus::Banned
    );

    // Retention: an active binding unused for longer than archive_days is archived (and leaves
    // the cache); a banned one stays; the archived key binds afresh.
    let old = unix_ms() - 3 * 86_400_000;
    let stale = "c".repeat(64);
    let banned_stale = "d".repeat(64);
    stores
        .database()
        .bind_first(&stale, net("10.1.1.1/32"), old)
        .await
        .unwrap();
    assert!(stores.binding(&stale).await.unwrap().is_some()); // now cached
    stores
        .database()
        .bind_first(&banned_stale, net("10.1.1.2/32"), old)
        .await
        .unwrap();
    stores
        .set_status(&banned_stale, BindingStatus::Banned)
        .await
        .unwrap();
    assert_eq!(stores.archive_inactive().await.unwrap(), 1);
    assert_eq!(stores.binding(&stale).await.unwrap(), None);
    assert_eq!(stores.database().archived_count(&stale).await.unwrap(), 1);
    assert!(stores.binding(&banned_stale).await.unwrap().is_some());
    let rebound = stores.bind_first(&stale, net("10.2.2.2/32")).await.unwrap();
    assert_eq!(rebound.cidr.to_string(), "10.2.2.2/32");

    // Plugin kv: namespaced, atomic, with TTLs.
    let prefix_a = Stores::kv_prefix("plugin-a");
    let prefix_b = Stores::kv_prefix("plugin-b");
    let (a, b) = (stores.plugin_kv(&prefix_a), stores.plugin_kv(&prefix_b));
    assert_eq!(a.incr("n", 2, None).await, 2);
    assert_eq!(a.incr("n", 3, None).await, 5);
    assert_eq!(
        b.get("n").await,
        None,
        "plugins must not see each other's keys"
    );
    assert!(a.compare_and_set("c", None, "x", None).await);
    assert!(!a.compare_and_set("c", None, "y", None).await);
    assert!(a.compare_and_set("c", Some("x"), "z", None).await);
    assert_eq!(a.get("c").await.as_deref(), Some("z"));
    a.set("t", "v", Some(50)).await;
    assert_eq!(a.get("t").await.as_deref(), Some("v"));
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(a.get("t").await, None);
    a.delete("c").await;
    assert_eq!(a.get("c").await, None);

    // Token usage: summed per hour, key, upstream and model, across flushes.
    let hour = 1_700_000_000_000 / 3_600_000 * 3_600_000;
    let used = |key: &str, model: &str, at: u64, input: u64, errors: u64| TokenUsage {
        at_ms: at,
        key_id: key.into(),
        upstream: "up".into(),
        model: model.into(),
        requests: 1,
        errors,
        partial: 0,
        input_tokens: input,
        output_tokens: 2,
        cached_tokens: 1,
        cost_nanos: input * 10,
    };
    stores.record_tokens(used("ka", "m1", hour + 10, 100, 0), Default::default());
    stores.record_tokens(used("ka", "m1", hour + 20, 50, 1), Default::default());
    stores.flush().await;
    stores.record_tokens(used("ka", "m2", hour + 30, 7, 0), Default::default());
    stores.record_tokens(used("kb", "m1", hour + 3_600_000, 5, 0), Default::default());
    stores.flush().await;
    let db = stores.database();
    let by_key = db.token_usage(UsageBy::Key, hour, hour).await.unwrap();
    assert_eq!(
        by_key.len(),
        1,
        "the next hour is outside the range: {by_key:?}"
    );
    let ka = &by_key[0];
    assert_eq!(
        (
            &*ka.key_id,
            ka.requests,
            ka.errors,
            ka.input_tokens,
            ka.output_tokens,
            ka.cached_tokens,
            ka.at_ms
        ),
        ("ka", 3, 1, 157, 6, 3, hour + 30)
    );
    assert_eq!(ka.cost_nanos, 1570, "costs are summed like tokens");
    // What a budget's window has spent: every hour from the one `from_ms` falls in.
    assert_eq!(
        db.spend_since(&["ka", "kb"], hour + 5).await.unwrap(),
        (102 + 52 + 9 + 7, 1000 + 500 + 70 + 50)
    );
    assert_eq!(
        db.spend_since(&["kb"], hour + 3_600_000).await.unwrap(),
        (7, 50)
    );
    assert_eq!(db.spend_since(&[], 0).await.unwrap(), (0, 0));
    let by_model = db.token_usage(UsageBy::Model, 0, u64::MAX).await.unwrap();
    let m: Vec<_> = by_model
        .iter()
        .map(|u| (&*u.model, u.requests, u.input_tokens))
        .collect();
    assert_eq!(m, [("m1", 3, 155), ("m2", 1, 7)], "most tokens first");

    operator_queries(&stores, hour).await;

    assert_eq!(
        stores
            .stats
            .cache_fallbacks
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// What the admin API reads and writes, on this backend's SQL: the audit log, binding pages and
/// moves, intercept pages, hourly totals and binding counts.
async fn operator_queries(stores: &Stores, hour: u64) {
    use tollgate::state::{AuditQuery, AuditRecord, BindingQuery, InterceptQuery};
    let db = stores.database();
    let first = db
        .record_audit(AuditRecord::new(
            "ops",
            "127.0.0.1",
            "binding.ban",
            "k1",
            "ok",
        ))
        .await
        .unwrap();
    let second = db
        .record_audit(
            AuditRecord::new("ops", "::1", "login", "ops", "denied")
                .with_change(None, Some("{}".into())),
        )
        .await
        .unwrap();
    assert!(second.id > first.id);
    let (rows, total) = db
        .audit(&AuditQuery {
            actor: Some("ops".into()),
            limit: 10,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(total, 2);
    assert_eq!(
        (rows[0].action.as_str(), rows[0].after.as_str()),
        ("login", "{}")
    );
    let (only, total) = db
        .audit(&AuditQuery {
            action: Some("binding.ban".into()),
            limit: 10,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!((total, only[0].id), (1, first.id));

    let before = db.binding_counts().await.unwrap();
    let ids: Vec<String> = ["e1", "e2", "f3"].iter().map(|p| p.repeat(32)).collect();
    for (i, id) in ids.iter().enumerate() {
        stores
            .bind_first(id, net(&format!("172.16.0.{i}/32")))
            .await
            .unwrap();
    }
    stores
        .set_status(&ids[1], BindingStatus::Banned)
        .await
        .unwrap();
    let page = |search: &str, status, offset| BindingQuery {
        search: Some(search.into()),
        status,
        limit: 10,
        offset,
    };
    let (found, total) = db.bindings_page(&page("e", None, 0)).await.unwrap();
    assert_eq!((total, found.len()), (2, 2), "key ids starting with e");
    let (found, total) = db
        .bindings_page(&page("e", Some(BindingStatus::Banned), 0))
        .await
        .unwrap();
    assert_eq!((total, found[0].key_id.as_str()), (1, ids[1].as_str()));
    let (found, _) = db
        .bindings_page(&page("172.16.0.2", None, 0))
        .await
        .unwrap();
    assert_eq!(found[0].key_id, ids[2]);
    let (found, total) = db.bindings_page(&page("", None, 2)).await.unwrap();
    assert!(total >= 3 && found.len() as u64 == total - 2, "offset");
    assert!(stores.set_cidr(&ids[0], net("192.0.2.0/24")).await.unwrap());
    assert_eq!(
        stores.binding(&ids[0]).await.unwrap().unwrap().cidr,
        net("192.0.2.0/24")
    );
    assert!(
        !stores
            .set_cidr(&"9".repeat(64), net("192.0.2.0/24"))
            .await
            .unwrap()
    );
    let counts = db.binding_counts().await.unwrap();
    assert_eq!(
        (counts.active, counts.banned),
        (before.active + 2, before.banned + 1)
    );

    let intercept = |at_ms, ip: &str| Intercept {
        at_ms,
        key_id_prefix: ids[0][..12].to_owned(),
        bound_cidr: None,
        attempted_ip: ip.into(),
        method: "POST".into(),
        path: "/v1/x".into(),
        reason: "ip_not_allowed".into(),
    };
    db.record_intercepts(&[
        intercept(hour + 1, "192.0.2.1"),
        intercept(hour + 2, "192.0.2.2"),
        intercept(hour + 3_600_000, "192.0.2.1"),
    ])
    .await
    .unwrap();
    let q = InterceptQuery {
        key: Some(ids[0].clone()),
        ip: Some("192.0.2.1".into()),
        ..InterceptQuery::default()
    };
    assert_eq!(db.count_intercepts(&q).await.unwrap(), 2);
    let newest = db.intercepts_page(&q, None, 0, 1).await.unwrap();
    assert_eq!(newest[0].1.at_ms, hour + 3_600_000);
    let next = db
        .intercepts_page(&q, Some(newest[0].0), 0, 10)
        .await
        .unwrap();
    assert_eq!(next.len(), 1, "keyset paging continues below the last id");
    assert_eq!(next[0].1.at_ms, hour + 1);

    let hours = db.hourly_totals(hour).await.unwrap();
    let first_hour = hours.iter().find(|h| h.hour_ms == hour).unwrap();
    assert_eq!((first_hour.intercepts, first_hour.requests), (2, 3));
    assert_eq!(
        hours
            .iter()
            .find(|h| h.hour_ms == hour + 3_600_000)
            .unwrap()
            .intercepts,
        1
    );
}

#[tokio::test]
async fn embedded_backend_passes_the_behaviour_suite() {
    let dir = tempfile::tempdir().unwrap();
    let config = storage(
        DatabaseUrl::Sqlite(dir.path().join("sub/state.db")),
        CacheUrl::Memory,
    );
    behaviour_suite(open_stores(&config).await).await;
    request_log_suite(&config).await;
    assert!(
        dir.path().join("sub/state.db").exists(),
        "the file is created on first run"
    );
}

#[tokio::test]
async fn production_backend_passes_the_behaviour_suite() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    let url = pg.create_database("suite").await;
    let config = storage(
        DatabaseUrl::Postgres(Secret::new(url)),
        CacheUrl::Redis(Secret::new(redis.url())),
    );
    let stores = open_stores(&config).await;
    behaviour_suite(stores.clone()).await;
    request_log_suite(&config).await;
    // The cache really is Redis.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let cached: Option<String> = redis::cmd("GET")
        .arg(format!("tollgate:b:{}", "b".repeat(64)))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        cached.as_deref().map(|s| s.ends_with("10.9.8.0/24")),
        Some(true)
    );
    // Migrations are idempotent (a second gateway, or `tollgate migrate`, runs them again).
    stores.database().migrate().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Through the gateway.

const SECRET: &str = "test-secret-0123456789";

fn key(i: usize) -> String {
    format!("sk-state-test-key-{i:04}")
}

/// A gateway config with `keys` client keys, the ip-binding plugin on `/v1/`, and `extra`
/// top-level sections (storage, alerts).
fn gateway_yaml(upstream: &str, keys: usize, extra: &str) -> String {
    let mut y = format!("server:\n  listen: 127.0.0.1:0\nauth:\n  secret: {SECRET}\n  keys:\n");
    for i in 0..keys {
        y.push_str(&format!("    - name: k{i}\n      key: {}\n", key(i)));
    }
    y.push_str(&format!(
        "upstreams:\n  - name: u0\n    url: {upstream}\n    credential: {UPSTREAM_CREDENTIAL}\n    max_fails: 1000\n\
         routes:\n  - path_prefix: /v1/\n    upstreams: [u0]\n    policies: [bind]\n\
         plugins:\n  - name: bind\n    kind: ip-binding\n    module: {}\n\
         logging:\n  access_log: false\n{extra}",
        plugins::wasm("tollgate_ip_binding").display()
    ));
    y
}

fn key_id(i: usize) -> String {
    let config = Config::parse(
        &gateway_yaml("http://127.0.0.1:9", i + 1, ""),
        "t",
        Box::new(|_| None),
    )
    .unwrap();
    KeyRing::standalone(&config.auth).id_of(&key(i)).to_hex()
}

async fn send(client: &reqwest::Client, gw: &TestGateway, k: &str) -> (u16, Value) {
    let resp = post_chat(client, &gw.url("/v1/chat/completions"), k).await;
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_cluster_binds_each_key_exactly_once_under_racing_first_requests() {
    const KEYS: usize = 40;
    let (pg, redis, mock) = (
        Postgres::start(),
        Redis::start(),
        MockUpstream::start().await,
    );
    let db = pg.create_database("cluster").await;
    // The race is the subject, not store latency: on a loaded CI machine a first use can take
    // longer than the default op_timeout, which the failsafe would answer with 503.
    let extra = format!(
        "storage:\n  database: {db}\n  cache: {}\n  op_timeout: 10s\n",
        redis.url()
    );
    let yaml = gateway_yaml(&mock.url(), KEYS, &extra);
    let (a, b) = (
        TestGateway::start(&yaml).await,
        TestGateway::start(&yaml).await,
    );
    let (from2, from3) = (client_from("127.0.0.2"), client_from("127.0.0.3"));

    // Every key's first two requests race: one via A from 127.0.0.2, one via B from 127.0.0.3.
    let mut races = Vec::new();
    for i in 0..KEYS {
        let (c2, c3, k) = (from2.clone(), from3.clone(), key(i));
        let (ua, ub) = (a.url("/v1/chat/completions"), b.url("/v1/chat/completions"));
        races.push(tokio::spawn(async move {
            let go = |c: reqwest::Client, url: String, k: String| async move {
                c.post(url)
                    .bearer_auth(k)
                    .json(&chat_body(false))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            };
            tokio::join!(go(c2, ua, k.clone()), go(c3, ub, k))
        }));
    }
    let mut winners = HashMap::new();
    for (i, race) in races.into_iter().enumerate() {
        let (via_a, via_b) = race.await.unwrap();
        let winner = match (via_a, via_b) {
            (200, 403) => "127.0.0.2/32",
            (403, 200) => "127.0.0.3/32",
            other => panic!("key {i}: expected exactly one 200 and one 403, got {other:?}"),
        };
        winners.insert(key_id(i), winner);
    }

    // PostgreSQL holds exactly one binding per key, the winner's; Redis agrees.
    let check = open_stores(&storage(
        DatabaseUrl::Postgres(Secret::new(db.clone())),
        CacheUrl::Redis(Secret::new(redis.url())),
    ))
    .await;
    let rows = check.database().bindings(1000).await.unwrap();
    assert_eq!(rows.len(), KEYS);
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for row in &rows {
        assert_eq!(row.cidr.to_string(), winners[&row.key_id], "{}", row.key_id);
        let cached: Option<String> = redis::cmd("GET")
            .arg(format!("tollgate:b:{}", row.key_id))
            .query_async(&mut conn)
            .await
            .unwrap();
        let cached = cached.expect("the binding is cached in Redis");
        assert!(cached.ends_with(&format!("|{}", row.cidr)), "{cached}");
    }

    // Each loser was logged as an intercept; each winner's use was counted, across instances.
    a.gateway.stores.flush().await;
    b.gateway.stores.flush().await;
    assert_eq!(
        check.database().intercepts(None, 1000).await.unwrap().len(),
        KEYS
    );
    let rows = check.database().bindings(1000).await.unwrap();
    assert!(rows.iter().all(|r| r.request_count == 1), "{rows:?}");

    // A key bound through one instance is refused from another network on the other.
    let k0_winner_is_2 = winners[&key_id(0)] == "127.0.0.2/32";
    let (good, bad) = if k0_winner_is_2 {
        (&from2, &from3)
    } else {
        (&from3, &from2)
    };
    assert_eq!(send(good, &b, &key(0)).await.0, 200);
    assert_eq!(send(bad, &a, &key(0)).await.0, 403);
    assert_eq!(mock.requests(), KEYS + 1);
}

#[tokio::test]
async fn store_failures_follow_the_failsafe_and_recover() {
    let (mut pg, mut redis, mock) = (
        Postgres::start(),
        Redis::start(),
        MockUpstream::start().await,
    );
    let db = pg.create_database("faults").await;
    let stores = |failsafe: &str| {
        format!(
            // 1 s: each store op must fail fast when a store is down, yet not when PostgreSQL is
            // merely slow under the whole suite's load (the request log writes to it too).
            "storage:\n  database: {db}\n  cache: {}\n  failsafe: {failsafe}\n  op_timeout: 1s\n",
            redis.url()
        )
    };
    let closed = TestGateway::start(&gateway_yaml(&mock.url(), 80, &stores("closed"))).await;
    let open = TestGateway::start(&gateway_yaml(&mock.url(), 80, &stores("open"))).await;
    let (from2, from3) = (client_from("127.0.0.2"), client_from("127.0.0.3"));
    for i in 0..10 {
        assert_eq!(send(&from2, &closed, &key(i)).await.0, 200);
    }

    // Load on bound keys while Redis is killed and restarted: the database answers instead.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let mut load = Vec::new();
    for w in 0..4 {
        let (c, url, stop, statuses) = (
            from2.clone(),
            closed.url("/v1/chat/completions"),
            stop.clone(),
            statuses.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut n = w;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let s = c
                    .post(&url)
                    .bearer_auth(key(n % 10))
                    .json(&chat_body(false))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                statuses.lock().unwrap().push(s);
                n += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.kill9();
    // Bound keys are served from the gateway's near cache; first uses go to the database, and
    // their cache writes fail over.
    for i in 12..15 {
        assert_eq!(send(&from2, &closed, &key(i)).await.0, 200);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.restart();
    // Redis is used again once it is back (not merely survived): a new key's first use writes
    // its binding there.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut back_in_redis = false;
    for k in 30..80 {
        assert_eq!(send(&from2, &closed, &key(k)).await.0, 200);
        let cached: Option<String> = redis::cmd("GET")
            .arg(format!("tollgate:b:{}", key_id(k)))
            .query_async(&mut conn)
            .await
            .unwrap();
        if cached.is_some() {
            back_in_redis = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        back_in_redis,
        "no binding reached the restarted Redis within 5 s"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let statuses = statuses.lock().unwrap().clone();
    assert!(statuses.len() > 50, "too little load: {}", statuses.len());
    let failed: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        statuses.len()
    );
    assert!(
        closed
            .gateway
            .stores
            .stats
            .cache_fallbacks
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "Redis was down, so some cache operations must have fallen back"
    );

    // Refill the (restarted, empty) Redis, then take PostgreSQL away.
    for i in 0..10 {
        assert_eq!(send(&from2, &closed, &key(i)).await.0, 200);
    }
    pg.stop();
    // Cached decisions keep working both ways.
    assert_eq!(send(&from2, &closed, &key(0)).await.0, 200);
    assert_eq!(send(&from3, &closed, &key(0)).await.0, 403);
    // A first use cannot be decided: closed refuses with 503, open lets it through.
    let (status, body) = send(&from2, &closed, &key(10)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "state_unavailable");
    assert_eq!(send(&from2, &open, &key(11)).await.0, 200);

    // Both stores down. What a gateway read in the last seconds still decides, both ways (its
    // near cache); a key it never read is the failsafe's: closed refuses it with 503, open lets
    // it through, even from another network.
    redis.kill9();
    assert_eq!(send(&from2, &closed, &key(0)).await.0, 200);
    assert_eq!(send(&from3, &closed, &key(0)).await.0, 403);
    let (status, body) = send(&from2, &closed, &key(11)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "state_unavailable");
    let failsafe = || {
        open.gateway
            .stores
            .stats
            .failsafe
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = failsafe();
    assert_eq!(send(&from3, &open, &key(1)).await.0, 200);
    assert!(
        failsafe() > before,
        "the open gateway's pass was not counted as the failsafe's"
    );
    redis.restart();

    // PostgreSQL comes back: first uses bind again without a restart.
    pg.restart();
    let mut recovered = false;
    for _ in 0..100 {
        if send(&from2, &closed, &key(10)).await.0 == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "first uses must bind again once PostgreSQL is back"
    );
    assert_eq!(send(&from3, &open, &key(10)).await.0, 403);

    // No acknowledged binding was lost.
    let check = open_stores(&storage(
        DatabaseUrl::Postgres(Secret::new(db.clone())),
        CacheUrl::Memory,
    ))
    .await;
    for i in (0..=10).chain(12..15).chain(30..31) {
        let b = check.database().binding(&key_id(i)).await.unwrap();
        assert_eq!(
            b.map(|b| b.cidr.to_string()).as_deref(),
            Some("127.0.0.2/32"),
            "key {i}"
        );
    }
}

#[tokio::test]
async fn repeated_intercepts_send_one_webhook_alert_with_retries() {
    // The first two deliveries fail: the gateway must retry.
    let sink = WebhookSink::start(2).await;
    let hook = &sink.url;
    let (received, attempts) = (&sink.received, &sink.attempts);

    let mock = MockUpstream::start().await;
    let extra = format!("alerts:\n  webhook: {hook}\n  threshold: 3\n  window: 1m\n");
    let gw = TestGateway::start(&gateway_yaml(&mock.url(), 1, &extra)).await;
    assert_eq!(send(&client_from("127.0.0.2"), &gw, &key(0)).await.0, 200);
    let intruder = client_from("127.0.0.3");
    for _ in 0..5 {
        assert_eq!(send(&intruder, &gw, &key(0)).await.0, 403);
    }
    let delivered = eventually(Duration::from_secs(10), || {
        !received.lock().unwrap().is_empty()
    })
    .await;
    assert!(
        delivered,
        "no alert after {} attempts",
        attempts.load(std::sync::atomic::Ordering::SeqCst)
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let received = received.lock().unwrap().clone();
    assert_eq!(
        received.len(),
        1,
        "one alert per key per window: {received:?}"
    );
    assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 3);
    let alert = &received[0];
    assert_eq!(alert["event"], "key_intercepts");
    assert_eq!(alert["intercepts"], 3);
    assert_eq!(alert["threshold"], 3);
    assert_eq!(alert["key_id_prefix"], key_id(0)[..12]);
    assert_eq!(alert["last_attempted_ip"], "127.0.0.3");
    assert_eq!(alert["last_bound_cidr"], "127.0.0.2/32");
    assert_eq!(alert["last_reason"], "ip_not_allowed");
}

#[tokio::test]
async fn the_retention_job_archives_idle_bindings_and_the_key_binds_again() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("state.db");
    let mock = MockUpstream::start().await;
    let extra = format!(
        "storage:\n  database: sqlite://{}\n  archive_days: 1\n  retention_interval: 200ms\n",
        file.display()
    );
    let gw = TestGateway::start(&gateway_yaml(&mock.url(), 1, &extra)).await;
    let (from2, from3) = (client_from("127.0.0.2"), client_from("127.0.0.3"));
    assert_eq!(send(&from2, &gw, &key(0)).await.0, 200);
    assert_eq!(send(&from3, &gw, &key(0)).await.0, 403);
    gw.gateway.stores.flush().await;

    // Age the binding as if it had been idle for three days.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
    sqlx::query("UPDATE bindings SET last_used_ms = $1")
        .bind((unix_ms() - 3 * 86_400_000) as i64)
        .execute(&pool)
        .await
        .unwrap();
    // The job runs every 200 ms; poll the archive table for its work.
    let mut rebound = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM bindings_archive")
            .fetch_one(&pool)
            .await
            .unwrap();
        if n == 1 {
            rebound = send(&from3, &gw, &key(0)).await.0 == 200;
            break;
        }
    }
    assert!(
        rebound,
        "after archiving, the key must bind to its next network"
    );
    assert_eq!(send(&from2, &gw, &key(0)).await.0, 403);
}

#[tokio::test]
async fn a_cooldown_decided_by_one_gateway_is_honoured_by_the_other() {
    let redis = Redis::start();
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let mut yaml = policy_config_yaml(
        &[a.url(), b.url()],
        &[PluginDef {
            name: "quota",
            kind: "quota",
            wasm: "tollgate_quota_switch",
            config: "{}",
            on_error: "deny",
        }],
        &["quota"],
    );
    yaml.push_str(&format!("storage:\n  cache: {}\n", redis.url()));
    let (x, y) = (
        TestGateway::start(&yaml).await,
        TestGateway::start(&yaml).await,
    );
    let send = async |gw: &TestGateway| {
        client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .json(&chat_body(false))
            .send()
            .await
            .unwrap()
            .status()
    };

    // Both gateways are subscribed to the cooldown channel before anything cools down.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut subscribed = false;
    for _ in 0..100 {
        let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("tollgate:cooldowns")
            .query_async(&mut conn)
            .await
            .unwrap();
        if counts.first().is_some_and(|(_, n)| *n == 2) {
            subscribed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(subscribed, "both gateways subscribe to tollgate:cooldowns");

    // Y has not seen A fail yet: it asks A first.
    assert_eq!(send(&y).await, 200);
    assert_eq!((a.requests(), b.requests()), (1, 0));

    // Through X, A answers 429 (retry after 1 s): X cools A down and is served by B.
    a.force_status(429);
    assert_eq!(send(&x).await, 200);
    assert_eq!((a.requests(), b.requests()), (2, 1));

    // Y learns of the cooldown through Redis (well within A's 1 s) and skips A without asking it.
    let y_sees = eventually(Duration::from_millis(800), || {
        y.gateway.runtime().upstreams[0].cooling_until(Some("gpt-test")) > 0
    })
    .await;
    assert!(y_sees, "the cooldown must reach the other gateway");
    assert_eq!(send(&y).await, 200);
    assert_eq!((a.requests(), b.requests()), (2, 2));
}

#[tokio::test]
async fn a_clean_shutdown_flushes_queued_usage_and_intercepts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("state.db");
    let mock = MockUpstream::start().await;
    // Nothing would be written for an hour: only the shutdown flush can write it.
    let extra = format!(
        "storage:\n  database: sqlite://{}\n  flush_interval: 1h\n",
        file.display()
    );
    let mut gw = TestGateway::start(&gateway_yaml(&mock.url(), 1, &extra)).await;
    let (from2, from3) = (client_from("127.0.0.2"), client_from("127.0.0.3"));
    for _ in 0..3 {
        assert_eq!(send(&from2, &gw, &key(0)).await.0, 200);
    }
    assert_eq!(send(&from3, &gw, &key(0)).await.0, 403);
    let db = gw.gateway.stores.database().clone();
    assert_eq!(
        db.binding(&key_id(0)).await.unwrap().unwrap().request_count,
        0
    );
    assert!(db.intercepts(None, 10).await.unwrap().is_empty());

    tokio::time::timeout(Duration::from_secs(10), gw.begin_shutdown())
        .await
        .unwrap()
        .unwrap();
    let b = db.binding(&key_id(0)).await.unwrap().unwrap();
    assert_eq!(b.request_count, 3);
    assert_eq!(b.last_ip.as_deref(), Some("127.0.0.2"));
    let logged = db.intercepts(None, 10).await.unwrap();
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0].attempted_ip, "127.0.0.3");
}

#[tokio::test]
async fn a_ban_through_one_gateway_reaches_the_other_at_once() {
    let (pg, redis, mock) = (
        Postgres::start(),
        Redis::start(),
        MockUpstream::start().await,
    );
    let db = pg.create_database("bans").await;
    let extra = format!("storage:\n  database: {db}\n  cache: {}\n", redis.url());
    let yaml = gateway_yaml(&mock.url(), 1, &extra);
    let (a, b) = (
        TestGateway::start(&yaml).await,
        TestGateway::start(&yaml).await,
    );
    let from2 = client_from("127.0.0.2");
    // Both gateways have the binding in their near caches.
    assert_eq!(send(&from2, &a, &key(0)).await.0, 200);
    assert_eq!(send(&from2, &b, &key(0)).await.0, 200);

    assert!(
        a.gateway
            .stores
            .set_status(&key_id(0), BindingStatus::Banned)
            .await
            .unwrap()
    );
    // Well within the near cache's 10 s lifetime: the change message dropped B's copy.
    let mut refused = None;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (status, body) = send(&from2, &b, &key(0)).await;
        if status == 403 {
            refused = Some(body);
            break;
        }
    }
    let body = refused.expect("B must refuse the banned key within a second");
    assert_eq!(body["error"]["code"], "key_banned");
    assert_eq!(send(&from2, &a, &key(0)).await.0, 403);
}

#[tokio::test]
async fn operators_list_ban_and_delete_bindings_with_the_cli() {
    const BIN: &str = env!("CARGO_BIN_EXE_tollgate-under-test");
    let dir = tempfile::tempdir().unwrap();
    let mock = MockUpstream::start().await;
    // A short cache lifetime: with `cache: memory` another process's change reaches a running
    // gateway when its cached copy expires.
    // The CLI is a second process on the same SQLite file: a generous op_timeout, since a busy CI
    // machine can take seconds to start it.
    let extra = "storage:\n  database: sqlite://state.db\n  binding_cache_ttl: 300ms\n  flush_interval: 100ms\n  op_timeout: 10s\n";
    let config = dir.path().join("gw.yaml");
    std::fs::write(&config, gateway_yaml(&mock.url(), 1, extra)).unwrap();
    let gw = TestGateway::start_file(&config).await;
    let (from2, from3) = (client_from("127.0.0.2"), client_from("127.0.0.3"));
    assert_eq!(send(&from2, &gw, &key(0)).await.0, 200);
    assert_eq!(send(&from3, &gw, &key(0)).await.0, 403);
    gw.gateway.stores.flush().await;

    let cli = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .arg("bindings")
            .arg("-c")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let id = key_id(0);
    let (ok, listed, err) = cli(&["list"]);
    assert!(ok, "{err}");
    let row: Vec<&str> = listed.trim().split('\t').collect();
    assert_eq!(
        row[..3],
        [id.as_str(), "127.0.0.2/32", "active"],
        "{listed}"
    );
    assert_eq!(row[5..], ["127.0.0.2", "1", "k0"], "{listed}");
    let (ok, intercepts, _) = cli(&["intercepts", "--key", &id]);
    assert!(ok);
    let row: Vec<&str> = intercepts.trim().split('\t').collect();
    assert_eq!(
        row[1..],
        [
            &id[..12],
            "127.0.0.2/32",
            "127.0.0.3",
            "POST",
            "/v1/chat/completions",
            "ip_not_allowed"
        ]
    );

    // The gateway sees each change once its cached copy (300 ms) expires.
    let (ok, out, _) = cli(&["ban", &id]);
    assert!(ok && out.contains("banned"), "{out}");
    let banned = eventually_async(Duration::from_secs(3), || async {
        let (status, body) = send(&from2, &gw, &key(0)).await;
        (status, body["error"]["code"].as_str()) == (403, Some("key_banned"))
    })
    .await;
    assert!(banned, "the ban did not reach the gateway");

    let (ok, _, _) = cli(&["delete", &id]);
    assert!(ok);
    let rebound = eventually_async(Duration::from_secs(3), || async {
        send(&from3, &gw, &key(0)).await.0 == 200
    })
    .await;
    assert!(rebound, "a deleted binding binds afresh");
    assert_eq!(
        send(&from2, &gw, &key(0)).await.0,
        403,
        "bound to the new address"
    );
    let (ok, _, err) = cli(&["ban", &"0".repeat(64)]);
    assert!(!ok && err.contains("no binding"), "{err}");
}

/// A hung Redis (stopped, not killed) costs one `op_timeout`, then the breaker answers at once
/// until a background probe finds it back.
#[tokio::test]
async fn a_hung_redis_opens_the_breaker_on_the_first_timeout_and_recovers() {
    use tollgate::state::{Kv, RedisKv};
    let redis = Redis::start();
    let kv = Arc::new(
        RedisKv::connect(
            &redis.url(),
            &Default::default(),
            std::path::Path::new("."),
            Duration::from_millis(500),
        )
        .await
        .unwrap(),
    );
    kv.set("k", "v", None).await.unwrap();
    redis.pause();
    let start = std::time::Instant::now();
    assert!(kv.get("k").await.is_err());
    let first = start.elapsed();
    assert!(first >= Duration::from_millis(400), "{first:?}");
    // Open: every caller falls back at once, concurrently too.
    let start = std::time::Instant::now();
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let kv = kv.clone();
            tokio::spawn(async move { kv.get("k").await.is_err() })
        })
        .collect();
    for c in calls {
        assert!(c.await.unwrap());
    }
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "callers waited {:?} while the breaker was open",
        start.elapsed()
    );
    // Half-open, again and again while Redis hangs (windows of 1 s, probes of 500 ms): the probe
    // is a PING in the background, so no caller ever waits, not even the one that starts it.
    let until = std::time::Instant::now() + Duration::from_millis(3500);
    let mut calls = 0;
    while std::time::Instant::now() < until {
        let start = std::time::Instant::now();
        assert!(kv.get("k").await.is_err());
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "call {calls} waited {:?} on a hung Redis",
            start.elapsed()
        );
        calls += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Back: the next probe after the window closes the breaker.
    redis.resume();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut recovered = false;
    for _ in 0..50 {
        if kv.get("k").await.ok().flatten().as_deref() == Some("v") {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "Redis came back but the cache never recovered");
}

#[tokio::test]
async fn live_settings_tokens_and_lockouts_hold_across_a_cluster() {
    let (pg, redis, mock) = (
        Postgres::start(),
        Redis::start(),
        MockUpstream::start().await,
    );
    let db = pg.create_database("settings").await;
    let extra = format!(
        "storage:\n  database: {db}\n  cache: {}\n  failsafe: closed\n\
         admin:\n  jwt_secret: a-cluster-wide-admin-key-of-32-chars\n  users:\n    - username: ops\n      password: cluster-password-1\n  lockout: {{max_failures: 2, window: 10m, duration: 10m}}\n",
        redis.url()
    );
    let yaml = gateway_yaml(&mock.url(), 1, &extra);
    let (a, b) = (
        TestGateway::start(&yaml).await,
        TestGateway::start(&yaml).await,
    );
    let api =
        |gw: &TestGateway, path: &str| format!("http://{}/admin/api{path}", gw.admin_addr.unwrap());
    let login = |gw: &TestGateway, password: &str| {
        client()
            .post(api(gw, "/login"))
            .json(&serde_json::json!({"username": "ops", "password": password}))
            .send()
    };
    let resp = login(&a, "cluster-password-1").await.unwrap();
    assert_eq!(resp.status(), 200);
    let token = resp.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let settings = |gw: &TestGateway| {
        client()
            .get(api(gw, "/settings"))
            .bearer_auth(&token)
            .send()
    };
    // A token from one gateway is good on the other (same jwt_secret).
    let before: Value = settings(&b).await.unwrap().json().await.unwrap();
    assert_eq!(before["failsafe"], "closed");

    let changed = client()
        .put(api(&a, "/settings"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"failsafe": "open", "alert_threshold": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    let start = std::time::Instant::now();
    loop {
        let now: Value = settings(&b).await.unwrap().json().await.unwrap();
        if now["failsafe"] == "open" && now["alert_threshold"] == 7 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "B did not see the change within a second: {now}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        b.gateway.stores.failsafe(),
        tollgate::config::Failsafe::Open
    );

    // Wrong passwords on A lock the user out on B too.
    for _ in 0..2 {
        assert_eq!(login(&a, "wrong-password-x").await.unwrap().status(), 401);
    }
    assert_eq!(login(&b, "cluster-password-1").await.unwrap().status(), 429);
}

/// A plugin's deadline counts its own running time. Waiting on a host import — here its `kv`,
/// on a Redis that hangs for 300 ms — is not charged: the call succeeds far past its 5 ms
/// deadline, and no timeout is counted.
#[tokio::test]
async fn waiting_on_a_host_import_is_not_charged_to_the_plugins_deadline() {
    let (redis, mock) = (Redis::start(), MockUpstream::start().await);
    let mut yaml = policy_config_yaml(
        &[mock.url()],
        &[PluginDef {
            name: "sticky",
            kind: "router",
            wasm: "tollgate_session_affinity",
            config: "{}",
            on_error: "deny",
        }],
        &["sticky"],
    );
    yaml.push_str("    limits: {deadline: 5ms}\n");
    yaml.push_str(&format!(
        "storage:\n  cache: {}\n  op_timeout: 3s\n",
        redis.url()
    ));
    let gw = TestGateway::start(&yaml).await;
    let session = |id: &'static str| {
        client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .header("x-session-id", id)
            .json(&chat_body(false))
            .send()
    };
    assert_eq!(session("warm").await.unwrap().status(), 200);
    // A new session reads and writes the plugin's kv: both wait for the hung Redis.
    redis.pause();
    let start = std::time::Instant::now();
    let pending = tokio::spawn(session("new"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.resume();
    let resp = pending.await.unwrap().unwrap();
    let took = start.elapsed();
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    assert!(
        took >= Duration::from_millis(300),
        "did not wait for Redis: {took:?}"
    );
    let rt = gw.gateway.runtime();
    let stats = &rt.plugins[0].stats;
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(
        (stats.timeouts.load(Relaxed), stats.failures.load(Relaxed)),
        (0, 0),
        "the wait was charged to the plugin"
    );
    assert!(stats.calls.load(Relaxed) >= 2);
}

/// What the writer queues while the database is down — key use, token usage, intercepts — is
/// kept and written once it is back, without a restart.
#[tokio::test]
async fn queued_usage_and_intercepts_survive_a_database_outage() {
    let (mut pg, mock) = (Postgres::start(), MockUpstream::start().await);
    let db = pg.create_database("outage").await;
    let extra =
        format!("storage:\n  database: {db}\n  flush_interval: 200ms\n  op_timeout: 300ms\n");
    let gw = TestGateway::start(&gateway_yaml(&mock.url(), 1, &extra)).await;
    let (from2, from3) = (client_from("127.0.0.2"), client_from("127.0.0.3"));
    assert_eq!(send(&from2, &gw, &key(0)).await.0, 200);
    gw.gateway.stores.flush().await;
    // The test server runs with `synchronous_commit=off` and stops with SIGQUIT: make what was
    // acknowledged durable before the outage, so that only the product is under test.
    let admin = sqlx::PgPool::connect(&db).await.unwrap();
    sqlx::query("CHECKPOINT").execute(&admin).await.unwrap();
    admin.close().await;

    pg.stop();
    // Served from the in-process cache meanwhile: 5 uses from the bound network, 2 refusals.
    for _ in 0..5 {
        assert_eq!(send(&from2, &gw, &key(0)).await.0, 200);
    }
    for _ in 0..2 {
        assert_eq!(send(&from3, &gw, &key(0)).await.0, 403);
    }
    // Several flushes fail while it is down.
    let stats = &gw.gateway.stores.stats;
    assert!(
        eventually(Duration::from_secs(5), || stats
            .flush_failures
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2)
        .await,
        "no flush failed while the database was down"
    );
    pg.restart();
    drop(pg.ready().await);

    let check = open_stores(&storage(
        DatabaseUrl::Postgres(Secret::new(db.clone())),
        CacheUrl::Memory,
    ))
    .await;
    let written = eventually_async(Duration::from_secs(10), || async {
        let binding = check.database().binding(&key_id(0)).await.ok().flatten();
        let intercepts = check
            .database()
            .intercepts(None, 10)
            .await
            .unwrap_or_default();
        let usage = check
            .database()
            .token_usage(tollgate::state::UsageBy::Key, 0, u64::MAX)
            .await
            .unwrap_or_default();
        binding.is_some_and(|b| b.request_count == 6)
            && intercepts.len() == 2
            && usage.iter().map(|u| u.requests).sum::<u64>() == 8
    })
    .await;
    assert!(
        written,
        "binding {:?}, intercepts {:?}, usage {:?}",
        check.database().binding(&key_id(0)).await,
        check.database().intercepts(None, 10).await.map(|i| i.len()),
        check
            .database()
            .token_usage(tollgate::state::UsageBy::Key, 0, u64::MAX)
            .await
    );
}

/// The `i`th of a series of refusals of key 0, `i` ms after `now`, with path `/v1/{i}`.
fn numbered_intercept(now: u64, i: u64) -> Intercept {
    Intercept {
        at_ms: now + i,
        key_id_prefix: key_id(0)[..12].to_owned(),
        bound_cidr: Some("10.0.0.0/8".into()),
        attempted_ip: "192.0.2.1".into(),
        method: "POST".into(),
        path: format!("/v1/{i}"),
        reason: "ip_not_allowed".into(),
    }
}

/// The hand-off queue to the writer holds 65,536 intercepts: past it the new one is dropped and
/// counted, never waited for. What the writer takes is written whole while the database is up,
/// however many arrive between two flushes (a flood of refusals is written in batches of 10,000;
/// only an outage drops the oldest).
#[tokio::test]
async fn the_intercept_hand_off_is_bounded_and_a_flood_is_written_whole() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let stores = open_stores(&StorageConfig {
        flush_interval: CfgDuration(Duration::from_secs(3600)),
        op_timeout: CfgDuration(Duration::from_secs(10)),
        ..storage(
            DatabaseUrl::Sqlite(dir.path().join("state.db")),
            CacheUrl::Memory,
        )
    })
    .await;
    let dropped = || stores.stats.queue_full.load(Relaxed);
    let now = unix_ms();
    let intercept = |i: u64| numbered_intercept(now, i);
    // No await in between: on this single-threaded runtime the writer cannot take any, so the
    // queue fills and the last 7 are dropped.
    for i in 0..65_536 + 7 {
        stores.record_intercept(&key_id(0), intercept(i));
    }
    assert_eq!(dropped(), 7);
    stores.flush().await;
    assert_eq!(stores.stats.flush_failures.load(Relaxed), 0);
    assert_eq!(dropped(), 7, "the writer dropped none of what it took");
    let written = stores.database().intercepts(None, 100_000).await.unwrap();
    assert_eq!(written.len(), 65_536);
    assert_eq!(written.first().unwrap().path, "/v1/65535", "newest first");
    assert_eq!(written.last().unwrap().path, "/v1/0");
}

/// The write queues are bounded: what overflows is dropped and counted (never waited for), and
/// the rest is written. While the database is down the writer keeps the newest 10,000
/// intercepts, and writes all of them within one `op_timeout` once it is back.
#[tokio::test]
async fn the_write_queue_drops_and_counts_its_overflow_and_writes_the_rest() {
    use std::sync::atomic::Ordering::Relaxed;
    let mut pg = Postgres::start();
    let db = pg.create_database("overflow").await;
    let stores = open_stores(&StorageConfig {
        // Flushed by the test only; the default op_timeout (1 s).
        flush_interval: CfgDuration(Duration::from_secs(3600)),
        op_timeout: StorageConfig::default().op_timeout,
        ..storage(
            DatabaseUrl::Postgres(Secret::new(db.clone())),
            CacheUrl::Memory,
        )
    })
    .await;
    let dropped = || stores.stats.queue_full.load(Relaxed);
    let now = unix_ms();

    // Token usage: 65,536 records are kept between two flushes.
    let usage = TokenUsage {
        at_ms: now,
        key_id: key_id(0).into(),
        upstream: "u".into(),
        model: "m".into(),
        requests: 1,
        input_tokens: 2,
        ..TokenUsage::default()
    };
    for _ in 0..65_536 + 10 {
        stores.record_tokens(usage.clone(), Default::default());
    }
    assert_eq!(dropped(), 10);
    // Key use: 65,536 distinct keys between two flushes.
    let ip: IpAddr = "192.0.2.7".parse().unwrap();
    for i in 0..65_536 + 5 {
        stores.record_use(&format!("key-{i}"), ip);
    }
    stores.record_use("key-0", ip);
    assert_eq!(dropped(), 15, "a key already counted is never dropped");
    stores.flush().await;
    assert_eq!(stores.stats.flush_failures.load(Relaxed), 0);
    let sums = stores
        .database()
        .token_usage(UsageBy::Key, 0, u64::MAX)
        .await
        .unwrap();
    assert_eq!(
        (
            sums.iter().map(|u| u.requests).sum::<u64>(),
            sums.iter().map(|u| u.input_tokens).sum::<u64>()
        ),
        (65_536, 2 * 65_536)
    );

    // Intercepts while the database is down: the oldest go first.
    let admin = sqlx::PgPool::connect(&db).await.unwrap();
    sqlx::query("CHECKPOINT").execute(&admin).await.unwrap();
    admin.close().await;
    pg.stop();
    let intercept = |i: u64| numbered_intercept(now, i);
    for i in 0..10_050 {
        stores.record_intercept(&key_id(0), intercept(i));
    }
    stores.flush().await;
    assert!(stores.stats.flush_failures.load(Relaxed) >= 1);
    assert_eq!(dropped(), 15 + 50);
    pg.restart();
    drop(pg.ready().await);

    // The first flush after the outage writes the whole backlog, within one op_timeout.
    let failed_before = stores.stats.flush_failures.load(Relaxed);
    let start = std::time::Instant::now();
    stores.flush().await;
    assert_eq!(
        stores.stats.flush_failures.load(Relaxed),
        failed_before,
        "the backlog did not fit in one op_timeout ({:?})",
        start.elapsed()
    );
    eprintln!("10,000 intercepts written in {:?}", start.elapsed());
    let written = stores.database().intercepts(None, 20_000).await.unwrap();
    assert_eq!(written.len(), 10_000);
    assert_eq!(written.first().unwrap().path, "/v1/10049", "newest first");
    assert_eq!(
        written.last().unwrap().path,
        "/v1/50",
        "the oldest 50 were dropped"
    );
    assert_eq!(written[0].bound_cidr.as_deref(), Some("10.0.0.0/8"));
}

// ---------------------------------------------------------------------------------------------
// The request log, on each backend: blocks, their growth, two writers, filters, paging, the
// tail, bodies and retention.

/// Test entries borrow for the whole test.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn leak_arc(s: &str) -> &'static Arc<str> {
    Box::leak(Box::new(Arc::from(s)))
}

fn logged(i: u32, at_ms: u64) -> tollgate::state::RequestEntry<'static> {
    use tollgate::state::{Attempt, RequestEntry};
    let refused = i.is_multiple_of(3);
    let attempts: &'static [Attempt] = if refused {
        &[]
    } else {
        Box::leak(Box::new([Attempt {
            upstream: "u1".into(),
            status: 200,
            error: None,
            ms: i,
        }]))
    };
    RequestEntry {
        at_ms,
        request_id: leak(format!("rq-{i}")),
        key: Some(Box::leak(Box::new(Arc::new(
            tollgate::state::ClientKey::plain(
                tollgate::state::KeyId::from_hex(&format!(
                    "{:02x}{}",
                    (i + 16) % 256,
                    "e".repeat(62)
                ))
                .unwrap(),
                &format!("key-{i}"),
                tollgate::state::KeySource::Database,
            ),
        )))),
        client_ip: if i == 4 {
            "2001:db8::4".parse().unwrap()
        } else {
            std::net::IpAddr::from([10, 1, (i >> 8) as u8, i as u8])
        },
        method: "POST",
        path: "/v1/chat/completions",
        route: Some(leak_arc("/v1/")),
        model: Some(if i.is_multiple_of(2) { "even" } else { "odd" }),
        served_model: (!refused).then_some("served-1"),
        upstream: (!refused).then(|| leak_arc("u1")),
        attempts,
        status: if refused { 429 } else { 200 },
        outcome: if refused { "refused" } else { "complete" },
        error: refused.then_some("rate_limit_exceeded"),
        answered_by: refused.then_some("limits:per-ip"),
        first_byte_us: Some(10),
        duration_us: 20,
        tokens: (!refused).then_some((3, 4, 1)),
        partial: false,
        cost_nanos: None,
        bytes_in: 100,
        bytes_out: 200,
        decisions: String::new(),
        bodies: (i == 2).then(|| ("{\"q\":2}".to_owned(), "{\"a\":2}".to_owned())),
    }
}

async fn request_log_suite(config: &StorageConfig) {
    use tollgate::state::RequestQuery;
    let (a, b) = (open_stores(config).await, open_stores(config).await);
    let db = a.database();
    let all = RequestQuery::default();
    let ids = |rows: &[tollgate::state::RequestRow]| rows.iter().map(|r| r.id).collect::<Vec<_>>();
    let names = |rows: &[tollgate::state::RequestRow]| {
        rows.iter()
            .map(|r| r.request_id.clone())
            .collect::<Vec<_>>()
    };
    let now = unix_ms();
    for i in 0..3 {
        a.record_request(logged(i, now + u64::from(i)));
    }
    a.flush().await;
    let first = db.requests_page(&all, None, 100).await.unwrap();
    assert_eq!(names(&first), ["rq-2", "rq-1", "rq-0"], "newest first");
    let two = &first[0];
    assert_eq!(two.request_body.as_deref(), Some("{\"q\":2}"));
    assert_eq!(two.response_body.as_deref(), Some("{\"a\":2}"));
    assert_eq!((two.input_tokens, two.cached_tokens), (Some(3), Some(1)));
    assert_eq!(two.attempts[0]["upstream"], "u1");
    assert_eq!(first[2].error, "rate_limit_exceeded");
    assert_eq!(first[2].answered_by, "limits:per-ip");
    assert_eq!(first[1].request_body, None);
    assert_eq!(
        (&*first[1].served_model, &*first[2].served_model),
        ("served-1", "")
    );

    // A small flush joins the open block: same block, the next places; a tail sees it.
    for i in 3..5 {
        a.record_request(logged(i, now + u64::from(i)));
    }
    a.flush().await;
    let tail = db.requests_after(&all, first[0].id, 100).await.unwrap();
    assert_eq!(names(&tail), ["rq-3", "rq-4"], "oldest first");
    assert_eq!(
        tail[0].id >> 16,
        first[0].id >> 16,
        "added to the open block"
    );
    assert_eq!(tail[1].client_ip, "2001:db8::4");

    // Another gateway writes; this one's open block is no longer the newest, so its next flush
    // starts a block of its own (a tail reading forward from B's request sees it).
    b.record_request(logged(5, now + 5));
    b.flush().await;
    a.record_request(logged(6, now + 6));
    a.flush().await;
    let tail = db.requests_after(&all, tail[1].id, 100).await.unwrap();
    assert_eq!(names(&tail), ["rq-5", "rq-6"]);
    assert!(tail[1].id >> 16 > tail[0].id >> 16 && tail[0].id >> 16 > first[0].id >> 16);

    let everything = db.requests_page(&all, None, 100).await.unwrap();
    assert_eq!(
        names(&everything),
        ["rq-6", "rq-5", "rq-4", "rq-3", "rq-2", "rq-1", "rq-0"]
    );
    // Pages of two, by the last id of each, give the same requests in the same order.
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let page = db.requests_page(&all, before, 2).await.unwrap();
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        paged.extend(page);
    }
    assert_eq!(ids(&paged), ids(&everything));

    // Every filter, exactly.
    let count = |f: &dyn Fn(&mut RequestQuery)| {
        let mut q = RequestQuery::default();
        f(&mut q);
        let db = a.database().clone();
        async move { names(&db.requests_page(&q, None, 100).await.unwrap()) }
    };
    assert_eq!(
        count(&|q| q.request_id = Some("rq-5".into())).await,
        ["rq-5"]
    );
    assert_eq!(
        count(&|q| q.ip = Some("2001:db8::4".into())).await,
        ["rq-4"]
    );
    assert_eq!(
        count(&|q| q.error = Some("any".into())).await,
        ["rq-6", "rq-3", "rq-0"]
    );
    assert_eq!(count(&|q| q.status_class = Some(2)).await.len(), 4);
    assert_eq!(
        count(&|q| q.key_id = Some("15EEE".into())).await,
        ["rq-5"],
        "a key id's start"
    );
    let full = format!("{:02x}{}", 5 + 16, "e".repeat(62));
    assert_eq!(count(&|q| q.key_id = Some(full.clone())).await, ["rq-5"]);
    assert_eq!(
        count(&|q| q.key_name = Some("key-1".into())).await,
        ["rq-1"]
    );
    assert_eq!(
        count(&|q| q.model = Some("odd".into())).await,
        ["rq-5", "rq-3", "rq-1"]
    );
    assert_eq!(
        count(&|q| {
            q.answered_by = Some("limits:per-ip".into());
            q.model = Some("even".into());
        })
        .await,
        ["rq-6", "rq-0"]
    );
    assert_eq!(count(&|q| q.upstream = Some("u9".into())).await.len(), 0);
    assert_eq!(count(&|q| q.from_ms = Some(now + 3)).await.len(), 4);
    assert!(
        count(&|q| q.ip = Some("no address".into()))
            .await
            .is_empty()
    );

    // Retention: by age whole blocks go; by count the oldest block kept loses its oldest.
    for i in 7..9 {
        b.record_request(logged(i, now - 8 * 86_400_000));
    }
    b.flush().await;
    assert_eq!(db.requests_page(&all, None, 100).await.unwrap().len(), 9);
    let gone = db
        .prune_requests(Some(now - 7 * 86_400_000), None)
        .await
        .unwrap();
    assert_eq!(gone, 2);
    let gone = db.prune_requests(None, Some(4)).await.unwrap();
    assert_eq!(gone, 3);
    let kept = db.requests_page(&all, None, 100).await.unwrap();
    assert_eq!(
        ids(&kept),
        ids(&everything)[..4],
        "the newest four, ids unchanged"
    );
    // The open block was trimmed: the next flush starts a new one and nothing is lost.
    a.record_request(logged(9, now + 9));
    a.flush().await;
    assert_eq!(
        names(&db.requests_page(&all, None, 2).await.unwrap()),
        ["rq-9", "rq-6"]
    );

    // Volume: full blocks of 4,096, a flush split over several, builders filled again after
    // their blocks were written; every request comes back once, newest first.
    for round in 0..3u32 {
        for i in 0..5_000u32 {
            a.record_request(logged(100_000 + round * 5_000 + i, now + 10));
        }
        a.flush().await;
    }
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = db.requests_page(&all, before, 1000).await.unwrap();
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        seen.extend(page.into_iter().map(|r| r.request_id));
    }
    let want: Vec<String> = (0..15_000u32)
        .rev()
        .map(|i| format!("rq-{}", 100_000 + i))
        .chain(["rq-9", "rq-6", "rq-5", "rq-4", "rq-3"].map(String::from))
        .collect();
    assert_eq!(seen.len(), want.len());
    assert!(seen == want, "every request once, newest first");
    assert_eq!(
        a.stats
            .requests_dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}
