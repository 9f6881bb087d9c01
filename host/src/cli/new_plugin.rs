//! `tollgate plugin new`: writes a plugin project that builds, passes its own cases and loads in
//! the gateway as it is. The sources are the files under `new_plugin/` (one per language and
//! kind, one cases file per kind shared by every language), with `{name}`, `{crate}`, `{kind}`,
//! `{world}`, `{wasm}`, `{sdk}` and the pinned tool versions filled in.
//!
//! - Rust projects are standalone crates (their own `[workspace]`), depending on the SDK by path:
//!   the one given with `--sdk`, else `plugins/sdk` of a Tollgate checkout the project is in,
//!   else the copy this binary carries, written into the project as `vendor/tollgate-sdk` with
//!   the WIT in `wit/` (a plugin author has only the binary).
//! - Python and JavaScript projects need no checkout either: the WIT files and the language's
//!   SDK helper (`plugins/sdk-python/tollgate_sdk.py`, `plugins/sdk-js/tollgate_sdk.js`) are
//!   embedded in the binary and written into the project, and `build.sh` installs the pinned
//!   build tool.
//!
//! Everything is checked before anything is written, and a project that could not be written
//! whole is removed: a failed `plugin new` leaves nothing behind.

use std::path::{Path, PathBuf};

use crate::policy::PluginKind;

/// The languages `plugin new` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

/// componentize-py release the Python template builds with (PyPI).
pub const COMPONENTIZE_PY: &str = "0.25.1";
/// componentize-js release the JavaScript template builds with (npm).
pub const COMPONENTIZE_JS: &str = "0.23.0";

/// The plugin source of `kind` in `lang`, and its cases file (the same for every language).
fn sources(kind: PluginKind, lang: Lang) -> (&'static str, &'static str) {
    macro_rules! pick {
        ($kind:literal) => {
            (
                match lang {
                    Lang::Rust => include_str!(concat!("new_plugin/rust/", $kind, ".rs")),
                    Lang::Python => include_str!(concat!("new_plugin/python/", $kind, ".py")),
                    Lang::Js => include_str!(concat!("new_plugin/js/", $kind, ".js")),
                },
                include_str!(concat!("new_plugin/cases/", $kind, ".yaml")),
            )
        };
    }
    match kind {
        PluginKind::IpBinding => pick!("ip-binding"),
        PluginKind::Router => pick!("router"),
        PluginKind::Quota => pick!("quota"),
        PluginKind::HeaderRewrite => pick!("header-rewrite"),
        PluginKind::Transform => pick!("transform"),
    }
}

/// The WIT package, as the gateway speaks it.
const WIT: [(&str, &str); 4] = [
    ("wit/host.wit", include_str!("../../../wit/host.wit")),
    (
        "wit/policies.wit",
        include_str!("../../../wit/policies.wit"),
    ),
    ("wit/types.wit", include_str!("../../../wit/types.wit")),
    ("wit/worlds.wit", include_str!("../../../wit/worlds.wit")),
];

/// The Rust SDK this binary carries: its manifest (standalone) and its source.
const RUST_SDK: [(&str, &str); 2] = [
    (
        "vendor/tollgate-sdk/Cargo.toml",
        include_str!("new_plugin/rust/sdk-Cargo.toml.txt"),
    ),
    (
        "vendor/tollgate-sdk/src/lib.rs",
        include_str!("../../../plugins/sdk/src/lib.rs"),
    ),
];

/// Where a Rust project's SDK comes from.
enum Sdk {
    /// A directory holding the SDK crate (`--sdk`, or a checkout's `plugins/sdk`).
    At(PathBuf),
    /// The copy in this binary, written into the project.
    Carried,
}

/// `path` if it holds the `tollgate-sdk` crate.
fn check_sdk(path: &Path) -> Result<PathBuf, String> {
    let dir = path
        .canonicalize()
        .map_err(|e| format!("--sdk {}: {e}", path.display()))?;
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap_or_default();
    if !manifest
        .lines()
        .any(|l| l.trim().replace(' ', "") == "name=\"tollgate-sdk\"")
    {
        return Err(format!(
            "--sdk {}: not Tollgate's Rust SDK (a directory whose Cargo.toml is the package tollgate-sdk, like plugins/sdk of a checkout); leave --sdk out to use the copy this binary carries",
            path.display()
        ));
    }
    Ok(dir)
}

/// Writes the project `name` of `kind` in `lang` into `dir` (which must not exist yet, or be
/// empty). Returns the files written. Everything is checked first; if writing then fails,
/// nothing is left: not the files, and not `dir` if this made it.
pub fn write(
    name: &str,
    kind: PluginKind,
    lang: Lang,
    dir: &Path,
    sdk: Option<&Path>,
) -> Result<Vec<PathBuf>, String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        || !name.as_bytes()[0].is_ascii_lowercase()
    {
        return Err(format!(
            "invalid name {name:?}: use lowercase letters, digits, '-' and '_', starting with a letter"
        ));
    }
    if dir.exists()
        && std::fs::read_dir(dir)
            .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
            .next()
            .is_some()
    {
        return Err(format!("{} exists and is not empty", dir.display()));
    }
    let sdk = match (lang, sdk) {
        (Lang::Rust, Some(p)) => Sdk::At(check_sdk(p)?),
        (Lang::Rust, None) => {
            // The checkout the project is written into, if any: its directory may not exist yet.
            let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
            let near = abs
                .ancestors()
                .find(|d| d.exists())
                .and_then(|d| d.canonicalize().ok());
            match near.and_then(|d| find_sdk(&d)) {
                Some(p) => Sdk::At(p),
                None => Sdk::Carried,
            }
        }
        (_, Some(_)) => return Err("--sdk applies to Rust projects only".into()),
        (_, None) => Sdk::Carried,
    };
    let existed = dir.exists();
    let written = write_project(name, kind, lang, dir, &sdk);
    if written.is_err() && dir.exists() {
        if existed {
            // It was empty: what is in it now was written here.
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                let _ = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
            }
        } else {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    written
}

