//! Keeping several instances' caches coherent on MongoDB, with a change stream.
//!
//! Each instance watches the database for changes to users and products and evicts the documents
//! named, whichever instance wrote them. Change streams report only committed writes, in commit
//! order. While the stream is down an instance cannot know what it missed: it stops serving from
//! its cache and empties it until the stream is open again, then empties it once more — the same
//! protocol as PostgreSQL's LISTEN (see `store::sql::notify`).
//!
//! The same stream wakes the change feed's waiting readers: it carries the sequencer's updates
//! of events (on whichever instance), each giving one event its position.

use std::time::Duration;

use bson::doc;
use futures::StreamExt;
use mongodb::change_stream::ChangeStream;
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType};

use super::Mongo;
use super::document::{self, read_id};
use super::schema::{EVENTS, LISTENERS, PRODUCTS, SESSION_ACKS, SESSIONS, USERS};
use crate::cache::Caches;
use crate::domain::model::cache_key;
use crate::store::peers::{Backoff, Peers};

type Events = ChangeStream<ChangeStreamEvent<bson::Document>>;

/// How long a listener's registration lasts unrenewed, and how often it is renewed.
const REGISTRATION: Duration = Duration::from_secs(5);
const RENEW_EVERY: Duration = Duration::from_secs(1);

/// Registers (or renews) `name` as a listener that acknowledges session evictions.
async fn register(mongo: &Mongo, name: &str) -> mongodb::error::Result<()> {
    let until = chrono::Utc::now() + REGISTRATION;
    // The background pool: the watcher's one connection is held by the stream.
    mongo
        .background()
        .collection(LISTENERS)
        .update_one(
            doc! {"_id": name},
            doc! {"$set": {"expires_at": document::time(until.fixed_offset())}},
        )
        .upsert(true)
        .await
        .map(drop)
}

/// Tells the revoking instance that this one has evicted the session `key`.
async fn acknowledge(mongo: &Mongo, name: &str, key: uuid::Uuid) {
    let acknowledged = mongo
        .background()
        .collection(SESSION_ACKS)
        .insert_one(doc! {
            "key": key.to_string(),
            "listener": name,
            "at": document::time(document::now()),
        })
        .await;
    if let Err(err) = acknowledged {
        tracing::warn!(error = %super::error::describe(&err), "cannot acknowledge a revocation");
    }
}

/// Evicts what one change names; a revoked session is acknowledged once evicted.
async fn evict(
    mongo: &Mongo,
    name: &str,
    caches: &Caches,
    event: &ChangeStreamEvent<bson::Document>,
) {
    let collection = event.ns.as_ref().and_then(|ns| ns.coll.as_deref());
    // A new session was cached nowhere; nothing to evict.
    if collection == Some(SESSIONS) && event.operation_type == OperationType::Insert {
        return;
    }
    // Sessions are keyed by their token's hash: a revocation evicts it.
    if collection == Some(SESSIONS) {
        let hash = event
            .document_key
            .as_ref()
            .and_then(|key| key.get_str("_id").ok());
        match hash {
            Some(hash) => {
                let key = cache_key(hash);
                caches.sessions.evict(key).await;
                acknowledge(mongo, name, key).await;
            }
            None => caches.sessions.evict_all(),
        }
        return;
    }
    let id = event
        .document_key
        .as_ref()
        .and_then(|key| read_id(key, "_id").ok());
    // A new document was cached nowhere (a miss caches nothing): only listings change.
    if event.operation_type == OperationType::Insert {
        match collection {
            Some(USERS) => caches.users.evict_listing(),
            Some(PRODUCTS) => caches.products.evict_listing(),
            _ => {}
        }
        return;
    }
    match (collection, id) {
        (Some(USERS), Some(id)) => caches.users.evict(id).await,
        (Some(PRODUCTS), Some(id)) => caches.products.evict(id).await,
        // A drop, rename or anything without a key: forget everything.
        (Some(USERS | PRODUCTS), None) => caches.evict_all(),
        _ => {}
    }
}

async fn open(mongo: &Mongo) -> mongodb::error::Result<Events> {
    mongo
        .watcher()
        .watch()
        .pipeline([doc! {"$match": {"$or": [
            {"ns.coll": {"$in": [USERS, PRODUCTS, SESSIONS]}},
            {"ns.coll": EVENTS, "operationType": "update"},
        ]}}])
        .await
}

/// A position the sequencer gave an event, from its update.
fn position_given(event: &ChangeStreamEvent<bson::Document>) -> Option<i64> {
    let fields = &event.update_description.as_ref()?.updated_fields;
    match fields.get("position")? {
        bson::Bson::Int64(position) => Some(*position),
        bson::Bson::Int32(position) => Some(i64::from(*position)),
        _ => None,
    }
}

/// What one change asks of this instance: an event's position wakes the feed's readers, anything
/// else is an eviction.
async fn hear(mongo: &Mongo, peers: &Peers, event: &ChangeStreamEvent<bson::Document>) {
    if event.ns.as_ref().and_then(|ns| ns.coll.as_deref()) == Some(EVENTS) {
        if let Some(position) = position_given(event) {
            peers.feed.sequenced(position);
        }
        return;
    }
    evict(mongo, &peers.name, &peers.caches, event).await;
}

/// Watches until the task is aborted, as the listener `peers.name`. The first stream is opened
/// before this returns, so a new instance caches from its first request.
pub async fn start(mongo: Mongo, peers: Peers) -> tokio::task::JoinHandle<()> {
    peers.deaf();
    let mut first = Some(open(&mongo).await);
    if first.as_ref().is_some_and(Result::is_ok) {
        // Counted by revocations from the moment it may cache a session.
        let _ = register(&mongo, &peers.name).await;
        peers.listening();
    }
    tokio::spawn(async move {
        let mut backoff = Backoff::default();
        loop {
            let attempt = match first.take() {
                Some(attempt) => attempt,
                None => open(&mongo).await,
            };
            match attempt {
                Ok(mut events) => {
                    peers.listening();
                    backoff.reset();
                    tracing::info!("watching for changes to users and products");
                    let mut renew = tokio::time::interval(RENEW_EVERY);
                    loop {
                        tokio::select! {
                            event = events.next() => match event {
                                Some(Ok(event)) => hear(&mongo, &peers, &event).await,
                                _ => break,
                            },
                            _ = renew.tick() => {
                                if let Err(err) = register(&mongo, &peers.name).await {
                                    tracing::warn!(
                                        error = %super::error::describe(&err),
                                        "cannot renew this instance's listener registration"
                                    );
                                }
                            }
                        }
                    }
                    peers.deaf();
                    tracing::warn!("lost the change stream; cache off until it is back");
                }
                Err(err) => {
                    tracing::warn!(
                        error = %super::error::describe(&err),
                        "cannot watch for changes; cache off, retrying"
                    );
                }
            }
            backoff.wait().await;
        }
    })
}
