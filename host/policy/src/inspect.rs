//! `tollgate plugin inspect`: what a component is (size, digest, imports, exports, the policy
//! kind it implements), whether this host can link it, and what its first instance costs.

use std::time::{Duration, Instant};

use super::{CodeOrigin, PluginKind, PluginSpec, PolicyEngine};
use tollgate_config::Module;

/// What `inspect` reports about a component.
#[derive(Debug)]
pub struct Inspection {
    pub size: u64,
    pub sha256: String,
    pub kind: Option<PluginKind>,
    /// The world its exports implement (`router-policy` or `lean-router-policy` for a router).
    pub world: Option<&'static str>,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    /// Why the host could not link it, if it cannot.
    pub link_error: Option<String>,
    /// Whether it was compiled or read from the compilation cache, and how long that took.
    pub code: (CodeOrigin, Duration),
}

/// Each exported interface a kind is known by, with its world.
const KINDS: [(&str, &str, PluginKind); 6] = [
    ("ip-binding", "ip-binding-policy", PluginKind::IpBinding),
    ("router", "router-policy", PluginKind::Router),
    ("lean-router", "lean-router-policy", PluginKind::Router),
    ("quota", "quota-policy", PluginKind::Quota),
    (
        "header-rewrite",
        "header-rewrite-policy",
        PluginKind::HeaderRewrite,
    ),
    ("transform", "transform-policy", PluginKind::Transform),
];

impl PolicyEngine {
    /// Compiles the component `module` and describes it.
    pub fn inspect(&self, module: &Module) -> Result<Inspection, String> {
        let bytes = crate::module::bytes(module, u64::MAX).map_err(|e| e.to_string())?;
        let sha256 = crate::sha256_hex(&bytes);
        let (component, code) = self.compile_bytes(&bytes).map_err(|e| e.to_string())?;
        let ty = component.component_type();
        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_owned())
            .collect();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_owned())
            .collect();
        let found = exported(&exports);
        let link_error = self
            .linker
            .instantiate_pre(&component)
            .err()
            .map(|e| super::link_error(&e));
        Ok(Inspection {
            size: bytes.len() as u64,
            sha256,
            kind: found.map(|(_, k)| k),
            world: found.map(|(w, _)| w),
            imports,
            exports,
            link_error,
            code,
        })
    }

    /// Creates one instance of the plugin `module` as the gateway would (its default limits),
    /// configured with `{}`: how long that took and the linear memory it holds.
    pub async fn first_instance(
        &self,
        module: &Module,
        kind: PluginKind,
    ) -> Result<(Duration, u64), String> {
        let spec =
            PluginSpec::with_limits("inspected", kind, &tollgate_config::PluginLimits::default());
        let plugin = self.load(module.clone(), spec).map_err(|e| e.to_string())?;
        let started = Instant::now();
        plugin.validate().await.map_err(|e| e.to_string())?;
        Ok((started.elapsed(), plugin.instance_memory().unwrap_or(0)))
    }
}

/// The policy kind a component's exports implement, if any.
pub(crate) fn kind_of<S: AsRef<str>>(exports: &[S]) -> Option<PluginKind> {
    exported(exports).map(|(_, k)| k)
}

/// The world and policy kind a component's exports implement, if any.
fn exported<S: AsRef<str>>(exports: &[S]) -> Option<(&'static str, PluginKind)> {
    KINDS
        .iter()
        .find(|(name, _, _)| {
            exports
                .iter()
                .any(|e| e.as_ref().starts_with(&format!("tollgate:policy/{name}@")))
        })
        .map(|(_, w, k)| (*w, *k))
}
