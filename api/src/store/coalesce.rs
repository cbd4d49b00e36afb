//! The one queue that gathers concurrent calls into batches: concurrent `submit(item)` calls join
//! a queue, and a worker takes up to `max_batch` of them, in arrival order, as one batch that one
//! handler call answers. It serves two things: orders placed in one transaction (group commit:
//! on a few hot rows every transaction waits for the one before it to commit, and a batch pays
//! that wait, and the commit, once for all of its orders), and point reads answered by one
//! `WHERE id IN (…)` (`store::batch`).
//!
//! There is no timer. When no worker runs, a call starts one at once, so a lone request waits for
//! nothing; calls that arrive while a worker is busy queue up, and the next worker to finish
//! takes them all as its next batch. A further worker (up to `max_in_flight`) starts once
//! `backlog` calls wait. So batches grow only while calls outpace the database, and a queue never
//! holds more than `max_in_flight` connections.
//!
//! Workers are spawned rather than driven by a caller's future, because a caller whose future is
//! dropped (client disconnect, request deadline) must not cancel the work others wait on. A
//! caller that has gone before its batch is taken is skipped. A worker decides to exit under
//! the same lock enqueuers take, so nothing is ever left queued with no worker to take it. A
//! panicking batch fails only its own callers, with [`Abandoned`].

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::oneshot;

/// The batch a caller was waiting in was lost (its handler panicked), so there is no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("batch abandoned")]
pub struct Abandoned;

/// One queued item and the caller waiting for its answer.
pub struct Waiter<T, R> {
    pub item: T,
    reply: oneshot::Sender<R>,
}

impl<T, R> Waiter<T, R> {
    /// Answers the caller; a caller that gave up meanwhile is simply not told.
    pub fn answer(self, result: R) {
        let _ = self.reply.send(result);
    }

    /// Whether the caller has stopped waiting (its request was dropped).
    pub fn is_gone(&self) -> bool {
        self.reply.is_closed()
    }

    /// The item and, separately, a way to answer its caller.
    pub fn split(self) -> (T, Reply<R>) {
        (self.item, Reply(self.reply))
    }
}

/// The answer channel of a waiter whose item has been taken apart.
pub struct Reply<R>(oneshot::Sender<R>);

impl<R> Reply<R> {
    pub fn answer(self, result: R) {
        let _ = self.0.send(result);
    }
}

type HandleFn<T, R> = dyn Fn(Vec<Waiter<T, R>>) -> BoxFuture<'static, ()> + Send + Sync;

pub struct Coalescer<T, R> {
    inner: Arc<Inner<T, R>>,
}

impl<T, R> Clone for Coalescer<T, R> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<T, R> {
    state: Mutex<State<T, R>>,
    max_batch: usize,
    max_in_flight: usize,
    /// Queued calls that justify another worker while one runs.
    backlog: usize,
    handle: Box<HandleFn<T, R>>,
}

struct State<T, R> {
    queue: VecDeque<Waiter<T, R>>,
    workers: usize,
}

impl<T, R> Coalescer<T, R>
where
    T: Send + 'static,
    R: Send + 'static,
{
    /// `handle` gets a non-empty batch of at most `max_batch` waiters in arrival order and must
    /// answer each of them (a waiter dropped unanswered reads as [`Abandoned`]). Zero limits are
    /// read as 1, since a zero would never dispatch anything.
    pub fn new<F, Fut>(max_batch: usize, max_in_flight: usize, handle: F) -> Self
    where
        F: Fn(Vec<Waiter<T, R>>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self::with_backlog(max_batch, max_in_flight, 1, handle)
    }

    /// As `new`, but while a worker runs another starts only once `backlog` calls wait: a second
    /// batch at once pays for its round trips only when it carries several calls.
    pub fn with_backlog<F, Fut>(
        max_batch: usize,
        max_in_flight: usize,
        backlog: usize,
        handle: F,
    ) -> Self
    where
        F: Fn(Vec<Waiter<T, R>>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    workers: 0,
                }),
                max_batch: max_batch.max(1),
                max_in_flight: max_in_flight.max(1),
                backlog: backlog.max(1),
                handle: Box::new(move |batch| handle(batch).boxed()),
            }),
        }
    }

    /// Queues `item` and waits for its answer.
    pub async fn submit(&self, item: T) -> Result<R, Abandoned> {
        let (reply, answer) = oneshot::channel();
        {
            let mut state = self.inner.state();
            state.queue.push_back(Waiter { item, reply });
            let backlog = state.queue.len() >= self.inner.backlog;
            if state.workers == 0 || (state.workers < self.inner.max_in_flight && backlog) {
                state.workers += 1;
                tokio::spawn(Arc::clone(&self.inner).work());
            }
        }
        answer.await.map_err(|_| Abandoned)
    }

    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.inner.state().queue.len()
    }
}

