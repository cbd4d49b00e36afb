//! The one way the SQL store writes. A `Write` is a transaction that knows what it changed:
//! committing it announces those keys to the other instances inside the transaction (so the
//! message goes out only if the write commits), commits, and then evicts them from this
//! instance's caches — and, for revoked sessions, waits until every listening instance has
//! evicted them too. A write cannot commit without doing all of that, in that order.
//!
//! SQLite takes its write lock at BEGIN (IMMEDIATE): a transaction that reads before it writes
//! then queues for the lock (up to the busy timeout) instead of failing with SQLITE_BUSY when
//! another writer committed in between.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sea_orm::{
    DatabaseConnection, DatabaseTransaction, DbErr, SqliteTransactionMode, TransactionOptions,
    TransactionTrait,
};
use tokio::sync::broadcast::{Receiver, error::RecvError};
use uuid::Uuid;

use super::{notify, replicas};
use crate::cache::{Caches, Topic};
use crate::store::error::StoreError;

/// How long a session revocation waits for every instance's acknowledgement; on a healthy server
/// a NOTIFY round trip takes about a millisecond. An instance that died without closing its
/// connection delays a revocation by at most this.
const ACKNOWLEDGEMENT_WAIT: Duration = Duration::from_secs(2);

pub struct Write<'a> {
    txn: DatabaseTransaction,
    /// The pool the transaction came from, for reading the commit's position afterwards.
    db: DatabaseConnection,
    caches: &'a Caches,
    /// Keys changed, added or deleted, in the order written.
    changed: Vec<(Topic, Uuid)>,
    /// Subscribed before the commit, so that no acknowledgement can be missed.
    acknowledgements: Option<Receiver<(Uuid, String)>>,
}

impl<'a> Write<'a> {
    pub async fn begin(db: &DatabaseConnection, caches: &'a Caches) -> Result<Self, DbErr> {
        let acknowledgements = caches.sessions.acknowledgements();
        let options = TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        };
        Ok(Self {
            txn: db.begin_with_options(options).await?,
            db: db.clone(),
            caches,
            changed: Vec::new(),
            acknowledgements,
        })
    }

    /// The transaction, for the statements of the write.
    pub fn txn(&self) -> &DatabaseTransaction {
        &self.txn
    }

    /// Records that the rows `ids` of `topic` were changed, added or deleted by this write.
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

    /// Announces, commits, records the commit's position (with replicas), evicts.
    pub async fn commit(self) -> Result<(), StoreError> {
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
        self.txn.commit().await?;
        // Before evicting: a refill that misses afterwards must ask for this commit's position.
        replicas::record_commit(&self.db, &self.caches.positions).await;
        for &(topic, id) in &self.changed {
            self.caches.evict(topic, id).await;
        }
        if let Some(acknowledgements) = self.acknowledgements.filter(|_| listeners > 0) {
            await_acknowledgements(acknowledgements, &sessions, listeners).await;
        }
        Ok(())
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
