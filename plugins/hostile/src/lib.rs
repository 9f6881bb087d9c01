//! Test fixture for the sandbox: a router whose `select` misbehaves as its config says, so the
//! host's limits (deadline, memory, traps) can be tested against a real component.
//! `{"behaviour": "ok" | "loop" | "grow" | "trap" | "reject-config" | "loop-in-configure" | "wasi"
//! | "escape" | "kv-flood" | "kv-oversized"}`; `loop-in-configure` never returns from `configure`;
//! `kv-flood` writes 16 new keys of 60 KiB without expiry on every call (then picks as `ok`
//! does); `kv-oversized` writes one value of 64 KiB + 1 (the host's bound); `wasi` answers
//! `none("<wall clock seconds> <a random u64>")` read through WASI, to show what the sandbox
//! grants; `escape` tries what it must not get — a file, the environment, the network, stdout —
//! and answers `none` with what each attempt came to, one `name=outcome` per line.

use std::sync::atomic::{AtomicU8, Ordering};

use serde::Deserialize;
use tollgate_sdk::{Plugin, Request, RouteDecision, Router, UpstreamView};

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Behaviour {
    Ok,
    Loop,
    Grow,
    Trap,
    RejectConfig,
    LoopInConfigure,
    Wasi,
    Escape,
    KvFlood,
    KvOversized,
}

#[derive(Deserialize)]
struct Config {
    behaviour: Behaviour,
}

static MODE: AtomicU8 = AtomicU8::new(0);

struct Hostile;

impl Plugin for Hostile {
    fn configure(config: String) -> Result<(), String> {
        let c: Config = tollgate_sdk::parse_config(&config)?;
        let mode = match c.behaviour {
            Behaviour::Ok => 0,
            Behaviour::Loop => 1,
            Behaviour::Grow => 2,
            Behaviour::Trap => 3,
            Behaviour::Wasi => 4,
            Behaviour::Escape => 5,
            Behaviour::KvFlood => 6,
            Behaviour::KvOversized => 7,
            Behaviour::RejectConfig => {
                return Err("this configuration is refused on purpose".into());
            }
            Behaviour::LoopInConfigure => {
                let mut i: u64 = 0;
                loop {
                    i = std::hint::black_box(i.wrapping_add(1));
                }
            }
        };
        MODE.store(mode, Ordering::Relaxed);
        Ok(())
    }
}

impl Router for Hostile {
    fn select(_request: &Request, candidates: Vec<UpstreamView>) -> RouteDecision {
        match MODE.load(Ordering::Relaxed) {
            1 => {
                let mut i: u64 = 0;
                loop {
                    i = std::hint::black_box(i.wrapping_add(1));
                }
            }
            2 => {
                // Ask for 4 GiB, 64 MiB at a time; the host's memory limit must stop it.
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                for _ in 0..64 {
                    hoard.push(vec![1u8; 64 << 20]);
                }
                RouteDecision::None(format!("held {} blocks", hoard.len()))
            }
            3 => panic!("hostile plugin traps on purpose"),
            4 => {
                use std::hash::BuildHasher;
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                // std has no public random API; `RandomState` draws its keys from WASI random.
                let random = std::collections::hash_map::RandomState::new().hash_one(0u8);
                RouteDecision::None(format!("{secs} {random}"))
            }
            5 => RouteDecision::None(escape_attempts()),
            6 => {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let value = "v".repeat(60 << 10);
                for _ in 0..16 {
                    let n = NEXT.fetch_add(1, Ordering::Relaxed);
                    // Unique across instances too: the clock and a per-instance count.
                    let key = format!("flood-{}-{n}", tollgate_sdk::host::now_ms());
                    tollgate_sdk::host::kv::set(&key, &value, None);
                }
                RouteDecision::Pick((0..candidates.len() as u32).collect())
            }
            7 => {
                tollgate_sdk::host::kv::set("big", &"v".repeat((64 << 10) + 1), None);
                RouteDecision::Pick((0..candidates.len() as u32).collect())
            }
            _ => RouteDecision::Pick((0..candidates.len() as u32).collect()),
        }
    }
}

/// Tries each thing the sandbox denies; `name=ok:<what it got>` or `name=denied:<error>`.
fn escape_attempts() -> String {
    use std::io::Write;
    let outcome = |r: Result<String, String>| match r {
        Ok(got) => format!("ok:{got}"),
        Err(e) => format!("denied:{e}"),
    };
    let file = std::fs::read_to_string("/etc/hostname").map_err(|e| e.to_string());
    let dir = std::fs::read_dir("/")
        .map(|d| d.count().to_string())
        .map_err(|e| e.to_string());
    let write = std::fs::write("escape.txt", b"x")
        .map(|()| "written".to_string())
        .map_err(|e| e.to_string());
    let env = {
        let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
        if vars.is_empty() {
            Err("no variables".to_string())
        } else {
            Ok(vars.join(","))
        }
    };
    let args = if std::env::args().count() == 0 {
        Err("no arguments".to_string())
    } else {
        Ok(std::env::args().collect::<Vec<_>>().join(" "))
    };
    let net = std::net::TcpStream::connect("127.0.0.1:9")
        .map(|_| "connected".to_string())
        .map_err(|e| e.to_string());
    let stdout = std::io::stdout()
        .write_all(b"escaped\n")
        .and_then(|()| std::io::stdout().flush())
        .map(|()| "written".to_string())
        .map_err(|e| e.to_string());
    [
        ("file", file),
        ("dir", dir),
        ("write", write),
        ("env", env),
        ("args", args),
        ("net", net),
        ("stdout", stdout),
    ]
    .into_iter()
    .map(|(name, r)| format!("{name}={}", outcome(r)))
    .collect::<Vec<_>>()
    .join("\n")
}

tollgate_sdk::export!(Hostile);
