//! The MongoDB engine, on the official driver: the client and its pool, the schema (collections,
//! validators, indexes), error classification, and one repository per aggregate, each with exactly
//! the methods of its SQL sibling so that the HTTP layer cannot tell them apart.

mod document;
pub mod error;
pub mod events;
mod locks;
mod orders;
pub mod page;
mod products;
pub mod schema;
mod sessions;
mod users;
pub mod watch;
pub(crate) mod write;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bson::doc;
use mongodb::error::UNKNOWN_TRANSACTION_COMMIT_RESULT;
use mongodb::event::EventHandler;
use mongodb::event::cmap::CmapEvent;
use mongodb::event::command::CommandEvent;
use mongodb::options::{ClientOptions, ReadConcern, WriteConcern};
use mongodb::{Client, ClientSession, Collection, Database};

use crate::config::DatabaseConfig;
use crate::store::connection::ConnectError;
use crate::store::error::StoreError;

pub use orders::OrderRepo;
pub use products::ProductRepo;
pub use sessions::SessionRepo;
pub use users::UserRepo;

/// The database used when the URL names none (`mongodb://host:27017/`).
pub const DEFAULT_DATABASE: &str = "storefront";

/// A commit whose outcome the driver could not learn (a network error during commit) is retried
/// this many times: committing twice is harmless, the server answers the first outcome.
const COMMIT_ATTEMPTS: u32 = 5;

/// The client (one pool per server), the service's database, and what every operation is bounded
/// by. Cheap to clone: the driver's handles are reference-counted.
#[derive(Clone)]
pub struct Mongo {
    client: Client,
    db: Database,
    /// A client of its own for the change stream, so that its polling is neither counted as
    /// the service's queries nor shown in its pool gauges.
    watcher: Database,
    /// A client of its own for background work (the change feed's sequencer and retention,
    /// listener registrations), not counted as the service's queries either.
    background: Database,
    pool: Arc<PoolGauge>,
    /// `DB_STATEMENT_TIMEOUT_MS`, sent as `maxTimeMS` with every read and find-and-modify, and
    /// as the transactions' `maxCommitTimeMS`.
    pub(crate) max_time: Duration,
    max_connections: u32,
}

/// Connections open and checked out, from the driver's connection-pool (CMAP) events.
#[derive(Default)]
struct PoolGauge {
    open: AtomicI64,
    checked_out: AtomicI64,
}

impl PoolGauge {
    fn observe(&self, event: CmapEvent) {
        let (counter, delta) = match event {
            CmapEvent::ConnectionCreated(_) => (&self.open, 1),
            CmapEvent::ConnectionClosed(_) => (&self.open, -1),
            CmapEvent::ConnectionCheckedOut(_) => (&self.checked_out, 1),
            CmapEvent::ConnectionCheckedIn(_) => (&self.checked_out, -1),
            _ => return,
        };
        counter.fetch_add(delta, Ordering::AcqRel);
    }
}

