use std::fmt;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::password_hash::{self, Output, ParamsString, SaltString, rand_core::OsRng};
use argon2::{ARGON2ID_IDENT, Algorithm, Argon2, Block, Params, Version};
use tokio::sync::Semaphore;
use uuid::Uuid;

/// OWASP's Argon2id parameters: 19 MiB, 2 passes, 1 lane, 32-byte output.
const MEMORY_KIB: u32 = 19 * 1024;
const PASSES: u32 = 2;
const LANES: u32 = 1;
const OUTPUT_LEN: usize = 32;

/// A password of 8–128 characters (counted after trimming, hashed exactly as sent).
/// Its `Debug` never shows it.
#[derive(Clone)]
pub struct Password(String);

/// Where hashing happens: at most one hash per core but one at a time (so that a flood of sign-ups
/// or logins leaves a core to the reads and writes that need no hashing), each in a 19 MiB work area that is
/// reused while hashing goes on. Letting every request allocate its own area on whichever blocking
/// thread it lands on made the allocator keep gigabytes under a burst of sign-ups; keeping the
/// areas for good made an idle server hold 19 MiB per core it had once hashed on. So the areas
/// are kept while any hash is running or waiting, and given back when the last one ends.
struct Workspace {
    /// Hashes that may run at once.
    cores: usize,
    permits: Semaphore,
    areas: Mutex<Areas>,
    pace: Mutex<Pace>,
}

#[derive(Default)]
struct Areas {
    free: Vec<Vec<Block>>,
    /// Hashes running or waiting for a core.
    active: usize,
}

impl Workspace {
    fn areas(&self) -> std::sync::MutexGuard<'_, Areas> {
        self.areas
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A reused area, or a new one.
    fn take_area(&self) -> Vec<Block> {
        self.areas()
            .free
            .pop()
            .unwrap_or_else(|| vec![Block::default(); MEMORY_KIB as usize])
    }

    fn pace(&self) -> std::sync::MutexGuard<'_, Pace> {
        self.pace
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps `area` for the next hash, or frees every kept area when no hash is left.
    fn put_back(&self, area: Option<Vec<Block>>) {
        let mut areas = self.areas();
        areas.free.extend(area);
        if areas.active == 0 {
            areas.free = Vec::new();
        }
    }
}

/// Counts a hash as active from admission to its end, whether it completes or its request is
/// dropped while it waits.
struct Active<'a>(&'a Workspace);

impl<'a> Active<'a> {
    fn enter(workspace: &'a Workspace) -> Self {
        workspace.areas().active += 1;
        Self(workspace)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.areas().active -= 1;
        self.0.put_back(None);
    }
}

fn workspace() -> &'static Workspace {
    static WORKSPACE: OnceLock<Workspace> = OnceLock::new();
    WORKSPACE.get_or_init(|| {
        let cores = std::thread::available_parallelism()
            .map_or(1, |cores| usize::from(cores).saturating_sub(1))
            .max(1);
        Workspace {
            cores,
            permits: Semaphore::new(cores),
            areas: Mutex::new(Areas::default()),
            pace: Mutex::new(Pace::default()),
        }
    })
}

/// The longest a hash is expected to take, queue included, for it to be admitted: people and
/// clients give up on a sign-up or login that hangs for a few seconds (in a flood of 128 sign-ups
/// with a 3 s client time-out, most timed out in a queue of 64), whatever the server's own
/// deadline.
const MAX_EXPECTED_WAIT: Duration = Duration::from_secs(1);

/// How long recent hashes took on this machine, and so whether one more can be admitted and still
/// finish in time.
#[derive(Debug, Default)]
struct Pace {
    /// An exponentially weighted mean of measured hash durations; `None` until one is measured.
    mean: Option<Duration>,
}

impl Pace {
    /// The weight of the newest measurement: a single slow hash moves the mean by an eighth of the
    /// difference, a lasting slowdown (a loaded machine) most of the way within a dozen hashes.
    const WEIGHT: f64 = 0.125;

    fn record(&mut self, took: Duration) {
        self.mean = Some(match self.mean {
            None => took,
            Some(mean) => mean.mul_f64(1.0 - Self::WEIGHT) + took.mul_f64(Self::WEIGHT),
        });
    }

