//! The connection pool: built once from the configuration, tested at start-up, shared by every
//! repository, closed on shutdown.

use std::time::Duration;

use sea_orm::sqlx::postgres::PgConnectOptions;
use sea_orm::sqlx::{self, Connection as _};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr};

use crate::config::{DatabaseConfig, DatabaseKind, DatabaseUrl};
use crate::store::connection::{ConnectError, PoolStats};
use crate::store::error::{Cause, StoreError};
use crate::store::failure::DbFailure;

/// How long a pooled connection may sit idle and still be handed out without a ping first:
/// HikariCP's `aliveBypassWindowMs` default, the same trade.
pub const PING_IF_IDLE_FOR: Duration = Duration::from_millis(500);

/// Opens one connection directly (outside the pool) to learn, within the connect timeout, whether
/// the database answers and, if it does not, the driver's own reason: the pool would only report
/// that it timed out.
pub async fn probe(config: &DatabaseConfig) -> Result<(), ConnectError> {
    let url = &config.url;
    let attempt = async {
        match url.kind() {
            DatabaseKind::Postgres => {
                let options = pooler_safe(url.as_str().parse()?, behind_pooler(config));
                sqlx::PgConnection::connect_with(&options)
                    .await?
                    .close()
                    .await
            }
            DatabaseKind::MySql => {
                sqlx::MySqlConnection::connect(url.as_str())
                    .await?
                    .close()
                    .await
            }
            DatabaseKind::Sqlite => {
                sqlx::SqliteConnection::connect(url.as_str())
                    .await?
                    .close()
                    .await
            }
            DatabaseKind::Mongo => Err(sqlx::Error::Configuration("not a SQL database URL".into())),
        }
    };
    match tokio::time::timeout(config.connect_timeout, attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(ConnectError::Unreachable {
            url: url.masked(),
            reason: err.to_string(),
        }),
        Err(_) => Err(ConnectError::TimedOut {
            url: url.masked(),
            timeout_ms: config.connect_timeout.as_millis(),
        }),
    }
}

/// Builds the pool and makes one round trip through it.
pub async fn connect(config: &DatabaseConfig) -> Result<DatabaseConnection, ConnectError> {
    probe(config).await?;
    let mut options = ConnectOptions::new(config.url.as_str());
    options
        .max_connections(config.max_connections)
        .min_connections(config.min_connections)
        .acquire_timeout(config.acquire_timeout)
        .idle_timeout(config.idle_timeout)
        // No SQL reaches a log line: request spans name the operation, never its statements.
        .sqlx_logging(false)
        // A connection is pinged at checkout only once it has sat idle (`PING_IF_IDLE_FOR`):
        // those are the ones a restart, a failover, a proxy or a firewall may have dropped
        // unseen. A busy connection was just used and then pinged on release (sqlx always
        // does), so pinging it again would cost a round trip per checkout for nothing; a batched
        // read that still meets a lost connection is tried once more (`store::by_id`).
        .test_before_acquire_if_idle_for(PING_IF_IDLE_FOR);
    // A pooler refuses start-up options (PgBouncer: "unsupported startup parameter: options"),
    // so behind one the timeout is the role's default instead (`apply_statement_timeout`).
    let behind = behind_pooler(config);
    let application_name = config.application_name.clone();
    options.map_sqlx_postgres_opts(move |pg| {
        pooler_safe(pg, behind).application_name(&application_name)
    });
    if !behind {
        options.statement_timeout(config.statement_timeout);
    }
    configure_mysql(&mut options, config.statement_timeout);
    options.map_sqlx_sqlite_opts(|opts| {
        opts.journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
            .foreign_keys(true)
            // Writers queue behind each other for this long before SQLITE_BUSY reaches us.
            .busy_timeout(Duration::from_secs(5))
    });
    let unreachable = |err: DbErr| ConnectError::Unreachable {
        url: config.url.masked(),
        reason: err.to_string(),
    };
    let db = tokio::time::timeout(config.connect_timeout, connect_through_locks(options))
        .await
        .map_err(|_| ConnectError::TimedOut {
            url: config.url.masked(),
            timeout_ms: config.connect_timeout.as_millis(),
        })?
        .map_err(unreachable)?;
    db.ping().await.map_err(unreachable)?;
    Ok(db)
}

