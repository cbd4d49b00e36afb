//! PostgreSQL streaming replicas: where reads outside write transactions go.
//!
//! Writes, and every read inside a write transaction, use the primary's pool. A read outside one
//! asks for a position (`consistency::Positions::wanted`: the request's token, and this
//! instance's own and heard writes) and is served by a replica that has replayed that far, or —
//! when none gets there within `DB_REPLICA_WAIT_MS`, or the request needs it — by the primary.
//!
//! A background round (`HEALTH_INTERVAL`) samples the primary's WAL position and every replica's
//! replay position. A replica's lag is how long ago the primary was first seen at a position the
//! replica has not replayed yet (zero when it has replayed everything sampled), so an idle
//! primary never makes a replica look behind. A replica that does not answer, is not in
//! recovery, or lags more than `DB_REPLICA_MAX_LAG_MS` is skipped until a later round finds it
//! well again; a read that fails on a replica is answered by the primary. None of it is ever a
//! client's error.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge};
use sea_orm::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, SqlxPostgresConnector, Statement,
};
use uuid::Uuid;

use crate::config::DatabaseConfig;
use crate::metrics::Metrics;
use crate::store::batch;
use crate::store::by_id::{Freshness, Key};
use crate::store::consistency::{self, PRIMARY_ONLY, Positions};
use crate::store::error::StoreError;

/// How often the primary's and the replicas' positions are sampled.
const HEALTH_INTERVAL: Duration = Duration::from_millis(250);
/// A position query that takes longer counts as no answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// While a read waits for a replica to reach its position, how often the replicas are asked.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Samples of the primary's position kept for measuring lag (30 s at the interval above).
const SAMPLES: usize = 120;
/// Waiting for a free connection to a replica: one that cannot be opened quickly is down.
const REPLICA_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

pub const PRIMARY_POSITION: &str = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint";
const REPLAY_POSITION: &str = "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint";

/// The pools reads choose from. Without replicas, everything is the primary.
#[derive(Clone)]
pub struct Reads {
    primary: DatabaseConnection,
    replicas: Option<Arc<Replicas>>,
}

impl Freshness for Reads {
    fn wanted(&self) -> u64 {
        Reads::wanted(self)
    }

    fn cache_may_answer(&self) -> bool {
        Reads::cache_may_answer(self)
    }
}

impl Reads {
    pub fn new(primary: DatabaseConnection, replicas: Option<Arc<Replicas>>) -> Self {
        Self { primary, replicas }
    }

    /// With replicas, the positions this instance's reads must be served from.
    pub fn positions(&self) -> Option<Arc<Positions>> {
        self.replicas.as_ref().map(|replicas| replicas.positions())
    }

    /// The primary's pool: writes, and reads that must see the latest state.
    pub fn primary(&self) -> &DatabaseConnection {
        &self.primary
    }

    /// The position the current request's reads need (0 without replicas: anything will do).
    pub fn wanted(&self) -> u64 {
        match &self.replicas {
            Some(replicas) => replicas.positions.wanted(),
            None => 0,
        }
    }

    /// Whether the current request may be answered from the cache.
    pub fn cache_may_answer(&self) -> bool {
        match &self.replicas {
            Some(replicas) => replicas.positions.cache_may_answer(),
            None => true,
        }
    }

    /// Runs `query` on a replica at `wanted` or later, else on the primary.
    pub async fn read<T, F, Fut>(&self, wanted: u64, query: F) -> Result<T, StoreError>
    where
        F: Fn(DatabaseConnection) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        match &self.replicas {
            Some(replicas) => replicas.read(wanted, query).await,
            None => query(self.primary.clone()).await,
        }
    }

    /// The loader behind `ById`: a batch of (id, wanted position) keys read at once, at the
    /// highest position any of them wants. `rows` reads the rows of a set of ids (padded, see
    /// `batch::padded`); `id_of` names each.
    pub async fn load_batch<V, F, Fut>(
        &self,
        keys: Vec<Key>,
        id_of: impl Fn(&V) -> Uuid,
        rows: F,
    ) -> Result<HashMap<Key, V>, StoreError>
    where
        V: Clone,
        F: Fn(DatabaseConnection, Vec<Uuid>) -> Fut,
        Fut: Future<Output = Result<Vec<V>, StoreError>>,
    {
        let wanted = keys.iter().map(|(_, wanted)| *wanted).max().unwrap_or(0);
        let ids: Vec<Uuid> = keys.iter().map(|(id, _)| *id).collect();
        let found: HashMap<Uuid, V> = self
            .read(wanted, |db| rows(db, batch::padded(ids.clone())))
            .await?
            .into_iter()
            .map(|row| (id_of(&row), row))
            .collect();
        Ok(keys
            .into_iter()
            .filter_map(|key| found.get(&key.0).map(|row| (key, row.clone())))
            .collect())
    }

    /// `read` at the current request's position.
    pub async fn read_current<T, F, Fut>(&self, query: F) -> Result<T, StoreError>
    where
        F: Fn(DatabaseConnection) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        self.read(self.wanted(), query).await
    }
}

