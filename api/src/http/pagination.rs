//! Page and cursor parameters, the opaque cursor, and the `Page<T>` envelope.
//!
//! Every list operation takes the same three parameters, `page`, `per_page` and `cursor`.
//! poem-openapi binds one parameter to one handler argument, so they are read here by one
//! extractor (`Paging`) instead of being declared again in every handler, and `spec` declares
//! them in the document for every operation that answers a page (`PARAMETERS`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SecondsFormat};
use uuid::Uuid;

use poem::{FromRequest, Request, RequestBody};

use super::error::ApiError;
use crate::domain::FieldError;
use crate::store::{CursorKey, PageOf, PageRequest};

pub const DEFAULT_PER_PAGE: u64 = 20;
pub const MAX_PER_PAGE: u64 = 100;

/// The listing parameters of a request, as sent: checked by `Paging::request`.
pub struct Paging {
    page: Option<u64>,
    per_page: Option<u64>,
    cursor: Option<String>,
    errors: Vec<FieldError>,
}

impl<'a> FromRequest<'a> for Paging {
    async fn from_request(request: &'a Request, _body: &mut RequestBody) -> poem::Result<Self> {
        let mut paging = Paging {
            page: None,
            per_page: None,
            cursor: None,
            errors: Vec::new(),
        };
        let query = request.uri().query().unwrap_or_default();
        // The first occurrence of a parameter counts, as for every other query parameter.
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match name.as_ref() {
                "page" if paging.page.is_none() => paging.page = paging.number("page", &value),
                "per_page" if paging.per_page.is_none() => {
                    paging.per_page = paging.number("per_page", &value)
                }
                "cursor" if paging.cursor.is_none() => paging.cursor = Some(value.into_owned()),
                _ => {}
            }
        }
        Ok(paging)
    }
}

impl Paging {
    fn number(&mut self, name: &str, value: &str) -> Option<u64> {
        match value.parse() {
            Ok(number) => Some(number),
            Err(_) => {
                self.errors
                    .push(FieldError::new(name, "must be a whole number"));
                // Recorded, so that a later occurrence does not count instead.
                Some(0)
            }
        }
    }

    /// The page request for a listing of `resource`, or every problem with the parameters.
    pub fn request(&self, resource: &str) -> Result<PageRequest, ApiError> {
        let mut errors = self.errors.clone();
        let checked = page_request(resource, self.page, self.per_page, self.cursor.as_deref());
        match checked {
            Ok(request) if errors.is_empty() => Ok(request),
            Ok(_) => Err(ApiError::Validation(errors)),
            Err(ApiError::Validation(more)) => {
                // A number that did not parse is reported once, not again as out of range.
                errors.extend(
                    more.into_iter()
                        .filter(|e| !self.errors.iter().any(|seen| seen.field == e.field)),
                );
                Err(ApiError::Validation(errors))
            }
            Err(other) => Err(other),
        }
    }
}

/// The three parameters as the document declares them, on every operation that answers a page.
pub fn parameters() -> serde_json::Value {
    let parameter = |name: &str, description: &str, schema: serde_json::Value| {
        serde_json::json!({
            "name": name,
            "in": "query",
            "description": description,
            "required": false,
            "deprecated": false,
            "explode": true,
            "schema": schema,
        })
    };
    serde_json::json!([
        parameter(
            "page",
            "1-based page number (page mode; not with `cursor`).",
            serde_json::json!({"type": "integer", "format": "uint64", "minimum": 1}),
        ),
        parameter(
            "per_page",
            "Items per page.",
            serde_json::json!({
                "type": "integer",
                "format": "uint64",
                "minimum": 1,
                "maximum": MAX_PER_PAGE,
                "default": DEFAULT_PER_PAGE,
            }),
        ),
        parameter(
            "cursor",
            "Opaque cursor from `next_cursor` (keyset mode; not with `page`).",
            serde_json::json!({"type": "string"}),
        ),
    ])
}

/// Turns the listing parameters into a page request. `cursor` selects keyset mode and may not
/// be combined with `page`.
pub fn page_request(
    resource: &str,
    page: Option<u64>,
    per_page: Option<u64>,
    cursor: Option<&str>,
) -> Result<PageRequest, ApiError> {
    let mut errors = Vec::new();
    let per_page = per_page.unwrap_or(DEFAULT_PER_PAGE);
    if !(1..=MAX_PER_PAGE).contains(&per_page) {
        errors.push(FieldError::new(
            "per_page",
            format!("must be between 1 and {MAX_PER_PAGE}"),
        ));
    }
    if page == Some(0) {
        errors.push(FieldError::new("page", "must be at least 1"));
    }
    let request = match (cursor, page) {
        (Some(_), Some(_)) => {
            errors.push(FieldError::new("cursor", "cannot be combined with page"));
            None
        }
        (Some(cursor), None) => match decode_cursor(resource, cursor) {
            Some(after) => Some(PageRequest::Keyset {
                after: Some(after),
                per_page,
            }),
            None => {
                errors.push(FieldError::new(
                    "cursor",
                    "is not a cursor this service issued",
                ));
                None
            }
        },
        (None, page) => Some(PageRequest::Offset {
            page: page.unwrap_or(1),
            per_page,
        }),
    };
    match request {
        Some(request) if errors.is_empty() => Ok(request),
        _ => Err(ApiError::Validation(errors)),
    }
}

