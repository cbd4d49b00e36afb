//! What every request passes through: a request id, a tracing span, the deadline, the metrics,
//! one log line, and the conversion of every framework error into problem+json.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use poem::PathPattern;
use poem::error::{MethodNotAllowedError, NotFoundError, ResponseError};
use poem::http::{HeaderName, HeaderValue, StatusCode, header};
use poem::{Endpoint, IntoResponse, Request, Response};
use poem_openapi::OperationId;
use poem_openapi::error::{
    ContentTypeError, ParseParamError, ParsePathError, ParseRequestPayloadError,
};
use tracing::Instrument;
use uuid::Uuid;

use super::body;
use super::consistency;
use super::error::{ApiError, FailureNote};
use crate::domain::FieldError;
use crate::state::AppState;
use crate::store::DbFailure;
use crate::store::consistency as store_consistency;

const REQUEST_ID: &str = "x-request-id";
/// `REQUEST_ID`, parsed once at compile time rather than on every response.
const REQUEST_ID_NAME: HeaderName = HeaderName::from_static(REQUEST_ID);

tokio::task_local! {
    static DEADLINE: Instant;
}

/// When the current request's deadline passes (`None` outside a request): work that queues, such
/// as password hashing, is refused at once rather than started when it cannot finish in time.
pub fn deadline() -> Option<Instant> {
    DEADLINE.try_with(|deadline| *deadline).ok()
}

/// Operation id → path template, from the OpenAPI document.
pub type RouteTemplates = HashMap<String, String>;

pub async fn observe<E: Endpoint>(
    state: Arc<AppState>,
    templates: Arc<RouteTemplates>,
    next: Arc<E>,
    request: Request,
) -> poem::Result<Response> {
    let request_id = request
        .header(REQUEST_ID)
        .filter(|id| is_acceptable_request_id(id))
        .map(str::to_owned)
        .unwrap_or_else(|| Uuid::now_v7().to_string());
    // What the endpoint leaves unread of a body is drained before the answer goes out.
    let mut request = request;
    let unread = may_have_body(&request).then(|| {
        let (readable, unread) = body::returnable(request.take_body());
        request.set_body(readable);
        unread
    });
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let is_resource_route = path.starts_with("/v1/");
    // Only the id is the span's: every line a request writes carries it, and the request's own
    // line (below) names the rest once.
    let span = tracing::info_span!("request", request_id = %request_id);

    let positions = Arc::clone(&state.positions);
    let scope = store_consistency::Scope::new(consistency::presented(
        request.header(consistency::HEADER),
        &positions,
    ));

    async move {
        let started = Instant::now();
        let deadline = state.config.request_timeout;
        // The store reads the presented token from the request's scope (`store::consistency`).
        let work = DEADLINE.scope(
            started + deadline,
            store_consistency::within(scope.clone(), next.call(request)),
        );
        let outcome = tokio::time::timeout(deadline, work).await;
        let response = match outcome {
            Ok(Ok(response)) => response.into_response(),
            Ok(Err(err)) => problem_from(err),
            Err(_) => {
                tracing::warn!(
                    deadline_ms = deadline.as_millis() as u64,
                    "request deadline passed"
                );
                ApiError::RequestTimeout.as_response()
            }
        };
        let mut response = response;
        if let Some(unread) = unread
            && !unread
                .drain(state.config.max_body_bytes, body::DRAIN_TIME)
                .await
        {
            // Closing without saying so would fail the client's next request on it.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let status = response.status();
        let route = route_of(&response, &templates);
        if let Some(note) = response.extensions().get::<FailureNote>().cloned() {
            report_failure(&state, &route, &note);
        }
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(REQUEST_ID_NAME, value);
        }
        if is_resource_route && (status.is_success() || status == StatusCode::NOT_MODIFIED) {
            consistency::stamp(&mut response, &scope, &positions);
        }
        let elapsed = started.elapsed();
        let metrics = &state.metrics;
        metrics
            .http_requests
            .with_label_values(&[method.as_str(), &route, status.as_str()])
            .inc();
        metrics
            .http_duration
            .with_label_values(&[method.as_str(), &route])
            .observe(elapsed.as_secs_f64());
        tracing::info!(
            %method,
            %path,
            status = status.as_u16(),
            route = %route,
            latency_ms = %Millis(elapsed),
            "request"
        );
        Ok(response)
    }
    .instrument(span)
    .await
}

/// A duration in milliseconds with three decimals, formatted with integer arithmetic (a float's
/// shortest representation costs more than the rest of the line).
struct Millis(std::time::Duration);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let micros = self.0.as_micros();
        write!(f, "{}.{:03}", micros / 1000, micros % 1000)
    }
}