struct Member {
    db: DatabaseConnection,
    /// The replica's URL, password masked, for log lines.
    name: String,
    replayed: AtomicU64,
    usable: AtomicBool,
    lag_ms: IntGauge,
    up: IntGauge,
}

pub struct Replicas {
    primary: DatabaseConnection,
    members: Vec<Member>,
    positions: Arc<Positions>,
    wait: Duration,
    max_lag: Duration,
    /// How long a read may take on a replica before the primary answers it instead.
    patience: Duration,
    next: AtomicUsize,
    /// When a waiting read last asked the replicas their position: reads waiting at once share
    /// one round of questions per `POLL_INTERVAL` instead of asking each.
    polled: tokio::sync::Mutex<Instant>,
    samples: Mutex<VecDeque<(Instant, u64)>>,
    by_primary: IntCounter,
    by_replica: IntCounter,
    /// How long reads that name a position waited for a replica to reach it.
    waits: prometheus::Histogram,
}

impl Replicas {
    /// The positions this instance's reads must be served from, raised by its commits and by the
    /// writes it hears of.
    pub fn positions(&self) -> Arc<Positions> {
        Arc::clone(&self.positions)
    }

    /// Pools for `config.replica_urls`, opened lazily: a replica that is down at start-up is
    /// only skipped. `None` without replicas or off PostgreSQL.
    pub fn new(
        primary: &DatabaseConnection,
        config: &DatabaseConfig,
        metrics: &Metrics,
    ) -> Option<Arc<Self>> {
        if config.replica_urls.is_empty() || primary.get_database_backend() != DbBackend::Postgres {
            return None;
        }
        let mut members = Vec::new();
        for (index, url) in config.replica_urls.iter().enumerate() {
            let label = index.to_string();
            let name = url.masked();
            let options: PgConnectOptions = match url.as_str().parse() {
                Ok(options) => options,
                Err(_) => {
                    tracing::warn!(replica = %name, "cannot parse a replica URL; it is skipped");
                    continue;
                }
            };
            let options = options
                .application_name(&config.application_name)
                .options([(
                    "statement_timeout",
                    format!("{}ms", config.statement_timeout.as_millis()),
                )]);
            let pool = PgPoolOptions::new()
                .max_connections(config.max_connections)
                .min_connections(0)
                .acquire_timeout(REPLICA_ACQUIRE_TIMEOUT.min(config.acquire_timeout))
                .idle_timeout(config.idle_timeout)
                // As the primary's pool does (`pool::PING_IF_IDLE_FOR`).
                .test_before_acquire(false)
                .before_acquire(|conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for >= super::pool::PING_IF_IDLE_FOR {
                            sea_orm::sqlx::Connection::ping(conn).await?;
                        }
                        Ok(true)
                    })
                })
                .connect_lazy_with(options);
            let mut db = SqlxPostgresConnector::from_sqlx_postgres_pool(pool);
            let queries = metrics.db_queries.clone();
            db.set_metric_callback(move |_| queries.inc());
            members.push(Member {
                db,
                name,
                replayed: AtomicU64::new(0),
                usable: AtomicBool::new(false),
                lag_ms: metrics.replica_lag.with_label_values(&[&label]),
                up: metrics.replica_up.with_label_values(&[&label]),
            });
        }
        let positions = Arc::new(Positions::default());
        positions.enable();
        Some(Arc::new(Self {
            primary: primary.clone(),
            members,
            positions,
            wait: config.replica_wait,
            max_lag: config.replica_max_lag,
            patience: config.connect_timeout.max(PROBE_TIMEOUT),
            next: AtomicUsize::new(0),
            polled: tokio::sync::Mutex::new(Instant::now()),
            samples: Mutex::new(VecDeque::with_capacity(SAMPLES)),
            by_primary: metrics.reads.with_label_values(&["primary"]),
            by_replica: metrics.reads.with_label_values(&["replica"]),
            waits: metrics.replica_wait.clone(),
        }))
    }

    /// Closes the replicas' pools (on shutdown, with the primary's).
    pub async fn close(&self) {
        for member in &self.members {
            let _ = member.db.close_by_ref().await;
        }
    }

    /// Samples positions every `HEALTH_INTERVAL` until the task is aborted. The first round is
    /// done before this returns, so reads use healthy replicas from the first request.
    pub async fn start_health_checks(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        self.check().await;
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(HEALTH_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                this.check().await;
            }
        })
    }

    async fn check(&self) {
        let now = Instant::now();
        if let Ok(position) = primary_position(&self.primary).await {
            self.positions.resync(position);
            let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
            if samples.len() == SAMPLES {
                samples.pop_front();
            }
            samples.push_back((now, position));
        }
        let probes = self.members.iter().map(|member| async move {
            let replayed = replay_position(&member.db).await;
            (member, replayed)
        });
        for (member, replayed) in futures::future::join_all(probes).await {
            let usable = match replayed {
                Some(position) => {
                    // Stored, not maximised: a replica rebuilt from an older backup is behind.
                    member.replayed.store(position, Ordering::Release);
                    let lag = self.lag(now, position);
                    member
                        .lag_ms
                        .set(i64::try_from(lag.as_millis()).unwrap_or(i64::MAX));
                    lag <= self.max_lag
                }
                None => {
                    member.lag_ms.set(-1);
                    false
                }
            };
            member.up.set(i64::from(usable));
            let was = member.usable.swap(usable, Ordering::AcqRel);
            if was && !usable {
                tracing::warn!(replica = %member.name, "replica skipped: down or too far behind");
            } else if !was && usable {
                tracing::info!(replica = %member.name, "replica in use");
            }
        }
    }

    fn lag(&self, now: Instant, replayed: u64) -> Duration {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        lag_behind(&samples, now, replayed)
    }

    async fn read<T, F, Fut>(&self, wanted: u64, query: F) -> Result<T, StoreError>
    where
        F: Fn(DatabaseConnection) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let started = Instant::now();
        let chosen = self.choose(wanted).await;
        if wanted != 0 {
            self.waits.observe(started.elapsed().as_secs_f64());
        }
        if let Some(member) = chosen {
            let position = member.replayed.load(Ordering::Acquire);
            match tokio::time::timeout(self.patience, query(member.db.clone())).await {
                Ok(Ok(value)) => {
                    self.by_replica.inc();
                    self.positions.read_at(position);
                    return Ok(value);
                }
                // An answer about the data (not found, a conflict) stands: the replica had
                // replayed everything the request needs.
                Ok(Err(err)) if err.failure().is_none() => {
                    self.by_replica.inc();
                    self.positions.read_at(position);
                    return Err(err);
                }
                _ => {
                    member.usable.store(false, Ordering::Release);
                    member.up.set(0);
                    tracing::warn!(replica = %member.name, "a read failed on a replica; the primary answers it");
                }
            }
        }
        self.by_primary.inc();
        let value = query(self.primary.clone()).await?;
        // The state read is at or before the primary's position now.
        match primary_position(&self.primary).await {
            Ok(position) => self.positions.read_at(position),
            Err(_) => consistency::position_unknown(),
        }
        Ok(value)
    }

    /// A usable replica at `wanted` or later, waiting up to `wait` for one to get there.
    async fn choose(&self, wanted: u64) -> Option<&Member> {
        if wanted == PRIMARY_ONLY {
            return None;
        }
        let deadline = Instant::now() + self.wait;
        loop {
            if let Some(member) = self.ready(wanted) {
                return Some(member);
            }
            self.poll().await;
            if let Some(member) = self.ready(wanted) {
                return Some(member);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let any_usable = self
                .members
                .iter()
                .any(|m| m.usable.load(Ordering::Acquire));
            if left.is_zero() || !any_usable {
                return None;
            }
            tokio::time::sleep(left.min(POLL_INTERVAL)).await;
        }
    }

    /// Asks the usable replicas how far they have replayed, unless another read did so within
    /// `POLL_INTERVAL` or is doing so now.
    async fn poll(&self) {
        let Ok(mut last) = self.polled.try_lock() else {
            return;
        };
        if last.elapsed() < POLL_INTERVAL {
            return;
        }
        let usable = self
            .members
            .iter()
            .filter(|member| member.usable.load(Ordering::Acquire));
        let polls = usable.map(|member| async move {
            if let Some(position) = replay_position(&member.db).await {
                member.replayed.store(position, Ordering::Release);
            }
        });
        futures::future::join_all(polls).await;
        *last = Instant::now();
    }

    /// The next usable replica, in turn, that has replayed `wanted`.
    fn ready(&self, wanted: u64) -> Option<&Member> {
        let count = self.members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..count)
            .map(|offset| &self.members[(start + offset) % count])
            .find(|member| {
                member.usable.load(Ordering::Acquire)
                    && member.replayed.load(Ordering::Acquire) >= wanted
            })
    }
}

