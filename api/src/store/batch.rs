//! Batched point reads (the DataLoader pattern): concurrent `load(key)` calls for different keys
//! are answered by one `WHERE id IN (...)` query per batch instead of one query each.
//!
//! The calls are gathered by the store's one batching queue (`store::coalesce`): no timer, a lone
//! call dispatched at once, calls that arrive while a query runs taken together by the next. A
//! second query at once starts only when a quarter of a batch is waiting: it pays for its round
//! trips only when it carries several reads, and it keeps reads moving when one batch is slow (a
//! replica catching up). A batch asks for each key once, however many callers wait for it, and
//! never holds more than `max_in_flight` connections. A panicking `load` fails only its own
//! batch, with [`BatchAborted`].

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::coalesce::{Abandoned, Coalescer, Reply, Waiter};

/// Keys in one repository batch: 64 ids keep an `IN (…)` far below every backend's
/// parameter limit and its plan a handful of index probes.
pub const MAX_KEYS: usize = 64;

/// Batches one repository runs at once, each on a pooled connection of its own: enough to keep
/// the database busy, few enough that point reads never take most of the pool.
pub const MAX_IN_FLIGHT: usize = 2;

/// The batch a caller was waiting in was lost (its `load` panicked), so there is no result.
pub type BatchAborted = Abandoned;

type LoadFn<K, V, E> = dyn Fn(Vec<K>) -> BoxFuture<'static, Result<HashMap<K, V>, E>> + Send + Sync;

/// What a caller gets: the row, `None` when there is none, or the batch's error.
type Loaded<V, E> = Result<Option<V>, E>;

pub struct Batcher<K, V, E> {
    queue: Coalescer<K, Loaded<V, E>>,
}

