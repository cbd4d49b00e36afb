//! The one way the MongoDB store writes, as `sql::write` is SQL's: a `Write` is a transaction
//! that knows what it changed. Finishing it with a success inserts the change feed's events in
//! the transaction, commits (retrying a commit whose outcome is unknown), evicts the changed keys
//! from this instance's caches (other instances hear of them through their change streams) and
//! wakes the feed's sequencer. A write cannot commit without doing all of that.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bson::{Bson, Document, doc};
use futures::TryStreamExt;
use mongodb::ClientSession;
use mongodb::options::ReturnDocument;
use uuid::Uuid;

use super::schema::{COUNTERS, EVENTS, LISTENERS, SESSION_ACKS};
use super::{Mongo, document, settle};
use crate::cache::{Caches, Topic};
use crate::metrics::Metrics;
use crate::store::error::{Conflict, Resource, StoreError};
use crate::store::events::{Change, Feed, NewEvent};
use crate::store::retry::{RetryPolicy, Retryable, with_retry};

/// One write as every MongoDB write runs: begun, its statements run (`$body`, with the `Write`
/// named `$write`), finished (events recorded, committed, evicted), all again after a transient
/// conflict under `$policy`. A macro rather than a function taking a closure: a closure's future
/// that borrows the `Write` it is given cannot be proven `Send` for every borrow.
macro_rules! transaction {
    ($writer:expr, $policy:expr, |$write:ident| $body:block) => {
        $writer.retrying($policy, || async {
            let mut $write = $writer.begin().await?;
            let outcome = async $body.await;
            $write.finish(outcome).await
        })
    };
}
pub(crate) use transaction;

/// What every MongoDB write needs: the client, the caches it evicts from, the feed it records
/// into, and the retry counter.
#[derive(Clone)]
pub(crate) struct Writer {
    pub mongo: Mongo,
    pub caches: Caches,
    pub feed: Feed,
    pub metrics: Arc<Metrics>,
}

impl Writer {
    /// A transaction to write in.
    pub async fn begin(&self) -> Result<Write<'_>, StoreError> {
        Write::begin(&self.mongo, &self.caches, &self.feed).await
    }

    /// Runs `attempt` (a `begin` … `Write::finish`) again after transient conflicts, under
    /// `policy`, counting each retry.
    pub async fn retrying<T, E, F, Fut>(&self, policy: RetryPolicy, attempt: F) -> Result<T, E>
    where
        E: Retryable,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let retries = &self.metrics.transaction_retries;
        with_retry(policy, |_| retries.inc(), attempt).await
    }
}

/// How long a session revocation waits for every instance's acknowledgement. An instance that
/// died without deregistering delays a revocation by at most this.
const ACKNOWLEDGEMENT_WAIT: Duration = Duration::from_secs(2);
/// How often the acknowledgements are looked for meanwhile.
const ACKNOWLEDGEMENT_POLL: Duration = Duration::from_millis(10);

/// Events one write may record at most: a write's events are numbered from its ticket times this.
const EVENTS_PER_WRITE: i64 = 1 << 20;

/// This write's ticket, from a counter outside any transaction (so concurrent writers never
/// conflict on it), taken before the write begins: a change answered before another was sent
/// has the lower ticket. Two writes of one document can take theirs in either order; the
/// sequencer puts one resource's events in version order (`events::EventLog::sequence`).
async fn take_ticket(mongo: &Mongo) -> Result<i64, StoreError> {
    let counter = mongo
        .collection(COUNTERS)
        .find_one_and_update(doc! {"_id": EVENTS}, doc! {"$inc": {"seq": 1_i64}})
        .upsert(true)
        .return_document(ReturnDocument::After)
        .await?
        .ok_or_else(|| StoreError::internal("the events counter is missing"))?;
    counter
        .get_i64("seq")
        .map_err(|_| StoreError::internal("the events counter is not a number"))
}

pub(crate) struct Write<'a> {
    mongo: &'a Mongo,
    session: ClientSession,
    caches: &'a Caches,
    feed: &'a Feed,
    /// Keys changed, added or deleted, in the order written.
    changed: Vec<(Topic, Uuid)>,
    /// The change feed's events of this write, in the order recorded.
    events: Vec<NewEvent>,
    /// This write's place among the writes: its events are numbered `ticket × EVENTS_PER_WRITE`
    /// on (see `take_ticket`).
    ticket: i64,
}

