//! Configuration, read once from the environment (the table in the README and API.md).

use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::domain::{Email, Password};

mod database_url;

pub use database_url::{DatabaseKind, DatabaseUrl, mask_password};

/// Where the service keeps its data when nothing else is configured: a file next to it, so that
/// `cargo run -p api` works on a fresh machine.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data.db?mode=rwc";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The raw environment, as `envy` reads it: every variable optional, defaults applied below.
#[derive(Debug, Deserialize)]
struct Env {
    database_url: Option<String>,
    database_direct_url: Option<String>,
    database_replica_urls: Option<String>,
    db_replica_wait_ms: Option<u64>,
    db_replica_max_lag_ms: Option<u64>,
    db_host: Option<String>,
    db_port: Option<u16>,
    db_name: Option<String>,
    db_user: Option<String>,
    db_password: Option<String>,
    db_max_connections: Option<u32>,
    db_min_connections: Option<u32>,
    db_connect_timeout_ms: Option<u64>,
    db_acquire_timeout_ms: Option<u64>,
    db_idle_timeout_ms: Option<u64>,
    db_statement_timeout_ms: Option<u64>,
    cache_ttl_secs: Option<u64>,
    session_cache_ttl_secs: Option<u64>,
    cache_max_entries: Option<u64>,
    host: Option<IpAddr>,
    port: Option<u16>,
    auto_migrate: Option<bool>,
    migration_lock_timeout_secs: Option<u64>,
    max_body_bytes: Option<usize>,
    request_timeout_ms: Option<u64>,
    session_ttl_secs: Option<u64>,
    admin_email: Option<String>,
    admin_password: Option<String>,
    login_max_failures: Option<u32>,
    login_window_secs: Option<u64>,
    login_max_failures_per_address: Option<u32>,
    hash_queue_limit: Option<usize>,
    events_retention_hours: Option<u64>,
    events_nats_url: Option<String>,
}

#[derive(Clone, Debug)]
pub struct DatabaseConfig {
    /// The database, and with it the engine the service runs on (`url.kind()`).
    pub url: DatabaseUrl,
    /// PostgreSQL behind a transaction pooler: the database itself, for migrations, the migration
    /// lock and LISTEN. When set, `url` is taken to be the pooler (see `db::connect`).
    pub direct_url: Option<DatabaseUrl>,
    /// Names this instance's pooled PostgreSQL sessions (`application_name`), so that it can tell
    /// its own cache invalidations from other instances' (`store::sql::notify`).
    pub application_name: String,
    pub max_connections: u32,
    pub min_connections: u32,
    pub connect_timeout: Duration,
    pub acquire_timeout: Duration,
    pub idle_timeout: Duration,
    pub statement_timeout: Duration,
    /// PostgreSQL streaming replicas that answer reads outside write transactions (see
    /// `store::sql::replicas`). Empty: the primary answers everything.
    pub replica_urls: Vec<DatabaseUrl>,
    /// How long a read may wait for a replica to reach the position it needs before the primary
    /// answers it.
    pub replica_wait: Duration,
    /// A replica further behind the primary than this is skipped until it catches up.
    pub replica_max_lag: Duration,
}

#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Zero turns caching off.
    pub ttl: Duration,
    /// For cached session look-ups, when it differs from `ttl` (zero: sessions are not cached).
    pub session_ttl: Option<Duration>,
    pub max_entries: u64,
}

impl CacheConfig {
    /// The same settings, with the lifetime session look-ups get.
    pub fn for_sessions(&self) -> Self {
        Self {
            ttl: self.session_ttl.unwrap_or(self.ttl),
            ..self.clone()
        }
    }
}

/// The account `ADMIN_EMAIL`/`ADMIN_PASSWORD` make sure of at start-up.
#[derive(Clone, Debug)]
pub struct AdminAccount {
    pub email: Email,
    /// `Debug` shows no password.
    pub password: Password,
}

#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub session_ttl: Duration,
    pub admin: Option<AdminAccount>,
    /// Failed logins allowed per email within `login_window`.
    pub max_failures_per_email: u32,
    /// Failed logins allowed per client address within `login_window` (many users may share one).
    pub max_failures_per_address: u32,
    pub login_window: Duration,
    /// Password hashes that may wait for a core; beyond it, 503 `busy`.
    pub hash_queue_limit: usize,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub database: DatabaseConfig,
    pub cache: CacheConfig,
    pub host: IpAddr,
    pub port: u16,
    pub auto_migrate: bool,
    /// How long a start-up waits for another instance's migrations before giving up.
    pub migration_lock_timeout: Duration,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub auth: AuthConfig,
    pub events: EventsConfig,
}

