//! Cache-aside for entities read by id, in process (moka).
//!
//! Coherence is the requirement: a read that starts after a write's response was sent must not
//! see the old value. Invalidating the key after commit is not enough on its own — a load that
//! began before the commit can finish after the invalidation and put the old row back, and a read
//! could join such a load while it runs. So every key carries a generation: a write bumps the
//! generation of its id (after its transaction committed) and later reads look the entry up under
//! the new generation, which no earlier load can have filled. Generations are kept in a fixed
//! array of stripes indexed by the id's hash, so memory stays bounded; a write merely makes the
//! few other ids that share its stripe miss once.

use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use foldhash::fast::RandomState;
use poem::http::HeaderValue;
use prometheus::IntCounter;
use uuid::Uuid;

use crate::config::CacheConfig;
use crate::domain::model::{Product, Session, SessionOwner, User};
use crate::metrics::Metrics;

pub mod versioned;

const STRIPES: usize = 4096;

/// A cached value, and its serialized representation and entity tag (as the header value it is
/// sent as), each made the first time one is asked for and kept with the value: one entry (and
/// one look-up) per id instead of two, and the same bytes for every read of that version.
pub struct Cached<V> {
    value: V,
    rendered: OnceLock<Bytes>,
    tag: OnceLock<HeaderValue>,
}

impl<V> Cached<V> {
    pub fn new(value: V) -> Arc<Self> {
        Arc::new(Self {
            value,
            rendered: OnceLock::new(),
            tag: OnceLock::new(),
        })
    }

    /// The representation `render` makes of the value, made once per entry.
    pub fn rendered(&self, render: impl FnOnce(&V) -> Bytes) -> Bytes {
        self.rendered.get_or_init(|| render(&self.value)).clone()
    }

    /// The value's entity tag, made by `make` once per entry.
    pub fn tag(&self, make: impl FnOnce() -> HeaderValue) -> HeaderValue {
        self.tag.get_or_init(make).clone()
    }
}

impl<V> std::ops::Deref for Cached<V> {
    type Target = V;

    fn deref(&self) -> &V {
        &self.value
    }
}

/// Entries by id and the generation of its stripe.
type Entries<V> = moka::future::Cache<(Uuid, u64), Arc<Cached<V>>, RandomState>;

pub struct EntityCache<V> {
    name: &'static str,
    /// `None` when caching is off (`CACHE_TTL_SECS=0`).
    entries: Option<Entries<V>>,
    generations: Box<[AtomicU64]>,
    hasher: RandomState,
    /// Off while this instance cannot hear other instances' invalidations (see `store::sql::notify`).
    suspended: AtomicBool,
    /// On while a listener hears the invalidations all instances announce (see `store::sql::notify`).
    listening: AtomicBool,
    /// Every instance's acknowledgement of an announced eviction (the key, the listener's name),
    /// for writers that wait until theirs has gone round.
    acknowledged: tokio::sync::broadcast::Sender<(Uuid, String)>,
    /// Bumped by every eviction: what was derived from the whole table (a listing's page
    /// positions) holds only while it stays the same.
    table: AtomicU64,
    counters: Counters,
    metrics: Arc<Metrics>,
}

/// This cache's series of the shared metrics, looked up once rather than on every read.
struct Counters {
    hits: IntCounter,
    misses: IntCounter,
    loads: IntCounter,
    load_failures: IntCounter,
}

impl Counters {
    fn new(name: &str, metrics: &Metrics) -> Self {
        Self {
            hits: metrics.cache_requests.with_label_values(&[name, "hit"]),
            misses: metrics.cache_requests.with_label_values(&[name, "miss"]),
            loads: metrics.cache_loads.with_label_values(&[name]),
            load_failures: metrics.cache_load_failures.with_label_values(&[name]),
        }
    }
}

