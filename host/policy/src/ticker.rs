//! The epoch ticker: advances wasmtime's epoch (the clock of call deadlines) while a plugin call
//! runs, and sleeps otherwise.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// The epoch ticker's state. Its thread advances the engine's epoch every [`EPOCH_TICK`] while
/// guest code may run (some [`Ticking`] guard is held: a call, or an instantiation with its
/// `configure`), and sleeps otherwise: an idle gateway, or one whose routes have no plugin, is not
/// woken 1000 times a second. A deadline is as strong as before: the guard is taken before any
/// guest code runs, and the first tick follows within one [`EPOCH_TICK`].
pub(crate) struct Ticker {
    pub(crate) active: std::sync::atomic::AtomicUsize,
    /// Epoch increments so far.
    pub(crate) ticks: AtomicU64,
    pub(crate) stop: std::sync::atomic::AtomicBool,
    pub(crate) thread: OnceLock<std::thread::Thread>,
}

impl Ticker {
    /// Keeps the epoch advancing until the guard is dropped.
    pub(crate) fn running(self: &Arc<Self>) -> Ticking {
        if self.active.fetch_add(1, Ordering::AcqRel) == 0
            && let Some(t) = self.thread.get()
        {
            t.unpark();
        }
        Ticking(self.clone())
    }
}

/// Holds the epoch ticker awake (see [`Ticker`]).
pub(crate) struct Ticking(Arc<Ticker>);

impl Drop for Ticking {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}
