//! The one error every store returns.

/// A store could not answer (down, timed out, or refused the operation). Details are logged by
/// whoever decides what to do; they never reach a client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{backend} unavailable: {reason}")]
pub struct StoreError {
    pub backend: &'static str,
    pub reason: String,
}

impl StoreError {
    pub fn new(backend: &'static str, reason: impl std::fmt::Display) -> Self {
        Self {
            backend,
            reason: reason.to_string(),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;
