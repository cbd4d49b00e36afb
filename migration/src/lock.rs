//! The migration lock: one database-wide lock held for the whole of a migration run, so that any
//! number of instances (and migration commands) started at once apply each migration exactly once.
//! The first to take it migrates; the others wait, then find nothing pending and skip.
//!
//! Each engine has its own way to hold it:
//! - PostgreSQL: a session advisory lock on a connection of its own, kept open for the whole run
//!   (advisory locks belong to one database, so other databases on the server are unaffected). It
//!   must be a direct connection: through a transaction pooler the lock would stay behind on a
//!   server connection that other clients then use.
//! - MariaDB/MySQL: `GET_LOCK` on a connection of its own. Its names are server-wide, so the name
//!   carries the database's.
//! - SQLite: an exclusive lock on a file next to the database (`<file>.migration-lock`); an
//!   in-memory database belongs to one process and needs none.
//!
//! Another engine is one more variant of `Held` and its arms below.
//!
//! A lock that is busy is polled rather than waited on inside the database, so the wait is
//! bounded by our own clock whatever the engine, and a waiting process can say that it waits.

use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sea_orm::sqlx::{self, Connection as _};
use sea_orm_migration::sea_orm;

/// How long a migration run waits for the lock by default (`MIGRATION_LOCK_TIMEOUT_SECS`):
/// generous for a real migration of a large table, yet a stuck holder is noticed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// The environment variable that overrides `DEFAULT_TIMEOUT`, in whole seconds.
pub const TIMEOUT_VARIABLE: &str = "MIGRATION_LOCK_TIMEOUT_SECS";

/// PostgreSQL advisory lock key: the first eight bytes of "sfmigrat" read as a big-endian i64,
/// fixed forever so that every version of the service takes the same lock.
const POSTGRES_KEY: i64 = i64::from_be_bytes(*b"sfmigrat");

/// MariaDB/MySQL lock names are at most 64 characters.
const MYSQL_NAME_SQL: &str = "LEFT(CONCAT('storefront.migrations.', DATABASE()), 64)";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another process has held the migration lock for {waited_secs} s; giving up \
         (a migration may be stuck; the wait is {TIMEOUT_VARIABLE})"
    )]
    TimedOut { waited_secs: u64 },
    #[error("cannot take the migration lock: {0}")]
    Database(String),
    #[error("cannot take the migration lock file {path}: {reason}")]
    File { path: String, reason: String },
}

/// The lock, held until `release` (or until the process ends: the database or the OS then frees it).
pub struct MigrationLock {
    held: Held,
}

enum Held {
    Postgres(sqlx::PgConnection),
    MySql(sqlx::MySqlConnection),
    /// The open lock file; closing it releases the lock.
    SqliteFile(File, PathBuf),
    /// An in-memory SQLite database: nobody else can reach it.
    Nothing,
}

