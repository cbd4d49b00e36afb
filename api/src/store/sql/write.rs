//! The one way the SQL store writes. A `Write` is a transaction that knows what it changed:
//! each change it records (`record`) is both an event of the change feed and a key to evict.
//! Committing it inserts the events and announces the keys to the other instances inside the
//! transaction (so both exist only if the write commits), commits, evicts the keys from this
//! instance's caches, wakes the feed's sequencer — and, for revoked sessions, waits until every
//! listening instance has evicted them too. A write cannot commit without doing all of that, in
//! that order.
//!
//! SQLite takes its write lock at BEGIN (IMMEDIATE): a transaction that reads before it writes
//! then queues for the lock (up to the busy timeout) instead of failing with SQLITE_BUSY when
//! another writer committed in between.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
};
use tokio::sync::broadcast::{Receiver, error::RecvError};
use uuid::Uuid;

use super::commit_outcome::{self, CommitOutcome, Pending};
use super::replicas::{self, Reads};
use super::{events, notify};
use crate::cache::{Caches, Topic};
use crate::store::consistency::Positions;
use crate::store::error::StoreError;
use crate::store::events::{Change, Feed, NewEvent};

/// How long a session revocation waits for every instance's acknowledgement; on a healthy server
/// a NOTIFY round trip takes about a millisecond. An instance that died without closing its
/// connection delays a revocation by at most this.
const ACKNOWLEDGEMENT_WAIT: Duration = Duration::from_secs(2);

/// What a SQL repository writes through: its pool, the caches its writes evict, the change feed
/// its writes record into, and (with read replicas) the positions its commits raise.
#[derive(Clone)]
pub struct Writer {
    db: DatabaseConnection,
    caches: Caches,
    feed: Feed,
    positions: Option<Arc<Positions>>,
}

impl Writer {
    pub fn new(reads: &Reads, caches: Caches, feed: Feed) -> Self {
        Self {
            db: reads.primary().clone(),
            caches,
            feed,
            positions: reads.positions(),
        }
    }

    /// A write: a transaction begun on the primary.
    pub async fn begin(&self) -> Result<Write<'_>, DbErr> {
        Write::begin(
            &self.db,
            &self.caches,
            &self.feed,
            self.positions.as_deref(),
        )
        .await
    }
}

pub struct Write<'a> {
    txn: DatabaseTransaction,
    /// The pool the transaction came from, for reading the commit's position afterwards.
    db: DatabaseConnection,
    caches: &'a Caches,
    feed: &'a Feed,
    /// With read replicas: raised to the commit's position before its keys are evicted.
    positions: Option<&'a Positions>,
    /// Keys changed, added or deleted, in the order written.
    changed: Vec<(Topic, Uuid)>,
    /// The change feed's events of this write, in the order recorded.
    events: Vec<NewEvent>,
    /// How many of `events` are already inserted (`insert_events`).
    inserted: usize,
    /// Subscribed before the commit, so that no acknowledgement can be missed.
    acknowledgements: Option<Receiver<(Uuid, String)>>,
}

