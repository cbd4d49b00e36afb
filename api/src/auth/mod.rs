//! Who is calling: bearer sessions, logins (with their throttle), and — in `access` — what each
//! caller may do, decided once per operation.

pub mod access;
pub mod throttle;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, FixedOffset};
use rand::TryRngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::cache::Caches;
use crate::domain::UserRole;
use crate::domain::model::cache_key;
use crate::store::{Sessions, StoreError};

/// 256 bits from the OS, the least API.md allows: guessing one is hopeless, so a fast hash of it
/// (not Argon2) is all the database needs to keep.
const TOKEN_BYTES: usize = 32;

/// What identity and access refuse, in their own terms; the HTTP layer answers each.
#[derive(Clone, Debug, thiserror::Error)]
pub enum AuthError {
    /// No, a malformed, unknown, expired or revoked bearer token.
    #[error("unauthenticated")]
    Unauthenticated,
    /// The caller's role may not do this.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// Something of someone else's: answered as if it did not exist.
    #[error("not found")]
    Hidden,
    /// A field the caller must (or must not) send.
    #[error("{field} {message}")]
    Invalid {
        field: &'static str,
        message: &'static str,
    },
    /// Too many failed logins: try again after this many seconds.
    #[error("too many failed logins")]
    TooManyAttempts { retry_after: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The OS could not give random bytes for a token.
    #[error("{0}")]
    Internal(String),
}

/// The caller of an authenticated request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user_id: Uuid,
    pub role: UserRole,
    /// The hash of the token presented (to end this session, or keep it through a password change).
    pub token_hash: String,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == UserRole::Admin
    }
}

/// A new bearer token, URL-safe; shown to its owner once and never stored.
pub fn new_token() -> Result<String, AuthError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    OsRng.try_fill_bytes(&mut bytes).map_err(|err| {
        AuthError::Internal(format!("the OS random number generator failed: {err}"))
    })?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// What the database keeps of a token: its SHA-256, in hex.
pub fn token_hash(token: &str) -> String {
    // Into a buffer: `hex::encode` builds the string a char at a time, which costs a cached
    // read about 2% of its CPU.
    let mut hex = [0u8; 64];
    let digest = Sha256::digest(token.as_bytes());
    // Hex digits are ASCII, so the check always passes (and costs less than a lossy decode).
    match hex::encode_to_slice(digest, &mut hex).map(|()| std::str::from_utf8(&hex)) {
        Ok(Ok(text)) => text.to_owned(),
        _ => hex::encode(digest),
    }
}

/// Whether `token` could be one this service issued (43 URL-safe characters): anything else is
/// refused without a database round trip.
fn well_formed(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Resolves a bearer token to its caller through `sessions`: unknown, malformed, expired and
/// revoked tokens are all `Unauthenticated`. A token seen before under the session's current
/// cache generation is recognised without hashing it (`cache::TokenIndex`).
pub async fn authenticate(
    sessions: &Sessions,
    caches: &Caches,
    token: &str,
) -> Result<Caller, AuthError> {
    if !well_formed(token) {
        return Err(AuthError::Unauthenticated);
    }
    if let Some((owner, token_hash)) = caches.tokens.find(token, &caches.sessions) {
        return Ok(Caller {
            user_id: owner.user_id,
            role: owner.role,
            token_hash: token_hash.as_ref().to_owned(),
        });
    }
    let token_hash = token_hash(token);
    let key = cache_key(&token_hash);
    // Read before the session is: an eviction from here on leaves what is remembered stale.
    let generation = caches.sessions.generation(key);
    match sessions.find(&token_hash).await? {
        Some(owner) => {
            if let Some(generation) = generation {
                caches
                    .tokens
                    .remember(token, &token_hash, key, generation, owner);
            }
            Ok(Caller {
                user_id: owner.user_id,
                role: owner.role,
                token_hash,
            })
        }
        None => Err(AuthError::Unauthenticated),
    }
}

/// When a session made now, to last `ttl`, ends.
pub fn expiry(ttl: std::time::Duration) -> DateTime<FixedOffset> {
    let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::days(7));
    crate::store::now() + ttl
}
