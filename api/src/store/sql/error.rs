//! SeaORM's errors in the service's terms: classified once (`failure::classify`), and a unique
//! violation mapped by the name of the key it hit.

use sea_orm::{DbErr, TransactionError};

use super::failure::{classify, violated_key};
use crate::store::error::{Cause, Conflict, StoreError};
use crate::store::failure::DbFailure;

/// The unique keys a write can collide on, under every name an engine reports them by:
/// PostgreSQL and MariaDB/MySQL give the index (MySQL 8 prefixed with its table), SQLite the
/// `table.column` it covers. Names come from the migrations.
const UNIQUE_KEYS: [(&[&str], Conflict); 2] = [
    (
        &["idx_users_email", "users.idx_users_email", "users.email"],
        Conflict::EmailTaken,
    ),
    (
        &[
            "idx_products_sku",
            "products.idx_products_sku",
            "products.sku",
        ],
        Conflict::SkuTaken,
    ),
];

/// The conflict a unique violation means, when it hit a key clients can collide on.
fn unique_conflict(err: &DbErr) -> Option<Conflict> {
    let key = violated_key(err)?;
    UNIQUE_KEYS
        .iter()
        .find(|(names, _)| names.contains(&key.as_str()))
        .map(|(_, conflict)| conflict.clone())
}

impl From<DbErr> for StoreError {
    fn from(err: DbErr) -> Self {
        match classify(&err) {
            DbFailure::PoolExhausted => Self::PoolExhausted,
            DbFailure::StatementTimeout => Self::Timeout,
            DbFailure::Contention => Self::Contended {
                attempts: 1,
                source: Some(Cause::new(err)),
            },
            failure @ (DbFailure::Unavailable | DbFailure::MissingSchema) => Self::Unavailable {
                failure,
                source: Cause::new(err),
            },
            DbFailure::UniqueViolation if let Some(conflict) = unique_conflict(&err) => {
                Self::Conflict(conflict)
            }
            failure => Self::Internal {
                failure,
                source: Cause::new(err),
            },
        }
    }
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(err: TransactionError<StoreError>) -> Self {
        match err {
            TransactionError::Connection(db_err) => db_err.into(),
            TransactionError::Transaction(repo_err) => repo_err,
        }
    }
}

/// Turns a foreign-key violation an operation expects into the conflict it means (a delete
/// refused because rows still point at the one deleted).
pub trait OnViolation<T> {
    fn on_foreign_key(self, conflict: Conflict) -> Result<T, StoreError>;
}

impl<T> OnViolation<T> for Result<T, DbErr> {
    fn on_foreign_key(self, conflict: Conflict) -> Result<T, StoreError> {
        self.map_err(|err| match classify(&err) {
            DbFailure::ForeignKeyViolation => StoreError::Conflict(conflict),
            _ => err.into(),
        })
    }
}
