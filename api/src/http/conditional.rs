//! Conditional requests (RFC 9110 §13): strong `ETag`s from each resource's `version`,
//! `If-None-Match` on reads (304) and `If-Match` on writes (412 unless current); and the
//! representations themselves, serialized once per version.

use std::borrow::Cow;
use std::marker::PhantomData;

use bytes::Bytes;
use poem::http::HeaderValue;
use poem::http::header::CONTENT_TYPE;
use poem::{IntoResponse, Response};
use poem_openapi::payload::Payload;
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::{ToHeader, Type};
use serde::Serialize;
use uuid::Uuid;

use crate::cache::versioned::Versioned;

/// The JSON of the resource `id` at `version`, rendered by `dto` unless `kept` has it: a
/// version names exactly one representation, so reading a resource nobody has changed costs a
/// look-up instead of building and serializing a document.
pub async fn render<T: Serialize>(
    kept: &Versioned,
    id: Uuid,
    version: i64,
    dto: impl FnOnce() -> T,
) -> Representation<T> {
    let bytes = kept.get_or_make(id, version, || json_bytes(&dto())).await;
    Representation(bytes, PhantomData)
}

/// `value` as `Json<T>` would send it. `Json<T>` goes through `ToJSON`, which builds a
/// `serde_json::Value` first; a representation's DTO derives `Serialize` as well, which writes
/// the same bytes (fields in declaration order, the same names and values: see the tests)
/// without that intermediate tree, at a fraction of the cost.
pub fn json_bytes<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// A JSON body already serialized, documented as `T`'s schema: exactly the bytes `Json<T>`
/// would send.
pub struct Representation<T>(Bytes, PhantomData<fn() -> T>);

impl<T> Representation<T> {
    /// `bytes` must be `json_bytes` of a `T`.
    pub fn new(bytes: Bytes) -> Self {
        Self(bytes, PhantomData)
    }
}

/// What `Json<T>` answers with, byte for byte.
const JSON: &str = "application/json; charset=utf-8";
/// `JSON` as a header value, checked at compile time rather than parsed for every answer.
const JSON_VALUE: HeaderValue = HeaderValue::from_static(JSON);

impl<T: Type> Payload for Representation<T> {
    const CONTENT_TYPE: &'static str = JSON;

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T> IntoResponse for Representation<T> {
    fn into_response(self) -> Response {
        Response::builder()
            .header(CONTENT_TYPE, JSON_VALUE)
            .body(self.0)
    }
}

/// The strong entity tag of a resource at `version`.
pub fn etag(version: i64) -> EntityTag {
    let text = format!("\"{version}\"");
    // Quotes and digits are visible ASCII: the conversion cannot fail.
    EntityTag(
        HeaderValue::from_maybe_shared(Bytes::from(text))
            .unwrap_or(HeaderValue::from_static("\"0\"")),
    )
}

/// A strong entity tag (`"3"`, made by `etag`), held as the header value it is sent as: made
/// once, it is sent without being parsed again (an entity cache keeps one per cached version, see
/// `of_cached`).
#[derive(Clone, Debug)]
pub struct EntityTag(HeaderValue);

impl Type for EntityTag {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        String::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        String::schema_ref()
    }

    fn as_raw_value(&self) -> Option<&Self> {
        Some(self)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
        Box::new(std::iter::once(self))
    }
}

impl EntityTag {
    /// The tag kept as `header` (made by `etag`, see `cache::Cached::tag`).
    pub fn from_kept(header: HeaderValue) -> Self {
        Self(header)
    }

    /// The header value, to keep.
    pub fn into_header(self) -> HeaderValue {
        self.0
    }
}

impl ToHeader for EntityTag {
    fn to_header(&self) -> Option<HeaderValue> {
        Some(self.0.clone())
    }
}

/// The versions an `If-Match` header accepts: `None` for no header or `*` (the write applies to
/// whatever exists); otherwise the versions it names — possibly none of ours, so nothing matches.
pub fn if_match(header: Option<&str>) -> Option<Vec<i64>> {
    let header = header?.trim();
    if header == "*" {
        return None;
    }
    Some(
        header
            .split(',')
            .filter_map(|tag| version_of(tag.trim(), false))
            .collect(),
    )
}

/// Whether `If-None-Match` names the current version (weak comparison, as RFC 9110 asks for GET).
pub fn none_match(header: Option<&str>, version: i64) -> bool {
    let Some(header) = header.map(str::trim) else {
        return false;
    };
    header == "*"
        || header
            .split(',')
            .filter_map(|tag| version_of(tag.trim(), true))
            .any(|named| named == version)
}

