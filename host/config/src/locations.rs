//! Values that say where something is: the database (`storage.database`), the cache
//! (`storage.cache`), a plugin's component (`plugins[].module`).

use std::fmt;
use std::str::FromStr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use crate::env::expand;
use crate::types::{Secret, parse_expanded, string_schema};

string_schema!(
    DatabaseUrl,
    "DatabaseUrl",
    "sqlite://PATH, sqlite::memory: or postgres://…"
);
string_schema!(
    CacheUrl,
    "CacheUrl",
    "memory, or redis://… / rediss://… (one server), redis+sentinel://s1,s2/PRIMARY, redis+cluster://n1,n2,…"
);

/// Where bindings, intercepts and usage are stored: `sqlite://PATH` (embedded; a relative path is
/// resolved against the config file's directory, the file is created on first run),
/// `sqlite::memory:` (nothing kept), or `postgres://…` (shared by several gateways).
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(std::path::PathBuf),
    SqliteMemory,
    Postgres(Secret),
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            Self::SqliteMemory => f.write_str("sqlite::memory:"),
            // The URL may carry a password.
            Self::Postgres(_) => f.write_str("postgres://…"),
        }
    }
}

impl FromStr for DatabaseUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "sqlite::memory:" {
            return Ok(Self::SqliteMemory);
        }
        if let Some(path) = s.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err("missing file path".into());
            }
            return Ok(Self::Sqlite(path.into()));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(Self::Postgres(Secret::new(s)));
        }
        Err("must start with sqlite:// or postgres://".into())
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_expanded(
            d,
            "database URL",
            "sqlite://tollgate.db or postgres://tollgate@db/tollgate",
        )
    }
}

/// Where caches, counters and plugin key-value data live: `memory` (this process only) or
/// `redis://…` / `rediss://…` (shared by several gateways).
#[derive(Clone, PartialEq, Eq, Default)]
pub enum CacheUrl {
    #[default]
    Memory,
    Redis(Secret),
}

impl fmt::Debug for CacheUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory => f.write_str("memory"),
            Self::Redis(_) => f.write_str("redis://…"),
        }
    }
}

impl FromStr for CacheUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "memory" {
            Ok(Self::Memory)
        } else {
            crate::redis_url::RedisUrl::parse(s).map(|_| Self::Redis(Secret::new(s)))
        }
    }
}

impl<'de> Deserialize<'de> for CacheUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_expanded(d, "cache", "memory or redis://127.0.0.1:6379")
    }
}

/// Where a plugin's component comes from (`plugins[].module`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Module {
    /// `builtin:NAME`: one of the plugins embedded in the binary (`tollgate plugin builtins`
    /// lists them).
    Builtin(String),
    /// A component file (`.wasm`); relative paths are relative to the config file's directory
    /// until [`crate::Config::resolve_module`] makes them absolute.
    File(std::path::PathBuf),
}

string_schema!(
    Module,
    "Module",
    "builtin:NAME for a plugin shipped in the binary (e.g. builtin:round-robin), or the path of a component file (.wasm), relative to the config file"
);

impl Module {
    /// `builtin:NAME` or a path.
    pub fn parse(s: &str) -> Self {
        match s.strip_prefix(tollgate_builtins::PREFIX) {
            Some(name) => Self::Builtin(name.to_owned()),
            None => Self::File(s.into()),
        }
    }
}

impl fmt::Display for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Builtin(name) => write!(f, "{}{name}", tollgate_builtins::PREFIX),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

impl<'de> Deserialize<'de> for Module {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Ok(Self::parse(&expand(&raw).map_err(D::Error::custom)?))
    }
}

impl From<&std::path::Path> for Module {
    fn from(path: &std::path::Path) -> Self {
        Self::File(path.to_path_buf())
    }
}

impl From<&std::path::PathBuf> for Module {
    fn from(path: &std::path::PathBuf) -> Self {
        Self::File(path.clone())
    }
}

impl From<std::path::PathBuf> for Module {
    fn from(path: std::path::PathBuf) -> Self {
        Self::File(path)
    }
}
