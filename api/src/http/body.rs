//! The JSON request body: read within the size limit, parsed strictly, with errors that say which
//! rule was broken — 415 for another media type, 413 over the limit, 400 for bytes that are not
//! JSON, 422 (naming the field) for JSON of the wrong shape.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use poem::http::header;
use poem::{Request, RequestBody};
use poem_openapi::registry::{MetaMediaType, MetaRequest, MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use super::error::ApiError;
use crate::domain::FieldError;

/// The body limit, set by the application as request data.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

/// A JSON body of type `T`. `T` derives `serde::Deserialize` (with `deny_unknown_fields`) for
/// parsing and `poem_openapi::Object` for its schema.
pub struct JsonBody<T>(pub T);

impl<'a, T> ApiExtractor<'a> for JsonBody<T>
where
    T: Type + DeserializeOwned,
{
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: "application/json",
                schema: schema_ref::<T>(),
            }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _options: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        parse(request, body).await.map(JsonBody).map_err(Into::into)
    }
}

fn schema_ref<T: Type>() -> MetaSchemaRef {
    T::schema_ref()
}

async fn parse<T: DeserializeOwned>(
    request: &Request,
    body: &mut RequestBody,
) -> Result<T, ApiError> {
    if !is_json(request.header(header::CONTENT_TYPE)) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let limit = request
        .data::<BodyLimit>()
        .map_or(1024 * 1024, |limit| limit.0);
    let body = body
        .take()
        .map_err(|_| ApiError::BadRequest("the request body is required".to_owned()))?;
    let bytes = read_limited(body, limit).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest("the request body is empty".to_owned()));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| ApiError::BadRequest("the request body is not valid UTF-8".to_owned()))?;
    // Syntax first: bytes that are not JSON at all are a malformed request (400)...
    let value: serde_json::Value = serde_json::from_str(text).map_err(|err| {
        ApiError::BadRequest(format!("the request body is not valid JSON: {err}"))
    })?;
    // ...while JSON of the wrong shape is a validation failure naming the field (422).
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        ApiError::Validation(vec![shape_error(&path, &inner.to_string())])
    })
}

/// Reads at most `limit` bytes, whatever the framing (Content-Length or chunked). Past the limit
/// the rest is read and discarded for a while before answering 413: a client still sending when
/// the connection closed would never see the answer.
async fn read_limited(body: poem::Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    use futures::StreamExt as _;
    // How much more is drained, at most, so that a 413 can be delivered.
    const DRAIN_BYTES: usize = 64 * 1024 * 1024;
    let unreadable = || ApiError::BadRequest("the request body could not be read".to_owned());
    let mut stream = body.into_bytes_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| unreadable())?;
        if bytes.len() + chunk.len() > limit {
            let mut drained = 0usize;
            let drain = async {
                while let Some(Ok(chunk)) = stream.next().await {
                    drained += chunk.len();
                    if drained > DRAIN_BYTES {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
            return Err(ApiError::PayloadTooLarge { limit });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// How long the rest of a body is read, at most, only to be discarded so that the answer reaches
/// the client over a connection that stays usable.
pub const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// `body`, as the endpoint will read it, and a handle on whatever the endpoint leaves unread.
///
/// hyper keeps a connection open after an answer only when the request's body has been read to
/// its end; when it has not (an error answered before the body was read: 401, 415, …), hyper reads
/// once more and, if the body has still not all arrived, closes the connection without having said
/// `Connection: close` — and the client's next request on it fails. So the unread rest is handed
/// back to be drained before the answer goes out.
pub fn returnable(body: poem::Body) -> (poem::Body, Unread) {
    let (back, unread) = oneshot::channel();
    let stream = Returning {
        inner: Some(Box::pin(body.into_bytes_stream())),
        back: Some(back),
    };
    (poem::Body::from_bytes_stream(stream), Unread(unread))
}

/// What the endpoint left of a request body (see `returnable`).
pub struct Unread(oneshot::Receiver<ByteStream>);

impl Unread {
    /// Reads and discards the rest of the body, up to `limit` bytes and for at most `within`;
    /// whether it was read to its end (if not, the connection must be closed after the answer).
    pub async fn drain(mut self, limit: usize, within: std::time::Duration) -> bool {
        use futures::StreamExt as _;
        // Nothing handed back: the endpoint read the body to its end (or still holds it).
        let Ok(mut rest) = self.0.try_recv() else {
            return true;
        };
        let mut drained = 0usize;
        let drain = async {
            while let Some(chunk) = rest.next().await {
                match chunk {
                    Ok(chunk) => drained += chunk.len(),
                    Err(_) => return false,
                }
                if drained > limit {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(within, drain).await.unwrap_or(false)
    }
}

/// A request body that, dropped before its end, hands the rest back to its `Unread`.
struct Returning {
    inner: Option<ByteStream>,
    back: Option<oneshot::Sender<ByteStream>>,
}

impl Stream for Returning {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let next = inner.as_mut().poll_next(cx);
        if let Poll::Ready(None) = next {
            // Read to its end: nothing is left to hand back.
            self.inner = None;
        }
        next
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if let (Some(rest), Some(back)) = (self.inner.take(), self.back.take()) {
            let _ = back.send(rest);
        }
    }
}

/// `application/json`, with or without parameters such as `charset=utf-8`.
fn is_json(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|value| value.parse::<mime::Mime>().ok())
        .is_some_and(|mime| mime.type_() == mime::APPLICATION && mime.subtype() == mime::JSON)
}

fn shape_error(path: &str, message: &str) -> FieldError {
    // serde reports an unknown or a missing field at the path of the object that holds it, in
    // its fixed wording "unknown field `name`, expected ..." / "missing field `name`"; the client
    // is better told the field's own path.
    for (prefix, problem) in [
        ("unknown field `", "unknown field"),
        ("missing field `", "is required"),
    ] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((name, _)) = rest.split_once('`')
        {
            let field = match path {
                "." | "" => name.to_owned(),
                // serde_path_to_error may already end the path with the key.
                path if path == name || path.ends_with(&format!(".{name}")) => path.to_owned(),
                parent => format!("{parent}.{name}"),
            };
            return FieldError::new(field, problem);
        }
    }
    let field = match path {
        "." | "" => "body".to_owned(),
        path => path.to_owned(),
    };
    let message = if message.starts_with("invalid type: null") {
        "must not be null".to_owned()
    } else {
        message.to_owned()
    };
    FieldError::new(field, message)
}

/// For optional fields that must not be `null` when present (`PATCH` bodies): absent is `None`
/// (via `#[serde(default)]`), present is parsed as `T` — which rejects `null`.
pub fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert!(is_json(Some("application/json")));
        assert!(is_json(Some("application/json; charset=utf-8")));
        assert!(!is_json(Some("text/plain")));
        assert!(!is_json(Some("application/x-www-form-urlencoded")));
        assert!(!is_json(None));
    }

    #[test]
    fn unknown_fields_are_named_by_their_own_path() {
        let e = shape_error(
            ".",
            "unknown field `nickname`, expected one of `name`, `email`",
        );
        assert_eq!(e.field, "nickname");
        let e = shape_error("items[0]", "unknown field `price`, expected `product_id`");
        assert_eq!(e.field, "items[0].price");
        let e = shape_error("items[2]", "missing field `quantity`");
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("items[2].quantity", "is required")
        );
        let e = shape_error(".", "missing field `stock`");
        assert_eq!(e.field, "stock");
    }
}