    /// How long a hash admitted now is expected to take: the `ahead` hashes running or waiting go
    /// first, `cores` at a time, then its own.
    fn expected_wait(&self, ahead: usize, cores: usize) -> Duration {
        let Some(mean) = self.mean else {
            return Duration::ZERO;
        };
        let rounds = ahead / cores.max(1) + 1;
        mean.saturating_mul(u32::try_from(rounds).unwrap_or(u32::MAX))
    }

    /// Whether a hash admitted now is expected to finish well inside the `remaining` time of its
    /// request (`wait_budget`: the request has more to do, and the estimate is only recent
    /// history). Without a request (`None`: start-up) nobody gives up waiting, so the queue's own
    /// bound is the only one.
    fn admits(&self, ahead: usize, cores: usize, remaining: Option<Duration>) -> bool {
        let Some(remaining) = remaining else {
            return true;
        };
        self.expected_wait(ahead, cores) <= wait_budget(remaining)
    }
}

/// How long a hash may take, queue included, for a request with `remaining` time left: a quarter
/// of it, and at most `MAX_EXPECTED_WAIT`.
fn wait_budget(remaining: Duration) -> Duration {
    (remaining / 4).min(MAX_EXPECTED_WAIT)
}

/// Why a hash was not computed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum HashError {
    /// The queue is full, or too long to get through before the request's deadline: the request
    /// is refused at once rather than left waiting.
    #[error("the password hashing queue is full")]
    Busy,
    #[error("password hashing failed: {0}")]
    Failed(String),
}

/// The bounded queue every password hash and verification goes through: one per core but one runs, up
/// to `queue_limit` more wait, and any beyond that are refused with `HashError::Busy` — a burst of
/// sign-ups or logins then costs a quick 503, not a pile of requests that all time out. A hash is
/// refused the same way when, at the pace of recent hashes, the queue ahead of it would not let it
/// finish well before its request's deadline (`Pace::admits`).
pub struct Hasher {
    admission: Semaphore,
}

impl Hasher {
    pub fn new(queue_limit: usize) -> Self {
        Self {
            admission: Semaphore::new(workspace().cores.saturating_add(queue_limit)),
        }
    }

    /// Hashes `password` for a request that must be answered by `deadline` (`None`: no request
    /// waits for it, as at start-up).
    pub async fn hash(
        &self,
        password: Password,
        deadline: Option<Instant>,
    ) -> Result<PasswordHash, HashError> {
        self.run(deadline, move |area| password.hash_in(area))
            .await?
            .map_err(HashError::Failed)
    }

    /// Whether `candidate` is the password `hash` was made from (compared in constant time).
    pub async fn verify(
        &self,
        hash: &PasswordHash,
        candidate: &str,
        deadline: Option<Instant>,
    ) -> Result<bool, HashError> {
        let hash = hash.clone();
        let candidate = candidate.to_owned();
        self.run(deadline, move |area| hash.matches(&candidate, area))
            .await
    }

    /// A hash of a password nobody knows, for logins naming an unknown email: verifying against
    /// it costs what verifying a real one does, so the answer's timing says nothing.
    pub async fn dummy(&self, deadline: Option<Instant>) -> Result<PasswordHash, HashError> {
        static DUMMY: tokio::sync::OnceCell<PasswordHash> = tokio::sync::OnceCell::const_new();
        DUMMY
            .get_or_try_init(|| async {
                let random = Uuid::new_v4().to_string();
                self.hash(Password(random), deadline).await
            })
            .await
            .cloned()
    }

