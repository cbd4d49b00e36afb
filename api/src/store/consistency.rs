//! Read-your-writes across replicas: the database positions an instance knows of, and the
//! position a request presents (`Consistency-Token`).
//!
//! A position is a PostgreSQL WAL location as a number. `Positions` keeps, per instance, the
//! lowest position any of its reads may be served from (`floor`: its own commits and the writes it
//! heard announced, so it never reads older than what it wrote or evicted) and the highest position
//! it has written, heard of or read at (`seen`, which every answer's token covers). The presented
//! position travels from the HTTP layer to the store in a task-local, so no handler passes it on.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Only the primary can satisfy it (the primary is always at or past every position).
pub const PRIMARY_ONLY: u64 = u64::MAX;

/// What a request's `Consistency-Token` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presented {
    Nothing,
    At(u64),
    /// A token this instance cannot place: only the primary is sure to satisfy it.
    Unreadable,
}

/// The request's own part: what it presented, and whether a write of it committed at a position
/// that could not be read back.
pub struct Scope {
    presented: Presented,
    position_unknown: AtomicBool,
}

impl Scope {
    pub fn new(presented: Presented) -> Arc<Self> {
        Arc::new(Self {
            presented,
            position_unknown: AtomicBool::new(false),
        })
    }

    pub fn presented(&self) -> Presented {
        self.presented
    }

    /// A write of this request committed but its position is not known.
    pub fn is_position_unknown(&self) -> bool {
        self.position_unknown.load(Ordering::Acquire)
    }
}

tokio::task_local! {
    static SCOPE: Arc<Scope>;
}

/// Runs `work` (a request) with `scope` as its request-scoped consistency state.
pub fn within<F: Future>(scope: Arc<Scope>, work: F) -> impl Future<Output = F::Output> {
    // Not an `async fn`: that would hold `work` twice (as its argument and inside the scope),
    // and every request's future would be copied at twice its size.
    SCOPE.scope(scope, work)
}

/// What the current request presented (`Nothing` outside a request).
pub fn presented() -> Presented {
    SCOPE
        .try_with(|scope| scope.presented)
        .unwrap_or(Presented::Nothing)
}

/// The current request wrote, but the position of its commit could not be read: its answer must
/// send the next reader to the primary.
pub fn position_unknown() {
    let _ = SCOPE.try_with(|scope| scope.position_unknown.store(true, Ordering::Release));
}

/// The positions one instance knows of. Inert (never consulted) unless replicas are configured.
#[derive(Default)]
pub struct Positions {
    enabled: AtomicBool,
    floor: AtomicU64,
    seen: AtomicU64,
    /// A commit's position could not be read: reads go to the primary until the next position
    /// read from it (which is past that commit) becomes the floor.
    unsure: AtomicBool,
}

impl Positions {
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Release);
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// This instance committed (or heard announced) a write at `position`. Call before evicting
    /// what it changed, so that a refill that misses afterwards asks for this position.
    pub fn wrote(&self, position: u64) {
        self.floor.fetch_max(position, Ordering::AcqRel);
        self.seen.fetch_max(position, Ordering::AcqRel);
    }

    /// A read of this instance was served from the state at `position` (or a later one).
    pub fn read_at(&self, position: u64) {
        self.seen.fetch_max(position, Ordering::AcqRel);
    }

    /// A write's position is unknown; see `unsure`.
    pub fn lose_track(&self) {
        self.unsure.store(true, Ordering::Release);
    }

    /// The primary is at `position` now: past every commit this instance lost track of.
    pub fn resync(&self, position: u64) {
        if self.unsure.swap(false, Ordering::AcqRel) {
            self.wrote(position);
        }
    }

    /// The lowest position this instance's reads may be served from.
    pub fn floor(&self) -> u64 {
        if self.unsure.load(Ordering::Acquire) {
            return PRIMARY_ONLY;
        }
        self.floor.load(Ordering::Acquire)
    }

    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::Acquire)
    }

    /// The lowest position the current request's reads may be served from.
    pub fn wanted(&self) -> u64 {
        match presented() {
            Presented::Nothing => self.floor(),
            Presented::At(position) => self.floor().max(position),
            Presented::Unreadable => PRIMARY_ONLY,
        }
    }

    /// Whether the cache may answer the current request. A request that presents a token may
    /// come from a write on another instance whose announcement has not arrived here yet, so
    /// what is cached could predate it: such a request reads through.
    pub fn cache_may_answer(&self) -> bool {
        !self.is_enabled() || presented() == Presented::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_floor_covers_own_writes_and_presented_tokens() {
        let positions = Positions::default();
        positions.enable();
        positions.wrote(10);
        positions.read_at(30);
        assert_eq!(positions.wanted(), 10);
        assert_eq!(positions.seen(), 30);
        let at = Scope::new(Presented::At(20));
        assert_eq!(within(at, async { positions.wanted() }).await, 20);
        let older = Scope::new(Presented::At(5));
        assert_eq!(within(older, async { positions.wanted() }).await, 10);
        let unreadable = Scope::new(Presented::Unreadable);
        let wanted = within(unreadable, async { positions.wanted() }).await;
        assert_eq!(wanted, PRIMARY_ONLY);
        assert!(positions.cache_may_answer());
        let cached = within(Scope::new(Presented::At(1)), async {
            positions.cache_may_answer()
        });
        assert!(!cached.await);
    }

    #[test]
    fn a_lost_position_sends_reads_to_the_primary_until_resynced() {
        let positions = Positions::default();
        positions.enable();
        positions.wrote(10);
        positions.lose_track();
        assert_eq!(positions.floor(), PRIMARY_ONLY);
        positions.resync(50);
        assert_eq!(positions.floor(), 50);
        positions.resync(60);
        assert_eq!(positions.floor(), 50, "only a lost position is resynced");
    }
}
