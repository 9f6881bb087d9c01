//! Test fixture: a transform that misbehaves where its config says.
//! `{"on": "request" | "event", "behaviour": "trap" | "loop", "after": N}`: `on-request`
//! misbehaves at once; `on-event` passes `after` events (uppercasing their data, so a test sees
//! that the transform ran) and misbehaves on the next. Asks for every response.

use std::sync::OnceLock;

use serde::Deserialize;
use tollgate_sdk::{
    HeadEdit, Plugin, Request, RequestAction, RequestEdit, Response, SseEvent, Transform,
    TransformState,
};

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum On {
    Request,
    Event,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum Behaviour {
    Trap,
    Loop,
}

#[derive(Deserialize, Clone, Copy)]
struct Config {
    on: On,
    behaviour: Behaviour,
    #[serde(default)]
    after: u32,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

fn misbehave() -> ! {
    match CONFIG.get().map(|c| c.behaviour) {
        Some(Behaviour::Loop) => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        _ => panic!("hostile transform traps as configured"),
    }
}

struct Hostile;

impl Plugin for Hostile {
    fn configure(config: String) -> Result<(), String> {
        let _ = CONFIG.set(tollgate_sdk::parse_config(&config)?);
        Ok(())
    }
}

impl Transform for Hostile {
    fn on_request(_: &Request, _: String, _: &TransformState) -> RequestAction {
        if CONFIG.get().is_some_and(|c| c.on == On::Request) {
            misbehave();
        }
        RequestAction::Forward(RequestEdit {
            response: true,
            ..RequestEdit::unchanged()
        })
    }

    fn on_response_head(_: &Request, _: &Response, _: &TransformState) -> HeadEdit {
        HeadEdit::unchanged()
    }

    fn on_response_body(
        _: &Request,
        _: &Response,
        body: String,
        _: &TransformState,
    ) -> Option<String> {
        Some(body.to_uppercase())
    }

    fn on_event(_: &Request, event: SseEvent, state: &TransformState) -> Vec<SseEvent> {
        let seen: u32 = state.get().and_then(|s| s.parse().ok()).unwrap_or(0);
        if CONFIG
            .get()
            .is_some_and(|c| c.on == On::Event && seen >= c.after)
        {
            misbehave();
        }
        state.set(&(seen + 1).to_string());
        vec![SseEvent {
            event: event.event,
            data: event.data.to_uppercase(),
        }]
    }

    fn on_stream_end(_: &Request, _: &TransformState) -> Vec<SseEvent> {
        Vec::new()
    }
}

tollgate_sdk::export!(Hostile);