fn write_project(
    name: &str,
    kind: PluginKind,
    lang: Lang,
    dir: &Path,
    sdk: &Sdk,
) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", dir.display()))?;
    let sdk_path = match sdk {
        Sdk::At(p) => p.display().to_string(),
        Sdk::Carried => "vendor/tollgate-sdk".to_owned(),
    };
    let crate_name = name.replace('-', "_");
    let wasm = match lang {
        Lang::Rust => format!("target/wasm32-wasip2/release/{crate_name}.wasm"),
        Lang::Python | Lang::Js => format!("{name}.wasm"),
    };
    let world = crate::policy::world(kind);
    let fill = |text: &str| {
        text.replace("{name}", name)
            .replace("{crate}", &crate_name)
            .replace("{world}", world)
            .replace("{kind}", world.trim_end_matches("-policy"))
            .replace("{wasm}", &wasm)
            .replace("{sdk}", &sdk_path)
            .replace("{componentize_py}", COMPONENTIZE_PY)
            .replace("{componentize_js}", COMPONENTIZE_JS)
    };
    let (source, cases) = sources(kind, lang);
    let mut files: Vec<(&str, String)> = vec![("cases/basic.yaml", fill(cases))];
    match lang {
        Lang::Rust => files.extend([
            (
                "Cargo.toml",
                fill(include_str!("new_plugin/rust/Cargo.toml.txt")),
            ),
            (
                "README.md",
                fill(include_str!("new_plugin/rust/README.md.txt")),
            ),
            ("src/lib.rs", source.to_owned()),
        ]),
        Lang::Python => files.extend([
            (
                "build.sh",
                fill(include_str!("new_plugin/python/build.sh.txt")),
            ),
            (
                "README.md",
                fill(include_str!("new_plugin/python/README.md.txt")),
            ),
            ("app.py", source.to_owned()),
            (
                "tollgate_sdk.py",
                include_str!("../../../plugins/sdk-python/tollgate_sdk.py").to_owned(),
            ),
            (
                ".gitignore",
                ".venv/\n__pycache__/\n*.wasm\n.build-inputs\n".to_owned(),
            ),
        ]),
        Lang::Js => files.extend([
            ("build.sh", fill(include_str!("new_plugin/js/build.sh.txt"))),
            (
                "package.json",
                fill(include_str!("new_plugin/js/package.json.txt")),
            ),
            (
                "README.md",
                fill(include_str!("new_plugin/js/README.md.txt")),
            ),
            ("app.js", source.to_owned()),
            (
                "tollgate_sdk.js",
                include_str!("../../../plugins/sdk-js/tollgate_sdk.js").to_owned(),
            ),
            (
                ".gitignore",
                "node_modules/\n*.wasm\n.build-inputs\n".to_owned(),
            ),
        ]),
    }
    // The SDK's bindings are generated from ../../wit: the project's own `wit/`.
    if lang == Lang::Rust && matches!(sdk, Sdk::Carried) {
        files.extend(RUST_SDK.iter().map(|(p, t)| (*p, (*t).to_owned())));
    }
    if lang != Lang::Rust || matches!(sdk, Sdk::Carried) {
        files.extend(WIT.iter().map(|(p, t)| (*p, (*t).to_owned())));
    }
    let mut written = Vec::new();
    for (rel, text) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        if rel == "build.sh" {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("cannot make {} executable: {e}", path.display()))?;
        }
        written.push(path);
    }
    Ok(written)
}

/// `plugins/sdk` of a Tollgate checkout in `start` or a directory above it.
fn find_sdk(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|d| d.join("plugins/sdk"))
        .find(|sdk| sdk.join("Cargo.toml").is_file())
}

#[cfg(test)]
mod tests {
    /// The lines of `section` in a Cargo manifest that start with one of `keys`.
    fn entries<'a>(manifest: &'a str, section: &str, keys: &[&str]) -> Vec<&'a str> {
        let mut inside = false;
        let mut out = Vec::new();
        for line in manifest.lines() {
            if line.starts_with('[') {
                inside = line.trim() == section;
            } else if inside && keys.iter().any(|k| line.starts_with(&format!("{k} "))) {
                out.push(line.trim());
            }
        }
        out.sort_unstable();
        out
    }

    /// The SDK the binary carries builds with what the checkout's SDK builds with: the same
    /// dependencies (as `plugins/Cargo.toml` pins them for the workspace) and the same features.
    #[test]
    fn the_carried_sdk_manifest_matches_the_checkouts() {
        let carried = include_str!("new_plugin/rust/sdk-Cargo.toml.txt");
        let workspace = include_str!("../../../plugins/Cargo.toml");
        let sdk = include_str!("../../../plugins/sdk/Cargo.toml");
        let deps = ["serde", "serde_json", "wit-bindgen"];
        let want = entries(workspace, "[workspace.dependencies]", &deps);
        assert_eq!(want.len(), 3, "{want:?}");
        assert_eq!(entries(carried, "[dependencies]", &deps), want);
        let features = [
            "ip-binding",
            "router",
            "lean-router",
            "quota",
            "header-rewrite",
            "transform",
        ];
        assert_eq!(
            entries(carried, "[features]", &features),
            entries(sdk, "[features]", &features)
        );
        assert_eq!(entries(sdk, "[features]", &features).len(), 6);
    }
}
