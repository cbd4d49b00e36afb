//! Wiring: configuration → pool → migrations → HTTP server, and the orderly way down.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use poem::Server;
use poem::listener::{Acceptor, Listener, TcpListener};

use crate::cache::Caches;
use crate::config::{Config, is_mongo_url, mask_password};
use crate::domain::Hasher;
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::store::mongo::{self, Mongo};
use crate::store::sql::replicas::Replicas;
use crate::store::sql::{notify, pool};
use crate::store::{Engine, Repositories};

/// Why the service could not start; each renders as one line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Database(#[from] crate::store::ConnectError),
    #[error("cannot apply migrations to {url}: {reason}")]
    Migrations { url: String, reason: String },
    #[error("cannot make sure of the admin account {email}: {reason}")]
    Admin { email: String, reason: String },
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
}

impl AppState {
    /// The one place the parts meet: caches, the engine's repositories, the hasher.
    pub fn new(config: Config, db: Engine, metrics: Arc<Metrics>) -> Self {
        let caches = Caches::new(&config.cache, &metrics);
        let representations = http::conditional::Representations::new(&config.cache);
        let replicas = db
            .sql()
            .and_then(|primary| Replicas::new(primary, &config.database, &caches, &metrics));
        let Repositories {
            users,
            products,
            orders,
            sessions,
        } = Repositories::new(&db, &caches, metrics.clone(), replicas.clone());
        let hasher = Hasher::new(config.auth.hash_queue_limit);
        Self {
            config,
            db,
            metrics,
            users,
            products,
            orders,
            sessions,
            hasher,
            caches,
            representations,
            replicas,
            listener_name: format!(
                "{}{}",
                notify::LISTENER_PREFIX,
                uuid::Uuid::now_v7().simple()
            ),
        }
    }
}

/// How long in-flight requests may take to finish once shutdown has begun.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Application {
    state: Arc<AppState>,
    /// Hears other instances' cache invalidations (PostgreSQL and MongoDB, with caching on).
    listener: Option<tokio::task::JoinHandle<()>>,
    /// Samples the read replicas' positions (PostgreSQL with replicas).
    replica_checks: Option<tokio::task::JoinHandle<()>>,
    acceptor: poem::listener::TcpAcceptor,
    addr: SocketAddr,
}

impl Application {
    /// Connects (failing fast), migrates when asked to, and binds the listener.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        if let Some(direct) = &config.database.direct_url {
            prepare_for_pooler(direct, &config).await?;
        }
        let metrics = Arc::new(Metrics::new());
        let db = connect(&config, &metrics).await?;
        tracing::info!(
            backend = db.backend_name(),
            url = %mask_password(&config.database.url),
            max_connections = config.database.max_connections,
            "connected to the database"
        );
        if config.auto_migrate {
            migrate(&db, &config).await?;
        }
        let addr = SocketAddr::new(config.host, config.port);
        let acceptor = TcpListener::bind(addr)
            .into_acceptor()
            .await
            .map_err(|err| StartupError::Listen {
                addr,
                reason: err.to_string(),
            })?;
        let addr = acceptor
            .local_addr()
            .first()
            .and_then(|addr| addr.as_socket_addr().copied())
            .unwrap_or(addr);
        let state = Arc::new(AppState::new(config, db, metrics));
        ensure_admin(&state).await?;
        let replica_checks = match &state.replicas {
            Some(replicas) => Some(replicas.start_health_checks().await),
            None => None,
        };
        let listener = listen_to_peers(&state).await;
        Ok(Self {
            state,
            listener,
            replica_checks,
            acceptor,
            addr,
        })
    }

    /// The address actually bound (the port is chosen by the OS when configured as 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight requests finish,
    /// and closes the pool.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> std::io::Result<()> {
        tracing::info!(addr = %self.addr, "listening");
        let app = http::app(self.state.clone());
        let served = Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(app, shutdown, Some(DRAIN_TIMEOUT))
            .await;
        if let Some(listener) = &self.listener {
            listener.abort();
        }
        if let Some(checks) = &self.replica_checks {
            checks.abort();
        }
        if let Some(replicas) = &self.state.replicas {
            replicas.close().await;
        }
        tracing::info!("shutting down: closing the database pool");
        if let Err(err) = self.state.db.close_by_ref().await {
            tracing::warn!(error = %err, "closing the pool failed");
        }
        served
    }
}

/// Every statement or command sent to the database is counted (and only counted: none is
/// logged).
async fn connect(config: &Config, metrics: &Metrics) -> Result<Engine, StartupError> {
    let queries = metrics.db_queries.clone();
    if is_mongo_url(&config.database.url) {
        let mongo = Mongo::connect(&config.database, queries).await?;
        return Ok(Engine::Mongo(mongo));
    }
    let mut db = pool::connect(&config.database).await?;
    db.set_metric_callback(move |_| queries.inc());
    Ok(Engine::Sql(db))
}

