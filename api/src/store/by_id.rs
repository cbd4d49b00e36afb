//! Reads by id, written once for every engine: cache-aside over the engine's batched loader.
//! A hit never reaches the engine; concurrent misses for one id share one load (the cache), and
//! misses for different ids at once share one query (the batcher).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use uuid::Uuid;

use super::batch::{self, Batcher};
use super::error::{Resource, StoreError};
use crate::cache::EntityCache;

pub struct ById<V> {
    cache: Arc<EntityCache<V>>,
    loader: Batcher<Uuid, V, StoreError>,
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
    /// `load` reads a batch of ids from the engine and returns the rows found, keyed by id.
    pub fn new<F, Fut>(cache: Arc<EntityCache<V>>, resource: Resource, load: F) -> Self
    where
        F: Fn(Vec<Uuid>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<HashMap<Uuid, V>, StoreError>> + Send + 'static,
    {
        Self {
            cache,
            loader: Batcher::new(batch::MAX_KEYS, batch::MAX_IN_FLIGHT, load),
            resource,
        }
    }

    /// Through the cache; `NotFound` when there is no such row.
    pub async fn get(&self, id: Uuid) -> Result<V, StoreError> {
        let found = self
            .cache
            .get_or_load(id, || async {
                self.loader
                    .load(id)
                    .await?
                    .ok_or(StoreError::not_found(self.resource, id))
            })
            .await?;
        Ok(V::clone(&found))
    }

    /// Past the cache (still batched): for a read that must see the engine's current row.
    pub async fn load(&self, id: Uuid) -> Result<Option<V>, StoreError> {
        self.loader.load(id).await
    }
}