impl<K, V, E> Clone for Batcher<K, V, E> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<K, V, E> Batcher<K, V, E>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + From<BatchAborted> + 'static,
{
    /// `load` gets a deduplicated, non-empty Vec of at most `max_batch` keys and returns the rows
    /// found, keyed; a key missing from the map means "no such row". Zero limits are read as 1,
    /// since a zero would never dispatch anything.
    pub fn new<F, Fut>(max_batch: usize, max_in_flight: usize, load: F) -> Self
    where
        F: Fn(Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<HashMap<K, V>, E>> + Send + 'static,
    {
        let load: Arc<LoadFn<K, V, E>> = Arc::new(move |keys| load(keys).boxed());
        let backlog = (max_batch / 4).max(1);
        let queue = Coalescer::with_backlog(max_batch, max_in_flight, backlog, move |waiters| {
            answer(Arc::clone(&load), waiters)
        });
        Self { queue }
    }

    pub async fn load(&self, key: K) -> Result<Option<V>, E> {
        self.queue
            .submit(key)
            .await
            .unwrap_or_else(|aborted| Err(aborted.into()))
    }

    #[cfg(test)]
    fn queued(&self) -> usize {
        self.queue.queued()
    }
}

/// Loads the batch's keys, each once, and answers every caller waiting for it.
async fn answer<K, V, E>(load: Arc<LoadFn<K, V, E>>, waiters: Vec<Waiter<K, Loaded<V, E>>>)
where
    K: Eq + Hash + Clone,
    V: Clone,
    E: Clone,
{
    let mut keys = Vec::new();
    let mut callers: HashMap<K, Vec<Reply<Loaded<V, E>>>> = HashMap::new();
    for waiter in waiters {
        let (key, reply) = waiter.split();
        match callers.entry(key) {
            Entry::Occupied(mut waiting) => waiting.get_mut().push(reply),
            Entry::Vacant(first) => {
                keys.push(first.key().clone());
                first.insert(vec![reply]);
            }
        }
    }
    match load(keys).await {
        Ok(mut rows) => {
            for (key, replies) in callers {
                let row = rows.remove(&key);
                for reply in replies {
                    reply.answer(Ok(row.clone()));
                }
            }
        }
        Err(err) => {
            for reply in callers.into_values().flatten() {
                reply.answer(Err(err.clone()));
            }
        }
    }
}

/// `keys` padded with repeats of its last key to the next power of two, so that a batched
/// `IN (…)` takes only a handful of shapes (1, 2, 4 … keys) and every one of them stays in each
/// connection's prepared-statement cache.
pub fn padded<K: Clone>(mut keys: Vec<K>) -> Vec<K> {
    if let Some(last) = keys.last().cloned() {
        keys.resize(keys.len().next_power_of_two(), last);
    }
    keys
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use tokio::sync::{Notify, Semaphore};
    use tokio::time::timeout;

    use super::*;

    #[test]
    fn keys_are_padded_to_a_power_of_two() {
        assert_eq!(padded(Vec::<u8>::new()), Vec::<u8>::new());
        assert_eq!(padded(vec![1]), [1]);
        assert_eq!(padded(vec![1, 2, 3]), [1, 2, 3, 3]);
        assert_eq!(padded(vec![1, 2, 3, 4, 5]), [1, 2, 3, 4, 5, 5, 5, 5]);
    }

    #[derive(Clone, Debug, PartialEq)]
    enum TestError {
        Failed,
        Aborted,
    }

    impl From<BatchAborted> for TestError {
        fn from(_: BatchAborted) -> Self {
            Self::Aborted
        }
    }

    type TestBatcher = Batcher<u32, String, TestError>;
    type Loaded = Result<Option<String>, TestError>;

    const MISSING: u32 = 100;
    const FAILS: u32 = 666;
    const PANICS: u32 = 999;

    /// What the fake loader saw. Every batch waits for a permit of `gate` until the test closes
    /// it, after which none waits.
    struct Probe {
        batches: Arc<Mutex<Vec<Vec<u32>>>>,
        entered: Arc<Notify>,
        gate: Arc<Semaphore>,
    }

    impl Probe {
        fn batches(&self) -> Vec<Vec<u32>> {
            self.batches.lock().unwrap().clone()
        }
    }

    fn value(key: u32) -> String {
        format!("v{key}")
    }

    fn fake(max_batch: usize, max_in_flight: usize, gated: bool) -> (TestBatcher, Probe) {
        let (batches, entered) = (Arc::<Mutex<Vec<_>>>::default(), Arc::<Notify>::default());
        let gate = Arc::new(Semaphore::new(0));
        if !gated {
            gate.close();
        }
        let probe = Probe {
            batches: batches.clone(),
            entered: entered.clone(),
            gate: gate.clone(),
        };
        let batcher = Batcher::new(max_batch, max_in_flight, move |keys: Vec<u32>| {
            batches.lock().unwrap().push(keys.clone());
            entered.notify_one();
            // Before the future exists: the worker must catch a synchronous panic too.
            assert!(!keys.contains(&PANICS), "fake loader panics on {PANICS}");
            let gate = gate.clone();
            async move {
                let _permit = gate.acquire().await;
                if keys.contains(&FAILS) {
                    return Err(TestError::Failed);
                }
                let found = keys.iter().filter(|&&k| k < MISSING);
                Ok(found.map(|&k| (k, value(k))).collect())
            }
        });
        (batcher, probe)
    }

    /// Occupies the only worker with a gated batch `[0]`, queues a caller per key behind it (each
    /// on its own task), then opens the gate and returns what each queued caller got.
    async fn queue_behind_busy_worker(b: &TestBatcher, probe: &Probe, keys: &[u32]) -> Vec<Loaded> {
        let call = |key| {
            let b = b.clone();
            tokio::spawn(async move { b.load(key).await })
        };
        let first = call(0);
        probe.entered.notified().await;
        let calls: Vec<_> = keys.iter().map(|&key| call(key)).collect();
        let enqueued = async {
            while b.queued() < keys.len() {
                tokio::task::yield_now().await;
            }
        };
        within(enqueued).await;
        probe.gate.close();
        assert_eq!(first.await.unwrap(), Ok(Some(value(0))));
        let got = futures::future::join_all(calls).await;
        got.into_iter().map(Result::unwrap).collect()
    }

    fn sorted(mut keys: Vec<u32>) -> Vec<u32> {
        keys.sort_unstable();
        keys
    }

    async fn within<F: Future>(call: F) -> F::Output {
        let limit = Duration::from_secs(10);
        timeout(limit, call).await.expect("a waiter hung")
    }

    fn values(keys: &[u32]) -> Vec<Loaded> {
        keys.iter().map(|&k| Ok(Some(value(k)))).collect()
    }

    #[tokio::test]
    async fn an_idle_batcher_dispatches_at_once() {
        let (b, probe) = fake(8, 1, false);
        assert_eq!(b.load(7).await, Ok(Some(value(7))));
        assert_eq!(probe.batches(), vec![vec![7]]);
    }

    #[tokio::test]
    async fn waiters_queued_behind_busy_workers_share_one_batch() {
        let (b, probe) = fake(8, 1, true);
        let got = queue_behind_busy_worker(&b, &probe, &[1, 2, 3, 2]).await;
        assert_eq!(got, values(&[1, 2, 3, 2]));
        let batches = probe.batches();
        assert_eq!(batches.len(), 2, "{batches:?}");
        assert_eq!(batches[0], vec![0]);
        assert_eq!(sorted(batches[1].clone()), vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn a_second_worker_starts_only_for_a_quarter_batch() {
        let (b, probe) = fake(8, 2, true);
        let call = |key| {
            let b = b.clone();
            tokio::spawn(async move { b.load(key).await })
        };
        let first = call(0);
        probe.entered.notified().await;
        let one = call(1);
        within(async {
            while b.queued() < 1 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            probe.batches().len(),
            1,
            "one waiting read started a second query"
        );
        let two = call(2);
        within(probe.entered.notified()).await;
        assert_eq!(sorted(probe.batches()[1].clone()), vec![1, 2]);
        probe.gate.close();
        for (call, key) in [(first, 0), (one, 1), (two, 2)] {
            assert_eq!(call.await.unwrap(), Ok(Some(value(key))));
        }
    }

    #[tokio::test]
    async fn missing_keys_are_none_and_errors_reach_every_waiter() {
        let (b, probe) = fake(8, 1, true);
        let got = queue_behind_busy_worker(&b, &probe, &[FAILS, FAILS, 5]).await;
        assert_eq!(got, vec![Err(TestError::Failed); 3]);
        assert_eq!(b.load(MISSING).await, Ok(None));
        assert_eq!(b.load(6).await, Ok(Some(value(6))));
        assert_eq!(probe.batches().len(), 4);
    }

    #[tokio::test]
    async fn batches_never_exceed_max_batch() {
        let (b, probe) = fake(3, 1, true);
        let keys: Vec<u32> = (1..=7).collect();
        let got = queue_behind_busy_worker(&b, &probe, &keys).await;
        assert_eq!(got, values(&keys));
        let batches = probe.batches();
        let sizes: Vec<_> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1, 3, 3, 1], "{batches:?}");
        assert_eq!(sorted(batches[1..].concat()), keys);
    }

    #[tokio::test]
    async fn a_dropped_caller_does_not_cancel_the_batch() {
        let (b, probe) = fake(8, 1, true);
        // The first caller starts the worker; the second waits for the same key in the same batch.
        let mut starter = Box::pin(b.load(1));
        let mut sharer = Box::pin(b.load(1));
        assert!(futures::poll!(&mut starter).is_pending());
        assert!(futures::poll!(&mut sharer).is_pending());
        probe.entered.notified().await;
        drop(starter);
        // Queued behind it: one caller gives up before its batch is taken.
        let mut later = Box::pin(b.load(2));
        let mut quitter = Box::pin(b.load(3));
        assert!(futures::poll!(&mut later).is_pending());
        assert!(futures::poll!(&mut quitter).is_pending());
        drop(quitter);
        probe.gate.close();
        assert_eq!(sharer.await, Ok(Some(value(1))));
        assert_eq!(later.await, Ok(Some(value(2))));
        assert_eq!(probe.batches(), vec![vec![1], vec![2]], "3 was abandoned");
    }

    #[tokio::test]
    async fn a_panicking_load_fails_its_waiters_without_hanging() {
        let (b, probe) = fake(8, 1, false);
        assert_eq!(within(b.load(PANICS)).await, Err(TestError::Aborted));
        // With one worker slot, a leaked slot would leave this call queued forever.
        assert_eq!(within(b.load(4)).await, Ok(Some(value(4))));
        assert_eq!(probe.batches(), vec![vec![PANICS], vec![4]]);
    }
}