/// The change feed (`store::events`).
#[derive(Clone, Debug)]
pub struct EventsConfig {
    /// Events older than this are removed.
    pub retention: Duration,
    /// With a NATS server, every event is published to JetStream (`relay`).
    pub nats_url: Option<String>,
    /// Always on in the service; a benchmark turns it off to measure what recording costs.
    pub record: bool,
}

impl Config {
    /// Reads the process environment. An unparsable value is an error naming its variable.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        // An empty variable counts as unset, as most shells and container runtimes mean it.
        let vars = vars.into_iter().filter(|(_, value)| !value.is_empty());
        let env: Env = envy::from_iter(vars).map_err(|err| ConfigError::Invalid(describe(err)))?;
        let millis = Duration::from_millis;

        // Every default below is API.md's Configuration table; the comments say why each is that.
        // 20 connections: PgBouncer's default pool size, so one instance behind it fills it.
        let max_connections = env.db_max_connections.unwrap_or(20);
        let min_connections = env.db_min_connections.unwrap_or(1);
        if max_connections == 0 {
            return Err(invalid("DB_MAX_CONNECTIONS", "must be at least 1"));
        }
        if min_connections > max_connections {
            return Err(invalid(
                "DB_MIN_CONNECTIONS",
                "must not exceed DB_MAX_CONNECTIONS",
            ));
        }
        let url = database_url(&env)?;
        let direct_url = direct_url(&env, &url)?;
        let replica_urls = replica_urls(&env, &url)?;
        let database = DatabaseConfig {
            url,
            direct_url,
            application_name: format!("storefront-{}", uuid::Uuid::now_v7().simple()),
            max_connections,
            min_connections,
            // 2 s to connect or to wait for a pooled connection: a healthy server on a LAN answers
            // in milliseconds, and a request should fail fast rather than queue unseen.
            connect_timeout: millis(positive(
                "DB_CONNECT_TIMEOUT_MS",
                env.db_connect_timeout_ms,
                2_000,
            )?),
            acquire_timeout: millis(positive(
                "DB_ACQUIRE_TIMEOUT_MS",
                env.db_acquire_timeout_ms,
                2_000,
            )?),
            // 30 s idle: well under PgBouncer's and most proxies' idle cut-offs.
            idle_timeout: millis(positive(
                "DB_IDLE_TIMEOUT_MS",
                env.db_idle_timeout_ms,
                30_000,
            )?),
            // 30 s per statement, the same as the request deadline: no statement outlives its request.
            statement_timeout: millis(positive(
                "DB_STATEMENT_TIMEOUT_MS",
                env.db_statement_timeout_ms,
                30_000,
            )?),
            replica_urls,
            // Zero is meaningful here: never wait, go to the primary at once.
            replica_wait: millis(env.db_replica_wait_ms.unwrap_or(100)),
            replica_max_lag: millis(positive(
                "DB_REPLICA_MAX_LAG_MS",
                env.db_replica_max_lag_ms,
                5_000,
            )?),
        };
        Ok(Self {
            database,
            // An hour and 100,000 entries per cache: every write evicts what it changed, so the TTL
            // only bounds memory held by entries nobody reads; 100,000 small rows are tens of MB.
            cache: CacheConfig {
                ttl: Duration::from_secs(env.cache_ttl_secs.unwrap_or(3_600)),
                session_ttl: env.session_cache_ttl_secs.map(Duration::from_secs),
                max_entries: env.cache_max_entries.unwrap_or(100_000),
            },
            host: env.host.unwrap_or(IpAddr::from([127, 0, 0, 1])),
            port: env.port.unwrap_or(8080),
            auto_migrate: env.auto_migrate.unwrap_or(true),
            migration_lock_timeout: Duration::from_secs(positive(
                migration::lock::TIMEOUT_VARIABLE,
                env.migration_lock_timeout_secs,
                migration::lock::DEFAULT_TIMEOUT.as_secs(),
            )?),
            // 1 MiB: a 100-line order is a few kB; anything near a megabyte is not a real request.
            max_body_bytes: positive_usize("MAX_BODY_BYTES", env.max_body_bytes, 1024 * 1024)?,
            request_timeout: millis(positive(
                "REQUEST_TIMEOUT_MS",
                env.request_timeout_ms,
                30_000,
            )?),
            auth: auth_config(&env)?,
            events: EventsConfig {
                // 168 hours: a week, as API.md says.
                retention: Duration::from_secs(
                    positive("EVENTS_RETENTION_HOURS", env.events_retention_hours, 168)?
                        .saturating_mul(3600),
                ),
                nats_url: env
                    .events_nats_url
                    .clone()
                    .filter(|url| !url.trim().is_empty()),
                record: true,
            },
        })
    }
}

