//! `clock`: wall-clock milliseconds.

use super::InstanceData;
use crate::wit::clock;

impl clock::Host for InstanceData {
    fn now_ms(&mut self) -> wasmtime::Result<u64> {
        Ok(tollgate_state::unix_ms())
    }
}

// The request and response handles are borrows the host lends for one call; the data is the
// store's `request`/`response`, set by the caller for that call. A guest never owns one, so the
// destructors have nothing to do.
