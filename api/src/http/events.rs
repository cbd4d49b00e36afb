//! `/v1/events`: the change feed, read by cursor (see `store::events`).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use poem::web::Data;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};
use uuid::Uuid;

use super::Tag;
use super::bearer::BearerAuth;
use super::error::ApiError;
use super::failures::{EventFailures, Failure};
use super::orders::OrderDto;
use super::products::ProductDto;
use super::timestamp::Timestamp;
use super::users::UserDto;
use crate::auth::access;
use crate::domain::FieldError;
use crate::state::AppState;
use crate::store::events::{Event, EventType, Read, ReadError, Subject};

pub const DEFAULT_LIMIT: u64 = 100;
pub const MAX_LIMIT: u64 = 1000;
pub const MAX_WAIT_SECS: u64 = 30;

/// The representation a `GET` answers, for an event's `data`: the same DTOs, so the feed and
/// the API cannot drift apart.
pub fn render(subject: Subject<'_>) -> serde_json::Value {
    let rendered = match subject {
        Subject::User(user) => serde_json::to_value(UserDto::from(user.clone())),
        Subject::Product(product) => serde_json::to_value(ProductDto::from(product.clone())),
        Subject::Order(order) => serde_json::to_value(OrderDto::from(order.clone())),
    };
    // The DTOs are plain fields and strings: serializing them cannot fail.
    rendered.unwrap_or(serde_json::Value::Null)
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[oai(rename = "EventType")]
pub enum EventTypeDto {
    #[oai(rename = "user.created")]
    #[serde(rename = "user.created")]
    UserCreated,
    #[oai(rename = "user.updated")]
    #[serde(rename = "user.updated")]
    UserUpdated,
    #[oai(rename = "user.deleted")]
    #[serde(rename = "user.deleted")]
    UserDeleted,
    #[oai(rename = "product.created")]
    #[serde(rename = "product.created")]
    ProductCreated,
    #[oai(rename = "product.updated")]
    #[serde(rename = "product.updated")]
    ProductUpdated,
    #[oai(rename = "product.deleted")]
    #[serde(rename = "product.deleted")]
    ProductDeleted,
    #[oai(rename = "order.created")]
    #[serde(rename = "order.created")]
    OrderCreated,
    #[oai(rename = "order.updated")]
    #[serde(rename = "order.updated")]
    OrderUpdated,
}

impl From<EventType> for EventTypeDto {
    fn from(kind: EventType) -> Self {
        match kind {
            EventType::UserCreated => Self::UserCreated,
            EventType::UserUpdated => Self::UserUpdated,
            EventType::UserDeleted => Self::UserDeleted,
            EventType::ProductCreated => Self::ProductCreated,
            EventType::ProductUpdated => Self::ProductUpdated,
            EventType::ProductDeleted => Self::ProductDeleted,
            EventType::OrderCreated => Self::OrderCreated,
            EventType::OrderUpdated => Self::OrderUpdated,
        }
    }
}

/// One committed change.
#[derive(Object, serde::Serialize)]
#[oai(rename = "Event")]
pub struct EventDto {
    /// The event's own id: the same event published twice has the same id.
    pub id: Uuid,
    /// Strictly increasing along the feed.
    pub position: i64,
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind: EventTypeDto,
    pub resource_id: Uuid,
    /// The resource's version after the change: the number in its `ETag` (for a delete, one
    /// more than the last version).
    pub version: i64,
    pub occurred_at: Timestamp,
    /// The resource exactly as a `GET` right after the change answered it; `{id}` for a delete.
    pub data: serde_json::Value,
}

impl From<Event> for EventDto {
    fn from(event: Event) -> Self {
        Self {
            id: event.id,
            position: event.position,
            kind: event.kind.into(),
            resource_id: event.resource_id,
            version: event.version,
            occurred_at: event.occurred_at.into(),
            data: serde_json::from_str(&event.data).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// An event as a message body: the JSON `GET /v1/events` answers for it.
pub fn body(event: Event) -> Vec<u8> {
    serde_json::to_vec(&EventDto::from(event)).unwrap_or_default()
}

/// Events in feed order, and where to continue.
#[derive(Object)]
#[oai(rename = "EventPage")]
pub struct EventPage {
    pub items: Vec<EventDto>,
    /// Pass as `after` to read on: present on every answer, empty ones included.
    pub next_cursor: String,
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename = "EventStart")]
pub enum Start {
    /// From the oldest event still held.
    #[oai(rename = "oldest")]
    Oldest,
    /// No items: a cursor after every change answered before this request.
    #[oai(rename = "latest")]
    Latest,
}

/// The opaque cursor of a feed position.
pub fn cursor(position: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("e{position}"))
}

fn parse_cursor(cursor: &str) -> Option<i64> {
    let decoded = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let text = std::str::from_utf8(&decoded).ok()?;
    text.strip_prefix('e')?
        .parse::<i64>()
        .ok()
        .filter(|position| *position >= 0)
}

fn parse_types(types: &str) -> Result<Vec<EventType>, String> {
    types
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| EventType::parse(name).ok_or_else(|| format!("unknown event type {name:?}")))
        .collect()
}

pub struct EventsApi;

#[OpenApi(tag = "Tag::Events")]
impl EventsApi {
    /// Read the change feed (admins)
    ///
    /// Every committed change to a user, product or order, once, in commit order. Follow
    /// `next_cursor` (pass it as `after`) and no event is skipped or repeated, however writes
    /// interleave. With `wait`, an answer that would be empty is held until an event arrives.
    #[oai(path = "/v1/events", method = "get", operation_id = "listEvents")]
    // One argument a query parameter, each documented where it is declared.
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        state: Data<&Arc<AppState>>,
        auth: BearerAuth,
        /// A `next_cursor` from an earlier answer: the events after it.
        after: Query<Option<String>>,
        /// Where to begin without `after`: `oldest` (the default) or `latest`.
        start: Query<Option<Start>>,
        /// How many events at most (1–1000, default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u64>>,
        /// Only these types, comma-separated (`order.created,order.updated`).
        #[oai(name = "type")]
        types: Query<Option<String>>,
        /// Seconds to hold an empty answer until an event arrives (0–30, default 0).
        #[oai(validator(minimum(value = "0"), maximum(value = "30")))]
        wait: Query<Option<u64>>,
    ) -> Result<Json<EventPage>, Failure<EventFailures>> {
        access::read_events(&auth.0)?;
        let mut errors = Vec::new();
        let after = match after.0.as_deref() {
            Some(text) => match parse_cursor(text) {
                Some(position) => Some(position),
                None => {
                    errors.push(FieldError::new("after", "is not a cursor of this feed"));
                    None
                }
            },
            None => None,
        };
        if after.is_some() && start.0.is_some() {
            errors.push(FieldError::new(
                "start",
                "cannot be sent together with after",
            ));
        }
        let types = match types.0.as_deref().map(parse_types).transpose() {
            Ok(types) => types.unwrap_or_default(),
            Err(message) => {
                errors.push(FieldError::new("type", message));
                Vec::new()
            }
        };
        if !errors.is_empty() {
            return Err(ApiError::Validation(errors).into());
        }
        let events = &state.events;
        if start.0 == Some(Start::Latest) {
            let latest = events.latest().await?;
            return Ok(Json(EventPage {
                items: Vec::new(),
                next_cursor: cursor(latest),
            }));
        }
        // A held answer must still come back within the request deadline.
        let deadline = state.config.request_timeout;
        let wait = Duration::from_secs(wait.0.unwrap_or(0).min(MAX_WAIT_SECS))
            .min(deadline.saturating_sub(Duration::from_secs(1)));
        let read = Read {
            after,
            limit: limit.0.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT),
            types,
            wait,
        };
        match events.read(read).await {
            Ok(answer) => Ok(Json(EventPage {
                items: answer.items.into_iter().map(EventDto::from).collect(),
                next_cursor: cursor(answer.next),
            })),
            Err(ReadError::Expired) => Err(ApiError::CursorExpired.into()),
            Err(ReadError::Store(err)) => Err(err.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_as_its_position() {
        for position in [0, 1, 42, i64::MAX] {
            assert_eq!(parse_cursor(&cursor(position)), Some(position));
        }
    }

    #[test]
    fn anything_else_is_not_a_cursor() {
        for text in [
            "",
            "e1",
            "!!",
            &URL_SAFE_NO_PAD.encode("e-1"),
            &URL_SAFE_NO_PAD.encode("x1"),
        ] {
            assert_eq!(parse_cursor(text), None, "{text:?}");
        }
    }

    #[test]
    fn types_are_read_from_a_comma_separated_list() {
        assert_eq!(
            parse_types("order.created, user.deleted"),
            Ok(vec![EventType::OrderCreated, EventType::UserDeleted])
        );
        assert!(parse_types("order.created,order.deleted").is_err());
    }
}
