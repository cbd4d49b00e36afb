//! In-process queues for transactions that write the same documents.
//!
//! A SQL row lock makes a second writer wait for the first; MongoDB instead aborts the second
//! transaction at once with a write conflict. Under a burst of orders for one product nearly
//! every attempt would conflict and the retries would run out. So, within one instance,
//! transactions that write the same documents queue here first (striped by key, taken in
//! ascending stripe order so that two never wait on each other in opposite orders), and the
//! database's write conflicts are left to settle the races between instances, by retrying.

use std::hash::{BuildHasher, Hash, RandomState};

use tokio::sync::{Mutex, MutexGuard};

const STRIPES: usize = 1024;

pub struct Stripes {
    locks: Box<[Mutex<()>]>,
    hasher: RandomState,
}

impl Default for Stripes {
    fn default() -> Self {
        Self {
            locks: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            hasher: RandomState::new(),
        }
    }
}

/// Held for the whole transaction; dropping it lets the next writer in.
pub struct Held<'a> {
    _guards: Vec<MutexGuard<'a, ()>>,
}

impl Stripes {
    pub async fn lock<K: Hash>(&self, keys: impl IntoIterator<Item = K>) -> Held<'_> {
        let mut stripes: Vec<usize> = keys
            .into_iter()
            .map(|key| self.hasher.hash_one(key) as usize % STRIPES)
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for stripe in stripes {
            guards.push(self.locks[stripe].lock().await);
        }
        Held { _guards: guards }
    }
}
