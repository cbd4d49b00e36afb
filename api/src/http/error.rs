//! Every error the service answers, and the one place where each becomes a status and an RFC 9457
//! problem+json body.

use poem::Response;
use poem::error::ResponseError;
use poem::http::{StatusCode, header};
use poem_openapi::Object;
use poem_openapi::types::ToJSON;
use uuid::Uuid;

use crate::auth::AuthError;
use crate::domain::FieldError;
use crate::store::DbFailure;
use crate::store::{Conflict, StoreError};

pub const PROBLEM_JSON: &str = "application/problem+json";

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECS: u32 = 1;

/// RFC 9457 problem details, with this service's `code` and extension members.
#[derive(Clone, Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Problem {
    /// Always `about:blank`: `code` identifies the problem.
    #[oai(rename = "type")]
    pub problem_type: String,
    /// The HTTP status phrase.
    pub title: String,
    pub status: u16,
    /// Stable and machine-readable: `not_found`, `validation_failed`, `email_taken`, …
    pub code: String,
    /// Human-readable explanation of this occurrence.
    pub detail: Option<String>,
    /// The fields at fault (422 only).
    pub errors: Option<Vec<FieldProblem>>,
    /// 404 for a referenced resource: which kind (`user`, `product`).
    pub resource: Option<String>,
    /// 404 for a referenced resource: its id.
    pub id: Option<String>,
    /// 409 `insufficient_stock`: the product short of stock.
    pub product_id: Option<Uuid>,
    /// 409 `insufficient_stock`: the quantity ordered.
    pub requested: Option<i64>,
    /// 409 `insufficient_stock`: the quantity on hand.
    pub available: Option<i64>,
}

#[derive(Clone, Debug, Object)]
pub struct FieldProblem {
    /// A path into the request: `email`, `items[0].quantity`, or a query parameter's name.
    pub field: String,
    pub message: String,
}

/// What the service answers when it cannot do what was asked.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ApiError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("not found")]
    NotFound {
        detail: String,
        reference: Option<(&'static str, Uuid)>,
    },
    #[error("method not allowed")]
    MethodNotAllowed,
    /// No, a malformed, unknown, expired or revoked bearer token.
    #[error("unauthenticated")]
    Unauthenticated,
    /// A login with an unknown email or a wrong password (the same answer for both).
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("precondition failed")]
    PreconditionFailed,
    /// An events cursor older than the retention.
    #[error("cursor expired")]
    CursorExpired,
    #[error("too many failed logins")]
    TooManyAttempts { retry_after: u64 },
    /// The password-hashing queue is full.
    #[error("busy")]
    Busy,
    #[error("conflict")]
    Conflict(Conflict),
    #[error("payload too large")]
    PayloadTooLarge { limit: usize },
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("database unavailable")]
    Unavailable {
        code: &'static str,
        failure: DbFailure,
        detail: String,
    },
    #[error("query timeout")]
    QueryTimeout,
    #[error("request timeout")]
    RequestTimeout,
    #[error("internal error")]
    Internal {
        failure: Option<DbFailure>,
        detail: String,
    },
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Unauthenticated => Self::Unauthenticated,
            AuthError::Forbidden(why) => Self::Forbidden(why.to_owned()),
            AuthError::Hidden => Self::not_found(),
            AuthError::Invalid { field, message } => Self::validation(field, message),
            AuthError::TooManyAttempts { retry_after } => Self::TooManyAttempts { retry_after },
            AuthError::Store(err) => err.into(),
            AuthError::Internal(detail) => Self::Internal {
                failure: None,
                detail,
            },
        }
    }
}

/// The database failure behind an error response, left on the response for the middleware that
/// logs it and counts it in `db_errors_total`.
#[derive(Clone, Debug)]
pub struct FailureNote {
    /// The problem's `code`, as the client got it.
    pub code: &'static str,
    pub failure: DbFailure,
    pub detail: String,
}

