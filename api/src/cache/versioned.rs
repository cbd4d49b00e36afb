//! Values kept by resource id and version. A version names exactly one value (every write moves
//! it), so an entry can never be stale and needs neither a time to live nor invalidation.

use bytes::Bytes;
use foldhash::fast::RandomState;
use uuid::Uuid;

use crate::config::CacheConfig;

/// Bytes made from a resource at one version (its serialized representation), by id and version.
pub struct Versioned {
    /// `None` when caching is off (`CACHE_TTL_SECS=0`).
    entries: Option<moka::future::Cache<(Uuid, i64), Bytes, RandomState>>,
}

impl Versioned {
    pub fn new(config: &CacheConfig) -> Self {
        // No time to live: an entry can never be stale, and without one moka keeps no
        // write-order queue, which is most of what a small entry costs.
        let entries = (!config.ttl.is_zero()).then(|| {
            moka::future::Cache::builder()
                .max_capacity(config.max_entries)
                .build_with_hasher(RandomState::default())
        });
        Self { entries }
    }

    /// The bytes of `id` at `version`, made by `make` unless already kept.
    pub async fn get_or_make(&self, id: Uuid, version: i64, make: impl FnOnce() -> Bytes) -> Bytes {
        let Some(entries) = &self.entries else {
            return make();
        };
        if let Some(bytes) = entries.get(&(id, version)).await {
            return bytes;
        }
        let bytes = make();
        entries.insert((id, version), bytes.clone()).await;
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(ttl: Duration) -> CacheConfig {
        CacheConfig {
            ttl,
            session_ttl: None,
            max_entries: 100,
        }
    }

    #[tokio::test]
    async fn a_version_is_made_once_and_another_version_afresh() {
        let kept = Versioned::new(&config(Duration::from_secs(60)));
        let id = Uuid::now_v7();
        let first = kept.get_or_make(id, 1, || Bytes::from_static(b"one")).await;
        let again = kept
            .get_or_make(id, 1, || Bytes::from_static(b"other"))
            .await;
        let next = kept.get_or_make(id, 2, || Bytes::from_static(b"two")).await;
        assert_eq!(
            (&first[..], &again[..], &next[..]),
            (&b"one"[..], &b"one"[..], &b"two"[..])
        );
    }

    #[tokio::test]
    async fn with_caching_off_every_read_makes_its_bytes() {
        let kept = Versioned::new(&config(Duration::ZERO));
        let id = Uuid::now_v7();
        kept.get_or_make(id, 1, || Bytes::from_static(b"one")).await;
        let again = kept
            .get_or_make(id, 1, || Bytes::from_static(b"other"))
            .await;
        assert_eq!(&again[..], b"other");
    }
}