    /// Argon2 costs tens of milliseconds of CPU, which must never stall an async worker: it runs
    /// on the blocking pool, in a reused work area, under the request's tracing span.
    async fn run<T: Send + 'static>(
        &self,
        deadline: Option<Instant>,
        work: impl FnOnce(&mut [Block]) -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let _admitted = self.admission.try_acquire().map_err(|_| HashError::Busy)?;
        let workspace = workspace();
        let admitted_at = Instant::now();
        let remaining = deadline.map(|deadline| deadline.saturating_duration_since(admitted_at));
        let ahead = workspace.areas().active;
        if !workspace.pace().admits(ahead, workspace.cores, remaining) {
            return Err(HashError::Busy);
        }
        let _active = Active::enter(workspace);
        let _permit = workspace
            .permits
            .acquire()
            .await
            .map_err(|err| HashError::Failed(err.to_string()))?;
        // The estimate comes from hashes before this one was admitted; a burst that slows the
        // machine down makes it too short. A hash whose turn comes later than it was admitted for
        // is refused then, rather than started for a client that may have given up.
        if remaining.is_some_and(|remaining| admitted_at.elapsed() > wait_budget(remaining)) {
            return Err(HashError::Busy);
        }
        let area = workspace.take_area();
        let span = tracing::Span::current();
        let (outcome, area, took) = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let mut area = area;
            let started = Instant::now();
            let outcome = work(&mut area);
            (outcome, area, started.elapsed())
        })
        .await
        .map_err(|err| HashError::Failed(err.to_string()))?;
        workspace.pace().record(took);
        workspace.put_back(Some(area));
        Ok(outcome)
    }
}

impl Password {
    pub const MIN_LENGTH: usize = 8;
    pub const MAX_LENGTH: usize = 128;

    pub fn parse(raw: String) -> Result<Self, String> {
        let length = raw.trim().chars().count();
        if length < Self::MIN_LENGTH {
            return Err(format!("must be at least {} characters", Self::MIN_LENGTH));
        }
        if length > Self::MAX_LENGTH {
            return Err(format!("must be at most {} characters", Self::MAX_LENGTH));
        }
        Ok(Self(raw))
    }

    /// The text as sent (for verifying a login; never logged).
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn hash_in(&self, area: &mut [Block]) -> Result<PasswordHash, String> {
        let params = Hasher::params()?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let salt = SaltString::generate(&mut OsRng);
        let mut salt_bytes = [0u8; 64];
        let salt_raw = salt
            .decode_b64(&mut salt_bytes)
            .map_err(|err| err.to_string())?;
        let mut output = [0u8; OUTPUT_LEN];
        argon2
            .hash_password_into_with_memory(self.0.as_bytes(), salt_raw, &mut output, area)
            .map_err(|err| err.to_string())?;
        let phc = password_hash::PasswordHash {
            algorithm: ARGON2ID_IDENT,
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&params).map_err(|err| err.to_string())?,
            salt: Some(salt.as_salt()),
            hash: Some(Output::new(&output).map_err(|err| err.to_string())?),
        };
        Ok(PasswordHash(phc.to_string()))
    }
}

