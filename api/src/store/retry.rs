//! Retrying whole transactions that lost a race: deadlocks, serialization failures, lock-wait
//! timeouts and SQLite busy errors. Nothing else is retried: a retry of a constraint violation or
//! of a timeout would only repeat the failure and hold connections longer.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

/// An error that can say whether repeating the whole transaction could succeed.
pub trait Retryable {
    fn is_contention(&self) -> bool;
    /// The error to give up with after `attempts` tries.
    fn exhausted(self, attempts: u32) -> Self;
}

#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// Six tries with delays of up to 5, 10, 20, 40, 80 ms: a deadlock victim normally wins on the
    /// second try, and the whole budget stays far below the request deadline.
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(200),
        }
    }
}

impl RetryPolicy {
    /// "Full jitter": a uniform delay in [0, min(max, base * 2^retry)], which spreads competing
    /// retries apart instead of letting them collide again in lock step.
    fn delay(&self, retry: u32) -> Duration {
        let ceiling = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(retry))
            .min(self.max_delay);
        let micros = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rand::rng().random_range(0..=micros))
    }
}

/// Runs `attempt` until it succeeds, fails with a non-contention error, or the policy's attempts
/// are spent. `on_retry` is told of every retry (for the metrics).
pub async fn with_retry<T, E, F, Fut>(
    policy: RetryPolicy,
    mut on_retry: impl FnMut(&E),
    mut attempt: F,
) -> Result<T, E>
where
    E: Retryable,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Err(err) if err.is_contention() => {
                if tries >= policy.max_attempts {
                    return Err(err.exhausted(tries));
                }
                on_retry(&err);
                tokio::time::sleep(policy.delay(tries - 1)).await;
            }
            outcome => return outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug, PartialEq)]
    enum TestError {
        Deadlock,
        Fatal,
        GaveUp(u32),
    }

    impl Retryable for TestError {
        fn is_contention(&self) -> bool {
            *self == TestError::Deadlock
        }
        fn exhausted(self, attempts: u32) -> Self {
            TestError::GaveUp(attempts)
        }
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
        }
    }

    #[tokio::test]
    async fn a_deadlock_is_retried_until_the_third_attempt_succeeds() {
        let calls = AtomicU32::new(0);
        let retries = AtomicU32::new(0);
        let outcome = with_retry(
            fast(),
            |_| {
                retries.fetch_add(1, Ordering::SeqCst);
            },
            || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => Err(TestError::Deadlock),
                    _ => Ok("placed"),
                }
            },
        )
        .await;
        assert_eq!(outcome, Ok("placed"));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(retries.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn it_gives_up_after_the_bound() {
        let calls = AtomicU32::new(0);
        let outcome: Result<(), _> = with_retry(
            fast(),
            |_| {},
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(TestError::Deadlock)
            },
        )
        .await;
        assert_eq!(outcome, Err(TestError::GaveUp(4)));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn other_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let outcome: Result<(), _> = with_retry(
            fast(),
            |_| {},
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(TestError::Fatal)
            },
        )
        .await;
        assert_eq!(outcome, Err(TestError::Fatal));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn delays_stay_within_the_exponential_ceiling() {
        let policy = fast();
        for retry in 0..10 {
            let ceiling = Duration::from_millis(1 << retry.min(2));
            assert!(policy.delay(retry) <= ceiling.min(policy.max_delay));
        }
    }
}
