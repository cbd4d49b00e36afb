//! Who is calling: bearer sessions, logins (with their throttle), and — in `access` — what each
//! caller may do, decided once per operation.

pub mod access;
pub mod throttle;

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, FixedOffset};
use poem::Request;
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;
use rand::TryRngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::domain::UserRole;
use crate::http::AppState;
use crate::http::error::ApiError;

/// 256 bits from the OS, the least API.md allows: guessing one is hopeless, so a fast hash of it
/// (not Argon2) is all the database needs to keep.
const TOKEN_BYTES: usize = 32;

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
pub fn new_token() -> Result<String, ApiError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|err| ApiError::Internal {
            failure: None,
            detail: format!("the OS random number generator failed: {err}"),
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

/// Resolves a bearer token to its caller: unknown, malformed, expired and revoked tokens are all
/// `unauthenticated`.
pub async fn authenticate(state: &AppState, token: &str) -> Result<Caller, ApiError> {
    if !well_formed(token) {
        return Err(ApiError::Unauthenticated);
    }
    let token_hash = token_hash(token);
    match state.sessions.find(&token_hash).await? {
        Some(owner) => Ok(Caller {
            user_id: owner.user_id,
            role: owner.role,
            token_hash,
        }),
        None => Err(ApiError::Unauthenticated),
    }
}

/// The caller of a request that may be anonymous (sign-up): a present but invalid token is still
/// a 401, not silently anonymous.
pub async fn optional_caller(
    state: &AppState,
    request: &Request,
) -> Result<Option<Caller>, ApiError> {
    let Some(header) = request.headers().get(poem::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let token = header
        .to_str()
        .ok()
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .ok_or(ApiError::Unauthenticated)?;
    authenticate(state, token).await.map(Some)
}

/// `Authorization: Bearer <token>` from `POST /v1/sessions`.
#[derive(SecurityScheme)]
#[oai(
    rename = "bearerAuth",
    ty = "bearer",
    bearer_format = "opaque",
    checker = "check_bearer"
)]
pub struct BearerAuth(pub Caller);

async fn check_bearer(request: &Request, bearer: Bearer) -> poem::Result<Caller> {
    let state = request.data::<Arc<AppState>>().ok_or_else(|| {
        poem::Error::from(ApiError::Internal {
            failure: None,
            detail: "application state missing from the request".to_owned(),
        })
    })?;
    authenticate(state, &bearer.token)
        .await
        .map_err(poem::Error::from)
}

/// When a session made now ends.
pub fn expiry(state: &AppState) -> DateTime<FixedOffset> {
    let ttl = chrono::Duration::from_std(state.config.auth.session_ttl)
        .unwrap_or(chrono::Duration::days(7));
    crate::store::now() + ttl
}