async fn listen_to_peers(state: &Arc<AppState>) -> Option<tokio::task::JoinHandle<()>> {
    if !state.caches.users.is_enabled() {
        return None;
    }
    if let Some(mongo) = state.db.mongo() {
        return Some(mongo::watch::start(mongo.clone(), state.caches.clone()).await);
    }
    let postgres = state
        .db
        .sql()
        .is_some_and(|db| db.get_database_backend() == sea_orm::DbBackend::Postgres);
    if !postgres {
        return None;
    }
    let evictor = notify::Evictor {
        caches: state.caches.clone(),
        sender: state.config.database.application_name.clone(),
    };
    // LISTEN holds a session: a transaction pooler cannot carry it.
    let database = &state.config.database;
    let url = database
        .direct_url
        .as_ref()
        .unwrap_or(&database.url)
        .clone();
    Some(notify::start_listener(url, state.listener_name.clone(), evictor).await)
}

/// `ADMIN_EMAIL`/`ADMIN_PASSWORD`: that user exists with role admin (created with the password
/// when absent; promoted, password untouched, when present).
async fn ensure_admin(state: &AppState) -> Result<(), StartupError> {
    let Some(admin) = &state.config.auth.admin else {
        return Ok(());
    };
    let password = || async {
        state
            .hasher
            .hash(admin.password.clone())
            .await
            .map_err(|err| crate::store::StoreError::internal(err.to_string()))
    };
    let user = state
        .users
        .ensure_admin(&admin.email, password)
        .await
        .map_err(|err| StartupError::Admin {
            email: admin.email.as_str().to_owned(),
            reason: err.to_string(),
        })?;
    tracing::info!(user_id = %user.id, "the admin account is in place");
    Ok(())
}

/// Behind a pooler: the direct URL must answer (it carries migrations and LISTEN), and the
/// statement timeout becomes the role's default there before any pooled session starts.
async fn prepare_for_pooler(direct: &str, config: &Config) -> Result<(), StartupError> {
    let direct_config = crate::config::DatabaseConfig {
        url: direct.to_owned(),
        ..config.database.clone()
    };
    pool::probe(&direct_config).await?;
    let timeout = config.database.statement_timeout;
    match pool::apply_statement_timeout(direct, timeout).await {
        Ok(()) => tracing::info!(
            statement_timeout_ms = timeout.as_millis(),
            "statement timeout set as this role's default in the database (behind a pooler)"
        ),
        Err(err) => tracing::warn!(
            error = %err,
            "cannot set the statement timeout as this role's default; statements through the \
             pooler run without one unless the role or the pooler sets it (see the README)"
        ),
    }
    Ok(())
}

/// Applies pending migrations under a database-wide lock, so that any number of instances may
/// start at once: one migrates, the others wait for it and find nothing to do. SQL: SeaORM's
/// migrations under the migration crate's lock (behind a pooler, both over the direct URL).
/// MongoDB: the collection and index steps under their own lock document.
pub async fn migrate(db: &Engine, config: &Config) -> Result<(), StartupError> {
    let database = &config.database;
    let lock_url = database.direct_url.as_deref().unwrap_or(&database.url);
    let failed = |reason: String| StartupError::Migrations {
        url: mask_password(lock_url),
        reason,
    };
    let db = match db {
        Engine::Sql(db) => db,
        Engine::Mongo(mongo) => {
            mongo::schema::up(mongo)
                .await
                .map_err(|err| failed(err.to_string()))?;
            tracing::info!("migrations are up to date");
            return Ok(());
        }
    };
    let direct = match &database.direct_url {
        Some(url) => Some(pool::connect_direct(url, database).await?),
        None => None,
    };
    let conn = direct.as_ref().unwrap_or(db);
    let timeout = config.migration_lock_timeout;
    let notice = || {
        tracing::info!(
            timeout_secs = timeout.as_secs(),
            "another instance is migrating the database; waiting for its migration lock"
        )
    };
    let outcome = migration::up_locked(conn, lock_url, timeout, notice).await;
    if let Some(direct) = direct {
        let _ = direct.close().await;
    }
    match outcome.map_err(|err| failed(err.to_string()))? {
        0 => tracing::info!("migrations are up to date; nothing to apply"),
        applied => tracing::info!(applied, "migrations applied"),
    }
    Ok(())
}

/// Connects for a maintenance command (`api migrate …`), without starting the service.
pub async fn connect_only(config: &Config) -> Result<Engine, StartupError> {
    connect(config, &Metrics::new()).await
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

/// The OpenAPI document as YAML, generated without a database (for `api openapi`).
pub async fn openapi_yaml() -> Result<String, StartupError> {
    let mut config = Config::from_vars(Vec::new())?;
    config.database.url = "sqlite::memory:".to_owned();
    let db = pool::connect(&config.database).await?;
    let metrics = Arc::new(Metrics::new());
    Ok(http::openapi_yaml(Arc::new(AppState::new(
        config,
        Engine::Sql(db),
        metrics,
    ))))
}
