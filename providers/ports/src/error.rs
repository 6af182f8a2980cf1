//! The error every port returns. Providers keep their own private error types and convert
//! into this one, so the service can react to the *kind* of failure without knowing the
//! provider.

/// A boxed error from a provider's client library.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result of a port operation.
pub type Result<T, E = PortError> = std::result::Result<T, E>;

/// What went wrong in a port, independent of the provider behind it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PortError {
    /// The addressed item does not exist (or is not visible to the caller).
    #[error("not found: {0}")]
    NotFound(String),
    /// The item already exists and the operation does not overwrite.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// A precondition or state check failed (e.g. a status transition that is not allowed).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The backing system could not be reached or refused temporarily; retrying later may
    /// succeed. Work must be delayed, never dropped, on this error.
    #[error("{provider} is unavailable: {source}")]
    Unavailable {
        provider: &'static str,
        #[source]
        source: BoxError,
    },
    /// Cryptographic verification failed: wrong key, wrong context or tampered data.
    #[error("integrity check failed: {0}")]
    Integrity(String),
    /// The provider does not support this operation in this build or configuration.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Any other provider failure.
    #[error("{provider} failed: {source}")]
    Generic {
        provider: &'static str,
        #[source]
        source: BoxError,
    },
}

impl PortError {
    /// Wraps a provider error as [`PortError::Generic`].
    pub fn generic(provider: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Generic {
            provider,
            source: source.into(),
        }
    }

    /// Wraps a provider error as [`PortError::Unavailable`].
    pub fn unavailable(provider: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Unavailable {
            provider,
            source: source.into(),
        }
    }

    /// True when retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}
