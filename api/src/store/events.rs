//! The change feed: a transactional outbox read by cursor.
//!
//! Every write records its events through its engine's one write path, in the change's own
//! transaction, so a rolled-back or refused write records none and a committed one never lacks
//! its event. An event is inserted without a feed position but with a number (`seq`) taken when
//! it is written: a change answered before another was sent, and a resource's earlier version,
//! always has the lower one.
//!
//! Positions come later, from the sequencer: it gives the next positions to committed events
//! without one, in `seq` order, in one transaction. Positions inside concurrent writers' own
//! transactions would become visible out of order (a writer that took position 7 may commit after
//! the one that took 8, and a reader past 8 would never see 7). A sequencer only ever sees
//! committed events and commits its positions in order, so a position is readable only once every
//! lower one is, and a reader that follows its cursor can never skip one. Any instance may run
//! the sequencer: the unique index on `position` and a guard on `position IS NULL` make a second,
//! concurrent one roll back instead of handing out a position twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, FixedOffset};
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use super::error::Resource;
use super::{StoreError, delegate, sql};
use crate::cache::Topic;
use crate::domain::OrderStatus;
use crate::domain::model::{Order, Product, User};

/// Events given positions per sequencer transaction.
pub const SEQUENCE_BATCH: u64 = 1000;
/// Events removed per retention statement: small, so that no statement holds locks for long.
pub const PURGE_BATCH: u64 = 500;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    UserCreated,
    UserUpdated,
    UserDeleted,
    ProductCreated,
    ProductUpdated,
    ProductDeleted,
    OrderCreated,
    OrderUpdated,
}