impl MigrationLock {
    /// Takes the lock for the database at `url`, waiting at most `timeout` for another holder.
    /// `on_wait` is called once, when the lock is found busy and the wait begins.
    pub async fn acquire(
        url: &str,
        timeout: Duration,
        on_wait: impl FnOnce(),
    ) -> Result<Self, LockError> {
        let mut held = Held::open(url).await?;
        let started = Instant::now();
        let mut on_wait = Some(on_wait);
        let mut pause = Duration::from_millis(25);
        loop {
            if held.try_lock().await? {
                return Ok(Self { held });
            }
            if let Some(notify) = on_wait.take() {
                notify();
            }
            let waited = started.elapsed();
            if waited >= timeout {
                held.close().await;
                return Err(LockError::TimedOut {
                    waited_secs: waited.as_secs(),
                });
            }
            tokio::time::sleep(pause.min(timeout - waited)).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Releases the lock and closes its connection.
    pub async fn release(self) {
        self.held.unlock().await;
    }
}

impl Held {
    async fn open(url: &str) -> Result<Self, LockError> {
        let database = |err: sqlx::Error| LockError::Database(err.to_string());
        if url.starts_with("postgres") {
            let conn = sqlx::PgConnection::connect(url).await.map_err(database)?;
            Ok(Held::Postgres(conn))
        } else if url.starts_with("mysql") || url.starts_with("mariadb") {
            let url = url.replacen("mariadb://", "mysql://", 1);
            let conn = sqlx::MySqlConnection::connect(&url)
                .await
                .map_err(database)?;
            Ok(Held::MySql(conn))
        } else {
            match sqlite_lock_path(url)? {
                Some(path) => Ok(Held::SqliteFile(open_lock_file(&path)?, path)),
                None => Ok(Held::Nothing),
            }
        }
    }

    /// One attempt; `Ok(false)` while another holder has it.
    async fn try_lock(&mut self) -> Result<bool, LockError> {
        let database = |err: sqlx::Error| LockError::Database(err.to_string());
        match self {
            Held::Postgres(conn) => sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(POSTGRES_KEY)
                .fetch_one(conn)
                .await
                .map_err(database),
            Held::MySql(conn) => {
                // 1: taken; 0: busy; NULL: an error inside the server.
                let sql = format!("SELECT GET_LOCK({MYSQL_NAME_SQL}, 0)");
                let got: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_one(conn)
                    .await
                    .map_err(database)?;
                Ok(got == Some(1))
            }
            Held::SqliteFile(file, path) => match file.try_lock() {
                Ok(()) => Ok(true),
                Err(std::fs::TryLockError::WouldBlock) => Ok(false),
                Err(std::fs::TryLockError::Error(err)) => Err(LockError::File {
                    path: path.display().to_string(),
                    reason: err.to_string(),
                }),
            },
            Held::Nothing => Ok(true),
        }
    }

    async fn unlock(self) {
        // Closing the connection or the file frees the lock in any case; unlocking first only
        // makes it free at once rather than when the server notices the disconnect.
        match self {
            Held::Postgres(mut conn) => {
                let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(POSTGRES_KEY)
                    .execute(&mut conn)
                    .await;
                let _ = conn.close().await;
            }
            Held::MySql(mut conn) => {
                let sql = format!("SELECT RELEASE_LOCK({MYSQL_NAME_SQL})");
                let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await;
                let _ = conn.close().await;
            }
            Held::SqliteFile(file, _) => {
                let _ = file.unlock();
            }
            Held::Nothing => {}
        }
    }

    /// Closes without having held the lock.
    async fn close(self) {
        match self {
            Held::Postgres(conn) => {
                let _ = conn.close().await;
            }
            Held::MySql(conn) => {
                let _ = conn.close().await;
            }
            Held::SqliteFile(..) | Held::Nothing => {}
        }
    }
}

/// The lock file next to a SQLite database file; `None` for an in-memory database.
fn sqlite_lock_path(url: &str) -> Result<Option<PathBuf>, LockError> {
    if url.contains(":memory:") || url.contains("mode=memory") {
        return Ok(None);
    }
    let options: sqlx::sqlite::SqliteConnectOptions = url
        .parse()
        .map_err(|err: sqlx::Error| LockError::Database(err.to_string()))?;
    let file = options.get_filename();
    let mut lock = file.as_os_str().to_owned();
    lock.push(".migration-lock");
    Ok(Some(PathBuf::from(lock)))
}

fn open_lock_file(path: &std::path::Path) -> Result<File, LockError> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|err| LockError::File {
            path: path.display().to_string(),
            reason: err.to_string(),
        })
}

/// The wait configured by `MIGRATION_LOCK_TIMEOUT_SECS`, or the default when it is unset or empty.
pub fn timeout_from_env() -> Result<Duration, String> {
    match std::env::var(TIMEOUT_VARIABLE) {
        Ok(value) if !value.is_empty() => parse_timeout(&value),
        _ => Ok(DEFAULT_TIMEOUT),
    }
}

/// Whole seconds, at least 1.
pub fn parse_timeout(value: &str) -> Result<Duration, String> {
    match value.trim().parse::<u64>() {
        Ok(0) | Err(_) => Err(format!(
            "{TIMEOUT_VARIABLE} must be a whole number of seconds greater than 0"
        )),
        Ok(secs) => Ok(Duration::from_secs(secs)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sqlite_file_is_locked_beside_it_and_memory_not_at_all() {
        let path = sqlite_lock_path("sqlite:///tmp/shop.db?mode=rwc").unwrap();
        assert_eq!(path, Some(PathBuf::from("/tmp/shop.db.migration-lock")));
        assert_eq!(sqlite_lock_path("sqlite::memory:").unwrap(), None);
    }

    #[test]
    fn the_timeout_is_whole_positive_seconds() {
        assert_eq!(parse_timeout("30"), Ok(Duration::from_secs(30)));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("soon").is_err());
    }

    #[tokio::test]
    async fn a_second_holder_of_one_sqlite_file_waits_then_gives_up() {
        let file = std::env::temp_dir().join(format!("lock-test-{}.db", std::process::id()));
        let url = format!("sqlite://{}?mode=rwc", file.display());
        let first = MigrationLock::acquire(&url, Duration::from_secs(1), || {})
            .await
            .unwrap();
        let mut waited = false;
        let second =
            MigrationLock::acquire(&url, Duration::from_millis(200), || waited = true).await;
        assert!(matches!(second, Err(LockError::TimedOut { .. })));
        assert!(waited, "the waiting side was not told");
        first.release().await;
        let third = MigrationLock::acquire(&url, Duration::from_secs(1), || {})
            .await
            .expect("free again once released");
        third.release().await;
        let _ = std::fs::remove_file(format!("{}.migration-lock", file.display()));
    }
}