impl<V: Send + Sync + 'static> EntityCache<V> {
    pub fn new(name: &'static str, config: &CacheConfig, metrics: Arc<Metrics>) -> Self {
        let entries = (!config.ttl.is_zero()).then(|| {
            moka::future::Cache::builder()
                .name(name)
                .max_capacity(config.max_entries)
                .time_to_live(config.ttl)
                .build_with_hasher(RandomState::default())
        });
        Self {
            name,
            entries,
            generations: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            hasher: RandomState::default(),
            suspended: AtomicBool::new(false),
            listening: AtomicBool::new(false),
            acknowledged: tokio::sync::broadcast::channel(1024).0,
            table: AtomicU64::new(0),
            counters: Counters::new(name, &metrics),
            metrics,
        }
    }

    fn stripe(&self, id: Uuid) -> &AtomicU64 {
        let index = self.hasher.hash_one(id) as usize % STRIPES;
        &self.generations[index]
    }

    /// The cached value, or `load`'s. Concurrent misses for one id share a single load; a failed
    /// load caches nothing and every waiter gets its error.
    pub async fn get_or_load<E, Fut>(
        &self,
        id: Uuid,
        load: impl FnOnce() -> Fut,
    ) -> Result<Arc<Cached<V>>, E>
    where
        E: Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<V, E>>,
    {
        let Some(entries) = self.entries.as_ref().filter(|_| !self.is_suspended()) else {
            return load().await.map(Cached::new);
        };
        let key = (id, self.stripe(id).load(Ordering::Acquire));
        // Hits, by far the common case, take moka's plain read path; only a miss pays for the
        // entry API that makes concurrent misses share one load.
        if let Some(value) = entries.get(&key).await {
            self.counters.hits.inc();
            return Ok(value);
        }
        // Boxed, so that the hit path's future stays small: every request's future is moved
        // and copied as a whole, the load's state included.
        Box::pin(self.load_into(entries, key, load)).await
    }

    /// The cached value, if there is one: never loads, and counts as no read.
    pub async fn peek(&self, id: Uuid) -> Option<Arc<Cached<V>>> {
        let entries = self.entries.as_ref().filter(|_| !self.is_suspended())?;
        let key = (id, self.stripe(id).load(Ordering::Acquire));
        entries.get(&key).await
    }

    async fn load_into<E, Fut>(
        &self,
        entries: &Entries<V>,
        key: (Uuid, u64),
        load: impl FnOnce() -> Fut,
    ) -> Result<Arc<Cached<V>>, E>
    where
        E: Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<V, E>>,
    {
        let entry = entries
            .entry(key)
            .or_try_insert_with(async {
                self.counters.loads.inc();
                load().await.map(Cached::new)
            })
            .await;
        match entry {
            Ok(entry) => {
                if entry.is_fresh() {
                    self.counters.misses.inc();
                } else {
                    self.counters.hits.inc();
                }
                Ok(entry.into_value())
            }
            Err(err) => {
                self.counters.misses.inc();
                self.counters.load_failures.inc();
                Err(Arc::unwrap_or_clone(err))
            }
        }
    }

    /// Makes every later read of `id` (and of the listing) go to the database. Call after the
    /// write committed.
    pub async fn evict(&self, id: Uuid) {
        self.table.fetch_add(1, Ordering::AcqRel);
        let Some(entries) = &self.entries else {
            return;
        };
        let old = self.stripe(id).fetch_add(1, Ordering::AcqRel);
        entries.invalidate(&(id, old)).await;
        self.metrics
            .cache_invalidations
            .with_label_values(&[self.name])
            .inc();
    }

    /// An instance (`listener`) has evicted `id` after hearing it announced.
    pub fn acknowledge(&self, id: Uuid, listener: String) {
        let _ = self.acknowledged.send((id, listener));
    }

    /// Acknowledgements as they arrive — `None` unless this instance is listening (and so
    /// hears them).
    pub fn acknowledgements(&self) -> Option<tokio::sync::broadcast::Receiver<(Uuid, String)>> {
        (self.listening.load(Ordering::Acquire) && !self.is_suspended())
            .then(|| self.acknowledged.subscribe())
    }

    /// Drops everything (e.g. when this instance may have missed invalidations).
    pub fn evict_all(&self) {
        self.table.fetch_add(1, Ordering::AcqRel);
        if let Some(entries) = &self.entries {
            for stripe in self.generations.iter() {
                stripe.fetch_add(1, Ordering::AcqRel);
            }
            entries.invalidate_all();
        }
    }

    /// Reads bypass the cache, and it is emptied, until `resume`.
    pub fn suspend(&self) {
        self.listening.store(false, Ordering::Release);
        self.suspended.store(true, Ordering::Release);
        self.evict_all();
    }

    /// Empties the cache (it may have missed invalidations) and serves from it again.
    pub fn resume(&self) {
        self.evict_all();
        self.suspended.store(false, Ordering::Release);
        self.listening.store(true, Ordering::Release);
    }

    /// A row was added: the listing changes, no entry does (a miss caches nothing).
    pub fn evict_listing(&self) {
        self.table.fetch_add(1, Ordering::AcqRel);
    }

    /// The table's generation: what was derived from the whole table under it (a listing's page
    /// positions) holds while it stays the same. `None` while this instance may miss writes
    /// (suspended): nothing derived may be used then.
    pub fn table_generation(&self) -> Option<u64> {
        (!self.is_suspended()).then(|| self.table.load(Ordering::Acquire))
    }

    fn is_suspended(&self) -> bool {
        self.suspended.load(Ordering::Acquire)
    }

    pub fn is_enabled(&self) -> bool {
        self.entries.is_some()
    }

    /// The generation reads of `id` look entries up under now (`None` when nothing is cached):
    /// what was read under it is current for as long as it stays the same.
    pub fn generation(&self, id: Uuid) -> Option<u64> {
        (self.entries.is_some() && !self.is_suspended())
            .then(|| self.stripe(id).load(Ordering::Acquire))
    }

    /// A read answered from a cache in front of this one (`TokenIndex`).
    fn count_hit(&self) {
        self.counters.hits.inc();
    }

    pub fn entry_count(&self) -> u64 {
        self.entries
            .as_ref()
            .map_or(0, |entries| entries.entry_count())
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// Sessions by the bearer token presented, in front of the sessions cache (which is keyed by the
/// token's hash, as the database is): a token seen before is recognised without hashing it. The
/// map compares the whole token. An entry holds only while the sessions cache's generation of its
/// session's key is the one it was made under, so whatever evicts the session there — a
/// revocation by this instance or heard from another, a suspension — drops it here too.
pub struct TokenIndex {
    entries: Option<moka::sync::Cache<String, TokenEntry, RandomState>>,
}

#[derive(Clone)]
struct TokenEntry {
    key: Uuid,
    generation: u64,
    owner: SessionOwner,
    token_hash: Arc<str>,
}

impl TokenIndex {
    pub fn new(config: &CacheConfig) -> Self {
        let entries = (!config.ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .name("session_tokens")
                .max_capacity(config.max_entries)
                .time_to_live(config.ttl)
                .build_with_hasher(RandomState::default())
        });
        Self { entries }
    }

    /// The live session of `token` and its token's hash, when `token` was seen under the
    /// sessions cache's current generation of its session.
    pub fn find(
        &self,
        token: &str,
        sessions: &EntityCache<Session>,
    ) -> Option<(SessionOwner, Arc<str>)> {
        let entry = self.entries.as_ref()?.get(token)?;
        if sessions.generation(entry.key) != Some(entry.generation) || !entry.owner.is_live() {
            return None;
        }
        sessions.count_hit();
        Some((entry.owner, entry.token_hash))
    }

    /// Remembers that `token` (whose hash is `token_hash`, the sessions cache's key `key`) is
    /// `owner`'s session, as read under the sessions cache's `generation` of `key` (read before
    /// the session was).
    pub fn remember(
        &self,
        token: &str,
        token_hash: &str,
        key: Uuid,
        generation: u64,
        owner: SessionOwner,
    ) {
        if let Some(entries) = &self.entries {
            entries.insert(
                token.to_owned(),
                TokenEntry {
                    key,
                    generation,
                    owner,
                    token_hash: token_hash.into(),
                },
            );
        }
    }
}