/// An opaque, URL-safe token naming the resource and the last row of a page.
pub fn encode_cursor(resource: &str, key: CursorKey) -> String {
    let created_at = key.created_at.to_rfc3339_opts(SecondsFormat::Micros, true);
    URL_SAFE_NO_PAD.encode(format!("{resource}|{created_at}|{}", key.id))
}

pub fn decode_cursor(resource: &str, cursor: &str) -> Option<CursorKey> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor.as_bytes()).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut parts = text.splitn(3, '|');
    if parts.next()? != resource {
        return None;
    }
    let created_at = DateTime::parse_from_rfc3339(parts.next()?).ok()?;
    let id = Uuid::parse_str(parts.next()?).ok()?;
    Some(CursorKey { created_at, id })
}

/// The envelope's fields other than `items`, shared by every `Page<T>` (flattened into it).
#[derive(poem_openapi::Object)]
#[oai(skip_serializing_if_is_none)]
pub struct PageMeta {
    pub per_page: u64,
    /// Page mode only: the 1-based page number.
    pub page: Option<u64>,
    /// Page mode only: matching items in all (see `total_is_estimate`).
    pub total_items: Option<u64>,
    /// Page mode only: 0 for an empty result.
    pub total_pages: Option<u64>,
    /// Page mode only: `true` when `total_items` is the planner's estimate, given past
    /// 10,000 matching rows on PostgreSQL instead of counting them all.
    pub total_is_estimate: Option<bool>,
    /// Present when more items follow the last one; pass it as `cursor` for the next page.
    pub next_cursor: Option<String>,
}

pub fn envelope<T>(resource: &str, request: PageRequest, page: &PageOf<T>) -> PageMeta {
    let (page_number, per_page) = match request {
        PageRequest::Offset { page, per_page } => (Some(page), per_page),
        PageRequest::Keyset { per_page, .. } => (None, per_page),
    };
    let total = page.total.filter(|_| page_number.is_some());
    PageMeta {
        per_page,
        page: page_number,
        total_items: total.map(|t| t.items),
        total_pages: total.map(|t| t.items.div_ceil(per_page)),
        total_is_estimate: total.map(|t| t.is_estimate),
        next_cursor: page.next.map(|key| encode_cursor(resource, key)),
    }
}

/// Declares `$page`, the `Page<$item>` envelope of API.md.
macro_rules! page_of {
    ($page:ident, $item:ty, $doc:literal) => {
        #[doc = $doc]
        #[derive(poem_openapi::Object)]
        pub struct $page {
            pub items: Vec<$item>,
            #[oai(flatten)]
            pub meta: $crate::http::pagination::PageMeta,
        }

        impl $page {
            /// The envelope of a repository page listed for `request`.
            pub fn of<T: Into<$item>>(
                resource: &str,
                request: $crate::store::PageRequest,
                page: $crate::store::PageOf<T>,
            ) -> Self {
                let meta = $crate::http::pagination::envelope(resource, request, &page);
                Self {
                    items: page.items.into_iter().map(Into::into).collect(),
                    meta,
                }
            }
        }
    };
}
pub(crate) use page_of;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_are_bound_to_their_resource() {
        let key = CursorKey {
            created_at: DateTime::parse_from_rfc3339("2026-11-24T10:00:00.123456Z").unwrap(),
            id: Uuid::now_v7(),
        };
        let cursor = encode_cursor("users", key);
        assert_eq!(decode_cursor("users", &cursor), Some(key));
        assert_eq!(decode_cursor("products", &cursor), None);
        assert_eq!(decode_cursor("users", "not-a-cursor"), None);
    }

    async fn paging(query: &str) -> Paging {
        let request = Request::builder()
            .uri_str(format!("/v1/users?{query}"))
            .finish();
        let (request, mut body) = request.split();
        Paging::from_request(&request, &mut body).await.unwrap()
    }

    fn fields(result: Result<PageRequest, ApiError>) -> Vec<String> {
        match result {
            Err(ApiError::Validation(errors)) => errors.into_iter().map(|e| e.field).collect(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn paging_reads_the_three_parameters_and_reports_every_problem_once() {
        assert_eq!(
            paging("page=3&per_page=50&status=active")
                .await
                .request("users")
                .ok(),
            Some(PageRequest::Offset {
                page: 3,
                per_page: 50
            })
        );
        assert_eq!(
            paging("").await.request("users").ok(),
            Some(PageRequest::Offset {
                page: 1,
                per_page: DEFAULT_PER_PAGE
            })
        );
        assert_eq!(
            fields(paging("page=x&per_page=0").await.request("users")),
            ["page", "per_page"]
        );
        assert_eq!(
            fields(paging("page=0&page=2").await.request("users")),
            ["page"]
        );
        assert_eq!(
            fields(paging("per_page=-1").await.request("users")),
            ["per_page"]
        );
        assert_eq!(
            fields(paging("cursor=nope").await.request("users")),
            ["cursor"]
        );
    }

    #[test]
    fn cursor_and_page_together_are_refused() {
        let cursor = encode_cursor(
            "users",
            CursorKey {
                created_at: DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z").unwrap(),
                id: Uuid::nil(),
            },
        );
        assert!(page_request("users", Some(1), None, Some(&cursor)).is_err());
        assert!(page_request("users", None, Some(101), None).is_err());
        assert!(page_request("users", None, None, Some(&cursor)).is_ok());
    }
}
