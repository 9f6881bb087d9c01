//! The upstream's health and cooldown bookkeeping.

use super::*;
use crate::state::unix_ms;

fn upstream() -> Upstream {
    let yaml = "name: a\nmock: {}\n";
    Upstream::new(yaml_serde::from_str(yaml).unwrap()).unwrap()
}

#[test]
fn cooldowns_apply_per_model_or_to_every_model_and_expire() {
    let u = upstream();
    assert_eq!(u.cooling_until(Some("m")), 0);
    let later = unix_ms() + 60_000;
    u.cool_down(Some("m"), later);
    assert_eq!(u.cooling_until(Some("m")), later);
    assert_eq!(u.cooling_until(Some("other")), 0);
    u.cool_down(None, later + 1);
    assert_eq!(u.cooling_until(Some("other")), later + 1);
    u.cool_down(Some("x"), unix_ms().saturating_sub(1));
    assert_eq!(
        u.cooling_until(Some("x")),
        later + 1,
        "the all-models cooldown still applies"
    );
}