/// Which cache a key belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topic {
    Users,
    Products,
    /// Keyed by `domain::model::cache_key` of the token hash.
    Sessions,
}

impl Topic {
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Users => "users",
            Topic::Products => "products",
            Topic::Sessions => "sessions",
        }
    }

    pub fn parse(topic: &str) -> Option<Self> {
        [Topic::Users, Topic::Products, Topic::Sessions]
            .into_iter()
            .find(|known| known.as_str() == topic)
    }
}

/// The caches an instance keeps: what its own writes, and what it hears of other instances'
/// writes, evict from. The listeners of each engine reach the caches only through this.
#[derive(Clone)]
pub struct Caches {
    pub users: Arc<EntityCache<User>>,
    pub products: Arc<EntityCache<Product>>,
    pub sessions: Arc<EntityCache<Session>>,
    /// The sessions of tokens seen before, in front of `sessions`.
    pub tokens: Arc<TokenIndex>,
}

impl Caches {
    pub fn new(config: &CacheConfig, metrics: &Arc<Metrics>) -> Self {
        Self {
            users: Arc::new(EntityCache::new("users", config, Arc::clone(metrics))),
            products: Arc::new(EntityCache::new("products", config, Arc::clone(metrics))),
            sessions: Arc::new(EntityCache::new(
                "sessions",
                &config.for_sessions(),
                Arc::clone(metrics),
            )),
            tokens: Arc::new(TokenIndex::new(&config.for_sessions())),
        }
    }

