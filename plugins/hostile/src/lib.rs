//! Test fixture for the sandbox: a router whose `select` misbehaves as its config says, so the
//! host's limits (deadline, memory, traps) can be tested against a real component.
//! `{"behaviour": "ok" | "loop" | "grow" | "trap" | "reject-config" | "loop-in-configure" | "wasi"}`;
//! `loop-in-configure` never returns from `configure`; `wasi` answers
//! `none("<wall clock seconds> <a random u64>")` read through WASI, to show what the sandbox grants.

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
            _ => RouteDecision::Pick((0..candidates.len() as u32).collect()),
        }
    }
}

tollgate_sdk::export!(Hostile);
