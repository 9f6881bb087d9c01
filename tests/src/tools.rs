//! External tools the deploy checks drive. A missing tool fails its test (a check that cannot run
//! has not passed): `scripts/test.sh` installs every one, from Debian or, for the Python ones,
//! into the venv under `target/tools/`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A Debian tool's path.
pub fn tool(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("`{name}` is not installed: scripts/test.sh installs it"))
}

/// A tool `scripts/test.sh` installs from PyPI into `target/tools/venv`.
pub fn venv_tool(name: &str) -> PathBuf {
    let path = crate::repo_root().join("target/tools/venv/bin").join(name);
    assert!(
        path.exists(),
        "`{}` is missing: scripts/test.sh installs it",
        path.display()
    );
    path
}

/// Runs `cmd`; whether it succeeded, and its stdout and stderr together.
pub fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("the tool starts");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The `${NAME}` references of `text` that have no `:-default`: what must be set.
pub fn required_vars(text: &str) -> Vec<String> {
    let mut vars = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        let body = &rest[at + 2..];
        let Some(end) = body.find('}') else { break };
        let inner = &body[..end];
        if !inner.contains(":-") && !vars.iter().any(|v| v == inner) {
            vars.push(inner.to_owned());
        }
        rest = &body[end..];
    }
    vars
}
