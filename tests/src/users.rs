//! What the tests of the Users resource share: listing it, creating through it, reading its
//! timestamps.

use serde_json::Value;

use crate::{Reply, TestApp, fields_of};

pub const PASSWORD: &str = "correct horse battery";

/// The fields a 422 names.
#[track_caller]
pub fn invalid_fields(reply: &Reply) -> Vec<String> {
    fields_of(&reply.problem(422, "validation_failed"))
}

/// `GET /v1/users?…` with the parameters encoded for the query string.
pub async fn list(app: &TestApp, query: &[(&str, &str)]) -> Reply {
    app.send(app.client.get(app.url("/v1/users")).query(query))
        .await
}

pub async fn create(app: &TestApp, body: Value) -> Reply {
    app.post("/v1/users", &body).await
}

/// A timestamp as a key that sorts by time:
/// `2026-11-24T10:00:00.12Z` → `2026-11-24T10:00:00.120000`.
pub fn time_key(timestamp: &str) -> String {
    let text = timestamp
        .strip_suffix('Z')
        .unwrap_or_else(|| panic!("{timestamp} does not end in Z"));
    let (seconds, fraction) = text.split_once('.').unwrap_or((text, ""));
    assert!(
        fraction.len() <= 6 && fraction.bytes().all(|b| b.is_ascii_digit()),
        "{timestamp} carries more than microseconds"
    );
    format!("{seconds}.{fraction:0<6}")
}
