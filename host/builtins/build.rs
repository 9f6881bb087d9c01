//! Embeds the built-in policy plugins: the release components `plugins/build.sh` writes to
//! `plugins/target/wasm32-wasip2/release/` (or the directory in `TOLLGATE_PLUGINS_DIR`).
//!
//! A component that is not built yet is left out with a warning, so `cargo build` works before
//! the plugins are; a config naming it is then refused at load with a message saying so. With
//! `TOLLGATE_REQUIRE_BUILTINS=1` (the Dockerfile, `scripts/install.sh`) a missing one fails the
//! build instead. Cargo reruns this script when a component changes or appears.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The plugins shipped in the binary: (name after `builtin:`, crate directory under plugins/).
/// Test fixtures (probe, hostile) and the template are not among them.
const BUILTINS: &[(&str, &str)] = &[
    ("ip-binding", "ip-binding"),
    ("header-rewrite", "header-rewrite"),
    ("round-robin", "round-robin"),
    ("fill-first", "fill-first"),
    ("weighted", "weighted"),
    ("least-busy", "least-busy"),
    ("latency", "latency"),
    ("session-affinity", "session-affinity"),
    ("quota-switch", "quota-switch"),
    ("model-alias", "model-alias"),
    ("anthropic-openai", "anthropic-openai"),
    ("redact", "redact"),
    ("headroom", "headroom"),
];

/// The value of `key = "…"` on its first line in a Cargo manifest.
fn manifest_value(manifest: &str, key: &str) -> Option<String> {
    manifest.lines().find_map(|l| {
        let rest = l.trim().strip_prefix(key)?.trim_start().strip_prefix('=')?;
        Some(rest.trim().trim_matches('"').to_owned())
    })
}

/// The plugin kind (`kind:` in YAML): the SDK feature the plugin's manifest selects, where
/// `lean-router` is the router kind's lean form.
fn kind(manifest: &str) -> String {
    [
        ("ip-binding", "ip-binding"),
        ("router", "router"),
        ("lean-router", "router"),
        ("quota", "quota"),
        ("header-rewrite", "header-rewrite"),
        ("transform", "transform"),
    ]
    .into_iter()
    .find(|(feature, _)| manifest.contains(&format!("features = [\"{feature}\"]")))
    .unwrap_or_else(|| panic!("no plugin kind in manifest:\n{manifest}"))
    .1
    .to_owned()
}

fn main() {
    let here = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let plugins = here.join("../../plugins");
    println!("cargo::rerun-if-env-changed=TOLLGATE_PLUGINS_DIR");
    println!("cargo::rerun-if-env-changed=TOLLGATE_REQUIRE_BUILTINS");
    let dir = std::env::var_os("TOLLGATE_PLUGINS_DIR").map_or_else(
        || plugins.join("target/wasm32-wasip2/release"),
        PathBuf::from,
    );
    let require = std::env::var("TOLLGATE_REQUIRE_BUILTINS").is_ok_and(|v| v == "1");
    let workspace =
        std::fs::read_to_string(plugins.join("Cargo.toml")).expect("plugins/Cargo.toml");
    println!(
        "cargo::rerun-if-changed={}",
        plugins.join("Cargo.toml").display()
    );
    let version = manifest_value(&workspace, "version").expect("plugins' workspace version");

    let mut table = String::from("&[\n");
    let mut missing = Vec::new();
    for (name, crate_dir) in BUILTINS {
        let manifest_path = plugins.join(crate_dir).join("Cargo.toml");
        println!("cargo::rerun-if-changed={}", manifest_path.display());
        let manifest = std::fs::read_to_string(&manifest_path)
            .unwrap_or_else(|e| panic!("{}: {e}", manifest_path.display()));
        let package = manifest_value(&manifest, "name").expect("package name");
        let wasm = dir.join(format!("{}.wasm", package.replace('-', "_")));
        // Rerun when the component changes, or appears (a missing path always reruns).
        println!("cargo::rerun-if-changed={}", wasm.display());
        if !wasm.is_file() {
            missing.push(wasm);
            continue;
        }
        let description = manifest_value(&manifest, "description").unwrap_or_default();
        writeln!(
            table,
            "    Builtin {{ name: {name:?}, kind: {kind:?}, package: {package:?}, version: {version:?}, description: {description:?}, bytes: include_bytes!({path:?}) }},",
            kind = kind(&manifest),
            path = absolute(&wasm).display().to_string(),
        )
        .expect("write to a String");
    }
    table.push(']');
    if !missing.is_empty() {
        let list = missing
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        if require {
            panic!(
                "TOLLGATE_REQUIRE_BUILTINS=1 but these plugins are not built (run plugins/build.sh): {list}"
            );
        }
        println!(
            "cargo::warning=built without {} of the built-in plugins (run plugins/build.sh first to embed them): {list}",
            missing.len()
        );
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("table.rs");
    std::fs::write(out, table).expect("write the table");
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}