/// Defaults from API.md: sessions last a week; 5 failures per email and 100 per address (an
/// office or a carrier NAT shares one) within 5 minutes; 64 hashes queued, about a second of
/// work for 2 cores at OWASP's Argon2id cost.
fn auth_config(env: &Env) -> Result<AuthConfig, ConfigError> {
    let admin = match (&env.admin_email, &env.admin_password) {
        (None, None) => None,
        (Some(email), Some(password)) => Some(AdminAccount {
            email: Email::parse(email).map_err(|why| invalid("ADMIN_EMAIL", &why))?,
            password: Password::parse(password.clone())
                .map_err(|why| invalid("ADMIN_PASSWORD", &why))?,
        }),
        (Some(_), None) => return Err(invalid("ADMIN_PASSWORD", "is required with ADMIN_EMAIL")),
        (None, Some(_)) => return Err(invalid("ADMIN_EMAIL", "is required with ADMIN_PASSWORD")),
    };
    Ok(AuthConfig {
        session_ttl: Duration::from_secs(positive(
            "SESSION_TTL_SECS",
            env.session_ttl_secs,
            7 * 24 * 3_600,
        )?),
        admin,
        max_failures_per_email: positive(
            "LOGIN_MAX_FAILURES",
            env.login_max_failures.map(u64::from),
            5,
        )? as u32,
        max_failures_per_address: positive(
            "LOGIN_MAX_FAILURES_PER_ADDRESS",
            env.login_max_failures_per_address.map(u64::from),
            100,
        )? as u32,
        login_window: Duration::from_secs(positive(
            "LOGIN_WINDOW_SECS",
            env.login_window_secs,
            300,
        )?),
        hash_queue_limit: env.hash_queue_limit.unwrap_or(64),
    })
}

/// `DATABASE_URL` wins; else a PostgreSQL URL from `DB_HOST` and friends; else the SQLite file.
fn database_url(env: &Env) -> Result<DatabaseUrl, ConfigError> {
    let url = match &env.database_url {
        Some(url) => url.clone(),
        None => match &env.db_host {
            Some(host) => postgres_url(env, host)?,
            None => DEFAULT_DATABASE_URL.to_owned(),
        },
    };
    url.parse()
        .map_err(|err: database_url::UnsupportedUrl| invalid("DATABASE_URL", &err.to_string()))
}

fn postgres_url(env: &Env, host: &str) -> Result<String, ConfigError> {
    let mut url = url::Url::parse("postgres://localhost")
        .map_err(|err| invalid("DB_HOST", &err.to_string()))?;
    url.set_host(Some(host))
        .map_err(|err| invalid("DB_HOST", &err.to_string()))?;
    let _ = url.set_port(Some(env.db_port.unwrap_or(5432)));
    let _ = url.set_username(env.db_user.as_deref().unwrap_or("postgres"));
    let _ = url.set_password(env.db_password.as_deref());
    url.set_path(env.db_name.as_deref().unwrap_or("postgres"));
    Ok(url.into())
}

/// A URL that must name PostgreSQL, as `url` must too.
fn postgres_beside(url: &DatabaseUrl, other: &str) -> Option<DatabaseUrl> {
    let other: DatabaseUrl = other.parse().ok()?;
    (url.kind() == DatabaseKind::Postgres && other.kind() == DatabaseKind::Postgres)
        .then_some(other)
}

/// `DATABASE_DIRECT_URL` only makes sense for PostgreSQL, next to a PostgreSQL `DATABASE_URL`.
fn direct_url(env: &Env, url: &DatabaseUrl) -> Result<Option<DatabaseUrl>, ConfigError> {
    let Some(direct) = &env.database_direct_url else {
        return Ok(None);
    };
    match postgres_beside(url, direct) {
        Some(direct) => Ok(Some(direct)),
        None => Err(invalid(
            "DATABASE_DIRECT_URL",
            "is for PostgreSQL only: it and DATABASE_URL must both start with postgres://",
        )),
    }
}

