//! `Consistency-Token`: every answer from a `/v1` route names the database state it includes, and
//! a read that presents a token sees that state or a later one (API.md, General).
//!
//! Every backend this service runs on today answers reads from the database that took the
//! writes (no replicas), where any read that starts after a write's answer already sees it. So
//! the token is issued — the time of the answer, opaque to clients — and every presented token
//! is satisfied as it stands; a backend with replicas would read its own position here instead.

use poem::Response;
use poem::http::HeaderValue;

pub const HEADER: &str = "consistency-token";

/// Names the state this response was produced from.
pub fn stamp(response: &mut Response) {
    let micros = chrono::Utc::now().timestamp_micros();
    if let Ok(value) = HeaderValue::from_str(&format!("t1.{micros:x}")) {
        response.headers_mut().insert(HEADER, value);
    }
}
