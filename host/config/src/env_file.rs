//! The deployment's environment file (`/etc/tollgate/env`): `KEY=value` lines, as systemd's
//! `EnvironmentFile=` reads them. The service gets them from systemd; every other `tollgate`
//! process on the host (`key-id`, `bindings`, `usage`, a `run` by hand) reads the same file, so
//! `${TOLLGATE_SECRET}`, `${TOLLGATE_DATABASE}`, … mean what they mean to the running gateway.
//! The process's own environment wins over the file, as in a shell.
//!
//! The format is the subset of systemd's that deployments use: one `KEY=value` per line, blank
//! lines and lines starting with `#` or `;` ignored, a value optionally in single or double
//! quotes (kept verbatim inside them), an optional leading `export `.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where the environment file is looked for unless `TOLLGATE_ENV_FILE` says otherwise (an empty
/// `TOLLGATE_ENV_FILE` turns it off).
pub const DEFAULT_ENV_FILE: &str = "/etc/tollgate/env";

/// The file's variables, once read.
static VARS: OnceLock<Loaded> = OnceLock::new();

#[derive(Debug)]
struct Loaded {
    path: Option<PathBuf>,
    vars: HashMap<String, String>,
}

/// Reads the environment file (once per process): `TOLLGATE_ENV_FILE` or [`DEFAULT_ENV_FILE`].
/// Returns the file read, or none when there is none. An unreadable file is an error (it holds
/// the deployment's secrets: running without them would use another database and secret), as is
/// a missing one that `TOLLGATE_ENV_FILE` names.
pub fn load() -> Result<Option<&'static Path>, String> {
    if let Some(l) = VARS.get() {
        return Ok(l.path.as_deref());
    }
    let named = std::env::var_os("TOLLGATE_ENV_FILE");
    let path = match &named {
        Some(p) if p.is_empty() => None,
        Some(p) => Some(PathBuf::from(p)),
        None => Some(PathBuf::from(DEFAULT_ENV_FILE)),
    };
    let loaded = match path {
        None => Loaded {
            path: None,
            vars: HashMap::new(),
        },
        Some(path) => match std::fs::read_to_string(&path) {
            Ok(text) => Loaded {
                vars: parse(&text).map_err(|e| format!("{}: {e}", path.display()))?,
                path: Some(path),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && named.is_none() => Loaded {
                path: None,
                vars: HashMap::new(),
            },
            Err(e) => {
                return Err(format!(
                    "cannot read the environment file {}: {e} (it holds the gateway's secret and database: run as root or as the gateway's user, or set TOLLGATE_ENV_FILE; empty turns it off)",
                    path.display()
                ));
            }
        },
    };
    Ok(VARS.get_or_init(|| loaded).path.as_deref())
}

/// `name` from the process environment, else from the environment file (if [`load`]ed).
pub fn var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .or_else(|| VARS.get()?.vars.get(name).cloned())
}

/// `KEY=value` lines into a map; a line that is neither blank, a comment nor an assignment is an
/// error naming its number.
pub fn parse(text: &str) -> Result<HashMap<String, String>, String> {
    let mut vars = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected KEY=value", i + 1))?;
        let key = key.trim();
        let valid = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!("line {}: invalid variable name {key:?}", i + 1));
        }
        let value = value.trim();
        let value = [('"', '"'), ('\'', '\'')]
            .iter()
            .find_map(|(open, close)| {
                value
                    .strip_prefix(*open)
                    .and_then(|v| v.strip_suffix(*close))
            })
            .unwrap_or(value);
        vars.insert(key.to_owned(), value.to_owned());
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_systemd_subset() {
        let vars =
            parse("# secrets\n\nTOLLGATE_SECRET=abc=def\nexport A = 'x y'\n; old\nB=\"q\"\nC=\n")
                .unwrap();
        assert_eq!(vars["TOLLGATE_SECRET"], "abc=def");
        assert_eq!(vars["A"], "x y");
        assert_eq!(vars["B"], "q");
        assert_eq!(vars["C"], "");
        assert_eq!(vars.len(), 4);
    }

    #[test]
    fn refuses_what_is_not_an_assignment() {
        assert_eq!(
            parse("A=1\njunk\n").unwrap_err(),
            "line 2: expected KEY=value"
        );
        assert_eq!(
            parse("1A=x\n").unwrap_err(),
            "line 1: invalid variable name \"1A\""
        );
    }
}
