//! The engine's life outside requests: connecting to what `DATABASE_URL` names, migrating,
//! reporting migrations, hearing the other instances. Each engine answers these itself, so
//! start-up and the migration command never branch on which one runs.

use std::sync::Arc;
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use tokio::task::JoinHandle;

use super::consistency::Positions;
use super::peers::Peers;
use super::{ConnectError, Engine, mongo, sql};
use crate::config::{DatabaseConfig, DatabaseKind};
use crate::metrics::Metrics;

/// One migration, and whether the database has it (`migrate status`).
pub struct MigrationState {
    pub name: String,
    pub applied: bool,
}

impl Engine {
    /// Connects to the database `config` names, with the engine its URL names. Every statement
    /// or command sent is counted in `queries` (and only counted: none is logged).
    pub async fn connect(
        config: &DatabaseConfig,
        queries: prometheus::IntCounter,
    ) -> Result<Self, ConnectError> {
        match config.url.kind() {
            DatabaseKind::Mongo => Ok(Self::Mongo(mongo::Mongo::connect(config, queries).await?)),
            DatabaseKind::Sqlite | DatabaseKind::Postgres | DatabaseKind::MySql => {
                let mut db = sql::pool::connect(config).await?;
                db.set_metric_callback(move |_| queries.inc());
                Ok(Self::Sql(db))
            }
        }
    }

    /// Applies pending migrations under a database-wide lock, so that any number of instances may
    /// start at once: one migrates, the others wait up to `lock_timeout` for it and find nothing
    /// to do. SQL: SeaORM's migrations under the migration crate's lock (behind a pooler, both
    /// over the direct URL). MongoDB: the collection and index steps under their own lock
    /// document. Answers how many were applied, or why they could not be.
    pub async fn migrate(
        &self,
        database: &DatabaseConfig,
        lock_timeout: Duration,
    ) -> Result<usize, String> {
        let db = match self {
            Self::Sql(db) => db,
            Self::Mongo(mongo) => {
                return mongo::schema::up(mongo)
                    .await
                    .map(|applied| applied.len())
                    .map_err(|err| err.to_string());
            }
        };
        let lock_url = database.direct_url.as_ref().unwrap_or(&database.url);
        let direct = match &database.direct_url {
            Some(url) => Some(
                sql::pool::connect_direct(url, database)
                    .await
                    .map_err(|err| err.to_string())?,
            ),
            None => None,
        };
        let notice = || {
            tracing::info!(
                timeout_secs = lock_timeout.as_secs(),
                "another instance is migrating the database; waiting for its migration lock"
            )
        };
        let conn = direct.as_ref().unwrap_or(db);
        let outcome = migration::up_locked(conn, lock_url.as_str(), lock_timeout, notice).await;
        if let Some(direct) = direct {
            let _ = direct.close().await;
        }
        outcome.map_err(|err| err.to_string())
    }

    /// Every migration the service knows, in order, and whether it is applied.
    pub async fn migration_status(&self) -> Result<Vec<MigrationState>, String> {
        match self {
            Self::Sql(db) => {
                let applied = Migrator::get_applied_migrations(db)
                    .await
                    .map_err(|err| err.to_string())?;
                let pending = Migrator::get_pending_migrations(db)
                    .await
                    .map_err(|err| err.to_string())?;
                let applied = applied.iter().map(|migration| MigrationState {
                    name: migration.name().to_owned(),
                    applied: true,
                });
                let pending = pending.iter().map(|migration| MigrationState {
                    name: migration.name().to_owned(),
                    applied: false,
                });
                Ok(applied.chain(pending).collect())
            }
            Self::Mongo(mongo) => Ok(mongo::schema::status(mongo)
                .await
                .map_err(|err| err.to_string())?
                .into_iter()
                .map(|migration| MigrationState {
                    name: format!("{:03}_{}", migration.version, migration.name),
                    applied: migration.applied,
                })
                .collect()),
        }
    }

    /// Starts hearing the other instances where the engine has a channel for it: PostgreSQL's
    /// `LISTEN` (over the direct URL behind a pooler, since it holds a session) and MongoDB's
    /// change stream. `None` on SQLite and MariaDB/MySQL, which have none (run one instance).
    pub async fn listen_to_peers(
        &self,
        database: &DatabaseConfig,
        peers: Peers,
    ) -> Option<JoinHandle<()>> {
        match self {
            Self::Mongo(mongo) => Some(mongo::watch::start(mongo.clone(), peers).await),
            Self::Sql(_) if database.url.kind() == DatabaseKind::Postgres => {
                let url = database.direct_url.as_ref().unwrap_or(&database.url);
                let sender = database.application_name.clone();
                Some(sql::notify::start_listener(url.as_str().to_owned(), peers, sender).await)
            }
            Self::Sql(_) => None,
        }
    }
}

/// The read replicas `DATABASE_REPLICA_URLS` names: PostgreSQL's streaming standbys, where reads
/// outside write transactions go (`sql::replicas`). None on the other engines.
#[derive(Clone, Default)]
pub struct ReadReplicas(Option<Arc<sql::replicas::Replicas>>);

impl ReadReplicas {
    /// Pools for the configured replicas, opened lazily (a replica down at start-up is skipped).
    pub fn new(engine: &Engine, config: &DatabaseConfig, metrics: &Metrics) -> Self {
        let replicas = match engine {
            Engine::Sql(primary) => sql::replicas::Replicas::new(primary, config, metrics),
            Engine::Mongo(_) => None,
        };
        Self(replicas)
    }

    /// The database positions this instance's reads must be served from (its answers' tokens).
    pub fn positions(&self) -> Arc<Positions> {
        self.0
            .as_ref()
            .map_or_else(Default::default, |replicas| replicas.positions())
    }

    /// Starts sampling the replicas' lag and health, when there are any.
    pub async fn start_health_checks(&self) -> Option<JoinHandle<()>> {
        match &self.0 {
            Some(replicas) => Some(replicas.start_health_checks().await),
            None => None,
        }
    }

    pub async fn close(&self) {
        if let Some(replicas) = &self.0 {
            replicas.close().await;
        }
    }

    pub(super) fn sql(&self) -> Option<Arc<sql::replicas::Replicas>> {
        self.0.clone()
    }
}