impl<T, R> Inner<T, R> {
    fn state(&self) -> MutexGuard<'_, State<T, R>> {
        // The state is consistent between statements, so a panic elsewhere cannot corrupt it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn work(self: Arc<Self>) {
        while let Some(batch) = self.take_batch() {
            let items = batch.len();
            // Unwinding drops the waiters not yet answered, which wakes them (with `Abandoned`);
            // the worker itself lives on, so its slot is never lost.
            let outcome = AssertUnwindSafe(async { (self.handle)(batch).await })
                .catch_unwind()
                .await;
            if outcome.is_err() {
                tracing::error!(items, "a coalesced batch panicked; failing its waiters");
            }
        }
    }

    /// The next batch in arrival order, without callers that have gone, or `None` once the queue
    /// is empty, in which case this worker has already been counted out under the lock that
    /// enqueuers take.
    fn take_batch(&self) -> Option<Vec<Waiter<T, R>>> {
        let mut state = self.state();
        let mut batch = Vec::new();
        while batch.len() < self.max_batch {
            let Some(waiter) = state.queue.pop_front() else {
                break;
            };
            if !waiter.is_gone() {
                batch.push(waiter);
            }
        }
        if batch.is_empty() {
            state.workers -= 1;
            return None;
        }
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::{Notify, Semaphore};
    use tokio::time::timeout;

    use super::*;

    const PANICS: u32 = 999;

    type TestCoalescer = Coalescer<u32, u32>;

    /// What the fake handler saw. Every batch waits for a permit of `gate` until the test closes
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

    /// A coalescer whose handler answers each item with ten times itself.
    fn fake(max_batch: usize, max_in_flight: usize, gated: bool) -> (TestCoalescer, Probe) {
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
        let coalescer = Coalescer::new(
            max_batch,
            max_in_flight,
            move |batch: Vec<Waiter<u32, u32>>| {
                let items: Vec<u32> = batch.iter().map(|waiter| waiter.item).collect();
                batches.lock().unwrap().push(items.clone());
                entered.notify_one();
                let gate = gate.clone();
                async move {
                    let _permit = gate.acquire().await;
                    assert!(!items.contains(&PANICS), "fake handler panics on {PANICS}");
                    for waiter in batch {
                        let item = waiter.item;
                        waiter.answer(item * 10);
                    }
                }
            },
        );
        (coalescer, probe)
    }

    async fn within<F: Future>(call: F) -> F::Output {
        let limit = Duration::from_secs(10);
        timeout(limit, call).await.expect("a waiter hung")
    }

    /// Occupies the only worker with a gated batch `[0]`, queues a caller per item behind it (each
    /// on its own task, in order), then opens the gate and returns what each queued caller got.
    async fn queue_behind_busy_worker(
        c: &TestCoalescer,
        probe: &Probe,
        items: &[u32],
    ) -> Vec<Result<u32, Abandoned>> {
        let call = |item| {
            let c = c.clone();
            tokio::spawn(async move { c.submit(item).await })
        };
        let first = call(0);
        probe.entered.notified().await;
        let mut calls = Vec::new();
        for (n, &item) in items.iter().enumerate() {
            calls.push(call(item));
            // One at a time, so that arrival order is the order of `items`.
            within(async {
                while c.queued() < n + 1 {
                    tokio::task::yield_now().await;
                }
            })
            .await;
        }
        probe.gate.close();
        assert_eq!(first.await.unwrap(), Ok(0));
        let got = futures::future::join_all(calls).await;
        got.into_iter().map(Result::unwrap).collect()
    }

    #[tokio::test]
    async fn an_idle_coalescer_dispatches_at_once() {
        let (c, probe) = fake(8, 1, false);
        assert_eq!(c.submit(7).await, Ok(70));
        assert_eq!(probe.batches(), vec![vec![7]]);
    }

    #[tokio::test]
    async fn callers_queued_behind_a_busy_worker_share_one_batch_in_arrival_order() {
        let (c, probe) = fake(8, 1, true);
        let got = queue_behind_busy_worker(&c, &probe, &[3, 1, 2, 1]).await;
        assert_eq!(got, vec![Ok(30), Ok(10), Ok(20), Ok(10)]);
        assert_eq!(probe.batches(), vec![vec![0], vec![3, 1, 2, 1]]);
    }

    #[tokio::test]
    async fn batches_never_exceed_max_batch() {
        let (c, probe) = fake(3, 1, true);
        let items: Vec<u32> = (1..=7).collect();
        let got = queue_behind_busy_worker(&c, &probe, &items).await;
        assert_eq!(got, items.iter().map(|i| Ok(i * 10)).collect::<Vec<_>>());
        assert_eq!(
            probe.batches(),
            vec![vec![0], vec![1, 2, 3], vec![4, 5, 6], vec![7]]
        );
    }

    #[tokio::test]
    async fn a_dropped_caller_does_not_cancel_the_batch() {
        let (c, probe) = fake(8, 1, true);
        let mut starter = Box::pin(c.submit(1));
        assert!(futures::poll!(&mut starter).is_pending());
        probe.entered.notified().await;
        // The batch is running; its caller gives up.
        drop(starter);
        // Queued behind it: one caller gives up before its batch is taken.
        let mut later = Box::pin(c.submit(2));
        let mut quitter = Box::pin(c.submit(3));
        assert!(futures::poll!(&mut later).is_pending());
        assert!(futures::poll!(&mut quitter).is_pending());
        drop(quitter);
        probe.gate.close();
        assert_eq!(within(later).await, Ok(20));
        assert_eq!(probe.batches(), vec![vec![1], vec![2]], "3 was abandoned");
    }

    #[tokio::test]
    async fn a_panicking_batch_fails_its_waiters_without_hanging() {
        let (c, probe) = fake(8, 1, false);
        assert_eq!(within(c.submit(PANICS)).await, Err(Abandoned));
        // With one worker slot, a leaked slot would leave this call queued forever.
        assert_eq!(within(c.submit(4)).await, Ok(40));
        assert_eq!(probe.batches(), vec![vec![PANICS], vec![4]]);
    }
}