impl Hasher {
    /// The Argon2id parameters every new hash is made with.
    pub fn params() -> Result<Params, String> {
        Params::new(MEMORY_KIB, PASSES, LANES, Some(OUTPUT_LEN)).map_err(|err| err.to_string())
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// A PHC-format Argon2id hash. Stored, never returned, never shown by `Debug`.
#[derive(Clone)]
pub struct PasswordHash(String);

impl PasswordHash {
    pub fn into_string(self) -> String {
        self.0
    }

    /// A hash as stored.
    pub fn from_stored(stored: String) -> Self {
        Self(stored)
    }

    /// Recomputes the hash of `candidate` with this hash's own parameters and salt, in `area`
    /// when the parameters are the current ones, and compares the outputs in constant time.
    fn matches(&self, candidate: &str, area: &mut [Block]) -> bool {
        let Ok(parsed) = argon2::password_hash::PasswordHash::new(&self.0) else {
            return false;
        };
        let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
            return false;
        };
        let Ok(params) = Params::try_from(&parsed) else {
            return false;
        };
        let mut salt_bytes = [0u8; 64];
        let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
            return false;
        };
        let mut output = vec![0u8; expected.len()];
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let computed = if params.m_cost() == MEMORY_KIB && params.p_cost() == LANES {
            argon2.hash_password_into_with_memory(candidate.as_bytes(), salt, &mut output, area)
        } else {
            argon2.hash_password_into(candidate.as_bytes(), salt, &mut output)
        };
        computed.is_ok() && Output::new(&output).is_ok_and(|output| output == expected)
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_enforced() {
        assert!(Password::parse("short".into()).is_err());
        assert!(Password::parse("       x       ".into()).is_err());
        assert!(Password::parse("x".repeat(129)).is_err());
        assert!(Password::parse("correct horse".into()).is_ok());
    }

    #[tokio::test]
    async fn hashes_are_argon2id_and_verify() {
        let hasher = Hasher::new(4);
        let hash = hasher
            .hash(Password::parse("correct horse".into()).unwrap(), None)
            .await
            .unwrap();
        assert!(
            hash.0.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{}",
            hash.0
        );
        assert!(hasher.verify(&hash, "correct horse", None).await.unwrap());
        assert!(!hasher.verify(&hash, "wrong horse", None).await.unwrap());
    }

    const MS: Duration = Duration::from_millis(1);

    fn pace_of(hashes: &[Duration]) -> Pace {
        let mut pace = Pace::default();
        for &took in hashes {
            pace.record(took);
        }
        pace
    }

    #[test]
    fn the_pace_is_a_weighted_mean_of_recent_hashes() {
        assert_eq!(pace_of(&[]).mean, None);
        assert_eq!(pace_of(&[MS * 40]).mean, Some(MS * 40));
        // 40 ms, then one of 120 ms: an eighth of the difference, 50 ms.
        let mean = pace_of(&[MS * 40, MS * 120]).mean.unwrap();
        assert!(
            mean.abs_diff(MS * 50) < Duration::from_micros(1),
            "{mean:?}"
        );
        // A lasting slowdown from 40 to 100 ms has moved the mean most of the way after a dozen.
        let mut hashes = vec![MS * 40];
        hashes.extend([MS * 100; 12]);
        let mean = pace_of(&hashes).mean.unwrap();
        assert!(mean > MS * 85 && mean < MS * 100, "{mean:?}");
    }

    #[test]
    fn before_any_hash_is_measured_everything_is_admitted() {
        let pace = Pace::default();
        assert!(pace.admits(1_000, 1, Some(MS * 100)));
    }

    #[test]
    fn a_hash_is_admitted_only_if_the_queue_ahead_fits_a_quarter_of_the_deadline() {
        let pace = pace_of(&[MS * 50]);
        // 19 ahead on one core, then its own: 20 × 50 ms = 1 s.
        assert_eq!(pace.expected_wait(19, 1), MS * 1_000);
        assert!(pace.admits(19, 1, Some(Duration::from_secs(30))));
        assert!(!pace.admits(20, 1, Some(Duration::from_secs(30))));
        // Two cores take the queue two at a time.
        assert_eq!(pace.expected_wait(19, 2), MS * 500);
        assert!(pace.admits(39, 2, Some(Duration::from_secs(30))));
        // A request with 400 ms left may wait 100 ms: one ahead, then its own.
        assert!(pace.admits(1, 1, Some(MS * 400)));
        assert!(!pace.admits(2, 1, Some(MS * 400)));
        // A request past its deadline is not admitted behind anything.
        assert!(!pace.admits(0, 1, Some(Duration::ZERO)));
        // However long the deadline, at most a second.
        assert!(!pace.admits(20, 1, Some(Duration::from_secs(3_600))));
        // No request waits (start-up): the queue's own bound alone.
        assert!(pace.admits(1_000, 1, None));
    }

    #[test]
    fn the_budget_is_a_quarter_of_the_time_left_and_at_most_a_second() {
        assert_eq!(wait_budget(MS * 400), MS * 100);
        assert_eq!(wait_budget(Duration::from_secs(30)), Duration::from_secs(1));
        assert_eq!(wait_budget(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn the_flood_that_timed_out_is_refused_at_once() {
        // A queue of 64 hashes at ~50 ms each on one core is over 3 s of waiting.
        let pace = pace_of(&[MS * 50; 8]);
        assert!(!pace.admits(64, 1, Some(Duration::from_secs(30))));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let password = Password::parse("correct horse".into()).unwrap();
        assert!(!format!("{password:?}").contains("horse"));
    }
}
