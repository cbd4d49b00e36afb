//! Reads by id, written once for every engine: cache-aside over the engine's batched loader.
//! A hit never reaches the engine; concurrent misses for one id share one load (the cache), and
//! misses for different ids at once share one query (the batcher).
//!
//! Where reads may be served by replicas (PostgreSQL), a read names the write position it must
//! see (`Freshness`): a refill waits for every write evicted so far, and a read that presents a
//! client's token skips the cache, which may not yet have heard of the write the token names.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use uuid::Uuid;

use super::batch::{self, Batcher};
use super::error::{Resource, StoreError};
use super::failure::DbFailure;
use crate::cache::{Cached, EntityCache};

/// What a read by id must see.
pub trait Freshness {
    /// The write position the answering database must have reached (0: any will do). Asked for
    /// only once the cache missed, so a refill wants every write evicted so far.
    fn wanted(&self) -> u64 {
        0
    }

    /// Whether the cache may answer at all.
    fn cache_may_answer(&self) -> bool {
        true
    }
}

/// For engines whose reads always see every committed write.
pub struct Current;

impl Freshness for Current {}

/// A batch key: the id and the position its read wants.
pub type Key = (Uuid, u64);

pub struct ById<V> {
    cache: Arc<EntityCache<V>>,
    loader: Batcher<Key, V, StoreError>,
    resource: Resource,
}

impl<V> Clone for ById<V> {
    fn clone(&self) -> Self {
        Self {
            cache: Arc::clone(&self.cache),
            loader: self.loader.clone(),
            resource: self.resource,
        }
    }
}

impl<V> ById<V>
where
    V: Clone + Send + Sync + 'static,
{
    /// `load` reads a batch of keys from the engine, all at the highest position any of them
    /// wants, and returns the rows found by key.
    pub fn new<F, Fut>(cache: Arc<EntityCache<V>>, resource: Resource, load: F) -> Self
    where
        F: Fn(Vec<Key>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<HashMap<Key, V>, StoreError>> + Send + 'static,
    {
        let load = Arc::new(load);
        Self {
            cache,
            loader: Batcher::new(
                batch::MAX_KEYS,
                batch::MAX_IN_FLIGHT,
                move |keys: Vec<Key>| {
                    let load = Arc::clone(&load);
                    async move {
                        // A read changes nothing, so a batch that met a lost connection (the
                        // database restarted, or ended that session) is simply read again, on
                        // another connection: its callers never see the loss.
                        match load(keys.clone()).await {
                            Err(err) if err.failure() == Some(DbFailure::Unavailable) => {
                                load(keys).await
                            }
                            outcome => outcome,
                        }
                    }
                },
            ),
            resource,
        }
    }

    /// For an engine without positions: `load` reads a batch of ids.
    pub fn current<F, Fut>(cache: Arc<EntityCache<V>>, resource: Resource, load: F) -> Self
    where
        F: Fn(Vec<Uuid>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<HashMap<Uuid, V>, StoreError>> + Send + 'static,
    {
        let load = Arc::new(load);
        Self::new(cache, resource, move |keys: Vec<Key>| {
            let load = Arc::clone(&load);
            async move {
                let found = load(keys.iter().map(|(id, _)| *id).collect()).await?;
                Ok(keys
                    .into_iter()
                    .filter_map(|key| found.get(&key.0).map(|row| (key, row.clone())))
                    .collect())
            }
        })
    }

    /// Through the cache when `freshness` allows; `NotFound` when there is no such row.
    pub async fn get(&self, id: Uuid, freshness: &impl Freshness) -> Result<V, StoreError> {
        let found = self.get_cached(id, freshness).await?;
        Ok(V::clone(&found))
    }

    /// As `get`, the cache's entry itself (with its representation, see `Cached`).
    pub async fn get_cached(
        &self,
        id: Uuid,
        freshness: &impl Freshness,
    ) -> Result<Arc<Cached<V>>, StoreError> {
        let load = || async {
            self.loader
                .load((id, freshness.wanted()))
                .await?
                .ok_or(StoreError::not_found(self.resource, id))
        };
        if !freshness.cache_may_answer() {
            return load().await.map(Cached::new);
        }
        self.cache.get_or_load(id, load).await
    }

    /// Past the cache (still batched): for a read that must see the engine's current row.
    pub async fn load(&self, id: Uuid) -> Result<Option<V>, StoreError> {
        self.loader.load((id, 0)).await
    }
}
