//! Failed logins are limited per email (strictly) and per client address (loosely: many people
//! may share one). The record is in the database, so the limits hold across instances; a request
//! over either limit is refused before any password is hashed.

use std::net::IpAddr;

use chrono::{DateTime, FixedOffset};
use sha2::{Digest, Sha256};

use crate::config::AuthConfig;
use crate::domain::model::Failures;
use crate::http::error::ApiError;
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

/// Refuses the attempt (429 with `Retry-After`) when either subject is over its limit.
pub async fn check(
    repo: &Sessions,
    config: &AuthConfig,
    subjects: &Subjects,
) -> Result<(), ApiError> {
    let now = crate::store::now();
    let since = window_start(config, now);
    let counts = repo.failures(&subjects.all(), since).await?;
    let limits = std::iter::once(config.max_failures_per_email).chain(
        subjects
            .address
            .as_ref()
            .map(|_| config.max_failures_per_address),
    );
    let retry_after = counts
        .iter()
        .zip(limits)
        .filter(|(failures, limit)| failures.count >= *limit)
        .map(|(failures, _)| seconds_until_free(config, failures, now))
        .max();
    match retry_after {
        Some(seconds) => Err(ApiError::TooManyAttempts {
            retry_after: seconds,
        }),
        None => Ok(()),
    }
}

pub async fn failed(
    repo: &Sessions,
    config: &AuthConfig,
    subjects: &Subjects,
) -> Result<(), ApiError> {
    let now = crate::store::now();
    repo.record_failure(&subjects.all(), window_start(config, now))
        .await?;
    Ok(())
}

/// A successful login clears its email's count (not the address's: others share it).
pub async fn succeeded(repo: &Sessions, subjects: &Subjects) -> Result<(), ApiError> {
    repo.clear_failures(&subjects.email).await?;
    Ok(())
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
