//! The policy plugins shipped inside the gateway binary, named `builtin:NAME` in a config's
//! `plugins[].module` (e.g. `builtin:round-robin`). They are the release components of
//! `plugins/`, embedded when the binary is built (see `build.rs`): wherever the binary runs, they
//! do, with no file to install. A binary built before `plugins/build.sh` ran has none
//! ([`all`] is empty), and a config naming one is refused at load with a message saying so.

/// One embedded plugin.
#[derive(Debug)]
pub struct Builtin {
    /// The name after `builtin:`.
    pub name: &'static str,
    /// Its plugin kind (`ip-binding`, `router`, `quota`, `header-rewrite`).
    pub kind: &'static str,
    /// The Cargo package it was built from, under `plugins/`.
    pub package: &'static str,
    /// The plugins' release version.
    pub version: &'static str,
    /// What it does (the package's description).
    pub description: &'static str,
    /// The component.
    pub bytes: &'static [u8],
}

/// How a config names a built-in plugin: `builtin:NAME`.
pub const PREFIX: &str = "builtin:";

static ALL: &[Builtin] = include!(concat!(env!("OUT_DIR"), "/table.rs"));

/// Every plugin embedded in this binary, in a fixed order.
pub fn all() -> &'static [Builtin] {
    ALL
}

/// The embedded plugin called `name` (without the `builtin:` prefix).
pub fn find(name: &str) -> Option<&'static Builtin> {
    ALL.iter().find(|b| b.name == name)
}

/// Why `name` names no built-in plugin, for an error message.
pub fn unknown(name: &str) -> String {
    if ALL.is_empty() {
        format!(
            "no built-in plugin `{name}`: this binary was built without its built-in plugins (run plugins/build.sh, then build the gateway)"
        )
    } else {
        let names: Vec<&str> = ALL.iter().map(|b| b.name).collect();
        format!(
            "no built-in plugin `{name}` (built in: {})",
            names.join(", ")
        )
    }
}
