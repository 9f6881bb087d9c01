//! `--output text|json` (a global option): every listing prints either one tab-separated line
//! per row (for eyes, `cut` and `awk`) or one JSON array of objects (for `jq` and scripts), the
//! rows serialized as the admin API answers them.

use std::sync::OnceLock;

use serde::Serialize;

#[derive(Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    #[default]
    Text,
    Json,
}

static OUTPUT: OnceLock<Output> = OnceLock::new();

/// Set once, from the command line.
pub(super) fn set(o: Output) {
    let _ = OUTPUT.set(o);
}

/// Whether listings print JSON.
pub(super) fn json() -> bool {
    OUTPUT.get().copied() == Some(Output::Json)
}

/// A listing: with `--output json` the rows as one JSON array; otherwise `header` (if not
/// empty) and one `line` per row.
pub(super) fn listing<T: Serialize>(
    rows: &[T],
    header: &str,
    line: impl Fn(&T) -> String,
) -> Result<String, String> {
    if json() {
        return serde_json::to_string_pretty(rows).map_err(|e| format!("{e}\n"));
    }
    let mut out: Vec<String> = Vec::with_capacity(rows.len() + 1);
    if !header.is_empty() {
        out.push(header.to_owned());
    }
    out.extend(rows.iter().map(line));
    Ok(out.join("\n"))
}

/// One document (a status, a key): JSON with `--output json`, else `text`.
pub(super) fn document<T: Serialize>(
    value: &T,
    text: impl FnOnce(&T) -> String,
) -> Result<String, String> {
    if json() {
        return serde_json::to_string_pretty(value).map_err(|e| format!("{e}\n"));
    }
    Ok(text(value))
}
