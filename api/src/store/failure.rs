//! What went wrong in the database, in the terms the service acts on, whichever engine it was.

/// What went wrong, in the terms the service acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DbFailure {
    UniqueViolation,
    ForeignKeyViolation,
    CheckViolation,
    /// Deadlock, serialization failure, lock-wait timeout or SQLite busy: retrying the whole
    /// transaction can succeed.
    Contention,
    /// The per-statement limit fired.
    StatementTimeout,
    /// No pooled connection became free within the acquire timeout.
    PoolExhausted,
    /// The server is down, the connection was lost, or no connection could be opened.
    Unavailable,
    /// A table or column the service needs does not exist: migrations were not applied.
    MissingSchema,
    Other,
}

impl DbFailure {
    /// Every kind, so that `db_errors_total` shows each at 0 from start-up (an alert written as
    /// `rate(db_errors_total[5m])` needs the series to exist before the first error).
    pub const ALL: [DbFailure; 9] = [
        Self::UniqueViolation,
        Self::ForeignKeyViolation,
        Self::CheckViolation,
        Self::Contention,
        Self::StatementTimeout,
        Self::PoolExhausted,
        Self::Unavailable,
        Self::MissingSchema,
        Self::Other,
    ];

    /// The label used for `db_errors_total{kind}`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::UniqueViolation => "unique_violation",
            Self::ForeignKeyViolation => "foreign_key_violation",
            Self::CheckViolation => "check_violation",
            Self::Contention => "contention",
            Self::StatementTimeout => "statement_timeout",
            Self::PoolExhausted => "pool_exhausted",
            Self::Unavailable => "unavailable",
            Self::MissingSchema => "missing_schema",
            Self::Other => "other",
        }
    }
}
