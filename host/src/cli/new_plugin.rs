//! `tollgate plugin new`: writes a plugin project that builds, passes its own cases and loads in
//! the gateway as it is. The sources are the files beside this one (`new_plugin/`), with
//! `{name}`, `{crate}`, `{kind}` and `{sdk}` filled in.
//!
//! Rust projects are standalone crates (their own `[workspace]`), depending on the SDK by path:
//! `plugins/sdk` of the Tollgate checkout, found from the project's directory upwards or given
//! with `--sdk`.

use std::path::{Path, PathBuf};

use crate::policy::PluginKind;

/// The languages `plugin new` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
}

struct Template {
    kind: PluginKind,
    source: &'static str,
    cases: &'static str,
}

const RUST: [Template; 4] = [
    Template {
        kind: PluginKind::IpBinding,
        source: include_str!("new_plugin/ip-binding.rs"),
        cases: include_str!("new_plugin/ip-binding.yaml"),
    },
    Template {
        kind: PluginKind::Router,
        source: include_str!("new_plugin/router.rs"),
        cases: include_str!("new_plugin/router.yaml"),
    },
    Template {
        kind: PluginKind::Quota,
        source: include_str!("new_plugin/quota.rs"),
        cases: include_str!("new_plugin/quota.yaml"),
    },
    Template {
        kind: PluginKind::HeaderRewrite,
        source: include_str!("new_plugin/header-rewrite.rs"),
        cases: include_str!("new_plugin/header-rewrite.yaml"),
    },
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
    let Lang::Rust = lang;
    let template = RUST
        .iter()
        .find(|t| t.kind == kind)
        .expect("a template for every kind");
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", dir.display()))?;
    let sdk = match sdk {
        Some(p) => p
            .canonicalize()
            .map_err(|e| format!("--sdk {}: {e}", p.display()))?,
        None => find_sdk(&dir).ok_or(
            "cannot find Tollgate's plugins/sdk above the project directory: pass --sdk PATH",
        )?,
    };
    let fill = |text: &str| {
        text.replace("{name}", name)
            .replace("{crate}", &name.replace('-', "_"))
            .replace(
                "{kind}",
                crate::policy::world(kind).trim_end_matches("-policy"),
            )
            .replace("{sdk}", &sdk.display().to_string())
    };
    let files = [
        (
            "Cargo.toml",
            fill(include_str!("new_plugin/Cargo.toml.txt")),
        ),
        ("README.md", fill(include_str!("new_plugin/README.md.txt"))),
        ("src/lib.rs", template.source.to_owned()),
        ("cases/basic.yaml", fill(template.cases)),
    ];
    let mut written = Vec::new();
    for (rel, text) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
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