impl ApiError {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }

    pub fn not_found() -> Self {
        Self::NotFound {
            detail: "no such resource".to_owned(),
            reference: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthenticated | Self::InvalidCredentials => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Self::CursorExpired => StatusCode::GONE,
            Self::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::QueryTimeout | Self::RequestTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The problem's `code`, for the response body and the log line alike.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::NotFound { .. } => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Unauthenticated => "unauthenticated",
            Self::InvalidCredentials => "invalid_credentials",
            Self::Forbidden(_) => "forbidden",
            Self::PreconditionFailed => "precondition_failed",
            Self::CursorExpired => "cursor_expired",
            Self::TooManyAttempts { .. } => "too_many_attempts",
            Self::Busy => "busy",
            Self::Conflict(conflict) => conflict_code(conflict),
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Validation(_) => "validation_failed",
            Self::Unavailable { code, .. } => code,
            Self::QueryTimeout => "query_timeout",
            Self::RequestTimeout => "request_timeout",
            Self::Internal { .. } => "internal",
        }
    }

    pub fn problem(&self) -> Problem {
        let status = self.status();
        let mut problem = Problem {
            problem_type: "about:blank".to_owned(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            code: String::new(),
            detail: None,
            errors: None,
            resource: None,
            id: None,
            product_id: None,
            requested: None,
            available: None,
        };
        let detail = match self {
            Self::BadRequest(detail) => detail.clone(),
            Self::NotFound { detail, reference } => {
                if let Some((resource, id)) = reference {
                    problem.resource = Some((*resource).to_owned());
                    problem.id = Some(id.to_string());
                }
                detail.clone()
            }
            Self::MethodNotAllowed => "this path does not support that method".to_owned(),
            Self::Unauthenticated => {
                "a valid bearer token is required (Authorization: Bearer <token>)".to_owned()
            }
            Self::InvalidCredentials => "the email or the password is wrong".to_owned(),
            Self::Forbidden(why) => why.clone(),
            Self::PreconditionFailed => {
                "the resource has changed since the version named in If-Match".to_owned()
            }
            Self::CursorExpired => {
                "events after this cursor were removed by the retention; start again from start=oldest"
                    .to_owned()
            }
            Self::TooManyAttempts { retry_after } => {
                format!("too many failed logins; retry in {retry_after} s")
            }
            Self::Busy => "too many password operations are waiting; retry shortly".to_owned(),
            Self::Conflict(conflict) => conflict_problem(conflict, &mut problem),
            Self::PayloadTooLarge { limit } => {
                format!("the request body exceeds the limit of {limit} bytes")
            }
            Self::UnsupportedMediaType => {
                "the request body must be sent as Content-Type: application/json".to_owned()
            }
            Self::Validation(errors) => {
                problem.errors = Some(
                    errors
                        .iter()
                        .map(|e| FieldProblem {
                            field: e.field.clone(),
                            message: e.message.clone(),
                        })
                        .collect(),
                );
                let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
                format!("invalid: {}", fields.join(", "))
            }
            Self::Unavailable { failure, .. } => match failure {
                DbFailure::PoolExhausted => {
                    "all database connections are busy; retry shortly".to_owned()
                }
                DbFailure::Contention => {
                    "the database is too contended to complete this now; retry shortly".to_owned()
                }
                _ => "the database is unavailable; retry shortly".to_owned(),
            },
            Self::QueryTimeout => {
                "the database did not answer within the statement timeout".to_owned()
            }
            Self::RequestTimeout => {
                "the request did not complete within the request deadline".to_owned()
            }
            Self::Internal { .. } => "an internal error occurred".to_owned(),
        };
        problem.code = self.code().to_owned();
        problem.detail = Some(detail);
        problem
    }

    fn failure_note(&self) -> Option<FailureNote> {
        match self {
            Self::Unavailable {
                failure, detail, ..
            } => Some(FailureNote {
                code: self.code(),
                failure: failure.clone(),
                detail: detail.clone(),
            }),
            Self::QueryTimeout => Some(FailureNote {
                code: self.code(),
                failure: DbFailure::StatementTimeout,
                detail: "statement timeout".to_owned(),
            }),
            Self::Internal { failure, detail } => Some(FailureNote {
                code: self.code(),
                failure: failure.clone().unwrap_or(DbFailure::Other),
                detail: detail.clone(),
            }),
            _ => None,
        }
    }
}

fn conflict_problem(conflict: &Conflict, problem: &mut Problem) -> String {
    match conflict {
        Conflict::EmailTaken => {
            problem.errors = Some(vec![FieldProblem {
                field: "email".to_owned(),
                message: "already taken".to_owned(),
            }]);
            "a user with this email already exists".to_owned()
        }
        Conflict::SkuTaken => {
            problem.errors = Some(vec![FieldProblem {
                field: "sku".to_owned(),
                message: "already taken".to_owned(),
            }]);
            "a product with this sku already exists".to_owned()
        }
        Conflict::UserHasOrders => "the user has orders, which are kept as records".to_owned(),
        Conflict::ProductHasOrders => {
            "the product has been ordered and is kept for those orders' records".to_owned()
        }
        Conflict::InvalidTransition { from, to } => {
            format!("an order cannot move from {from} to {to}")
        }
        Conflict::InsufficientStock {
            product_id,
            requested,
            available,
        } => {
            problem.product_id = Some(*product_id);
            problem.requested = Some(*requested);
            problem.available = Some(*available);
            format!("product {product_id} has {available} in stock, {requested} requested")
        }
        Conflict::IdempotencyKeyReused => {
            "this Idempotency-Key was used for a different request".to_owned()
        }
    }
}

