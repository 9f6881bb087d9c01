//! The WebAssembly policy runtime against real components built from `plugins/`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::policy::RequestInfo;
use tollgate::policy::authoring::{sample_request, sample_upstream};
use tollgate::policy::types::RouteDecision;
use tollgate::policy::view::{Candidates, figures};
use tollgate::policy::{LoadError, PluginKind, PluginSpec, PolicyEngine, PolicyError};
use tollgate::state::Stores;
use tollgate_tests::eventually;
use tollgate_tests::plugins::{spec, wasm};

async fn engine() -> PolicyEngine {
    PolicyEngine::new(Stores::ephemeral().await.unwrap()).unwrap()
}

fn request(id: &str) -> Arc<RequestInfo> {
    sample_request(id)
}

fn candidates() -> Candidates {
    Candidates::Views(vec![
        sample_upstream("a"),
        sample_upstream("b"),
        sample_upstream("c"),
    ])
}

/// A router exports `router` (views with names and models) or `lean-router` (figures only), and
/// both are `kind: router`. A lean router answers the same from views as from their figures; a
/// full router needs views and refuses figures rather than guess names.
#[tokio::test]
async fn both_router_forms_load_as_kind_router_and_read_what_they_are_given() {
    let e = engine().await;
    let lean = e
        .load(
            wasm("tollgate_fill_first"),
            spec("ff", PluginKind::Router, "{}"),
        )
        .unwrap();
    let full = e
        .load(
            wasm("tollgate_session_affinity"),
            spec("aff", PluginKind::Router, "{}"),
        )
        .unwrap();
    assert!(lean.lean_router() && !full.lean_router());
    // The second candidate is the only one not cooling: fill-first puts it first, which it can
    // only know from the `cooling-until-ms` figure crossing into the guest.
    let mut views = vec![
        sample_upstream("a"),
        sample_upstream("b"),
        sample_upstream("c"),
    ];
    views[0].cooling_until_ms = u64::MAX;
    views[2].cooling_until_ms = u64::MAX;
    let as_figures = Candidates::Figures(views.iter().map(figures).collect());
    let as_views = Candidates::Views(views);
    for c in [&as_figures, &as_views] {
        match lean.select(&request("lean"), c).await.unwrap() {
            RouteDecision::Pick(order) => assert_eq!(order, [1, 0, 2]),
            RouteDecision::None(r) => panic!("no pick: {r}"),
        }
    }
    match full.select(&request("full"), &as_views).await.unwrap() {
        RouteDecision::Pick(order) => assert_eq!(order.len(), 3),
        RouteDecision::None(r) => panic!("no pick: {r}"),
    }
    assert!(matches!(
        full.select(&request("full"), &as_figures).await,
        Err(PolicyError::Trap { .. })
    ));
}

