//! What a storage operation can fail with, in the service's terms, whichever engine ran it.
//! `http::error` maps each variant to a status, once.

use std::fmt;
use std::sync::Arc;

use uuid::Uuid;

use super::failure::DbFailure;
use super::retry::Retryable;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    User,
    Product,
    Order,
}

impl Resource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Product => "product",
            Self::Order => "order",
        }
    }
}

/// A state conflict (409), with what the client needs to resolve it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Conflict {
    EmailTaken,
    SkuTaken,
    UserHasOrders,
    ProductHasOrders,
    InvalidTransition {
        from: &'static str,
        to: &'static str,
    },
    InsufficientStock {
        product_id: Uuid,
        requested: i64,
        available: i64,
    },
    IdempotencyKeyReused,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{} {id} not found", resource.as_str())]
    NotFound { resource: Resource, id: Uuid },
    #[error("conflict: {0:?}")]
    Conflict(Conflict),
    /// `If-Match` named a version that is no longer current; nothing was written.
    #[error("the resource has changed since the version the request names")]
    PreconditionFailed,
    /// The database is down, unreachable, or lacks the schema; `failure` says which.
    #[error("database unavailable ({})", failure.label())]
    Unavailable { failure: DbFailure, source: Cause },
    #[error("no database connection free within the acquire timeout")]
    PoolExhausted,
    #[error("statement timeout")]
    Timeout,
    /// Deadlocks or serialization failures persisted through every retry.
    #[error("transaction still contended after {attempts} attempts")]
    Contended {
        attempts: u32,
        source: Option<Cause>,
    },
    /// Anything else the engine reported, or a stored row the service cannot read.
    #[error("database error: {source}")]
    Internal { failure: DbFailure, source: Cause },
}

/// The engine's own error, kept for the log line (it never reaches a client).
#[derive(Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync>);

impl Cause {
    pub fn new(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(err))
    }

    pub fn message(message: impl Into<String>) -> Self {
        Self(Arc::from(Box::<dyn std::error::Error + Send + Sync>::from(
            message.into(),
        )))
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<super::batch::BatchAborted> for StoreError {
    fn from(aborted: super::batch::BatchAborted) -> Self {
        Self::internal(aborted.to_string())
    }
}

impl StoreError {
    pub fn not_found(resource: Resource, id: Uuid) -> Self {
        Self::NotFound { resource, id }
    }

    /// An internal error the service itself detected, e.g. a stored row it cannot parse.
    pub fn internal(why: impl Into<String>) -> Self {
        Self::Internal {
            failure: DbFailure::Other,
            source: Cause::message(why),
        }
    }

    /// The classification, for metrics and logs.
    pub fn failure(&self) -> Option<DbFailure> {
        match self {
            Self::Unavailable { failure, .. } => Some(failure.clone()),
            Self::PoolExhausted => Some(DbFailure::PoolExhausted),
            Self::Timeout => Some(DbFailure::StatementTimeout),
            Self::Contended { .. } => Some(DbFailure::Contention),
            Self::Internal { failure, .. } => Some(failure.clone()),
            Self::NotFound { .. } | Self::Conflict(_) | Self::PreconditionFailed => None,
        }
    }
}

impl Retryable for StoreError {
    fn is_contention(&self) -> bool {
        matches!(self, Self::Contended { .. })
    }

    fn exhausted(self, attempts: u32) -> Self {
        match self {
            Self::Contended { source, .. } => Self::Contended { attempts, source },
            other => other,
        }
    }
}