impl EventType {
    pub const ALL: [EventType; 8] = [
        Self::UserCreated,
        Self::UserUpdated,
        Self::UserDeleted,
        Self::ProductCreated,
        Self::ProductUpdated,
        Self::ProductDeleted,
        Self::OrderCreated,
        Self::OrderUpdated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UserCreated => "user.created",
            Self::UserUpdated => "user.updated",
            Self::UserDeleted => "user.deleted",
            Self::ProductCreated => "product.created",
            Self::ProductUpdated => "product.updated",
            Self::ProductDeleted => "product.deleted",
            Self::OrderCreated => "order.created",
            Self::OrderUpdated => "order.updated",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// A resource as it is after a change.
#[derive(Clone, Copy)]
pub enum Subject<'a> {
    User(&'a User),
    Product(&'a Product),
    Order(&'a Order),
}

impl Subject<'_> {
    fn id(&self) -> Uuid {
        match self {
            Self::User(user) => user.id,
            Self::Product(product) => product.id,
            Self::Order(order) => order.id,
        }
    }

    fn version(&self) -> i64 {
        match self {
            Self::User(user) => user.version,
            Self::Product(product) => product.version,
            Self::Order(order) => order.version,
        }
    }

    fn updated_at(&self) -> DateTime<FixedOffset> {
        match self {
            Self::User(user) => user.updated_at,
            Self::Product(product) => product.updated_at,
            Self::Order(order) => order.updated_at,
        }
    }
}

/// What a write did to one resource, as its event tells it.
#[derive(Clone, Copy)]
pub enum Change<'a> {
    Created(Subject<'a>),
    Updated(Subject<'a>),
    /// `version` is the deleted resource's last version plus one: a resource's events carry
    /// strictly increasing versions.
    Deleted {
        resource: Resource,
        id: Uuid,
        version: i64,
        at: DateTime<FixedOffset>,
    },
}

impl Change<'_> {
    /// The cached rows this change makes stale: the resource itself, and the products whose stock
    /// an order took (placed) or gave back (cancelled). Each engine's write path evicts these for
    /// every change it records, so no write site names them by hand.
    pub fn stale_keys(&self) -> Vec<(Topic, Uuid)> {
        match self {
            Self::Created(Subject::User(user)) | Self::Updated(Subject::User(user)) => {
                vec![(Topic::Users, user.id)]
            }
            Self::Created(Subject::Product(product)) | Self::Updated(Subject::Product(product)) => {
                vec![(Topic::Products, product.id)]
            }
            Self::Created(Subject::Order(order)) => stock_of(order),
            Self::Updated(Subject::Order(order)) if order.status == OrderStatus::Cancelled => {
                stock_of(order)
            }
            Self::Updated(Subject::Order(_)) => Vec::new(),
            Self::Deleted { resource, id, .. } => match resource {
                Resource::User => vec![(Topic::Users, *id)],
                Resource::Product => vec![(Topic::Products, *id)],
                Resource::Order => Vec::new(),
            },
        }
    }
}

/// The products an order's stock moved on.
fn stock_of(order: &Order) -> Vec<(Topic, Uuid)> {
    order
        .items
        .iter()
        .map(|item| (Topic::Products, item.product_id))
        .collect()
}

/// The resource as a `GET` right after the change answers it: the HTTP layer's representation,
/// handed to the store at start-up so that the feed and the API cannot drift apart.
pub type Render = fn(Subject<'_>) -> serde_json::Value;

/// An event to insert with its write.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub id: Uuid,
    pub kind: EventType,
    pub resource_id: Uuid,
    pub version: i64,
    pub occurred_at: DateTime<FixedOffset>,
    /// JSON.
    pub data: String,
}

/// A sequenced event, as the feed serves it.
#[derive(Clone, Debug)]
pub struct Event {
    pub id: Uuid,
    pub position: i64,
    pub kind: EventType,
    pub resource_id: Uuid,
    pub version: i64,
    pub occurred_at: DateTime<FixedOffset>,
    /// JSON.
    pub data: String,
}

/// The feed's in-process side: how events are made, and the signals that wake the sequencer
/// when this instance commits and the readers when positions are given.
#[derive(Clone)]
pub struct Feed {
    inner: Arc<FeedInner>,
}

struct FeedInner {
    render: Render,
    /// Off only for measuring what recording costs (`EventsConfig::record`).
    record: bool,
    /// A write with events committed: the sequencer has work.
    committed: Notify,
    /// The highest position this instance knows to be given.
    sequenced: watch::Sender<i64>,
    /// Whether other instances' sequencing rounds are heard (PostgreSQL's `NOTIFY`, MongoDB's
    /// change stream): then a waiting reader is woken by them, and reads again on its own only
    /// as a safety net.
    hears_peers: AtomicBool,
}

impl Feed {
    pub fn new(render: Render, record: bool) -> Self {
        Self {
            inner: Arc::new(FeedInner {
                render,
                record,
                committed: Notify::new(),
                sequenced: watch::channel(0).0,
                hears_peers: AtomicBool::new(false),
            }),
        }
    }

    /// The event `change` records (none when recording is off).
    pub fn event(&self, change: Change<'_>) -> Option<NewEvent> {
        self.inner.record.then(|| self.make(change))
    }

    fn make(&self, change: Change<'_>) -> NewEvent {
        let (kind, resource_id, version, occurred_at, data) = match change {
            Change::Created(subject) | Change::Updated(subject) => {
                let created = matches!(change, Change::Created(_));
                let kind = match (subject, created) {
                    (Subject::User(_), true) => EventType::UserCreated,
                    (Subject::User(_), false) => EventType::UserUpdated,
                    (Subject::Product(_), true) => EventType::ProductCreated,
                    (Subject::Product(_), false) => EventType::ProductUpdated,
                    (Subject::Order(_), true) => EventType::OrderCreated,
                    (Subject::Order(_), false) => EventType::OrderUpdated,
                };
                let data = (self.inner.render)(subject).to_string();
                (
                    kind,
                    subject.id(),
                    subject.version(),
                    subject.updated_at(),
                    data,
                )
            }
            Change::Deleted {
                resource,
                id,
                version,
                at,
            } => {
                let kind = match resource {
                    Resource::User => EventType::UserDeleted,
                    Resource::Product => EventType::ProductDeleted,
                    // Orders are records: they are never deleted.
                    Resource::Order => EventType::OrderUpdated,
                };
                let data = serde_json::json!({ "id": id }).to_string();
                (kind, id, version, at, data)
            }
        };
        NewEvent {
            id: Uuid::now_v7(),
            kind,
            resource_id,
            version,
            occurred_at,
            data,
        }
    }

    /// A write that recorded events has committed.
    pub fn committed(&self) {
        self.inner.committed.notify_one();
    }

    /// Positions up to `position` are given and readable.
    pub fn sequenced(&self, position: i64) {
        self.inner.sequenced.send_if_modified(|known| {
            let moved = position > *known;
            *known = (*known).max(position);
            moved
        });
    }

    /// Whether other instances' sequencing is heard from now on (`sequenced` is called for it).
    pub fn hear_peers(&self, heard: bool) {
        self.inner.hears_peers.store(heard, Ordering::Relaxed);
    }

    /// How long a waiting reader may wait before reading again on its own: short when only this
    /// instance's sequencing wakes it, long when other instances' is heard too.
    fn poll(&self) -> Duration {
        if self.inner.hears_peers.load(Ordering::Relaxed) {
            PEER_WAIT_POLL
        } else {
            WAIT_POLL
        }
    }

    /// Waits until a position past `position` is known to be given, here or (when heard) by
    /// another instance, or `timeout` passes.
    pub async fn wait_past(&self, position: i64, timeout: Duration) {
        let mut known = self.inner.sequenced.subscribe();
        let _ = tokio::time::timeout(timeout, known.wait_for(|known| *known > position)).await;
    }
}

/// What one call of an engine's sequencer did.
pub enum Sequenced {
    /// Nothing was waiting for a position.
    Nothing,
    /// Positions up to this one were given.
    UpTo(i64),
    /// Another sequencer gave the same events positions first; nothing was written.
    Lost,
}

/// The oldest and newest positions the feed still holds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Bounds {
    pub oldest: Option<i64>,
    pub newest: Option<i64>,
}

/// How often an idle sequencer looks for other instances' events. Its own instance's commits
/// wake it at once.
const SEQUENCER_POLL: Duration = Duration::from_millis(50);
/// How long the sequencer lets commits gather before a round, at most (a reader that reads
/// sequences for itself and never waits for this).
const SEQUENCER_PAUSE: Duration = Duration::from_millis(10);

/// The storage side of the feed, whichever engine holds it.
#[derive(Clone)]
pub enum EventLog {
    Sql(super::sql::events::EventLog),
    Mongo(super::mongo::events::EventLog),
}

impl EventLog {
    /// Gives positions to up to `SEQUENCE_BATCH` committed events that have none.
    pub async fn sequence(&self) -> Result<Sequenced, StoreError> {
        delegate!(self.sequence())
    }

    /// Sequenced events after `after`, in feed order.
    pub async fn after(&self, after: i64, limit: u64) -> Result<Vec<Event>, StoreError> {
        delegate!(self.after(after, limit))
    }

    pub async fn bounds(&self) -> Result<Bounds, StoreError> {
        delegate!(self.bounds())
    }

    /// Removes up to `PURGE_BATCH` events older than `before`, never the newest (its position
    /// is where the next one continues). Returns how many it removed.
    pub async fn purge(&self, before: DateTime<FixedOffset>) -> Result<u64, StoreError> {
        delegate!(self.purge(before))
    }

    /// Takes or renews the lease of the relay `name` for `holder` until `until`: the position
    /// published so far when `holder` holds it now, `None` when another holder's lease runs.
    pub async fn lease(
        &self,
        name: &str,
        holder: &str,
        until: DateTime<FixedOffset>,
    ) -> Result<Option<i64>, StoreError> {
        delegate!(self.lease(name, holder, until))
    }

    /// Records that the relay `name` has published up to `position`, if `holder` still holds
    /// its lease (else `false`, and nothing changes).
    pub async fn published(
        &self,
        name: &str,
        holder: &str,
        position: i64,
        until: DateTime<FixedOffset>,
    ) -> Result<bool, StoreError> {
        delegate!(self.published(name, holder, position, until))
    }

    /// Sequences until nothing committed is left without a position; the newest position.
    pub async fn sequence_all(&self, feed: &Feed) -> Result<i64, StoreError> {
        let mut lost = 0;
        loop {
            match self.sequence().await? {
                Sequenced::UpTo(position) => feed.sequenced(position),
                // Another instance's sequencer is giving these events positions right now.
                Sequenced::Lost if lost < MAX_LOST_ROUNDS => {
                    lost += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                // Still losing after a second: the other sequencer keeps making progress, and
                // what it has given is read below rather than refusing the read.
                Sequenced::Lost | Sequenced::Nothing => {
                    let newest = self.bounds().await?.newest.unwrap_or(0);
                    feed.sequenced(newest);
                    return Ok(newest);
                }
            }
        }
    }
}

/// Rounds a reader's sequencing may lose to another sequencer (5 ms apart) before it reads.
const MAX_LOST_ROUNDS: u32 = 200;

/// Gives positions as events commit, until the task is aborted: woken by this instance's
/// commits, and polling for other instances' events.
pub fn spawn_sequencer(log: EventLog, feed: Feed) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = SEQUENCER_POLL;
        loop {
            let notified = feed.inner.committed.notified();
            match log.sequence().await {
                Ok(Sequenced::UpTo(position)) => {
                    feed.sequenced(position);
                    backoff = SEQUENCER_POLL;
                    // The commits of the next moment go into one round: a round per commit
                    // would double the database's transactions under load.
                    tokio::time::sleep(SEQUENCER_PAUSE).await;
                    continue;
                }
                Ok(Sequenced::Lost) => {
                    tokio::time::sleep(SEQUENCER_PAUSE).await;
                    continue;
                }
                Ok(Sequenced::Nothing) => backoff = SEQUENCER_POLL,
                Err(err) => {
                    tracing::warn!(error = %err, "the change feed's sequencer failed; retrying");
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
            if tokio::time::timeout(backoff, notified).await.is_ok() {
                tokio::time::sleep(SEQUENCER_PAUSE).await;
            }
        }
    })
}

/// Removes events past `retention` in small batches, every `every`, until the task is aborted.
pub fn spawn_retention(
    log: EventLog,
    retention: Duration,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let cutoff = chrono::Utc::now() - retention;
            loop {
                match log.purge(cutoff.fixed_offset()).await {
                    Ok(removed) if removed >= PURGE_BATCH => continue,
                    Ok(_) => break,
                    Err(err) => {
                        tracing::warn!(error = %err, "removing expired events failed");
                        break;
                    }
                }
            }
            tokio::time::sleep(every).await;
        }
    })
}