    /// `id` changed (or was added, or is gone): later reads of it go to the database.
    pub async fn evict(&self, topic: Topic, id: Uuid) {
        match topic {
            Topic::Users => self.users.evict(id).await,
            Topic::Products => self.products.evict(id).await,
            Topic::Sessions => self.sessions.evict(id).await,
        }
    }

    /// A row was added to `topic`'s table: only its listing changes.
    pub fn evict_listing(&self, topic: Topic) {
        match topic {
            Topic::Users => self.users.evict_listing(),
            Topic::Products => self.products.evict_listing(),
            Topic::Sessions => self.sessions.evict_listing(),
        }
    }

    pub fn evict_all(&self) {
        self.users.evict_all();
        self.products.evict_all();
        self.sessions.evict_all();
    }

    /// While this instance cannot hear other instances' writes: serve nothing from the caches.
    pub fn suspend(&self) {
        self.users.suspend();
        self.products.suspend();
        self.sessions.suspend();
    }

    /// Hearing again: empty the caches (writes may have been missed) and serve from them.
    pub fn resume(&self) {
        self.users.resume();
        self.products.resume();
        self.sessions.resume();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::Utc;

    use super::*;
    use crate::domain::UserRole;

    fn config() -> CacheConfig {
        CacheConfig {
            ttl: Duration::from_secs(60),
            session_ttl: None,
            max_entries: 100,
        }
    }

    fn owner(expires_in: chrono::Duration) -> SessionOwner {
        SessionOwner {
            user_id: Uuid::now_v7(),
            role: UserRole::Customer,
            expires_at: (Utc::now() + expires_in).fixed_offset(),
        }
    }

    const TOKEN: &str = "a-token-of-forty-three-url-safe-characters_";

    #[tokio::test]
    async fn a_remembered_token_holds_until_its_session_is_evicted_or_ends() {
        let sessions = EntityCache::<Session>::new("sessions", &config(), Arc::new(Metrics::new()));
        let tokens = TokenIndex::new(&config());
        let key = Uuid::now_v7();
        let live = owner(chrono::Duration::hours(1));

        let generation = sessions.generation(key).expect("caching is on");
        tokens.remember(TOKEN, "hash", key, generation, live);
        let (found, hash) = tokens.find(TOKEN, &sessions).expect("remembered");
        assert_eq!((found, hash.as_ref()), (live, "hash"));
        // The whole token is compared.
        assert!(tokens.find(&TOKEN.replace('_', "-"), &sessions).is_none());

        // Evicting the session (a revocation) drops it.
        sessions.evict(key).await;
        assert!(tokens.find(TOKEN, &sessions).is_none());

        // So does a suspension, and what was remembered before it does not come back after.
        let generation = sessions.generation(key).expect("caching is on");
        tokens.remember(TOKEN, "hash", key, generation, live);
        sessions.suspend();
        assert!(tokens.find(TOKEN, &sessions).is_none());
        sessions.resume();
        assert!(tokens.find(TOKEN, &sessions).is_none());

        // A session that has ended is not found, however recently it was remembered.
        let generation = sessions.generation(key).expect("caching is on");
        tokens.remember(
            TOKEN,
            "hash",
            key,
            generation,
            owner(-chrono::Duration::seconds(1)),
        );
        assert!(tokens.find(TOKEN, &sessions).is_none());
    }

    #[test]
    fn nothing_is_remembered_when_sessions_are_not_cached() {
        let off = CacheConfig {
            ttl: Duration::ZERO,
            ..config()
        };
        let sessions = EntityCache::<Session>::new("sessions", &off, Arc::new(Metrics::new()));
        let tokens = TokenIndex::new(&off);
        let key = Uuid::now_v7();
        assert_eq!(sessions.generation(key), None);
        tokens.remember(TOKEN, "hash", key, 0, owner(chrono::Duration::hours(1)));
        assert!(tokens.find(TOKEN, &sessions).is_none());
    }
}
