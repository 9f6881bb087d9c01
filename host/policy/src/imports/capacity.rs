//! `capacity`: the candidates' headroom, read by the host before the call (see
//! [`crate::Plugin::wants_capacity`]) and lent to it in the store's `headroom`.

use super::InstanceData;
use crate::wit::capacity;

impl capacity::Host for InstanceData {
    fn remaining(&mut self, upstream: String) -> wasmtime::Result<capacity::Headroom> {
        Ok(self
            .headroom
            .iter()
            .find(|(name, _)| *name == upstream)
            .map_or(
                capacity::Headroom {
                    requests: None,
                    tokens: None,
                    monthly_tokens: None,
                },
                |(_, h)| *h,
            ))
    }
}
