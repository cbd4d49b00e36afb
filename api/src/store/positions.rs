//! Where the pages of a long listing start, so that page mode stays as fast at page 50,000 as at
//! page 1.
//!
//! `OFFSET n` makes every database walk past the n rows it skips, so a deep page costs in
//! proportion to its depth. Instead, one pass over the listing's index (a window query, see
//! `store::sql::listing`) records the key of every `BLOCK`-th row and the exact number of rows; a page then
//! starts from the nearest recorded key below it and skips fewer than `BLOCK` rows — a keyset
//! range like cursor mode's.
//!
//! Those positions hold only while the listing does not change, so they are kept per generation
//! of the table (`cache::EntityCache::table_generation`): every write to the table bumps it after
//! it committed, and a lookup under a newer generation finds nothing. On a miss the request is
//! answered the plain way (capped count and OFFSET) and a rebuild starts in the background, one
//! per filter at a time and, after each, not again for four times as long as it took: under a
//! constant stream of writes the positions are never current and rebuilding them costs at most a
//! fifth of one connection's time instead of slowing every request down.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::IntCounter;

use super::page::CursorKey;
use crate::config::CacheConfig;
use crate::metrics::Metrics;

/// Rows between two recorded positions: a page skips fewer than this many rows.
pub const BLOCK: u64 = 256;

/// Filters an index is kept for at once (one per distinct filter of a deep listing).
const MAX_FILTERS: u64 = 64;

/// A listing's positions at one generation.
#[derive(Debug, PartialEq, Eq)]
pub struct Anchors {
    /// Rows in the listing, exactly.
    pub total: u64,
    /// `keys[i]` is the key of the row at offset `(i + 1) * BLOCK - 1`, newest first.
    pub keys: Vec<CursorKey>,
}

/// Where to start reading for a page that begins at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    /// Read rows older than this key (from the newest when `None`)…
    pub after: Option<CursorKey>,
    /// …skipping this many of them (always fewer than `BLOCK`).
    pub skip: u64,
}

impl Anchors {
    /// `None` when `offset` is at or past the end.
    pub fn start(&self, offset: u64) -> Option<Start> {
        if offset >= self.total {
            return None;
        }
        let block = offset / BLOCK;
        let after = match block {
            0 => None,
            n => Some(*self.keys.get(usize::try_from(n - 1).ok()?)?),
        };
        Some(Start {
            after,
            skip: offset % BLOCK,
        })
    }
}

pub struct ListingIndex {
    name: &'static str,
    /// `None` when caching is off (`CACHE_TTL_SECS=0`).
    sets: Option<moka::future::Cache<(String, u64), Arc<Anchors>>>,
    builds: Arc<Mutex<HashMap<String, Slot>>>,
    /// This listing's series of the request counter, looked up once rather than per request.
    hits: IntCounter,
    misses: IntCounter,
    metrics: Arc<Metrics>,
}

#[derive(Clone, Copy)]
enum Slot {
    Running,
    Idle { not_before: Instant },
}

impl ListingIndex {
    pub fn new(name: &'static str, config: &CacheConfig, metrics: Arc<Metrics>) -> Self {
        let sets = (!config.ttl.is_zero()).then(|| {
            moka::future::Cache::builder()
                .max_capacity(MAX_FILTERS)
                .time_to_live(config.ttl)
                .build()
        });
        Self {
            name,
            sets,
            builds: Arc::new(Mutex::new(HashMap::new())),
            hits: metrics
                .listing_index_requests
                .with_label_values(&[name, "hit"]),
            misses: metrics
                .listing_index_requests
                .with_label_values(&[name, "miss"]),
            metrics,
        }
    }

    /// The positions of the listing under `filter` at the table's `generation`, counted as a
    /// hit or miss.
    pub async fn current(&self, filter: &str, generation: u64) -> Option<Arc<Anchors>> {
        let sets = self.sets.as_ref()?;
        let found = sets.get(&(filter.to_owned(), generation)).await;
        match found {
            Some(_) => self.hits.inc(),
            None => self.misses.inc(),
        }
        found
    }

    /// Builds the positions for `filter` in the background, unless a build for it is running or
    /// finished too recently (see the module comment). `generation` is the table's, read before
    /// the build's query starts, so the positions it finds are at least this new.
    pub fn refresh<F, E>(&self, filter: String, generation: u64, build: F)
    where
        F: Future<Output = Result<Anchors, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let Some(sets) = self.sets.clone() else {
            return;
        };
        {
            let mut builds = self.builds.lock().unwrap_or_else(|e| e.into_inner());
            // Filters come from requests: forget the finished ones rather than grow without end.
            if builds.len() >= MAX_FILTERS as usize {
                builds.retain(|_, slot| matches!(slot, Slot::Running));
            }
            let slot = builds.entry(filter.clone()).or_insert(Slot::Idle {
                not_before: Instant::now(),
            });
            match *slot {
                Slot::Idle { not_before } if not_before <= Instant::now() => *slot = Slot::Running,
                _ => return,
            }
        }
        let builds = Arc::clone(&self.builds);
        let metrics = Arc::clone(&self.metrics);
        let name = self.name;
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = match build.await {
                Ok(anchors) => {
                    sets.insert((filter.clone(), generation), Arc::new(anchors))
                        .await;
                    "built"
                }
                Err(err) => {
                    tracing::warn!(listing = name, error = %err, "cannot index a listing's pages");
                    "failed"
                }
            };
            metrics
                .listing_index_builds
                .with_label_values(&[name, outcome])
                .inc();
            let cost = started.elapsed();
            let pause = if outcome == "failed" {
                (cost * 4).max(Duration::from_secs(1))
            } else {
                cost * 4
            };
            let mut builds = builds.lock().unwrap_or_else(|e| e.into_inner());
            builds.insert(
                filter,
                Slot::Idle {
                    not_before: Instant::now() + pause,
                },
            );
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use uuid::Uuid;

    fn key(n: u64) -> CursorKey {
        CursorKey {
            created_at: Utc
                .timestamp_opt(1_000_000 - n as i64, 0)
                .unwrap()
                .fixed_offset(),
            id: Uuid::from_u128(u128::from(n)),
        }
    }

    fn anchors(total: u64) -> Anchors {
        Anchors {
            total,
            keys: (1..=total / BLOCK).map(|i| key(i * BLOCK - 1)).collect(),
        }
    }

    #[test]
    fn a_page_starts_after_the_last_position_before_it() {
        let anchors = anchors(3 * BLOCK + 10);
        assert_eq!(
            anchors.start(0),
            Some(Start {
                after: None,
                skip: 0
            })
        );
        assert_eq!(
            anchors.start(BLOCK - 1),
            Some(Start {
                after: None,
                skip: BLOCK - 1
            })
        );
        assert_eq!(
            anchors.start(BLOCK),
            Some(Start {
                after: Some(key(BLOCK - 1)),
                skip: 0
            })
        );
        assert_eq!(
            anchors.start(3 * BLOCK + 9),
            Some(Start {
                after: Some(key(3 * BLOCK - 1)),
                skip: 9
            })
        );
    }

    #[test]
    fn a_page_at_or_past_the_end_has_no_start() {
        let full = anchors(2 * BLOCK);
        assert_eq!(full.start(2 * BLOCK), None);
        assert_eq!(full.start(u64::MAX), None);
        assert_eq!(anchors(0).start(0), None);
    }
}
