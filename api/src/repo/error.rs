//! What a repository operation can fail with, in the service's terms. `http::error` maps each
//! variant to a status, once.

use sea_orm::{DbErr, TransactionError};
use uuid::Uuid;

use crate::db::retry::Retryable;
use crate::db::{DbFailure, classify};

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
pub enum RepoError {
    #[error("{} {id} not found", resource.as_str())]
    NotFound { resource: Resource, id: Uuid },
    #[error("conflict: {0:?}")]
    Conflict(Conflict),
    /// `If-Match` named a version that is no longer current; nothing was written.
    #[error("the resource has changed since the version the request names")]
    PreconditionFailed,
    /// The database is down, unreachable, or lacks the schema; `failure` says which.
    #[error("database unavailable ({})", failure.label())]
    Unavailable { failure: DbFailure, source: DbErr },
    #[error("no database connection free within the acquire timeout")]
    PoolExhausted,
    #[error("statement timeout")]
    Timeout,
    /// Deadlocks or serialization failures persisted through every retry.
    #[error("transaction still contended after {attempts} attempts")]
    Contended {
        attempts: u32,
        source: Option<DbErr>,
    },
    #[error("database error: {0}")]
    Internal(DbErr),
}

impl From<super::batch::BatchAborted> for RepoError {
    fn from(aborted: super::batch::BatchAborted) -> Self {
        Self::Internal(DbErr::Custom(aborted.to_string()))
    }
}

impl RepoError {
    pub fn not_found(resource: Resource, id: Uuid) -> Self {
        Self::NotFound { resource, id }
    }

    /// The classification, for metrics and logs.
    pub fn failure(&self) -> Option<DbFailure> {
        match self {
            Self::Unavailable { failure, .. } => Some(failure.clone()),
            Self::PoolExhausted => Some(DbFailure::PoolExhausted),
            Self::Timeout => Some(DbFailure::StatementTimeout),
            Self::Contended { .. } => Some(DbFailure::Contention),
            Self::Internal(err) => Some(classify(err)),
            Self::NotFound { .. } | Self::Conflict(_) | Self::PreconditionFailed => None,
        }
    }
}

impl From<DbErr> for RepoError {
    fn from(err: DbErr) -> Self {
        match classify(&err) {
            DbFailure::PoolExhausted => Self::PoolExhausted,
            DbFailure::StatementTimeout => Self::Timeout,
            DbFailure::Contention => Self::Contended {
                attempts: 1,
                source: Some(err),
            },
            failure @ (DbFailure::Unavailable | DbFailure::MissingSchema) => Self::Unavailable {
                failure,
                source: err,
            },
            _ => Self::Internal(err),
        }
    }
}

impl From<TransactionError<RepoError>> for RepoError {
    fn from(err: TransactionError<RepoError>) -> Self {
        match err {
            TransactionError::Connection(db_err) => db_err.into(),
            TransactionError::Transaction(repo_err) => repo_err,
        }
    }
}

impl Retryable for RepoError {
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

/// Turns the constraint violations an operation expects into the conflict they mean, the way
/// each repository knows them (e.g. the only unique column a user insert can violate is email).
pub trait OnViolation<T> {
    fn on_unique(self, conflict: Conflict) -> Result<T, RepoError>;
    fn on_foreign_key(self, conflict: Conflict) -> Result<T, RepoError>;
}

impl<T> OnViolation<T> for Result<T, DbErr> {
    fn on_unique(self, conflict: Conflict) -> Result<T, RepoError> {
        self.map_err(|err| match classify(&err) {
            DbFailure::UniqueViolation => RepoError::Conflict(conflict),
            _ => err.into(),
        })
    }

    fn on_foreign_key(self, conflict: Conflict) -> Result<T, RepoError> {
        self.map_err(|err| match classify(&err) {
            DbFailure::ForeignKeyViolation => RepoError::Conflict(conflict),
            _ => err.into(),
        })
    }
}
