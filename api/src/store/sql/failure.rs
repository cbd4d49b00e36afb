//! Database errors, classified once: by SQLSTATE, MySQL error number, SQLite result code and the
//! driver's error kind — never by message text, except where SQLite offers nothing better.

use sea_orm::sqlx::{self, error::DatabaseError as _, error::ErrorKind};
use sea_orm::{ConnAcquireErr, DbErr, RuntimeErr};

use crate::store::failure::DbFailure;

pub fn classify(err: &DbErr) -> DbFailure {
    match err {
        DbErr::ConnectionAcquire(ConnAcquireErr::Timeout) => DbFailure::PoolExhausted,
        DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed) => DbFailure::Unavailable,
        DbErr::Conn(runtime) | DbErr::Exec(runtime) | DbErr::Query(runtime) => match runtime {
            RuntimeErr::SqlxError(sqlx_err) => classify_sqlx(sqlx_err),
            RuntimeErr::Internal(_) => DbFailure::Other,
        },
        _ => DbFailure::Other,
    }
}

fn classify_sqlx(err: &sqlx::Error) -> DbFailure {
    match err {
        sqlx::Error::Database(db_err) => classify_database(db_err.as_ref()),
        sqlx::Error::PoolTimedOut => DbFailure::PoolExhausted,
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => DbFailure::Unavailable,
        _ => DbFailure::Other,
    }
}

fn classify_database(err: &dyn sqlx::error::DatabaseError) -> DbFailure {
    match err.kind() {
        ErrorKind::UniqueViolation => return DbFailure::UniqueViolation,
        ErrorKind::ForeignKeyViolation => return DbFailure::ForeignKeyViolation,
        ErrorKind::CheckViolation => return DbFailure::CheckViolation,
        _ => {}
    }
    if let Some(pg) = err.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        return classify_postgres(pg.code());
    }
    if let Some(mysql) = err.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return classify_mysql(mysql.number());
    }
    if let Some(sqlite) = err.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
        let code = sqlite.code().and_then(|code| code.parse::<i32>().ok());
        return classify_sqlite(code.unwrap_or(0), sqlite.message());
    }
    DbFailure::Other
}

/// PostgreSQL SQLSTATE codes (Appendix A of its manual).
fn classify_postgres(sqlstate: &str) -> DbFailure {
    match sqlstate {
        "23505" => DbFailure::UniqueViolation,
        "23503" => DbFailure::ForeignKeyViolation,
        "23514" => DbFailure::CheckViolation,
        // deadlock_detected, serialization_failure, lock_not_available
        "40P01" | "40001" | "55P03" => DbFailure::Contention,
        // query_canceled: what statement_timeout raises
        "57014" => DbFailure::StatementTimeout,
        // undefined_table, undefined_column
        "42P01" | "42703" => DbFailure::MissingSchema,
        // admin_shutdown (pg_terminate_backend), crash_shutdown, cannot_connect_now,
        // too_many_connections, and the whole connection-exception class
        "57P01" | "57P02" | "57P03" | "53300" => DbFailure::Unavailable,
        "25006" => DbFailure::Unavailable,
        code if code.starts_with("08") => DbFailure::Unavailable,
        _ => DbFailure::Other,
    }
}

/// MySQL / MariaDB server error numbers.
fn classify_mysql(number: u16) -> DbFailure {
    match number {
        1062 => DbFailure::UniqueViolation,
        1451 | 1452 => DbFailure::ForeignKeyViolation,
        // MySQL 3819, MariaDB 4025
        3819 | 4025 => DbFailure::CheckViolation,
        // ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT
        1213 | 1205 => DbFailure::Contention,
        // MariaDB ER_STATEMENT_TIMEOUT, MySQL ER_QUERY_TIMEOUT, ER_QUERY_INTERRUPTED
        1969 | 3024 | 1317 => DbFailure::StatementTimeout,
        // ER_NO_SUCH_TABLE, ER_BAD_FIELD_ERROR
        1146 | 1054 => DbFailure::MissingSchema,
        // ER_CON_COUNT_ERROR, ER_SERVER_SHUTDOWN, ER_CONNECTION_KILLED
        1040 | 1053 | 1927 => DbFailure::Unavailable,
        _ => DbFailure::Other,
    }
}

