//! `${VAR}` expansion for string values in the config file.
//!
//! Expansion happens while a value is deserialized (not on the raw text), so a secret that contains
//! YAML syntax cannot change the document's structure, and parse errors keep their line numbers.
//! The variable source is swappable per load so tests never mutate the process environment.

use std::cell::RefCell;

/// Where `${VAR}` values come from during one config load.
pub type EnvSource = Box<dyn Fn(&str) -> Option<String>>;
type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

thread_local! {
    static LOOKUP: RefCell<Option<EnvSource>> = const { RefCell::new(None) };
}

/// Runs `f` with `lookup` as the variable source for every expansion on this thread.
pub(crate) fn with_lookup<R>(lookup: EnvSource, f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            LOOKUP.with(|l| l.borrow_mut().take());
        }
    }
    LOOKUP.with(|l| *l.borrow_mut() = Some(lookup));
    let _reset = Reset;
    f()
}

/// Why a `${…}` reference could not be expanded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExpandError {
    #[error("environment variable {0} is not set (use ${{{0}:-default}} for an optional value)")]
    Unset(String),
    #[error("unterminated `${{` in {0:?}")]
    Unterminated(String),
    #[error("invalid variable name {0:?}")]
    BadName(String),
}

/// Expands `${VAR}` and `${VAR:-default}`; `$$` is a literal `$`. Any other `$` is kept as is.
pub fn expand(input: &str) -> Result<String, ExpandError> {
    if !input.contains('$') {
        return Ok(input.to_owned());
    }
    LOOKUP.with(|l| match l.borrow().as_deref() {
        Some(lookup) => expand_with(input, lookup),
        None => expand_with(input, &super::env_file::var),
    })
}

pub(crate) fn expand_with(input: &str, lookup: EnvLookup<'_>) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| ExpandError::Unterminated(input.to_owned()))?;
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(ExpandError::BadName(name.to_owned()));
            }
            match (lookup(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(ExpandError::Unset(name.to_owned())),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// `deserialize_with` helper for plain string fields that allow `${VAR}`.
pub(crate) fn string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let raw = <String as serde::Deserialize>::deserialize(d)?;
    expand(&raw).map_err(serde::de::Error::custom)
}

/// `deserialize_with` helper for optional paths that allow `${VAR}`.
pub(crate) fn opt_path<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::path::PathBuf>, D::Error> {
    opt_string(d).map(|s| s.map(Into::into))
}

/// `deserialize_with` helper for optional strings that allow `${VAR}`.
pub(crate) fn opt_string<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    let raw = <Option<String> as serde::Deserialize>::deserialize(d)?;
    raw.map(|r| expand(&r).map_err(serde::de::Error::custom))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("sk-123".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_variables_and_defaults() {
        assert_eq!(expand_with("Bearer ${KEY}", &env).unwrap(), "Bearer sk-123");
        assert_eq!(
            expand_with("${MISSING:-fallback}", &env).unwrap(),
            "fallback"
        );
        assert_eq!(expand_with("${EMPTY:-fallback}", &env).unwrap(), "");
        assert_eq!(expand_with("${MISSING:-}", &env).unwrap(), "");
    }

    #[test]
    fn dollar_dollar_is_a_literal_and_lone_dollars_are_kept() {
        assert_eq!(expand_with("a$$b $5 $", &env).unwrap(), "a$b $5 $");
    }

    #[test]
    fn unset_variable_without_default_is_an_error() {
        assert_eq!(
            expand_with("${NOPE}", &env),
            Err(ExpandError::Unset("NOPE".into()))
        );
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(matches!(
            expand_with("${KEY", &env),
            Err(ExpandError::Unterminated(_))
        ));
        assert!(matches!(
            expand_with("${1X}", &env),
            Err(ExpandError::BadName(_))
        ));
        assert!(matches!(
            expand_with("${A-B}", &env),
            Err(ExpandError::BadName(_))
        ));
    }
}
