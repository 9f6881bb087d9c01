//! The `request` and `response` resources: a plugin reads the fields it needs through methods;
//! the data stays in the host ([`crate::view`]).

use wasmtime::component::Resource;

use super::InstanceData;
use crate::view::{MAX_TRANSFORM_STATE, RequestInfo, ResponseInfo, TransformState};
use crate::wit::types;

impl types::HostRequest for InstanceData {
    fn id(&mut self, _: Resource<RequestInfo>) -> wasmtime::Result<String> {
        Ok(self.request()?.id.clone())
    }
    fn method(&mut self, _: Resource<RequestInfo>) -> wasmtime::Result<String> {
        Ok(self.request()?.method.clone())
    }
    fn path(&mut self, _: Resource<RequestInfo>) -> wasmtime::Result<String> {
        Ok(self.request()?.path.clone())
    }
    fn header(
        &mut self,
        _: Resource<RequestInfo>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        Ok(self.request()?.header(&name))
    }
    fn headers(&mut self, _: Resource<RequestInfo>) -> wasmtime::Result<Vec<types::Header>> {
        Ok(self.request()?.header_list())
    }
    fn client_ip(&mut self, _: Resource<RequestInfo>) -> wasmtime::Result<String> {
        let ip = self.request()?.client_ip;
        Ok(tollgate_config::IpText::new(ip).as_str().to_owned())
    }
    fn key_id(&mut self, _: Resource<RequestInfo>) -> wasmtime::Result<String> {
        Ok(self.request()?.key_id.clone())
    }
    fn key_name(&mut self, _: Resource<RequestInfo>) -> wasmtime::Result<String> {
        Ok(self.request()?.key_name.clone())
    }
    fn model(&mut self, _: Resource<RequestInfo>) -> wasmtime::Result<Option<String>> {
        Ok(self.request()?.model.clone())
    }
    fn stream(&mut self, _: Resource<RequestInfo>) -> wasmtime::Result<bool> {
        Ok(self.request()?.stream)
    }
    fn session_hint(&mut self, _: Resource<RequestInfo>) -> wasmtime::Result<Option<String>> {
        Ok(self.request()?.session_hint.clone())
    }
    fn upstream_protocol(&mut self, _: Resource<RequestInfo>) -> wasmtime::Result<Option<String>> {
        Ok(self.request()?.upstream_protocol.map(str::to_owned))
    }
    fn estimated_tokens(&mut self, _: Resource<RequestInfo>) -> wasmtime::Result<u64> {
        Ok(self.request()?.estimated_tokens)
    }
    fn drop(&mut self, _: Resource<RequestInfo>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl types::HostResponse for InstanceData {
    fn upstream(&mut self, _: Resource<ResponseInfo>) -> wasmtime::Result<String> {
        Ok(self.response()?.upstream.clone())
    }
    fn status(&mut self, _: Resource<ResponseInfo>) -> wasmtime::Result<u16> {
        Ok(self.response()?.status)
    }
    fn header(
        &mut self,
        _: Resource<ResponseInfo>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        Ok(self.response()?.header(&name))
    }
    fn headers(&mut self, _: Resource<ResponseInfo>) -> wasmtime::Result<Vec<types::Header>> {
        Ok(self.response()?.header_list())
    }
    fn first_event(&mut self, _: Resource<ResponseInfo>) -> wasmtime::Result<Option<String>> {
        Ok(self.response()?.first_event.clone())
    }
    fn drop(&mut self, _: Resource<ResponseInfo>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl types::HostTransformState for InstanceData {
    fn get(&mut self, _: Resource<TransformState>) -> wasmtime::Result<Option<String>> {
        Ok(self.transform_state.clone())
    }
    fn set(&mut self, _: Resource<TransformState>, value: String) -> wasmtime::Result<()> {
        if value.len() > MAX_TRANSFORM_STATE {
            wasmtime::bail!(
                "transform-state.set: {} bytes is more than the {MAX_TRANSFORM_STATE} a state may hold",
                value.len()
            );
        }
        self.transform_state = Some(value);
        Ok(())
    }
    fn drop(&mut self, _: Resource<TransformState>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl types::Host for InstanceData {}
