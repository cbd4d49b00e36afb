//! `/v1/sessions`: logging in and out.

use std::sync::Arc;

use poem::Request;
use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;

use super::Tag;
use super::bearer::BearerAuth;
use super::body::JsonBody;
use super::error::ApiError;
use super::failures::{Failure, LoginFailures, LogoutFailures};
use super::middleware;
use super::timestamp::Timestamp;
use super::users::{Deleted, UserDto};
use crate::auth::{self, throttle};
use crate::domain::model::User;
use crate::domain::{Email, UserStatus};
use crate::state::AppState;

#[derive(Object, Deserialize)]
#[serde(deny_unknown_fields)]
#[oai(rename = "Login")]
pub struct LoginRequest {
    #[oai(validator(max_length = 1024))]
    pub email: String,
    #[oai(validator(max_length = 1024), write_only)]
    pub password: String,
}

/// A new session. The token is shown this once: the service keeps only its hash.
#[derive(Object)]
#[oai(rename = "Session")]
pub struct SessionDto {
    /// Send as `Authorization: Bearer <token>`. Opaque, URL-safe, 256 random bits.
    pub token: String,
    /// After this the token is refused (`SESSION_TTL_SECS` after the login).
    pub expires_at: Timestamp,
    pub user: UserDto,
}

#[derive(ApiResponse)]
pub enum LoggedIn {
    /// Logged in.
    #[oai(status = 201)]
    Created(
        Json<SessionDto>,
        /// The session's URL (`DELETE` it to log out).
        #[oai(header = "Location")]
        String,
    ),
}

pub struct SessionsApi;

#[OpenApi(tag = "Tag::Sessions")]
impl SessionsApi {
    /// Log in
    ///
    /// An unknown email and a wrong password get the same answer, in about the same time. Too
    /// many failures for one email or from one address: 429 until the window has passed.
    #[oai(path = "/v1/sessions", method = "post", operation_id = "login")]
    async fn login(
        &self,
        state: Data<&Arc<AppState>>,
        raw: &Request,
        body: JsonBody<LoginRequest>,
    ) -> Result<LoggedIn, Failure<LoginFailures>> {
        let state = &state;
        let request = body.0;
        let config = &state.config.auth;
        let email = Email::normalize_for_lookup(&request.email);
        let address = raw.remote_addr().as_socket_addr().map(|addr| addr.ip());
        let subjects = throttle::Subjects::new(&email, address);
        let attempt = throttle::begin(&state.sessions, config, &subjects).await?;
        let user = match authenticate(state, &email, &request.password).await {
            Ok(Some(user)) => user,
            Ok(None) => {
                throttle::failed(attempt);
                return Err(ApiError::InvalidCredentials.into());
            }
            Err(err) => {
                throttle::abandoned(&state.sessions, attempt).await;
                return Err(err.into());
            }
        };
        throttle::succeeded(&state.sessions, &subjects, attempt).await?;
        if user.status != UserStatus::Active {
            return Err(
                ApiError::Forbidden(format!("the account is {}", user.status.as_str())).into(),
            );
        }
        let token = auth::new_token()?;
        let expires_at = auth::expiry(state.config.auth.session_ttl);
        state
            .sessions
            .create(auth::token_hash(&token), user.id, expires_at)
            .await?;
        let session = SessionDto {
            token,
            expires_at: expires_at.into(),
            user: user.into(),
        };
        Ok(LoggedIn::Created(
            Json(session),
            "/v1/sessions/current".to_owned(),
        ))
    }

    /// Log out
    ///
    /// The presented token is refused from now on, on every instance.
    #[oai(
        path = "/v1/sessions/current",
        method = "delete",
        operation_id = "logout"
    )]
    async fn logout(
        &self,
        state: Data<&Arc<AppState>>,
        auth: BearerAuth,
    ) -> Result<Deleted, Failure<LogoutFailures>> {
        state.sessions.revoke(&auth.0.token_hash).await?;
        Ok(Deleted::NoContent)
    }
}

/// The account `email` names, when `password` is its password. An unknown email is checked
/// against a hash nobody knows, so that it costs the same and answers the same.
async fn authenticate(
    state: &AppState,
    email: &str,
    password: &str,
) -> Result<Option<User>, ApiError> {
    let account = match Email::parse(email) {
        Ok(email) => state.users.credentials(&email).await?,
        Err(_) => None,
    };
    let (user, hash) = match account {
        Some((user, hash)) => (Some(user), hash),
        None => (None, state.hasher.dummy(middleware::deadline()).await?),
    };
    let verified = state
        .hasher
        .verify(&hash, password, middleware::deadline())
        .await?;
    Ok(user.filter(|_| verified))
}
