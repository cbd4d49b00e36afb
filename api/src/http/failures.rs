//! How an operation's failures are documented: each operation names the statuses it can fail
//! with (a `failures!` type), and `Failure<F>` turns an `ApiError` into that operation's
//! problem+json response while telling OpenAPI exactly those statuses.

use std::marker::PhantomData;

use poem::error::ResponseError;
use poem::{IntoResponse, Response};
use poem_openapi::ApiResponse;
use poem_openapi::registry::{MetaHeader, MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::Type;

use super::error::{ApiError, PROBLEM_JSON, Problem};
use crate::store::StoreError;

/// Which statuses an operation can fail with, for its OpenAPI description.
pub trait Failures: Send + Sync + 'static {
    const STATUSES: &'static [u16];
}

/// The statuses every operation that touches the database can answer.
const SERVER: [u16; 3] = [500, 503, 504];

macro_rules! failures {
    ($($(#[$doc:meta])* $name:ident => [$($status:literal),*];)*) => {$(
        $(#[$doc])*
        pub struct $name;
        impl Failures for $name {
            const STATUSES: &'static [u16] = &[$($status,)* SERVER[0], SERVER[1], SERVER[2]];
        }
    )*};
}

failures! {
    /// Reading one resource by id (as its owner or an admin).
    ReadFailures => [401, 404];
    /// Reading a public resource by id.
    PublicReadFailures => [404];
    /// Listing with page or cursor parameters, admins only.
    ListFailures => [401, 403, 422];
    /// Listing public resources.
    PublicListFailures => [422];
    /// Listing a user's orders.
    NestedListFailures => [401, 404, 422];
    /// Signing up (anonymous, or an admin with any fields).
    SignUpFailures => [400, 401, 403, 409, 413, 415, 422];
    /// Creating from a JSON body, admins only.
    CreateFailures => [400, 401, 403, 409, 413, 415, 422];
    /// Creating an order (referenced user or product may not exist).
    PlaceFailures => [400, 401, 403, 404, 409, 413, 415, 422];
    /// Changing a resource from a JSON body, with an optional `If-Match`.
    UpdateFailures => [400, 401, 403, 404, 409, 412, 413, 415, 422];
    /// Deleting, with an optional `If-Match`.
    DeleteFailures => [401, 403, 404, 409, 412];
    /// Logging in.
    LoginFailures => [400, 401, 403, 413, 415, 422, 429];
    /// Logging out.
    LogoutFailures => [401];
    /// Reading the change feed, admins only.
    EventFailures => [401, 403, 410, 422];
}

/// An `ApiError` as an operation's failure response, documented with the statuses `F` lists.
pub struct Failure<F>(pub ApiError, PhantomData<F>);

impl<F> From<ApiError> for Failure<F> {
    fn from(err: ApiError) -> Self {
        Self(err, PhantomData)
    }
}

impl<F> From<crate::auth::AuthError> for Failure<F> {
    fn from(err: crate::auth::AuthError) -> Self {
        Self(err.into(), PhantomData)
    }
}

impl<F> From<StoreError> for Failure<F> {
    fn from(err: StoreError) -> Self {
        Self(err.into(), PhantomData)
    }
}

impl<F> From<crate::domain::HashError> for Failure<F> {
    fn from(err: crate::domain::HashError) -> Self {
        Self(err.into(), PhantomData)
    }
}

impl<F> From<Failure<F>> for poem::Error {
    fn from(failure: Failure<F>) -> Self {
        poem::Error::from(failure.0)
    }
}

impl<F: Send> IntoResponse for Failure<F> {
    fn into_response(self) -> Response {
        self.0.as_response()
    }
}

impl<F: Failures> ApiResponse for Failure<F> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: F::STATUSES
                .iter()
                .map(|status| problem_response(*status))
                .collect(),
        }
    }

    fn register(registry: &mut Registry) {
        Problem::register(registry);
    }
}

fn problem_response(status: u16) -> MetaResponse {
    let description = match status {
        400 => "Malformed JSON, invalid UTF-8, or an empty body (`bad_request`)",
        401 => {
            "No, a malformed, unknown, expired or revoked bearer token (`unauthenticated`); for a login, a wrong email or password (`invalid_credentials`)"
        }
        403 => "The caller's role may not do this (`forbidden`)",
        410 => "The cursor is older than the feed's retention (`cursor_expired`)",
        412 => "`If-Match` names a version that is no longer current (`precondition_failed`)",
        429 => {
            "Too many failed logins for this email or from this address (`too_many_attempts`); see `Retry-After`"
        }
        404 => "The resource, or a resource it references, does not exist (`not_found`)",
        409 => "The request conflicts with the current state",
        413 => "The body exceeds the size limit (`payload_too_large`)",
        415 => "The body is not `application/json` (`unsupported_media_type`)",
        422 => "A field or parameter is invalid; `errors` names each (`validation_failed`)",
        500 => "An unexpected error; details are only in the server log (`internal`)",
        503 => {
            "The database is unavailable or has no free connection (`database_unavailable`, `pool_exhausted`), or the password-hashing queue is full (`busy`); see `Retry-After`"
        }
        504 => {
            "The statement timeout fired (`query_timeout`) or the request deadline passed (`request_timeout`)"
        }
        _ => "Error",
    };
    let headers = match status {
        503 | 429 => vec![MetaHeader {
            name: "Retry-After".to_owned(),
            description: Some("Seconds to wait before retrying".to_owned()),
            required: true,
            deprecated: false,
            schema: u32::schema_ref(),
        }],
        401 => vec![MetaHeader {
            name: "WWW-Authenticate".to_owned(),
            description: Some("`Bearer`".to_owned()),
            required: true,
            deprecated: false,
            schema: String::schema_ref(),
        }],
        _ => Vec::new(),
    };
    MetaResponse {
        description,
        status: Some(status),
        status_range: None,
        content: vec![MetaMediaType {
            content_type: PROBLEM_JSON,
            schema: Problem::schema_ref(),
        }],
        headers,
    }
}