impl Mongo {
    /// Builds the client from `DATABASE_URL` and the pool settings, and pings the server: a
    /// server that does not answer within the connect timeout stops start-up with one line.
    /// Every command an operation sends is counted in `queries`.
    pub async fn connect(
        config: &DatabaseConfig,
        queries: prometheus::IntCounter,
    ) -> Result<Self, ConnectError> {
        let unreachable = |reason: String| ConnectError::Unreachable {
            url: config.url.masked(),
            reason,
        };
        let mut options = ClientOptions::parse(config.url.as_str())
            .await
            .map_err(|err| unreachable(error::describe(&err)))?;
        options.max_pool_size = Some(config.max_connections);
        options.min_pool_size = Some(config.min_connections);
        options.connect_timeout = Some(config.connect_timeout);
        // Selecting a server is the connect step an operation waits on when none answers.
        options.server_selection_timeout = Some(config.connect_timeout);
        options.max_idle_time = Some(config.idle_timeout);
        options
            .app_name
            .get_or_insert_with(|| "storefront".to_owned());
        let mut watch_options = options.clone();
        watch_options.max_pool_size = Some(1);
        watch_options.min_pool_size = None;
        let mut background_options = watch_options.clone();
        background_options.max_pool_size = Some(4);
        let pool = Arc::new(PoolGauge::default());
        let gauge = Arc::clone(&pool);
        options.cmap_event_handler =
            Some(EventHandler::callback(move |event| gauge.observe(event)));
        options.command_event_handler = Some(EventHandler::callback(move |event| {
            if matches!(event, CommandEvent::Started(_)) {
                queries.inc();
            }
        }));
        let client =
            Client::with_options(options).map_err(|err| unreachable(error::describe(&err)))?;
        let db = client
            .default_database()
            .unwrap_or_else(|| client.database(DEFAULT_DATABASE));
        let watcher = Client::with_options(watch_options)
            .map_err(|err| unreachable(error::describe(&err)))?
            .database(db.name());
        let background = Client::with_options(background_options)
            .map_err(|err| unreachable(error::describe(&err)))?
            .database(db.name());
        let mongo = Self {
            client,
            db,
            watcher,
            background,
            pool,
            max_time: config.statement_timeout,
            max_connections: config.max_connections,
        };
        match tokio::time::timeout(config.connect_timeout * 2, mongo.ping()).await {
            Ok(Ok(())) => Ok(mongo),
            Ok(Err(err)) => Err(unreachable(match err {
                StoreError::Unavailable { .. } => format!(
                    "no server answered within {} ms",
                    config.connect_timeout.as_millis()
                ),
                other => other.to_string(),
            })),
            Err(_) => Err(ConnectError::TimedOut {
                url: config.url.masked(),
                timeout_ms: config.connect_timeout.as_millis(),
            }),
        }
    }

    /// One round trip, for start-up and `/ready`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db.run_command(doc! {"ping": 1}).await?;
        Ok(())
    }

    /// Connections in use and idle, as the pool's events counted them.
    pub fn pool_stats(&self) -> crate::store::connection::PoolStats {
        let open = self.pool.open.load(Ordering::Acquire).max(0);
        let in_use = self.pool.checked_out.load(Ordering::Acquire).clamp(0, open);
        let clamp = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
        crate::store::connection::PoolStats {
            in_use: clamp(in_use),
            idle: clamp(open - in_use),
        }
    }

    pub fn max_connections(&self) -> u32 {
        self.max_connections
    }

    /// Ends every connection; later operations fail.
    pub async fn close(&self) {
        self.client.clone().shutdown().immediate(true).await;
        for other in [&self.watcher, &self.background] {
            other.client().clone().shutdown().immediate(true).await;
        }
    }

    /// The same database through the background client (see `background`).
    pub(crate) fn background(&self) -> Self {
        Self {
            client: self.background.client().clone(),
            db: self.background.clone(),
            ..self.clone()
        }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub(crate) fn watcher(&self) -> &Database {
        &self.watcher
    }

    pub(crate) fn collection(&self, name: &str) -> Collection<bson::Document> {
        self.db.collection(name)
    }

    /// A session with a transaction started: snapshot reads, majority writes, and the statement
    /// limit on the commit.
    pub(crate) async fn begin(&self) -> Result<ClientSession, StoreError> {
        let mut session = self.client.start_session().await?;
        session
            .start_transaction()
            .read_concern(ReadConcern::snapshot())
            .write_concern(WriteConcern::majority())
            .max_commit_time(self.max_time)
            .await?;
        Ok(session)
    }
}

/// Commits `session`'s transaction when `outcome` is a success (retrying a commit whose result
/// is unknown), aborts it otherwise.
pub(crate) async fn settle<T, E: From<StoreError>>(
    session: &mut ClientSession,
    outcome: Result<T, E>,
) -> Result<T, E> {
    match outcome {
        Ok(value) => {
            let mut attempts = 0;
            loop {
                attempts += 1;
                match session.commit_transaction().await {
                    Ok(()) => return Ok(value),
                    Err(err)
                        if err.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT)
                            && attempts < COMMIT_ATTEMPTS =>
                    {
                        continue;
                    }
                    Err(err) => return Err(StoreError::from(err).into()),
                }
            }
        }
        Err(err) => {
            // Abandoned either way; a failed abort means the server already dropped it.
            let _ = session.abort_transaction().await;
            Err(err)
        }
    }
}