/// The document a conditional update or delete is for: `id` in `collection`, and the versions
/// `If-Match` named, if it did.
pub struct Versioned<'a> {
    pub collection: &'static str,
    pub resource: Resource,
    pub id: Uuid,
    pub expected: Option<&'a [i64]>,
}

impl<'a> Write<'a> {
    pub async fn begin(
        mongo: &'a Mongo,
        caches: &'a Caches,
        feed: &'a Feed,
    ) -> Result<Self, StoreError> {
        // Taken before the transaction begins: an operation outside a transaction while it is
        // open would wait on the server for what the transaction holds.
        let ticket = take_ticket(mongo).await?;
        Ok(Self {
            session: mongo.begin().await?,
            mongo,
            caches,
            feed,
            changed: Vec::new(),
            events: Vec::new(),
            ticket,
        })
    }

    /// The transaction's session, for the statements of the write.
    pub fn session(&mut self) -> &mut ClientSession {
        &mut self.session
    }

    /// Records a change to a resource: its event, and its cached copy to evict.
    pub fn record(&mut self, change: Change<'_>) {
        self.changed.extend(change.stale_keys());
        self.events.extend(self.feed.event(change));
    }

    /// Records that `ids` of `topic` were changed without an event of their own (revoked
    /// sessions).
    pub fn changed(&mut self, topic: Topic, ids: impl IntoIterator<Item = Uuid>) {
        self.changed.extend(ids.into_iter().map(|id| (topic, id)));
    }

    /// Applies `update` to the document `target` names, when its version is one expected (any,
    /// without `If-Match`), and answers the document as it is after. Without one: the
    /// precondition failed when the document exists at another version, else it is not found.
    /// `refine` turns the update's own failure into the store's (a unique index, say).
    pub async fn update_versioned(
        &mut self,
        target: &Versioned<'_>,
        update: Document,
        refine: impl FnOnce(mongodb::error::Error) -> StoreError,
    ) -> Result<Document, StoreError> {
        let collection = self.mongo.collection(target.collection);
        let mut filter = doc! {"_id": document::id(target.id)};
        if let Some(versions) = target.expected {
            filter.insert("version", doc! {"$in": versions});
        }
        let updated = collection
            .find_one_and_update(filter, update)
            .return_document(ReturnDocument::After)
            .max_time(self.mongo.max_time)
            .session(&mut self.session)
            .await
            .map_err(refine)?;
        if let Some(updated) = updated {
            return Ok(updated);
        }
        let exists = collection
            .find_one(doc! {"_id": document::id(target.id)})
            .projection(doc! {"_id": 1})
            .session(&mut self.session)
            .await?
            .is_some();
        Err(if exists {
            StoreError::PreconditionFailed
        } else {
            StoreError::not_found(target.resource, target.id)
        })
    }

    /// Deletes the document `target` names and records its deletion, unless its version is not
    /// one expected (the precondition failed) or its flag `kept_by.0` is set (`kept_by.1`: a
    /// user or product that was ever ordered stays).
    pub async fn delete_versioned(
        &mut self,
        target: &Versioned<'_>,
        kept_by: (&str, Conflict),
    ) -> Result<(), StoreError> {
        let collection = self.mongo.collection(target.collection);
        let found = collection
            .find_one(doc! {"_id": document::id(target.id)})
            .max_time(self.mongo.max_time)
            .session(&mut self.session)
            .await?
            .ok_or(StoreError::not_found(target.resource, target.id))?;
        let version = document::read_i64(&found, "version")?;
        if target
            .expected
            .is_some_and(|versions| !versions.contains(&version))
        {
            return Err(StoreError::PreconditionFailed);
        }
        let (flag, conflict) = kept_by;
        if document::read_flag(&found, flag) {
            return Err(StoreError::Conflict(conflict));
        }
        collection
            .delete_one(doc! {"_id": document::id(target.id)})
            .session(&mut self.session)
            .await?;
        self.record(Change::Deleted {
            resource: target.resource,
            id: target.id,
            version: version + 1,
            at: document::now(),
        });
        Ok(())
    }

