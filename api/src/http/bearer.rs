//! The bearer token on a request: poem-openapi's security scheme, and the caller it names.

use std::sync::Arc;

use poem::Request;
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;

use super::error::ApiError;
use crate::auth::{self, Caller};
use crate::state::AppState;

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
    auth::authenticate(&state.sessions, &state.caches, &bearer.token)
        .await
        .map_err(|err| poem::Error::from(ApiError::from(err)))
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
    let caller = auth::authenticate(&state.sessions, &state.caches, token).await?;
    Ok(Some(caller))
}