/// The version an entity tag names, if it is one of ours. A weak tag never matches strongly.
fn version_of(tag: &str, weak_allowed: bool) -> Option<i64> {
    let tag = match tag.strip_prefix("W/") {
        Some(weak) if weak_allowed => weak,
        Some(_) => return None,
        None => tag,
    };
    tag.strip_prefix('"')?.strip_suffix('"')?.parse().ok()
}

/// The responses of a single-resource operation, each carrying the resource's `ETag`: `$read`
/// (200, or 304 for a matching `If-None-Match`), `$written` (200 after a PATCH) and `$created`
/// (201 with `Location`).
macro_rules! resource_responses {
    ($read:ident, $written:ident, $created:ident, $dto:ty) => {
        #[derive(poem_openapi::ApiResponse)]
        pub enum $read {
            /// The current representation.
            #[oai(status = 200)]
            Ok(
                $crate::http::conditional::Representation<$dto>,
                /// Strong; changes whenever the resource does.
                #[oai(header = "ETag")]
                $crate::http::conditional::EntityTag,
            ),
            /// `If-None-Match` names the current version: the copy the client has is current.
            #[oai(status = 304)]
            NotModified(
                /// The current version's tag.
                #[oai(header = "ETag")]
                $crate::http::conditional::EntityTag,
            ),
        }

        impl $read {
            /// 304 when `if_none_match` names `version`, else the representation of `id` at
            /// `version` (serialized once per version, see `render`).
            pub async fn of(
                representations: &$crate::cache::versioned::Versioned,
                id: uuid::Uuid,
                version: i64,
                if_none_match: Option<&str>,
                dto: impl FnOnce() -> $dto,
            ) -> Self {
                let tag = $crate::http::conditional::etag(version);
                if $crate::http::conditional::none_match(if_none_match, version) {
                    Self::NotModified(tag)
                } else {
                    Self::Ok(
                        $crate::http::conditional::render(representations, id, version, dto).await,
                        tag,
                    )
                }
            }

            /// As `of`, for a resource read through the entity cache: its representation and its
            /// tag are kept in the cache's entry (`cache::Cached`), made once per version.
            /// `version` is the cached value's own.
            #[allow(dead_code)]
            pub fn of_cached<V>(
                cached: &$crate::cache::Cached<V>,
                version: i64,
                if_none_match: Option<&str>,
                dto: impl FnOnce(&V) -> $dto,
            ) -> Self {
                let tag = $crate::http::conditional::EntityTag::from_kept(
                    cached.tag(|| $crate::http::conditional::etag(version).into_header()),
                );
                if $crate::http::conditional::none_match(if_none_match, version) {
                    Self::NotModified(tag)
                } else {
                    let bytes =
                        cached.rendered(|value| $crate::http::conditional::json_bytes(&dto(value)));
                    Self::Ok($crate::http::conditional::Representation::new(bytes), tag)
                }
            }
        }

        #[derive(poem_openapi::ApiResponse)]
        pub enum $written {
            /// The resource as it now is.
            #[oai(status = 200)]
            Ok(
                poem_openapi::payload::Json<$dto>,
                /// The new version's tag.
                #[oai(header = "ETag")]
                $crate::http::conditional::EntityTag,
            ),
        }

        #[derive(poem_openapi::ApiResponse)]
        pub enum $created {
            /// Created.
            #[oai(status = 201)]
            Created(
                poem_openapi::payload::Json<$dto>,
                /// The new resource's URL.
                #[oai(header = "Location")]
                String,
                /// The new resource's tag.
                #[oai(header = "ETag")]
                $crate::http::conditional::EntityTag,
            ),
        }
    };
}
pub(crate) use resource_responses;

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use poem_openapi::types::ToJSON;

    use super::super::enums::{OrderStatusDto, UserRoleDto, UserStatusDto};
    use super::super::orders::{OrderDto, OrderItemDto};
    use super::super::products::ProductDto;
    use super::super::timestamp::Timestamp;
    use super::super::users::UserDto;
    use super::*;

    /// What `Json<T>` sends (`ToJSON`, then `serde_json`), beside what a representation holds.
    fn both<T: ToJSON + Serialize>(value: &T) -> (String, String) {
        let sent = serde_json::to_string(&value.to_json()).unwrap();
        let held = String::from_utf8(json_bytes(value).to_vec()).unwrap();
        (held, sent)
    }

    fn at(text: &str) -> Timestamp {
        Timestamp(
            DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc),
        )
    }

    /// Text that JSON must escape, and text it must not mangle.
    const AWKWARD: [&str; 4] = [
        "Ada \"the\" Lovelace\\",
        "tab\there\nline\u{1}\u{7f}",
        "Zoë 李 🦀 \u{2028}",
        "",
    ];

    #[test]
    fn representations_are_the_bytes_json_sends() {
        let statuses = [
            UserStatusDto::Active,
            UserStatusDto::Inactive,
            UserStatusDto::Suspended,
        ];
        let roles = [
            UserRoleDto::Customer,
            UserRoleDto::Admin,
            UserRoleDto::Admin,
            UserRoleDto::Customer,
        ];
        for (i, name) in AWKWARD.into_iter().enumerate() {
            let user = UserDto {
                id: Uuid::now_v7(),
                name: name.to_owned(),
                email: format!("{name}@example.com"),
                status: statuses[i % statuses.len()],
                role: roles[i],
                created_at: at("2026-11-24T10:00:00Z"),
                updated_at: at("2026-11-24T10:00:00.123456+02:00"),
            };
            let (held, sent) = both(&user);
            assert_eq!(held, sent, "{name:?}");
            let product = ProductDto {
                id: Uuid::nil(),
                sku: name.to_owned(),
                name: name.to_owned(),
                price_cents: i64::MAX,
                stock: if i == 0 { 0 } else { i64::MIN },
                created_at: at("2026-11-24T10:00:00.120Z"),
                updated_at: at("1970-01-01T00:00:00Z"),
            };
            let (held, sent) = both(&product);
            assert_eq!(held, sent, "{name:?}");
        }
        let item = |quantity| OrderItemDto {
            product_id: Uuid::now_v7(),
            quantity,
            unit_price_cents: 1999,
            line_total_cents: 1999 * quantity,
        };
        for (status, items) in [
            (OrderStatusDto::Pending, vec![item(1)]),
            (OrderStatusDto::Paid, vec![item(1), item(3)]),
            (OrderStatusDto::Shipped, vec![item(2)]),
            (OrderStatusDto::Cancelled, vec![]),
        ] {
            let order = OrderDto {
                id: Uuid::now_v7(),
                user_id: Uuid::max(),
                status,
                total_cents: items.iter().map(|item| item.line_total_cents).sum(),
                items,
                created_at: at("2026-11-24T10:00:00.000001Z"),
                updated_at: at("2026-11-24T10:00:00.5Z"),
            };
            let (held, sent) = both(&order);
            assert_eq!(held, sent);
        }
    }

    #[test]
    fn if_match_names_versions_or_anything() {
        assert_eq!(if_match(None), None);
        assert_eq!(if_match(Some("*")), None);
        assert_eq!(if_match(Some("\"3\"")), Some(vec![3]));
        assert_eq!(if_match(Some("\"3\", \"5\"")), Some(vec![3, 5]));
        // Weak tags and foreign tags match nothing: the write must be refused, not applied.
        assert_eq!(if_match(Some("W/\"3\"")), Some(vec![]));
        assert_eq!(if_match(Some("\"abc\"")), Some(vec![]));
    }

    #[test]
    fn if_none_match_compares_weakly_and_takes_lists_and_star() {
        assert!(none_match(Some("\"4\""), 4));
        assert!(none_match(Some("W/\"4\""), 4));
        assert!(none_match(Some("\"1\", \"4\""), 4));
        assert!(none_match(Some("*"), 4));
        assert!(!none_match(Some("\"3\""), 4));
        assert!(!none_match(None, 4));
    }

    #[test]
    fn entity_tags_are_the_quoted_version_and_match_themselves() {
        for version in [0, 1, 4, 10, 1_000_000, i64::MAX] {
            let sent = etag(version).to_header().unwrap();
            assert_eq!(sent, format!("\"{version}\"").as_str());
            let text = sent.to_str().unwrap();
            assert!(none_match(Some(text), version));
            assert!(!none_match(Some(text), version.wrapping_add(1)));
            assert_eq!(if_match(Some(text)), Some(vec![version]));
        }
    }

    #[test]
    fn a_cached_entry_makes_its_tag_once() {
        let cached = crate::cache::Cached::new(7_i64);
        let made = std::cell::Cell::new(0);
        let make = || {
            made.set(made.get() + 1);
            etag(**cached).into_header()
        };
        let first = cached.tag(make);
        let second = cached.tag(|| unreachable!("the tag is kept"));
        assert_eq!(made.get(), 1);
        assert_eq!(first, "\"7\"");
        assert_eq!(second, first);
    }
}
