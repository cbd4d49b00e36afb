//! Hearing the other instances of the service that share the database: what an engine's
//! listener feeds, and how it tries again when it loses its channel.

use std::sync::Arc;
use std::time::Duration;

use super::consistency::Positions;
use super::events::Feed;
use crate::cache::Caches;

/// Every instance's listener is named `<LISTENER_PREFIX><uuid>` (PostgreSQL counts the listeners
/// of a database by it, to know how many must acknowledge a session's revocation).
pub const LISTENER_PREFIX: &str = "storefront-cache-";

/// A new name for this instance's listener.
pub fn listener_name() -> String {
    format!("{LISTENER_PREFIX}{}", uuid::Uuid::now_v7().simple())
}

/// What hearing the other instances feeds: their cache invalidations, the change feed's
/// sequencing and, with read replicas, the positions their writes reached.
pub struct Peers {
    pub caches: Caches,
    pub feed: Feed,
    pub positions: Arc<Positions>,
    /// This instance's name as a listener (acknowledging session revocations under it).
    pub name: String,
}

impl Peers {
    /// Heard from now on: the caches serve, and the feed's readers wait for the others' wake-ups.
    pub fn listening(&self) {
        self.caches.resume();
        self.feed.hear_peers(true);
    }

    /// Not heard until listening again: whatever they change meanwhile is missed, so the caches
    /// stop serving, and the feed's readers look for themselves.
    pub fn deaf(&self) {
        self.caches.suspend();
        self.feed.hear_peers(false);
    }
}

/// The wait between attempts to listen again: 50 ms, doubling up to 5 s, from the start again
/// once listening.
pub struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(5);

    pub fn reset(&mut self) {
        self.0 = Self::FIRST;
    }

    pub async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Self::MAX);
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self(Self::FIRST)
    }
}