impl<'a> Write<'a> {
    async fn begin(
        db: &DatabaseConnection,
        caches: &'a Caches,
        feed: &'a Feed,
        positions: Option<&'a Positions>,
    ) -> Result<Self, DbErr> {
        let acknowledgements = caches.sessions.acknowledgements();
        let options = TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        };
        Ok(Self {
            txn: db.begin_with_options(options).await?,
            db: db.clone(),
            caches,
            feed,
            positions,
            changed: Vec::new(),
            events: Vec::new(),
            inserted: 0,
            acknowledgements,
        })
    }

    /// The transaction, for the statements of the write.
    pub fn txn(&self) -> &DatabaseTransaction {
        &self.txn
    }

    /// Records a change to a resource: its event, and its cached copy to evict.
    pub fn record(&mut self, change: Change<'_>) {
        self.changed.extend(change.stale_keys());
        self.events.extend(self.feed.event(change));
    }

    /// Inserts the events recorded so far now rather than at commit: a write that then locks
    /// contended rows keeps the insert out of the time it holds them.
    pub async fn insert_events(&mut self) -> Result<(), StoreError> {
        events::insert(&self.txn, &self.events[self.inserted..]).await?;
        self.inserted = self.events.len();
        Ok(())
    }

    /// Records that the rows `ids` of `topic` were changed without an event of their own (revoked
    /// sessions).
    pub fn changed(&mut self, topic: Topic, ids: impl IntoIterator<Item = Uuid>) {
        self.changed.extend(ids.into_iter().map(|id| (topic, id)));
    }

    /// Commits when `outcome` is a success, rolls back otherwise.
    pub async fn finish<T, E: From<StoreError>>(self, outcome: Result<T, E>) -> Result<T, E> {
        match outcome {
            Ok(value) => {
                self.commit().await?;
                Ok(value)
            }
            Err(err) => {
                // The transaction is abandoned either way; a failed rollback only means the
                // connection is gone, which the pool notices by itself.
                let _ = self.txn.rollback().await;
                Err(err)
            }
        }
    }

    /// Inserts the events, announces, commits, records the commit's position (with replicas),
    /// evicts, wakes the sequencer.
    pub async fn commit(self) -> Result<(), StoreError> {
        events::insert(&self.txn, &self.events[self.inserted..]).await?;
        let mut sessions = Vec::new();
        for &(topic, id) in &self.changed {
            notify::announce(&self.txn, topic, &[id]).await?;
            if topic == Topic::Sessions {
                sessions.push(id);
            }
        }
        let listeners = if sessions.is_empty() {
            0
        } else {
            notify::listeners(&self.txn).await?
        };
        // PostgreSQL only: what to ask about this transaction if COMMIT's answer is lost.
        let pending = if self.txn.get_database_backend() == DbBackend::Postgres {
            Some(Pending::read(&self.txn).await?)
        } else {
            None
        };
        if let Err(err) = self.txn.commit().await {
            settle_lost_commit(&self.db, StoreError::from(err), pending).await?;
        }
        // Before evicting: a refill that misses afterwards must ask for this commit's position.
        if let Some(positions) = self.positions {
            replicas::record_commit(&self.db, positions).await;
        }
        for &(topic, id) in &self.changed {
            self.caches.evict(topic, id).await;
        }
        if !self.events.is_empty() {
            self.feed.committed();
        }
        if let Some(acknowledgements) = self.acknowledgements.filter(|_| listeners > 0) {
            await_acknowledgements(acknowledgements, &sessions, listeners).await;
        }
        Ok(())
    }
}

/// How long a COMMIT whose answer was lost may take to be settled: a failover's promotion plus
/// the time for the new primary to answer, well inside a request's deadline.
const OUTCOME_WAIT: Duration = Duration::from_secs(5);

/// A COMMIT failed with `err`. When the connection was lost (`Unavailable`) the transaction may
/// have committed all the same: it is asked of the primary (`commit_outcome`), and a commit
/// found committed is a success — never answered as a failure the client would retry. One found
/// aborted, or whose outcome cannot be known, fails retryably (503): a retry with the same
/// `Idempotency-Key` replays the order if it did commit, and never places a second one.
async fn settle_lost_commit(
    db: &DatabaseConnection,
    err: StoreError,
    pending: Option<Pending>,
) -> Result<(), StoreError> {
    let (StoreError::Unavailable { .. }, Some(pending)) = (&err, pending) else {
        return Err(err);
    };
    match commit_outcome::outcome(db, pending, OUTCOME_WAIT).await {
        CommitOutcome::Committed => {
            tracing::warn!("a COMMIT's answer was lost; the transaction had committed");
            Ok(())
        }
        CommitOutcome::Aborted | CommitOutcome::Unknown => Err(err),
    }
}

/// A revoked token must be refused by every instance from the moment the revoking request is
/// answered: this waits until each of `listeners` instances has acknowledged evicting each of
/// `keys` (bounded by `ACKNOWLEDGEMENT_WAIT`).
async fn await_acknowledgements(
    mut acknowledgements: Receiver<(Uuid, String)>,
    keys: &[Uuid],
    listeners: usize,
) {
    let mut pending: HashMap<Uuid, HashSet<String>> =
        keys.iter().map(|key| (*key, HashSet::new())).collect();
    let waited = tokio::time::timeout(ACKNOWLEDGEMENT_WAIT, async {
        while !pending.is_empty() {
            match acknowledgements.recv().await {
                Ok((key, listener)) => {
                    if let Some(heard_from) = pending.get_mut(&key) {
                        heard_from.insert(listener);
                        if heard_from.len() >= listeners {
                            pending.remove(&key);
                        }
                    }
                }
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            }
        }
    })
    .await;
    if waited.is_err() {
        tracing::warn!(
            listeners,
            "not every instance acknowledged a session revocation in time"
        );
    }
}
