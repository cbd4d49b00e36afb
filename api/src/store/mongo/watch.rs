//! Keeping several instances' caches coherent on MongoDB, with a change stream.
//!
//! Each instance watches the database for changes to users and products and evicts the documents
//! named, whichever instance wrote them. Change streams report only committed writes, in commit
//! order. While the stream is down an instance cannot know what it missed: it stops serving from
//! its cache and empties it until the stream is open again, then empties it once more — the same
//! protocol as PostgreSQL's LISTEN (see `store::sql::notify`).

use std::time::Duration;

use bson::doc;
use futures::StreamExt;
use mongodb::change_stream::ChangeStream;
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType};

use super::Mongo;
use super::document::read_id;
use super::schema::{PRODUCTS, SESSIONS, USERS};
use crate::cache::Caches;
use crate::domain::model::cache_key;

type Events = ChangeStream<ChangeStreamEvent<bson::Document>>;

/// Evicts what one change names.
async fn evict(caches: &Caches, event: &ChangeStreamEvent<bson::Document>) {
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
            Some(hash) => caches.sessions.evict(cache_key(hash)).await,
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
        .pipeline([doc! {"$match": {"ns.coll": {"$in": [USERS, PRODUCTS, SESSIONS]}}}])
        .await
}

/// Watches until the task is aborted. The first stream is opened before this returns, so a new
/// instance caches from its first request.
pub async fn start(mongo: Mongo, caches: Caches) -> tokio::task::JoinHandle<()> {
    caches.suspend();
    let mut first = Some(open(&mongo).await);
    if first.as_ref().is_some_and(Result::is_ok) {
        caches.resume();
    }
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(50);
        loop {
            let attempt = match first.take() {
                Some(attempt) => attempt,
                None => open(&mongo).await,
            };
            match attempt {
                Ok(mut events) => {
                    caches.resume();
                    backoff = Duration::from_millis(50);
                    tracing::info!("watching for changes to users and products");
                    while let Some(Ok(event)) = events.next().await {
                        evict(&caches, &event).await;
                    }
                    caches.suspend();
                    tracing::warn!("lost the change stream; cache off until it is back");
                }
                Err(err) => {
                    tracing::warn!(
                        error = %super::error::describe(&err),
                        "cannot watch for changes; cache off, retrying"
                    );
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    })
}
