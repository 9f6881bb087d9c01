//! Operations on the gateway's state that operators run: one implementation shared by the admin
//! API (`crate::admin`) and the command line (`crate::cli`), so both validate, act and audit the
//! same way. Every change writes its audit record (`state::AuditRecord`) before it returns.

pub mod bindings;
pub mod credentials;
pub mod ip_rules;
pub mod keys;
pub mod reload;
pub mod requests;
pub mod settings;
pub mod status;
pub mod upstreams;
pub mod usage;

use crate::state::StoreError;

/// Who asks: the admin user and client address, or `cli:<user>` with no address.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub ip: String,
}

impl Actor {
    /// The operator running the command line.
    pub fn cli() -> Self {
        let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
        Self {
            name: format!("cli:{user}"),
            ip: String::new(),
        }
    }
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The named thing does not exist (nothing changed).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Input that names a field and what is wrong with it.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The database or cache failed; nothing is known to have changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