/// Whether the request announces a body (a length above zero, or chunks).
fn may_have_body(request: &Request) -> bool {
    request.header(header::TRANSFER_ENCODING).is_some()
        || request
            .header(header::CONTENT_LENGTH)
            .is_some_and(|length| length.trim() != "0")
}

/// A client's id is echoed only when it is short, visible ASCII: it ends up in every log line.
fn is_acceptable_request_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}

/// The matched route template (`/v1/users/{id}`), never the raw path: raw ids would give every
/// request its own time series.
fn route_of(response: &Response, templates: &RouteTemplates) -> String {
    if let Some(template) = response
        .data::<OperationId>()
        .and_then(|operation| templates.get(operation.0))
    {
        return template.clone();
    }
    match response.data::<PathPattern>() {
        Some(pattern) => pattern
            .0
            .split('/')
            .map(|segment| match segment.strip_prefix(':') {
                Some(name) => format!("{{{name}}}"),
                None => segment.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("/"),
        None => "unmatched".to_owned(),
    }
}

/// Framework errors (routing, parameter parsing) become the same problem+json as ours.
fn problem_from(err: poem::Error) -> Response {
    let pattern = err.data::<PathPattern>().cloned();
    let operation = err.data::<OperationId>().cloned();
    let mut response = if let Some(api) = err.downcast_ref::<ApiError>() {
        api.as_response()
    } else {
        classify_framework_error(&err).as_response()
    };
    if let Some(pattern) = pattern {
        response.set_data(pattern);
    }
    if let Some(operation) = operation {
        response.set_data(operation);
    }
    response
}

fn classify_framework_error(err: &poem::Error) -> ApiError {
    if err.is::<NotFoundError>() {
        return ApiError::NotFound {
            detail: "no such route".to_owned(),
            reference: None,
        };
    }
    if err.is::<MethodNotAllowedError>() {
        return ApiError::MethodNotAllowed;
    }
    // A path id that is not a UUID names nothing.
    if err.is::<ParsePathError>() {
        return ApiError::not_found();
    }
    if let Some(param) = err.downcast_ref::<ParseParamError>() {
        let message = if param.reason.contains("expected input") {
            "is required".to_owned()
        } else {
            format!("is invalid: {}", param.reason)
        };
        return ApiError::Validation(vec![FieldError::new(param.name, message)]);
    }
    if err.is::<ContentTypeError>() {
        return ApiError::UnsupportedMediaType;
    }
    if let Some(payload) = err.downcast_ref::<ParseRequestPayloadError>() {
        return ApiError::BadRequest(payload.reason.clone());
    }
    match err.status() {
        // poem-openapi's bearer extractor: no `Authorization: Bearer …` header at all.
        StatusCode::UNAUTHORIZED => ApiError::Unauthenticated,
        StatusCode::NOT_FOUND => ApiError::not_found(),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge { limit: 0 },
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
        StatusCode::BAD_REQUEST => ApiError::BadRequest("the request is malformed".to_owned()),
        _ => {
            tracing::error!(error = %err, "unhandled error");
            ApiError::Internal {
                failure: None,
                detail: err.to_string(),
            }
        }
    }
}

/// One log line per database failure, with what an operator needs to act on it; and the count.
fn report_failure(state: &AppState, route: &str, note: &FailureNote) {
    state
        .metrics
        .db_errors
        .with_label_values(&[note.failure.label()])
        .inc();
    let db = &state.config.database;
    match note.failure {
        DbFailure::MissingSchema => tracing::error!(
            route,
            code = note.code,
            error = %note.detail,
            "the database schema is missing a table or column; run migrations: cargo run -p migration -- up"
        ),
        DbFailure::PoolExhausted => tracing::warn!(
            route,
            code = note.code,
            pool_size = db.max_connections,
            waited_ms = db.acquire_timeout.as_millis() as u64,
            "no pooled database connection became free within the acquire timeout"
        ),
        DbFailure::StatementTimeout => tracing::warn!(
            route,
            code = note.code,
            limit_ms = db.statement_timeout.as_millis() as u64,
            "a statement hit the statement timeout"
        ),
        DbFailure::Contention => {
            tracing::warn!(route, code = note.code, detail = %note.detail, "transaction kept deadlocking")
        }
        DbFailure::Unavailable => {
            tracing::error!(
                route,
                code = note.code,
                kind = note.failure.label(),
                "database unavailable"
            )
        }
        _ => tracing::error!(
            route,
            code = note.code,
            error = %note.detail,
            "unexpected database error"
        ),
    }
}