#[tokio::test]
async fn round_robin_rotates_across_calls_and_pooled_instances() {
    let e = engine().await;
    let p = e
        .load(
            wasm("tollgate_round_robin"),
            spec("rr", PluginKind::Router, "{}"),
        )
        .unwrap();
    p.validate().await.unwrap();
    let mut firsts = Vec::new();
    for i in 0..6 {
        match p
            .select(&request(&format!("r{i}")), &candidates())
            .await
            .unwrap()
        {
            RouteDecision::Pick(order) => {
                assert_eq!(order.len(), 3);
                firsts.push(order[0]);
            }
            RouteDecision::None(r) => panic!("no pick: {r}"),
        }
    }
    assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
    assert_eq!(
        p.stats
            .instantiations
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "instance not reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_hits_the_deadline_without_stalling_other_calls() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let e = engine().await;
    // A long deadline, so that other calls demonstrably run while the guest spins.
    let deadline = Duration::from_millis(300);
    let looping = Arc::new(
        e.load(
            wasm("tollgate_hostile"),
            tollgate::policy::PluginSpec {
                deadline,
                breaker_failures: 0,
                ..spec("loop", PluginKind::Router, r#"{"behaviour":"loop"}"#)
            },
        )
        .unwrap(),
    );
    let fine = Arc::new(
        e.load(
            wasm("tollgate_hostile"),
            spec("fine", PluginKind::Router, r#"{"behaviour":"ok"}"#),
        )
        .unwrap(),
    );
    looping.validate().await.unwrap();
    fine.validate().await.unwrap();

    let spinning = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let spinner = {
        let (looping, spinning, done) = (looping.clone(), spinning.clone(), done.clone());
        tokio::spawn(async move {
            spinning.store(true, SeqCst);
            let called = Instant::now();
            let r = looping.select(&request("spin"), &candidates()).await;
            let took = called.elapsed();
            done.store(true, SeqCst);
            (r, took)
        })
    };
    // Wait until the guest runs: the epoch ticker only ticks while guest code runs.
    let ticks = e.epoch_ticks();
    assert!(
        eventually(Duration::from_secs(2), || spinning.load(SeqCst)
            && e.epoch_ticks() > ticks + 2)
        .await,
        "the spinner never started"
    );
    // While it spins (its call has not returned), other calls complete, on both threads.
    let mut during = 0;
    while !done.load(SeqCst) {
        let (req, cands) = (request(&format!("a{during}")), candidates());
        let (a, b) = tokio::join!(
            fine.select(&req, &cands),
            tokio::spawn({
                let fine = fine.clone();
                async move { fine.select(&request("b"), &candidates()).await.is_ok() }
            })
        );
        assert!(a.is_ok() && b.unwrap());
        if !done.load(SeqCst) {
            during += 1;
        }
    }
    assert!(
        during >= 3,
        "only {during} calls completed while the guest spun"
    );
    let (result, took) = spinner.await.unwrap();
    assert!(
        matches!(result, Err(PolicyError::Deadline { .. })),
        "{result:?}"
    );
    // Stopped at the deadline: not before it, and within a scheduling margin after it (the
    // epoch ticks every millisecond while guest code runs).
    assert!(
        took >= deadline && took < deadline + Duration::from_millis(250),
        "the 300 ms deadline stopped the call after {took:?}"
    );
    assert!(start.elapsed() < deadline + Duration::from_secs(2));
    // The epoch ticked while the guest ran, and sleeps once nothing runs (no wake-ups when idle).
    let ticked = e.epoch_ticks();
    assert!(ticked > 0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let idle = e.epoch_ticks();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        e.epoch_ticks(),
        idle,
        "the ticker ran with no guest code running"
    );
    // The next call gets a fresh instance (and spins again: the plugin is consistently broken).
    assert!(matches!(
        looping.select(&request("again"), &candidates()).await,
        Err(PolicyError::Deadline { .. })
    ));
}

/// What docs/plugins.md says the sandbox grants through WASI, a real component reads: the
/// wall clock is the real time, and randomness is random (two instances draw different values).
#[tokio::test]
async fn wasi_clocks_are_the_real_time_and_randomness_differs_between_instances() {
    let e = engine().await;
    let mut randoms = Vec::new();
    for n in 0..2 {
        // A fresh plugin each time: a new instance, new WASI context.
        let p = e
            .load(
                wasm("tollgate_hostile"),
                spec("wasi", PluginKind::Router, r#"{"behaviour":"wasi"}"#),
            )
            .unwrap();
        p.validate().await.unwrap();
        let (secs, random) = match p.select(&request(&format!("w{n}")), &candidates()).await {
            Ok(RouteDecision::None(text)) => {
                let (secs, random) = text.split_once(' ').unwrap();
                (secs.parse::<u64>().unwrap(), random.parse::<u64>().unwrap())
            }
            other => panic!("{other:?}"),
        };
        let now = tollgate::state::unix_ms() / 1000;
        assert!(
            secs.abs_diff(now) <= 5,
            "guest wall clock {secs}, host {now}"
        );
        randoms.push(random);
    }
    assert_ne!(
        randoms[0], randoms[1],
        "the same random value in two instances"
    );
}

#[tokio::test]
async fn growing_memory_past_the_limit_traps_and_the_host_survives() {
    let e = engine().await;
    let p = e
        .load(
            wasm("tollgate_hostile"),
            spec("grow", PluginKind::Router, r#"{"behaviour":"grow"}"#),
        )
        .unwrap();
    p.validate().await.unwrap();
    let r = p.select(&request("g"), &candidates()).await;
    assert!(matches!(r, Err(PolicyError::Trap { .. })), "{r:?}");
    // The host survives: the same engine still runs another plugin's calls, and this plugin's
    // next call gets a fresh instance (which traps again at the limit, as it should).
    let fine = e
        .load(
            wasm("tollgate_hostile"),
            spec("fine", PluginKind::Router, r#"{"behaviour":"ok"}"#),
        )
        .unwrap();
    fine.validate().await.unwrap();
    assert!(fine.select(&request("f"), &candidates()).await.is_ok());
    let again = p.select(&request("g2"), &candidates()).await;
    assert!(matches!(again, Err(PolicyError::Trap { .. })), "{again:?}");
    assert!(
        p.stats
            .instantiations
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2,
        "the trapped instance was reused"
    );
}

#[tokio::test]
async fn a_trap_discards_the_instance_and_the_next_call_gets_a_new_one() {
    let e = engine().await;
    let p = e
        .load(
            wasm("tollgate_hostile"),
            spec("trap", PluginKind::Router, r#"{"behaviour":"trap"}"#),
        )
        .unwrap();
    p.validate().await.unwrap();
    // The guest's panic message (its stderr) is part of the error, not only "unreachable".
    match p.select(&request("t1"), &candidates()).await {
        Err(PolicyError::Trap { reason, .. }) => assert!(
            reason.contains("hostile plugin traps on purpose"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        p.select(&request("t2"), &candidates()).await,
        Err(PolicyError::Trap { .. })
    ));
    assert_eq!(
        p.stats
            .instantiations
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    assert_eq!(
        p.stats.failures.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[tokio::test]
async fn a_refused_configuration_is_reported() {
    let e = engine().await;
    let p = e
        .load(
            wasm("tollgate_hostile"),
            spec(
                "cfg",
                PluginKind::Router,
                r#"{"behaviour":"reject-config"}"#,
            ),
        )
        .unwrap();
    match p.validate().await {
        Err(LoadError::Configure(msg)) => assert!(msg.contains("refused on purpose")),
        other => panic!("{other:?}"),
    }
    let bad_json = e
        .load(
            wasm("tollgate_hostile"),
            spec("cfg", PluginKind::Router, "{"),
        )
        .unwrap();
    assert!(matches!(
        bad_json.validate().await,
        Err(LoadError::Configure(_))
    ));
}

#[tokio::test]
async fn a_configure_that_never_returns_is_stopped_at_the_init_deadline() {
    let e = engine().await;
    let spec = PluginSpec {
        init_deadline: Duration::from_millis(30),
        ..spec(
            "spin",
            PluginKind::Router,
            r#"{"behaviour":"loop-in-configure"}"#,
        )
    };
    let p = e.load(wasm("tollgate_hostile"), spec).unwrap();
    let started = Instant::now();
    match p.validate().await {
        Err(LoadError::Trap(msg)) => assert!(msg.contains("30ms init_deadline"), "{msg}"),
        other => panic!("{other:?}"),
    }
    // Stopped by the budget, not by anything slower.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn oversized_modules_are_refused_before_compiling() {
    let e = engine().await;
    let mut s = spec("big", PluginKind::Router, "{}");
    s.max_module_size = 1024;
    assert!(matches!(
        e.load(wasm("tollgate_round_robin"), s),
        Err(LoadError::TooLarge { .. })
    ));
}

#[tokio::test]
async fn a_plugin_of_another_kind_is_refused() {
    let e = engine().await;
    let r = e.load(
        wasm("tollgate_round_robin"),
        spec("rr", PluginKind::IpBinding, "{}"),
    );
    assert!(
        matches!(
            r,
            Err(LoadError::WrongKind {
                world: "ip-binding-policy",
                ..
            })
        ),
        "{:?}",
        r.err()
    );
    // A router may export either form; one that exports neither names both.
    let r = e.load(
        wasm("tollgate_ip_binding"),
        spec("bind", PluginKind::Router, "{}"),
    );
    match r {
        Err(LoadError::WrongKind { world, reason }) => {
            assert_eq!(world, "router-policy");
            assert!(
                reason.starts_with(
                    "it exports neither tollgate:policy/router nor tollgate:policy/lean-router ("
                ),
                "{reason}"
            );
        }
        other => panic!("{:?}", other.err()),
    }
}

#[tokio::test]
async fn a_sha256_pin_mismatch_is_refused() {
    let e = engine().await;
    let mut s = spec("rr", PluginKind::Router, "{}");
    s.sha256 = Some("00".repeat(32));
    assert!(matches!(
        e.load(wasm("tollgate_round_robin"), s),
        Err(LoadError::Pin { .. })
    ));
}

#[tokio::test]
async fn unknown_imports_and_garbage_are_refused() {
    let e = engine().await;
    let dir = tempfile::tempdir().unwrap();
    let evil = dir.path().join("evil.wasm");
    std::fs::write(
        &evil,
        wat::parse_str(
            r#"(component (import "evil:thing/backdoor" (instance (export "open" (func)))))"#,
        )
        .unwrap(),
    )
    .unwrap();
    assert!(matches!(
        e.load(&evil, spec("evil", PluginKind::Router, "{}")),
        Err(LoadError::Link(_))
    ));
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm not really").unwrap();
    assert!(matches!(
        e.load(&junk, spec("junk", PluginKind::Router, "{}")),
        Err(LoadError::Compile(_))
    ));
}

#[tokio::test]
async fn repeated_failures_open_the_breaker_and_calls_fail_at_once() {
    use std::sync::atomic::Ordering::Relaxed;
    let e = engine().await;
    let p = e
        .load(
            wasm("tollgate_hostile"),
            tollgate::policy::PluginSpec {
                breaker_failures: 3,
                breaker_window: Duration::from_secs(10),
                breaker_cooldown: Duration::from_millis(600),
                ..spec("loop", PluginKind::Router, r#"{"behaviour":"loop"}"#)
            },
        )
        .unwrap();
    p.validate().await.unwrap();
    for i in 0..3 {
        let r = p.select(&request(&format!("l{i}")), &candidates()).await;
        assert!(matches!(r, Err(PolicyError::Deadline { .. })), "{r:?}");
    }
    assert!(p.breaker_open());
    // Open: refused without running, well under the 20 ms deadline each.
    let start = Instant::now();
    for i in 0..50 {
        let r = p.select(&request(&format!("o{i}")), &candidates()).await;
        assert!(matches!(r, Err(PolicyError::CircuitOpen { .. })), "{r:?}");
    }
    assert!(
        start.elapsed() < Duration::from_millis(200),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(p.stats.failures.load(Relaxed), 3, "the plugin did not run");
    assert_eq!(p.stats.rejected.load(Relaxed), 50);
    assert_eq!(p.stats.breaker_opened.load(Relaxed), 1);
    // After the cooldown the plugin is called again (and, still broken, fails again).
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!p.breaker_open());
    let r = p.select(&request("again"), &candidates()).await;
    assert!(matches!(r, Err(PolicyError::Deadline { .. })), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_the_concurrency_limit_wait_then_fail() {
    let e = engine().await;
    let p = Arc::new(
        e.load(
            wasm("tollgate_hostile"),
            tollgate::policy::PluginSpec {
                max_concurrency: 1,
                queue_timeout: Duration::from_millis(5),
                deadline: Duration::from_millis(200),
                breaker_failures: 0,
                ..spec("loop", PluginKind::Router, r#"{"behaviour":"loop"}"#)
            },
        )
        .unwrap(),
    );
    p.validate().await.unwrap();
    let spinner = {
        let p = p.clone();
        tokio::spawn(async move { p.select(&request("spin"), &candidates()).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let asked = Instant::now();
    let r = p.select(&request("second"), &candidates()).await;
    let waited = asked.elapsed();
    assert!(matches!(r, Err(PolicyError::Overloaded { .. })), "{r:?}");
    // It waited its queue_timeout (5 ms) for the slot, and no longer (the spinner holds the slot
    // for 200 ms).
    assert!(
        waited >= Duration::from_millis(5) && waited < Duration::from_millis(100),
        "waited {waited:?}"
    );
    assert_eq!(
        p.stats.rejected.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(matches!(
        spinner.await.unwrap(),
        Err(PolicyError::Deadline { .. })
    ));
    // The slot is free again.
    let r = p.select(&request("third"), &candidates()).await;
    assert!(matches!(r, Err(PolicyError::Deadline { .. })), "{r:?}");
}

/// A shadow candidate runs dry: the ip-binding plugin's first use of a key makes no binding,
/// though it answers as if it had; the same plugin live makes it.
#[tokio::test]
async fn a_dry_run_ip_binding_makes_no_binding() {
    let e = engine().await;
    let req = request("dry");
    let dry = e
        .load(
            wasm("tollgate_ip_binding"),
            PluginSpec {
                dry_run: true,
                ..spec("shadow-bind", PluginKind::IpBinding, "{}")
            },
        )
        .unwrap();
    assert!(matches!(
        dry.check(&req).await.unwrap(),
        tollgate::policy::types::BindingDecision::Allow
    ));
    assert!(e.stores().binding(&req.key_id).await.unwrap().is_none());

    let live = e
        .load(
            wasm("tollgate_ip_binding"),
            spec("bind", PluginKind::IpBinding, "{}"),
        )
        .unwrap();
    live.check(&req).await.unwrap();
    let bound = e.stores().binding(&req.key_id).await.unwrap();
    assert!(bound.is_some_and(|b| b.cidr.to_string() == format!("{}/32", req.client_ip)));
}

/// `max_calls`: an instance serves that many calls and is then replaced, bounding what a plugin
/// can accumulate. With 3, nine calls in a row take three instances (the one `validate` made,
/// then two more); without the limit one instance serves them all.
#[tokio::test]
async fn an_instance_is_replaced_after_max_calls() {
    use std::sync::atomic::Ordering::Relaxed;
    let e = engine().await;
    for (max_calls, instances) in [(3, 3), (1000, 1)] {
        let p = e
            .load(
                wasm("tollgate_hostile"),
                tollgate::policy::PluginSpec {
                    max_calls,
                    ..spec("ok", PluginKind::Router, r#"{"behaviour":"ok"}"#)
                },
            )
            .unwrap();
        p.validate().await.unwrap();
        for i in 0..9 {
            assert!(
                p.select(&request(&format!("r{i}")), &candidates())
                    .await
                    .is_ok()
            );
        }
        assert_eq!(
            p.stats.instantiations.load(Relaxed),
            instances,
            "max_calls {max_calls}"
        );
    }
}

/// What docs/plugins.md says the sandbox denies, a real component tries and is refused: files
/// (read, list, write), the environment, arguments and the network. Stdout is a sink: a write
/// succeeds and goes nowhere.
#[tokio::test]
async fn the_sandbox_denies_files_environment_and_network_to_a_guest_that_tries() {
    let e = engine().await;
    let p = e
        .load(
            wasm("tollgate_hostile"),
            spec("escape", PluginKind::Router, r#"{"behaviour":"escape"}"#),
        )
        .unwrap();
    p.validate().await.unwrap();
    let text = match p.select(&request("escape"), &candidates()).await {
        Ok(RouteDecision::None(text)) => text,
        other => panic!("{other:?}"),
    };
    let outcomes: std::collections::BTreeMap<&str, &str> =
        text.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(outcomes.len(), 7, "{text}");
    for (what, outcome) in &outcomes {
        if *what == "stdout" {
            assert_eq!(*outcome, "ok:written", "stdout is a sink");
        } else {
            assert!(
                outcome.starts_with("denied:"),
                "{what} was not denied: {outcome}"
            );
        }
    }
}

/// A plugin's `kv` is bounded as a third party's writes must be: a value past 64 KiB fails the
/// call (as a trap does), and a plugin writing new keys without end (16 × 60 KiB a call, no
/// expiry: 120 MiB over 128 calls) leaves the in-process store at its 64 MiB, losing its least
/// used keys, while the gateway's own namespaces (budgets, lockouts) keep theirs.
#[tokio::test]
async fn a_plugins_kv_is_bounded_in_key_value_and_total_size() {
    let e = engine().await;
    let big = e
        .load(
            wasm("tollgate_hostile"),
            spec("big", PluginKind::Router, r#"{"behaviour":"kv-oversized"}"#),
        )
        .unwrap();
    big.validate().await.unwrap();
    match big.select(&request("b"), &candidates()).await {
        Err(PolicyError::Trap { reason, .. }) => {
            assert!(reason.contains("kv: a value of 65537 bytes"), "{reason}")
        }
        other => panic!("{other:?}"),
    }

    let stores = e.stores().clone();
    stores.budget_kv().set("kept", "1", None).await;
    let flood = e
        .load(
            wasm("tollgate_hostile"),
            spec("flood", PluginKind::Router, r#"{"behaviour":"kv-flood"}"#),
        )
        .unwrap();
    flood.validate().await.unwrap();
    for i in 0..128 {
        let r = flood
            .select(&request(&format!("f{i}")), &candidates())
            .await;
        assert!(r.is_ok(), "call {i}: {r:?}");
    }
    let held = stores.plugin_kv_bytes();
    assert!(
        held <= tollgate::state::PLUGIN_KV_MEMORY,
        "plugins hold {held} bytes in process"
    );
    assert!(held > tollgate::state::PLUGIN_KV_MEMORY / 2, "{held}");
    assert_eq!(stores.budget_kv().get("kept").await.as_deref(), Some("1"));
}