/// The `code` of a conflict: what a client branches on.
fn conflict_code(conflict: &Conflict) -> &'static str {
    match conflict {
        Conflict::EmailTaken => "email_taken",
        Conflict::SkuTaken => "sku_taken",
        Conflict::UserHasOrders => "user_has_orders",
        Conflict::ProductHasOrders => "product_has_orders",
        Conflict::InvalidTransition { .. } => "invalid_transition",
        Conflict::InsufficientStock { .. } => "insufficient_stock",
        Conflict::IdempotencyKeyReused => "idempotency_key_reused",
    }
}

impl ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        ApiError::status(self)
    }

    fn as_response(&self) -> Response {
        let body = self.problem().to_json().unwrap_or_default().to_string();
        let mut response = Response::builder()
            .status(self.status())
            .content_type(PROBLEM_JSON)
            .body(body);
        match self {
            Self::TooManyAttempts { retry_after } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, (*retry_after).into());
            }
            _ if self.status() == StatusCode::SERVICE_UNAVAILABLE => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, RETRY_AFTER_SECS.into());
            }
            Self::Unauthenticated | Self::InvalidCredentials => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    poem::http::HeaderValue::from_static("Bearer"),
                );
            }
            _ => {}
        }
        if let Some(note) = self.failure_note() {
            response.extensions_mut().insert(note);
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound { resource, id } => Self::NotFound {
                detail: format!("{} {id} does not exist", resource.as_str()),
                reference: Some((resource.as_str(), id)),
            },
            StoreError::Conflict(conflict) => Self::Conflict(conflict),
            StoreError::PreconditionFailed => Self::PreconditionFailed,
            StoreError::Unavailable { failure, source } => Self::Unavailable {
                code: "database_unavailable",
                detail: source.to_string(),
                failure,
            },
            StoreError::PoolExhausted => Self::Unavailable {
                code: "pool_exhausted",
                failure: DbFailure::PoolExhausted,
                detail: "no connection became free within the acquire timeout".to_owned(),
            },
            StoreError::Timeout => Self::QueryTimeout,
            StoreError::Contended { attempts, source } => Self::Unavailable {
                code: "database_unavailable",
                failure: DbFailure::Contention,
                detail: format!(
                    "gave up after {attempts} attempts{}",
                    source.map(|err| format!(": {err}")).unwrap_or_default()
                ),
            },
            StoreError::Internal { failure, source } => Self::Internal {
                failure: Some(failure),
                detail: source.to_string(),
            },
        }
    }
}

impl From<crate::domain::HashError> for ApiError {
    fn from(err: crate::domain::HashError) -> Self {
        match err {
            crate::domain::HashError::Busy => Self::Busy,
            crate::domain::HashError::Failed(detail) => Self::Internal {
                failure: None,
                detail,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Cause;
    use crate::store::retry::{RetryPolicy, with_retry};

    #[tokio::test]
    async fn a_transaction_that_keeps_deadlocking_becomes_a_503_with_retry_after() {
        let policy = RetryPolicy {
            max_attempts: 3,
            base_delay: std::time::Duration::from_millis(1),
            max_delay: std::time::Duration::from_millis(2),
        };
        let outcome: Result<(), StoreError> = with_retry(
            policy,
            |_| {},
            || async {
                Err(StoreError::Contended {
                    attempts: 1,
                    source: Some(Cause::message("deadlock detected")),
                })
            },
        )
        .await;
        let err = ApiError::from(outcome.unwrap_err());
        let response = err.as_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
        let problem = err.problem();
        assert_eq!(problem.code, "database_unavailable");
        assert!(
            !problem.detail.unwrap_or_default().contains("deadlock"),
            "database text leaked"
        );
    }

    #[test]
    fn internal_errors_say_nothing_of_their_cause() {
        let err = ApiError::from(StoreError::internal("SELECT password_hash FROM users"));
        let problem = err.problem();
        assert_eq!(problem.status, 500);
        assert_eq!(problem.code, "internal");
        assert!(!problem.detail.unwrap_or_default().contains("SELECT"));
    }
}
