//! Wiring: configuration → pool → migrations → HTTP server, and the orderly way down.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use poem::Server;
use poem::listener::{Acceptor, Listener, TcpListener};

use crate::cache::Caches;
use crate::cache::versioned::Versioned;
use crate::config::{Config, DatabaseUrl};
use crate::domain::Hasher;
use crate::http;
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::store::events::{self, Events, Feed};
use crate::store::peers::{self, Peers};
use crate::store::sql::pool;
use crate::store::{DbFailure, Engine, ReadReplicas, Repositories};

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
        let representations = Versioned::new(&config.cache);
        let replicas = ReadReplicas::new(&db, &config.database, &metrics);
        let positions = replicas.positions();
        let feed = Feed::new(http::events::render, config.events.record);
        let Repositories {
            users,
            products,
            orders,
            sessions,
            events,
        } = Repositories::new(
            &db,
            &caches,
            &config.cache,
            &feed,
            metrics.clone(),
            &replicas,
        );
        let hasher = Hasher::new(config.auth.hash_queue_limit);
        Self {
            config,
            db,
            metrics,
            users,
            products,
            orders,
            sessions,
            events: Events { log: events, feed },
            hasher,
            caches,
            positions,
            representations,
            replicas,
            listener_name: peers::listener_name(),
        }
    }
}

/// How long in-flight requests may take to finish once shutdown has begun.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long closing the pools may wait for connections still checked out (closing waits for every
/// one to come back): a task that holds one must not keep the process from exiting.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Application {
    state: Arc<AppState>,
    /// Hears other instances' cache invalidations and feed sequencing, where the engine can.
    listener: Option<tokio::task::JoinHandle<()>>,
    /// Samples the read replicas' positions (PostgreSQL with replicas).
    replica_checks: Option<tokio::task::JoinHandle<()>>,
    /// The change feed's sequencer, retention and (with NATS) relay.
    feed_tasks: Vec<tokio::task::JoinHandle<()>>,
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
        metrics.declare_db_failures(DbFailure::ALL.iter().map(|kind| kind.label()));
        let db = Engine::connect(&config.database, metrics.db_queries.clone()).await?;
        tracing::info!(
            backend = db.backend_name(),
            url = %config.database.url,
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
        let replica_checks = state.replicas.start_health_checks().await;
        let listener = listen_to_peers(&state).await;
        let feed_tasks = start_feed(&state);
        Ok(Self {
            state,
            listener,
            replica_checks,
            feed_tasks,
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
        for task in &self.feed_tasks {
            task.abort();
        }
        tracing::info!("shutting down: closing the database pool");
        let closed = tokio::time::timeout(CLOSE_TIMEOUT, async {
            self.state.replicas.close().await;
            self.state.db.close_by_ref().await
        })
        .await;
        match closed {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "closing the pool failed"),
            Err(_) => tracing::warn!(
                "connections were still in use when the pool closed; they are dropped unclosed"
            ),
        }
        served
    }
}

/// How often expired events are looked for.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// The change feed's background work: positions for committed events, removal of expired ones,
/// and publishing to NATS when configured.
fn start_feed(state: &Arc<AppState>) -> Vec<tokio::task::JoinHandle<()>> {
    let feed = &state.events;
    let mut tasks = vec![events::spawn_retention(
        feed.log.clone(),
        state.config.events.retention,
        RETENTION_EVERY.min(state.config.events.retention / 2),
    )];
    // Recording nothing, this instance commits nothing to sequence (a read still sequences what
    // others recorded before it answers).
    if state.config.events.record {
        tasks.push(events::spawn_sequencer(feed.log.clone(), feed.feed.clone()));
    }
    if let Some(url) = &state.config.events.nats_url {
        tasks.push(crate::relay::spawn(url.clone(), feed.clone()));
    }
    tasks
}

/// Hears other instances' cache invalidations and change feed sequencing, where the engine has a
/// channel for them and there is something to hear.
async fn listen_to_peers(state: &Arc<AppState>) -> Option<tokio::task::JoinHandle<()>> {
    if !state.caches.users.is_enabled() && !state.config.events.record {
        return None;
    }
    let peers = Peers {
        caches: state.caches.clone(),
        feed: state.events.feed.clone(),
        positions: Arc::clone(&state.positions),
        name: state.listener_name.clone(),
    };
    state
        .db
        .listen_to_peers(&state.config.database, peers)
        .await
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
            .hash(admin.password.clone(), None)
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
async fn prepare_for_pooler(direct: &DatabaseUrl, config: &Config) -> Result<(), StartupError> {
    let direct_config = crate::config::DatabaseConfig {
        url: direct.clone(),
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
/// start at once: one migrates, the others wait for it and find nothing to do
/// (`Engine::migrate`).
pub async fn migrate(db: &Engine, config: &Config) -> Result<(), StartupError> {
    let database = &config.database;
    let applied = db
        .migrate(database, config.migration_lock_timeout)
        .await
        .map_err(|reason| StartupError::Migrations {
            url: database
                .direct_url
                .as_ref()
                .unwrap_or(&database.url)
                .masked(),
            reason,
        })?;
    match applied {
        0 => tracing::info!("migrations are up to date; nothing to apply"),
        applied => tracing::info!(applied, "migrations applied"),
    }
    Ok(())
}

/// Connects for a maintenance command (`api migrate …`), without starting the service.
pub async fn connect_only(config: &Config) -> Result<Engine, StartupError> {
    Ok(Engine::connect(&config.database, Metrics::new().db_queries.clone()).await?)
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