/// Why a read of the feed was refused.
#[derive(Debug)]
pub enum ReadError {
    /// Events after the cursor have been removed by the retention.
    Expired,
    Store(StoreError),
}

impl From<StoreError> for ReadError {
    fn from(err: StoreError) -> Self {
        Self::Store(err)
    }
}

/// A read of the feed.
pub struct Read {
    /// `None`: from the oldest event held.
    pub after: Option<i64>,
    pub limit: u64,
    /// Empty: every type.
    pub types: Vec<EventType>,
    pub wait: Duration,
}

/// What a read answers: the events, and the position to continue after.
pub struct Answer {
    pub items: Vec<Event>,
    pub next: i64,
}

/// The feed as a reader sees it: the engine's log and this instance's signals.
#[derive(Clone)]
pub struct Events {
    pub log: EventLog,
    pub feed: Feed,
}

/// How long a waiting reader sleeps between reads when other instances' sequencing is not heard
/// (MariaDB/MySQL, SQLite, or while the listener reconnects): their events are given positions
/// by whichever sequencer runs.
const WAIT_POLL: Duration = Duration::from_millis(100);
/// The same when every instance's sequencing is heard: only a safety net.
const PEER_WAIT_POLL: Duration = Duration::from_secs(5);
/// Rows looked at per statement when a type filter leaves most of them out.
const SCAN: u64 = 1000;