    /// Commits when `outcome` is a success, aborts otherwise. A commit that failed may still
    /// have been applied, so the changed keys are evicted either way.
    pub async fn finish<T, E: From<StoreError>>(mut self, outcome: Result<T, E>) -> Result<T, E> {
        let outcome = match outcome {
            Ok(value) => match self.insert_events().await {
                Ok(()) => Ok(value),
                Err(err) => Err(E::from(err)),
            },
            Err(err) => Err(err),
        };
        let committed = outcome.is_ok();
        let revoked: Vec<Uuid> = self
            .changed
            .iter()
            .filter(|(topic, _)| *topic == Topic::Sessions)
            .map(|&(_, key)| key)
            .collect();
        let settled = settle(&mut self.session, outcome).await;
        // Counted once the transaction is over (nothing may run beside it while it is open): an
        // instance that started listening in between is waited for too, up to the bound.
        let listeners = if committed && settled.is_ok() && !revoked.is_empty() {
            self.listeners().await
        } else {
            0
        };
        for &(topic, id) in &self.changed {
            self.caches.evict(topic, id).await;
        }
        if committed && settled.is_ok() {
            if !self.events.is_empty() {
                self.feed.committed();
            }
            if listeners > 0 {
                self.await_acknowledgements(&revoked, listeners).await;
            }
        }
        settled
    }

    /// Instances watching the change stream now (this one included).
    async fn listeners(&self) -> usize {
        let now = document::time(document::now());
        let counted = self
            .mongo
            .collection(LISTENERS)
            .count_documents(doc! {"expires_at": {"$gt": now}})
            .await;
        counted.map_or(0, |count| usize::try_from(count).unwrap_or(usize::MAX))
    }

    /// A revoked token must be refused by every instance from the moment the revoking request
    /// is answered: this waits until each of `listeners` instances has acknowledged evicting
    /// each of `keys` (bounded by `ACKNOWLEDGEMENT_WAIT`), as `sql::write` does on PostgreSQL.
    async fn await_acknowledgements(&self, keys: &[Uuid], listeners: usize) {
        let wanted: Vec<String> = keys.iter().map(Uuid::to_string).collect();
        let acknowledgements = self.mongo.collection(SESSION_ACKS);
        let waited = tokio::time::timeout(ACKNOWLEDGEMENT_WAIT, async {
            loop {
                let found: Vec<Document> = match acknowledgements
                    .find(doc! {"key": {"$in": &wanted}})
                    .projection(doc! {"key": 1, "listener": 1})
                    .await
                {
                    Ok(cursor) => cursor.try_collect().await.unwrap_or_default(),
                    Err(_) => Vec::new(),
                };
                let mut heard: HashMap<&str, HashSet<&str>> = HashMap::new();
                for ack in &found {
                    if let (Ok(key), Ok(listener)) = (ack.get_str("key"), ack.get_str("listener")) {
                        heard.entry(key).or_default().insert(listener);
                    }
                }
                let all = wanted.iter().all(|key| {
                    heard
                        .get(key.as_str())
                        .is_some_and(|from| from.len() >= listeners)
                });
                if all {
                    return;
                }
                tokio::time::sleep(ACKNOWLEDGEMENT_POLL).await;
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

    /// Inserts the events in the transaction, numbered from this write's ticket.
    async fn insert_events(&mut self) -> Result<(), StoreError> {
        if self.events.is_empty() {
            return Ok(());
        }
        let documents: Vec<Document> = self
            .events
            .iter()
            .enumerate()
            .map(|(index, event)| {
                doc! {
                    "_id": document::id(event.id),
                    "seq": self.ticket * EVENTS_PER_WRITE + index as i64,
                    "position": Bson::Null,
                    "type": event.kind.as_str(),
                    "resource_id": document::id(event.resource_id),
                    "version": event.version,
                    "occurred_at": document::time(event.occurred_at),
                    "data": &event.data,
                }
            })
            .collect();
        self.mongo
            .collection(EVENTS)
            .insert_many(documents)
            .session(&mut self.session)
            .await?;
        Ok(())
    }
}