/// `DATABASE_REPLICA_URLS`: comma-separated PostgreSQL URLs, next to a PostgreSQL `DATABASE_URL`.
fn replica_urls(env: &Env, url: &DatabaseUrl) -> Result<Vec<DatabaseUrl>, ConfigError> {
    let Some(list) = &env.database_replica_urls else {
        return Ok(Vec::new());
    };
    list.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|replica| {
            postgres_beside(url, replica).ok_or_else(|| {
                invalid(
                    "DATABASE_REPLICA_URLS",
                    "is for PostgreSQL only: every URL in it and DATABASE_URL must start with postgres://",
                )
            })
        })
        .collect()
}

fn positive(name: &str, value: Option<u64>, default: u64) -> Result<u64, ConfigError> {
    match value {
        Some(0) => Err(invalid(name, "must be greater than 0")),
        Some(value) => Ok(value),
        None => Ok(default),
    }
}

fn positive_usize(name: &str, value: Option<usize>, default: usize) -> Result<usize, ConfigError> {
    positive(name, value.map(|v| v as u64), default as u64).map(|v| v as usize)
}

fn invalid(name: &str, why: &str) -> ConfigError {
    ConfigError::Invalid(format!("{name} {why}"))
}

/// envy names the field in lower case; the operator set the upper-case variable.
fn describe(err: envy::Error) -> String {
    match err {
        envy::Error::MissingValue(field) => format!("{} is required", field.to_uppercase()),
        envy::Error::Custom(message) => match message.rsplit_once(" provided by ") {
            Some((what, field)) => format!("{} is not valid: {what}", field.to_uppercase()),
            None => message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_run_on_a_sqlite_file() {
        let config = Config::from_vars(vars(&[])).unwrap();
        assert_eq!(config.database.url, DEFAULT_DATABASE_URL);
        assert_eq!(config.database.max_connections, 20);
        assert_eq!(
            config.database.acquire_timeout,
            Duration::from_millis(2_000)
        );
        assert_eq!(config.port, 8080);
        assert!(config.auto_migrate);
    }

    #[test]
    fn a_postgres_url_is_built_from_db_host_and_friends() {
        let config = Config::from_vars(vars(&[
            ("DB_HOST", "db.internal"),
            ("DB_PORT", "6432"),
            ("DB_NAME", "shop"),
            ("DB_USER", "app"),
            ("DB_PASSWORD", "p@ss word"),
        ]))
        .unwrap();
        assert_eq!(
            config.database.url,
            "postgres://app:p%40ss%20word@db.internal:6432/shop"
        );
    }

    #[test]
    fn an_invalid_value_names_its_variable() {
        let err = Config::from_vars(vars(&[("DB_MAX_CONNECTIONS", "many")])).unwrap_err();
        assert!(err.to_string().contains("DB_MAX_CONNECTIONS"), "{err}");
        let err = Config::from_vars(vars(&[("DB_ACQUIRE_TIMEOUT_MS", "0")])).unwrap_err();
        assert!(err.to_string().contains("DB_ACQUIRE_TIMEOUT_MS"), "{err}");
        let err = Config::from_vars(vars(&[("DATABASE_URL", "oracle://x")])).unwrap_err();
        assert!(err.to_string().contains("DATABASE_URL"), "{err}");
    }

    #[test]
    fn a_direct_url_goes_with_a_postgres_url_only() {
        let config = Config::from_vars(vars(&[
            ("DATABASE_URL", "postgres://app:pw@pgbouncer:6432/shop"),
            ("DATABASE_DIRECT_URL", "postgres://app:pw@db:5432/shop"),
        ]))
        .unwrap();
        assert_eq!(
            config.database.direct_url.as_ref().map(DatabaseUrl::as_str),
            Some("postgres://app:pw@db:5432/shop")
        );
        assert_eq!(
            Config::from_vars(vars(&[])).unwrap().database.direct_url,
            None
        );
        let err = Config::from_vars(vars(&[
            ("DATABASE_URL", "mysql://app:pw@db/shop"),
            ("DATABASE_DIRECT_URL", "postgres://app:pw@db:5432/shop"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("DATABASE_DIRECT_URL"), "{err}");
    }

    #[test]
    fn sessions_are_cached_as_long_as_entities_unless_told_otherwise() {
        let config = Config::from_vars(vars(&[("CACHE_TTL_SECS", "0")])).unwrap();
        assert_eq!(config.cache.for_sessions().ttl, Duration::ZERO);
        let config = Config::from_vars(vars(&[
            ("CACHE_TTL_SECS", "0"),
            ("SESSION_CACHE_TTL_SECS", "600"),
        ]))
        .unwrap();
        assert_eq!(config.cache.ttl, Duration::ZERO);
        assert_eq!(config.cache.for_sessions().ttl, Duration::from_secs(600));
        let config = Config::from_vars(vars(&[("SESSION_CACHE_TTL_SECS", "0")])).unwrap();
        assert_eq!(config.cache.ttl, Duration::from_secs(3_600));
        assert_eq!(config.cache.for_sessions().ttl, Duration::ZERO);
    }

    #[test]
    fn the_migration_lock_wait_is_configurable() {
        let config = Config::from_vars(vars(&[])).unwrap();
        assert_eq!(
            config.migration_lock_timeout,
            migration::lock::DEFAULT_TIMEOUT
        );
        let config = Config::from_vars(vars(&[("MIGRATION_LOCK_TIMEOUT_SECS", "5")])).unwrap();
        assert_eq!(config.migration_lock_timeout, Duration::from_secs(5));
        let err = Config::from_vars(vars(&[("MIGRATION_LOCK_TIMEOUT_SECS", "0")])).unwrap_err();
        assert!(
            err.to_string().contains("MIGRATION_LOCK_TIMEOUT_SECS"),
            "{err}"
        );
    }

    #[test]
    fn replicas_are_a_postgres_list_with_a_wait_and_a_lag_limit() {
        let config = Config::from_vars(vars(&[])).unwrap();
        assert!(config.database.replica_urls.is_empty());
        assert_eq!(config.database.replica_wait, Duration::from_millis(100));
        assert_eq!(
            config.database.replica_max_lag,
            Duration::from_millis(5_000)
        );
        let config = Config::from_vars(vars(&[
            ("DATABASE_URL", "postgres://app:pw@primary/shop"),
            (
                "DATABASE_REPLICA_URLS",
                "postgres://app:pw@r1/shop, postgres://app:pw@r2/shop,",
            ),
            ("DB_REPLICA_WAIT_MS", "0"),
            ("DB_REPLICA_MAX_LAG_MS", "750"),
        ]))
        .unwrap();
        assert_eq!(
            config.database.replica_urls,
            ["postgres://app:pw@r1/shop", "postgres://app:pw@r2/shop"]
        );
        assert_eq!(config.database.replica_wait, Duration::ZERO);
        assert_eq!(config.database.replica_max_lag, Duration::from_millis(750));
        let err = Config::from_vars(vars(&[
            ("DATABASE_URL", "mysql://app:pw@db/shop"),
            ("DATABASE_REPLICA_URLS", "postgres://app:pw@r1/shop"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("DATABASE_REPLICA_URLS"), "{err}");
        let err = Config::from_vars(vars(&[
            ("DATABASE_URL", "postgres://app:pw@primary/shop"),
            ("DATABASE_REPLICA_URLS", "mysql://app:pw@r1/shop"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("DATABASE_REPLICA_URLS"), "{err}");
        let err = Config::from_vars(vars(&[("DB_REPLICA_MAX_LAG_MS", "0")])).unwrap_err();
        assert!(err.to_string().contains("DB_REPLICA_MAX_LAG_MS"), "{err}");
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            mask_password("postgres://app:secret@db:5432/shop"),
            "postgres://app:***@db:5432/shop"
        );
        assert_eq!(
            mask_password("sqlite://data.db?mode=rwc"),
            "sqlite://data.db?mode=rwc"
        );
    }

    #[test]
    fn passwords_are_masked_in_multi_host_urls() {
        assert_eq!(
            mask_password("mongodb://app:s3cret@a:27017,b:27017/shop?replicaSet=rs"),
            "mongodb://app:***@a:27017,b:27017/shop?replicaSet=rs"
        );
        assert_eq!(
            mask_password("mongodb+srv://app:p@ss@cluster.example.net/shop"),
            "mongodb+srv://app:***@cluster.example.net/shop"
        );
        assert_eq!(
            mask_password("mongodb://127.0.0.1:27017/?directConnection=true"),
            "mongodb://127.0.0.1:27017/?directConnection=true"
        );
    }
}