/// SQLite extended result codes.
fn classify_sqlite(code: i32, message: &str) -> DbFailure {
    const SQLITE_ERROR: i32 = 1;
    // ON DELETE RESTRICT fails with SQLITE_CONSTRAINT_TRIGGER rather than _FOREIGNKEY (787), and
    // the driver does not count that code as a foreign-key violation.
    const SQLITE_CONSTRAINT_TRIGGER: i32 = 1811;
    if code == SQLITE_CONSTRAINT_TRIGGER && message.starts_with("FOREIGN KEY constraint failed") {
        return DbFailure::ForeignKeyViolation;
    }
    match code & 0xff {
        // SQLITE_BUSY (5) including BUSY_SNAPSHOT, SQLITE_LOCKED (6)
        5 | 6 => DbFailure::Contention,
        // SQLITE_CANTOPEN, SQLITE_IOERR
        14 | 10 => DbFailure::Unavailable,
        // SQLite reports a missing table only as the generic SQLITE_ERROR; its message is all
        // there is to tell it apart.
        SQLITE_ERROR
            if message.starts_with("no such table") || message.starts_with("no such column") =>
        {
            DbFailure::MissingSchema
        }
        _ => DbFailure::Other,
    }
}

/// The unique key a unique violation hit, as the engine names it: PostgreSQL's constraint, the
/// key MariaDB/MySQL quotes in its message (`... for key 'idx_users_email'`), or SQLite's
/// `table.column` (`UNIQUE constraint failed: users.email`).
pub fn violated_key(err: &DbErr) -> Option<String> {
    let db_err = database_error(err)?;
    if let Some(constraint) = db_err.constraint() {
        return Some(constraint.to_owned());
    }
    key_in_message(db_err.message())
}

fn key_in_message(message: &str) -> Option<String> {
    if let Some(rest) = message.strip_prefix("UNIQUE constraint failed: ") {
        // A composite key lists every column; the first names it well enough.
        return rest.split(", ").next().map(str::to_owned);
    }
    let (_, quoted) = message.rsplit_once(" for key '")?;
    quoted.strip_suffix('\'').map(str::to_owned)
}

fn database_error(err: &DbErr) -> Option<&dyn sqlx::error::DatabaseError> {
    let (DbErr::Conn(RuntimeErr::SqlxError(e))
    | DbErr::Exec(RuntimeErr::SqlxError(e))
    | DbErr::Query(RuntimeErr::SqlxError(e))) = err
    else {
        return None;
    };
    match e.as_ref() {
        sqlx::Error::Database(db_err) => Some(db_err.as_ref()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_read_from_each_engines_message() {
        let cases = [
            ("UNIQUE constraint failed: users.email", Some("users.email")),
            (
                "Duplicate entry 'a@b.c' for key 'idx_users_email'",
                Some("idx_users_email"),
            ),
            (
                "Duplicate entry 'x' for key 'products.idx_products_sku'",
                Some("products.idx_products_sku"),
            ),
            ("FOREIGN KEY constraint failed", None),
        ];
        for (message, key) in cases {
            assert_eq!(key_in_message(message).as_deref(), key, "{message}");
        }
    }

    #[test]
    fn postgres_codes_are_classified() {
        assert_eq!(classify_postgres("40P01"), DbFailure::Contention);
        assert_eq!(classify_postgres("40001"), DbFailure::Contention);
        assert_eq!(classify_postgres("57014"), DbFailure::StatementTimeout);
        assert_eq!(classify_postgres("42P01"), DbFailure::MissingSchema);
        assert_eq!(classify_postgres("08006"), DbFailure::Unavailable);
        assert_eq!(classify_postgres("57P01"), DbFailure::Unavailable);
        assert_eq!(classify_postgres("22001"), DbFailure::Other);
    }

    #[test]
    fn mysql_numbers_are_classified() {
        assert_eq!(classify_mysql(1213), DbFailure::Contention);
        assert_eq!(classify_mysql(1969), DbFailure::StatementTimeout);
        assert_eq!(classify_mysql(1146), DbFailure::MissingSchema);
        assert_eq!(classify_mysql(1062), DbFailure::UniqueViolation);
    }

    #[test]
    fn sqlite_codes_are_classified() {
        assert_eq!(
            classify_sqlite(5, "database is locked"),
            DbFailure::Contention
        );
        assert_eq!(
            classify_sqlite(517, "database is locked"),
            DbFailure::Contention
        );
        assert_eq!(
            classify_sqlite(1, "no such table: users"),
            DbFailure::MissingSchema
        );
        assert_eq!(
            classify_sqlite(1, "near \"x\": syntax error"),
            DbFailure::Other
        );
        assert_eq!(
            classify_sqlite(1811, "FOREIGN KEY constraint failed"),
            DbFailure::ForeignKeyViolation
        );
    }

    #[test]
    fn pool_timeouts_are_exhaustion() {
        let err = DbErr::ConnectionAcquire(ConnAcquireErr::Timeout);
        assert_eq!(classify(&err), DbFailure::PoolExhausted);
    }
}