impl Events {
    /// Events after the reader's cursor: at most `limit`, of the types asked for, held up to
    /// `wait` while there are none.
    ///
    /// Everything committed is sequenced first, so a reader sees the events of every change
    /// answered before its request, without waiting for the sequencer's next round.
    pub async fn read(&self, read: Read) -> Result<Answer, ReadError> {
        self.log.sequence_all(&self.feed).await?;
        let bounds = self.log.bounds().await?;
        let mut cursor = match read.after {
            Some(after) => {
                // Positions are consecutive: a gap between the cursor and the oldest event held
                // is events the retention removed before this reader saw them.
                if bounds.oldest.is_some_and(|oldest| oldest > after + 1) {
                    return Err(ReadError::Expired);
                }
                after
            }
            None => bounds.oldest.map_or(0, |oldest| oldest - 1),
        };
        let deadline = tokio::time::Instant::now() + read.wait;
        loop {
            let batch = if read.types.is_empty() {
                read.limit
            } else {
                SCAN.max(read.limit)
            };
            let events = self.log.after(cursor, batch).await?;
            let reached_end = (events.len() as u64) < batch;
            let mut items = Vec::new();
            for event in events {
                cursor = event.position;
                if read.types.is_empty() || read.types.contains(&event.kind) {
                    items.push(event);
                    if items.len() as u64 == read.limit {
                        break;
                    }
                }
            }
            if !items.is_empty() {
                return Ok(Answer {
                    items,
                    next: cursor,
                });
            }
            if !reached_end {
                continue;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Answer {
                    items,
                    next: cursor,
                });
            }
            self.feed
                .wait_past(cursor, self.feed.poll().min(deadline - now))
                .await;
        }
    }

    /// The position after the event of every change committed before this call: everything
    /// committed is sequenced first.
    pub async fn latest(&self) -> Result<i64, StoreError> {
        self.log.sequence_all(&self.feed).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::OrderItem;

    fn order(status: OrderStatus, products: &[Uuid]) -> Order {
        let now = crate::store::now();
        Order {
            id: Uuid::now_v7(),
            user_id: Uuid::now_v7(),
            status,
            total_cents: 0,
            items: products
                .iter()
                .map(|&product_id| OrderItem {
                    product_id,
                    quantity: 1,
                    unit_price_cents: 0,
                })
                .collect(),
            version: 1,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn a_change_makes_stale_what_it_wrote_and_the_stock_it_moved() {
        let (tea, jam) = (Uuid::now_v7(), Uuid::now_v7());
        let products = vec![(Topic::Products, tea), (Topic::Products, jam)];
        let placed = order(OrderStatus::Pending, &[tea, jam]);
        assert_eq!(
            Change::Created(Subject::Order(&placed)).stale_keys(),
            products
        );
        let cancelled = order(OrderStatus::Cancelled, &[tea, jam]);
        assert_eq!(
            Change::Updated(Subject::Order(&cancelled)).stale_keys(),
            products
        );
        let paid = order(OrderStatus::Paid, &[tea, jam]);
        assert_eq!(Change::Updated(Subject::Order(&paid)).stale_keys(), []);
        let gone = Change::Deleted {
            resource: Resource::Product,
            id: tea,
            version: 2,
            at: crate::store::now(),
        };
        assert_eq!(gone.stale_keys(), [(Topic::Products, tea)]);
        let gone = Change::Deleted {
            resource: Resource::Order,
            id: placed.id,
            version: 2,
            at: crate::store::now(),
        };
        assert_eq!(gone.stale_keys(), []);
    }

    #[test]
    fn every_type_reads_back_from_its_name() {
        for kind in EventType::ALL {
            assert_eq!(EventType::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventType::parse("order.deleted"), None);
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_when_a_later_position_is_given() {
        let feed = Feed::new(|_| serde_json::Value::Null, true);
        let waiter = {
            let feed = feed.clone();
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                feed.wait_past(3, Duration::from_secs(10)).await;
                started.elapsed()
            })
        };
        tokio::task::yield_now().await;
        feed.sequenced(3);
        feed.sequenced(4);
        let waited = waiter.await.expect("the waiter finishes");
        assert!(waited < Duration::from_secs(10), "woken, not timed out");
    }
}
