//! `bindings`: the key→network table. A call the stores cannot answer traps the plugin call with
//! the store error, so the caller applies the failsafe. Each call restarts the budget clock.

use wasmtime::component::Resource;

use super::InstanceData;
use crate::view::RequestInfo;
use crate::wit::binding_store;
use tollgate_state::{Binding, BindingStatus};

fn to_wit(b: Binding) -> binding_store::Binding {
    binding_store::Binding {
        cidr: tollgate_config::IpText::net(b.cidr).as_str().to_owned(),
        status: match b.status {
            BindingStatus::Active => binding_store::BindingStatus::Active,
            BindingStatus::Banned => binding_store::BindingStatus::Banned,
        },
        created_ms: b.created_ms,
    }
}

impl binding_store::Host for InstanceData {
    async fn get(&mut self, key_id: String) -> wasmtime::Result<Option<binding_store::Binding>> {
        let found = self.stores.binding(&key_id).await;
        self.budget.resume();
        Ok(found?.map(to_wit))
    }
    async fn get_for(
        &mut self,
        _: Resource<RequestInfo>,
    ) -> wasmtime::Result<Option<binding_store::Binding>> {
        let found = self.stores.binding(&self.request()?.key_id).await;
        self.budget.resume();
        Ok(found?.map(to_wit))
    }
    async fn match_for(
        &mut self,
        _: Resource<RequestInfo>,
    ) -> wasmtime::Result<binding_store::BindingMatch> {
        use binding_store::BindingMatch;
        let request = self.request()?;
        let ip = request.client_ip;
        let found = self.stores.binding(&request.key_id).await;
        self.budget.resume();
        Ok(match found? {
            None => BindingMatch::Unbound,
            Some(b) if b.status == BindingStatus::Banned => BindingMatch::Banned,
            Some(b) if b.cidr.contains(&ip) => BindingMatch::Inside,
            Some(_) => BindingMatch::Outside,
        })
    }
    async fn bind_first(
        &mut self,
        key_id: String,
        cidr: String,
    ) -> wasmtime::Result<Result<binding_store::Binding, String>> {
        let net: tollgate_config::Cidr = match cidr.parse() {
            Ok(n) => n,
            // The value is the plugin's own, so echoing it back tells its author what was wrong.
            Err(e) => return Ok(Err(format!("{cidr:?}: {e}"))),
        };
        if self.dry_run {
            // A shadow: the binding in force, or the one the call would make, unwritten.
            let found = self.stores.binding(&key_id).await;
            self.budget.resume();
            let would = || {
                let now = tollgate_state::unix_ms();
                Binding {
                    key_id: key_id.clone(),
                    cidr: tollgate_state::normalize_net(net.0),
                    status: BindingStatus::Active,
                    created_ms: now,
                    last_used_ms: now,
                    last_ip: None,
                    request_count: 0,
                }
            };
            return Ok(Ok(to_wit(found?.unwrap_or_else(would))));
        }
        let bound = self.stores.bind_first(&key_id, net.0).await;
        self.budget.resume();
        Ok(Ok(to_wit(bound?)))
    }
}