/// `Database::connect`, tried again while the database answers that it is locked. SQLite answers
/// so at once, without waiting for the busy timeout, when instances that open one new file
/// together each try to switch it to WAL; the caller's connect timeout bounds the retries.
async fn connect_through_locks(options: ConnectOptions) -> Result<DatabaseConnection, DbErr> {
    loop {
        match Database::connect(options.clone()).await {
            Err(err) if super::failure::classify(&err) == DbFailure::Contention => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// `DATABASE_URL` names a pooler (PgBouncer) when a direct URL is configured beside it.
fn behind_pooler(config: &DatabaseConfig) -> bool {
    config.direct_url.is_some()
}

/// Start-up parameters a pooler does not know are refused by it (PgBouncer: "unsupported startup
/// parameter"), so behind one the driver sends only those poolers track. `extra_float_digits`
/// changes nothing here: values travel in binary.
///
/// The driver's prepared-statement cache stays on. Behind a pooler in transaction mode
/// protocol-level prepared statements need the pooler to carry them across server connections
/// (PgBouncer 1.21 or later with `max_prepared_statements`); turning the cache off would not
/// avoid them, since sqlx 0.9 still names, and never closes, every statement it prepares. See
/// the README, "Running several instances".
fn pooler_safe(options: PgConnectOptions, behind_pooler: bool) -> PgConnectOptions {
    if behind_pooler {
        options.extra_float_digits(None)
    } else {
        options
    }
}

/// A small pool straight to the database, bypassing any pooler: for migrations.
pub async fn connect_direct(
    url: &DatabaseUrl,
    config: &DatabaseConfig,
) -> Result<DatabaseConnection, ConnectError> {
    let mut options = ConnectOptions::new(url.as_str());
    options
        .max_connections(2)
        .min_connections(0)
        .connect_timeout(config.connect_timeout)
        .acquire_timeout(config.connect_timeout)
        .sqlx_logging(false);
    let db = Database::connect(options)
        .await
        .map_err(|err| ConnectError::Unreachable {
            url: url.masked(),
            reason: err.to_string(),
        })?;
    Ok(db)
}

/// Behind a transaction pooler the statement timeout cannot travel as a start-up option, and a
/// `SET` would stay behind on whichever server connection ran it. It becomes this role's default
/// in this database instead, which PostgreSQL applies to every session the pooler opens from now
/// on. Run over the direct connection, before the pool connects through the pooler.
pub async fn apply_statement_timeout(
    direct_url: &DatabaseUrl,
    timeout: Duration,
) -> Result<(), DbErr> {
    let millis = timeout.as_millis();
    let conn = Database::connect(direct_url.as_str()).await?;
    let sql = format!(
        "DO $$ BEGIN EXECUTE format('ALTER ROLE CURRENT_USER IN DATABASE %I \
         SET statement_timeout = %L', current_database(), '{millis}ms'); END $$"
    );
    let outcome = conn.execute_unprepared(&sql).await.map(|_| ());
    let _ = conn.close().await;
    outcome
}

/// MySQL and MariaDB get the statement limit per session, and READ COMMITTED so that a locking
/// read inside a transaction sees rows committed by the transaction it waited for (the default
/// REPEATABLE READ would keep showing the old snapshot) and gap locks do not cause deadlocks.
fn configure_mysql(options: &mut ConnectOptions, statement_timeout: Duration) {
    options.map_sqlx_mysql_pool_opts(move |pool| {
        pool.after_connect(move |conn, _meta| {
            Box::pin(async move {
                use sqlx::Executor as _;
                conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .await?;
                // MariaDB names it max_statement_time (seconds); MySQL max_execution_time (ms,
                // SELECT only). Try MariaDB's first: a MySQL server rejects the unknown variable.
                let seconds = statement_timeout.as_secs_f64();
                let mariadb = format!("SET SESSION max_statement_time = {seconds}");
                if conn.execute(sqlx::AssertSqlSafe(mariadb)).await.is_err() {
                    let millis = statement_timeout.as_millis();
                    let mysql = format!("SET SESSION max_execution_time = {millis}");
                    conn.execute(sqlx::AssertSqlSafe(mysql)).await?;
                }
                Ok(())
            })
        })
    });
}

pub fn pool_stats(db: &DatabaseConnection) -> PoolStats {
    let (size, idle) = match db.get_database_backend() {
        DbBackend::Postgres => {
            let pool = db.get_postgres_connection_pool();
            (pool.size(), pool.num_idle())
        }
        DbBackend::MySql => {
            let pool = db.get_mysql_connection_pool();
            (pool.size(), pool.num_idle())
        }
        _ => {
            let pool = db.get_sqlite_connection_pool();
            (pool.size(), pool.num_idle())
        }
    };
    let idle = u32::try_from(idle).unwrap_or(u32::MAX);
    PoolStats {
        in_use: size.saturating_sub(idle),
        idle,
    }
}

/// The pool reports "no connection within the acquire timeout" both when every connection is busy
/// and when none could be opened (it keeps retrying the connect until the deadline). Only a full
/// pool is exhaustion; with free slots left, the database itself could not be reached.
pub fn refine(db: &DatabaseConnection, err: StoreError) -> StoreError {
    if !matches!(err, StoreError::PoolExhausted) {
        return err;
    }
    let (size, max) = match db.get_database_backend() {
        DbBackend::Postgres => {
            let pool = db.get_postgres_connection_pool();
            (pool.size(), pool.options().get_max_connections())
        }
        DbBackend::MySql => {
            let pool = db.get_mysql_connection_pool();
            (pool.size(), pool.options().get_max_connections())
        }
        _ => {
            let pool = db.get_sqlite_connection_pool();
            (pool.size(), pool.options().get_max_connections())
        }
    };
    if size >= max {
        return err;
    }
    StoreError::Unavailable {
        failure: DbFailure::Unavailable,
        source: Cause::message("no connection to the database could be opened"),
    }
}

/// The backend's name, for log lines.
pub fn backend_name(db: &DatabaseConnection) -> &'static str {
    match db.get_database_backend() {
        DbBackend::Postgres => "PostgreSQL",
        DbBackend::MySql => "MySQL/MariaDB",
        _ => "SQLite",
    }
}

/// One round trip, for `/ready`.
pub async fn ping(db: &DatabaseConnection) -> Result<(), DbErr> {
    db.execute_unprepared("SELECT 1").await.map(|_| ())
}
