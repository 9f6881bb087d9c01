//! `tollgate plugin new`: writes a plugin project that builds, passes its own cases and loads in
//! the gateway as it is. The sources are the files under `new_plugin/` (one per language and
//! kind, one cases file per kind shared by every language), with `{name}`, `{crate}`, `{kind}`,
//! `{world}`, `{wasm}`, `{sdk}` and the pinned tool versions filled in.
//!
//! - Rust projects are standalone crates (their own `[workspace]`), depending on the SDK by path:
//!   `plugins/sdk` of the Tollgate checkout, found from the project's directory upwards or given
//!   with `--sdk`.
//! - Python and JavaScript projects need no checkout: the WIT files and the language's SDK helper
//!   (`plugins/sdk-python/tollgate_sdk.py`, `plugins/sdk-js/tollgate_sdk.js`) are embedded in the
//!   binary and written into the project, and `build.sh` installs the pinned build tool.

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

/// Writes the project `name` of `kind` in `lang` into `dir` (which must not exist yet, or be
/// empty). Returns the files written.
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
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", dir.display()))?;
    let sdk = match (lang, sdk) {
        (Lang::Rust, Some(p)) => p
            .canonicalize()
            .map_err(|e| format!("--sdk {}: {e}", p.display()))?,
        (Lang::Rust, None) => find_sdk(&dir).ok_or(
            "cannot find Tollgate's plugins/sdk above the project directory: pass --sdk PATH",
        )?,
        (_, Some(_)) => return Err("--sdk applies to Rust projects only".into()),
        (_, None) => PathBuf::new(),
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
            .replace("{sdk}", &sdk.display().to_string())
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
            (".gitignore", ".venv/\n__pycache__/\n*.wasm\n".to_owned()),
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
            (".gitignore", "node_modules/\n*.wasm\n".to_owned()),
        ]),
    }
    if lang != Lang::Rust {
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
