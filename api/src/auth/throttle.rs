//! Failed logins are limited per email (strictly) and per client address (loosely: many people
//! may share one). The record is in the database, so the limits hold across instances; a request
//! over either limit is refused before any password is hashed.

use std::net::IpAddr;

use chrono::{DateTime, FixedOffset};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::AuthError;
use crate::config::AuthConfig;
use crate::domain::model::Failures;
use crate::store::Sessions;

/// What one login attempt counts against.
pub struct Subjects {
    email: String,
    address: Option<String>,
}

impl Subjects {
    pub fn new(email: &str, address: Option<IpAddr>) -> Self {
        Self {
            email: subject("email", email),
            address: address.map(|ip| subject("address", &ip.to_string())),
        }
    }

    fn all(&self) -> Vec<String> {
        std::iter::once(self.email.clone())
            .chain(self.address.clone())
            .collect()
    }
}

/// The stored form of a subject: hashed, so the table keeps no email address or IP.
fn subject(kind: &str, value: &str) -> String {
    hex::encode(Sha256::digest(format!("{kind}:{value}").as_bytes()))
}

/// A login attempt, counted as a failure from before its password is hashed until it proves
/// otherwise. Concurrent attempts therefore see each other: twenty wrong passwords sent at once
/// get at most the limit's worth of hashing, not twenty.
#[must_use = "an attempt ends as failed, succeeded or abandoned"]
pub struct Attempt {
    rows: Vec<Uuid>,
}

/// Counts the attempt, then refuses it (429 with `Retry-After`, nothing hashed, the attempt taken
/// back) when it takes either subject over its limit.
pub async fn begin(
    repo: &Sessions,
    config: &AuthConfig,
    subjects: &Subjects,
) -> Result<Attempt, AuthError> {
    let now = crate::store::now();
    let since = window_start(config, now);
    let all = subjects.all();
    let attempt = Attempt {
        rows: repo.record_failure(&all, since).await?,
    };
    let counts = match repo.failures(&all, since).await {
        Ok(counts) => counts,
        Err(err) => {
            abandoned(repo, attempt).await;
            return Err(err.into());
        }
    };
    let limits = std::iter::once(config.max_failures_per_email).chain(
        subjects
            .address
            .as_ref()
            .map(|_| config.max_failures_per_address),
    );
    // The counts include this attempt.
    let retry_after = counts
        .iter()
        .zip(limits)
        .filter(|(failures, limit)| failures.count > *limit)
        .map(|(failures, _)| seconds_until_free(config, failures, now))
        .max();
    match retry_after {
        Some(seconds) => {
            abandoned(repo, attempt).await;
            Err(AuthError::TooManyAttempts {
                retry_after: seconds,
            })
        }
        None => Ok(attempt),
    }
}

/// The password was wrong: the attempt stays counted.
pub fn failed(attempt: Attempt) {
    drop(attempt);
}

/// A successful login clears its email's count (not the address's: others share it) and takes
/// this attempt back from the address's.
pub async fn succeeded(
    repo: &Sessions,
    subjects: &Subjects,
    attempt: Attempt,
) -> Result<(), AuthError> {
    repo.clear_failures(&subjects.email).await?;
    repo.forget_failures(&attempt.rows).await?;
    Ok(())
}

/// The attempt ended without an answer about the password (the hashing queue was full, the
/// database failed): it is not a failure. If taking it back fails too, it stays counted, which
/// errs on the safe side.
pub async fn abandoned(repo: &Sessions, attempt: Attempt) {
    let _ = repo.forget_failures(&attempt.rows).await;
}

fn window_start(config: &AuthConfig, now: DateTime<FixedOffset>) -> DateTime<FixedOffset> {
    now - chrono::Duration::from_std(config.login_window).unwrap_or(chrono::Duration::minutes(5))
}

/// Until the oldest failure in the window leaves it, at least one second.
fn seconds_until_free(config: &AuthConfig, failures: &Failures, now: DateTime<FixedOffset>) -> u64 {
    let window = config.login_window.as_secs();
    let Some(oldest) = failures.oldest else {
        return window.max(1);
    };
    let elapsed = (now - oldest).num_milliseconds().max(0) as u64;
    window
        .saturating_mul(1000)
        .saturating_sub(elapsed)
        .div_ceil(1000)
        .max(1)
}