/// How long ago the primary was first sampled at a position past `replayed` (zero when the
/// replica has replayed every sample).
fn lag_behind(samples: &VecDeque<(Instant, u64)>, now: Instant, replayed: u64) -> Duration {
    samples
        .iter()
        .find(|(_, position)| *position > replayed)
        .map_or(Duration::ZERO, |(at, _)| now.saturating_duration_since(*at))
}

/// The primary's WAL position now. After a commit it is at or past the commit.
pub async fn primary_position(db: &DatabaseConnection) -> Result<u64, DbErr> {
    let probe = async {
        let row = db
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                PRIMARY_POSITION,
            ))
            .await?;
        let position = row
            .map(|row| row.try_get_by_index::<i64>(0))
            .transpose()?
            .ok_or_else(|| DbErr::Custom("no WAL position".to_owned()))?;
        u64::try_from(position).map_err(|_| DbErr::Custom("a negative WAL position".to_owned()))
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .map_err(|_| DbErr::Custom("the WAL position did not come in time".to_owned()))?
}

/// How far a replica has replayed; `None` when it does not answer or is not a replica.
async fn replay_position(db: &DatabaseConnection) -> Option<u64> {
    let probe = async {
        let row = db
            .query_one_raw(Statement::from_string(DbBackend::Postgres, REPLAY_POSITION))
            .await
            .ok()??;
        let position = row.try_get_by_index::<Option<i64>>(0).ok()??;
        u64::try_from(position).ok()
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .ok()
        .flatten()
}

/// Records the position of a commit that just happened on `db` (the primary), before the caller
/// evicts what it changed. Without replicas nothing is asked.
pub async fn record_commit(db: &DatabaseConnection, positions: &Positions) {
    if !positions.is_enabled() {
        return;
    }
    for _ in 0..3 {
        if let Ok(position) = primary_position(db).await {
            positions.wrote(position);
            return;
        }
    }
    tracing::warn!(
        "cannot read the position of a commit; reads go to the primary until it answers"
    );
    positions.lose_track();
    consistency::position_unknown();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_age_of_the_oldest_sample_not_replayed() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let samples: VecDeque<_> = [(at(0), 100), (at(250), 100), (at(500), 180), (at(750), 200)]
            .into_iter()
            .collect();
        let now = at(1_000);
        assert_eq!(lag_behind(&samples, now, 200), Duration::ZERO);
        assert_eq!(lag_behind(&samples, now, 300), Duration::ZERO);
        assert_eq!(lag_behind(&samples, now, 180), Duration::from_millis(250));
        assert_eq!(lag_behind(&samples, now, 100), Duration::from_millis(500));
        assert_eq!(lag_behind(&samples, now, 50), Duration::from_millis(1_000));
        assert_eq!(lag_behind(&VecDeque::new(), now, 0), Duration::ZERO);
    }
}
