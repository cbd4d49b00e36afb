//! `Consistency-Token`: every answer from a `/v1` route names the database state it includes, and
//! a read that presents a token sees that state or a later one (API.md, General).
//!
//! With PostgreSQL read replicas the token is a WAL position, `p1.<hex>`: the highest position
//! this instance has committed, heard announced or read at (`store::consistency::Positions`),
//! and never below the one presented, so it covers what the request wrote or read. A read that
//! presents one is routed to a replica that has replayed that far, or to the primary
//! (`store::sql::replicas`). A token this instance cannot read (malformed, or from a deployment
//! without replicas) could name any state, so such a read is answered by the primary, which is
//! always at or past every state; API.md names no error for it, and refusing it would break
//! clients across a change of configuration.
//!
//! Without replicas (SQLite, MariaDB, MongoDB, or PostgreSQL alone) any read that starts after a
//! write's answer already sees it, so the token issued is the time of the answer, opaque to
//! clients, and every presented token is satisfied as it stands.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use poem::Response;
use poem::http::{HeaderName, HeaderValue};

use crate::store::consistency::{PRIMARY_ONLY, Positions, Presented, Scope};

pub const HEADER: &str = "consistency-token";
/// `HEADER`, parsed once at compile time rather than on every response.
const HEADER_NAME: HeaderName = HeaderName::from_static(HEADER);

/// The position tokens' prefix, versioned so that another scheme can follow.
const POSITION: &str = "p1.";
/// The time tokens' prefix.
const TIME: &str = "t1.";

/// What the request's header names. Only meaningful with replicas.
pub fn presented(header: Option<&str>, positions: &Positions) -> Presented {
    if !positions.is_enabled() {
        return Presented::Nothing;
    }
    let Some(token) = header.map(str::trim) else {
        return Presented::Nothing;
    };
    match token
        .strip_prefix(POSITION)
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
    {
        Some(position) => Presented::At(position),
        None => Presented::Unreadable,
    }
}

/// Names the state this response was produced from.
pub fn stamp(response: &mut Response, scope: &Scope, positions: &Positions) {
    let token = if positions.is_enabled() {
        let presented = match scope.presented() {
            Presented::At(position) => position,
            Presented::Unreadable => PRIMARY_ONLY,
            Presented::Nothing => 0,
        };
        let position = if scope.is_position_unknown() {
            PRIMARY_ONLY
        } else {
            positions.seen().max(presented)
        };
        token(POSITION, position)
    } else {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_micros() as u64);
        token(TIME, micros)
    };
    if let Some(value) = token {
        response.headers_mut().insert(HEADER_NAME, value);
    }
}

/// `prefix` and `n` in lower-case hex, without leading zeros, made straight into the header
/// value: every `/v1` answer carries one, and the formatting machinery costs more than the rest
/// of the stamp.
fn token(prefix: &str, n: u64) -> Option<HeaderValue> {
    let mut digits = [0u8; 16];
    hex::encode_to_slice(n.to_be_bytes(), &mut digits).ok()?;
    let first = digits.iter().position(|&digit| digit != b'0').unwrap_or(15);
    let mut text = Vec::with_capacity(prefix.len() + digits.len() - first);
    text.extend_from_slice(prefix.as_bytes());
    text.extend_from_slice(&digits[first..]);
    HeaderValue::from_maybe_shared(Bytes::from(text)).ok()
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    #[test]
    fn position_tokens_are_read_only_with_replicas() {
        let positions = Positions::default();
        assert_eq!(presented(Some("p1.ff"), &positions), Presented::Nothing);
        positions.enable();
        assert_eq!(presented(None, &positions), Presented::Nothing);
        assert_eq!(presented(Some("p1.ff"), &positions), Presented::At(255));
        assert_eq!(presented(Some("p1.zz"), &positions), Presented::Unreadable);
        assert_eq!(presented(Some("t1.ff"), &positions), Presented::Unreadable);
    }

    #[test]
    fn the_answer_covers_the_presented_token_and_what_this_instance_saw() {
        let positions = Positions::default();
        positions.enable();
        positions.read_at(0x40);
        let mut response = Response::default();
        stamp(&mut response, &Scope::new(Presented::At(0x80)), &positions);
        assert_eq!(response.headers()[HEADER], "p1.80");
        stamp(&mut response, &Scope::new(Presented::Nothing), &positions);
        assert_eq!(response.headers()[HEADER], "p1.40");
    }

    #[test]
    fn tokens_are_the_prefix_and_the_number_in_hex() {
        for n in [0, 1, 0xf, 0x10, 0x66153336d40bf, u64::MAX] {
            assert_eq!(token(TIME, n).unwrap(), format!("t1.{n:x}").as_str());
        }
    }

    #[test]
    fn without_replicas_the_answer_names_its_time() {
        let micros = || Utc::now().timestamp_micros() as u64;
        let before = micros();
        let mut response = Response::default();
        stamp(
            &mut response,
            &Scope::new(Presented::Nothing),
            &Positions::default(),
        );
        let after = micros();
        let token = response.headers()[HEADER].to_str().unwrap();
        let stamped = u64::from_str_radix(token.strip_prefix("t1.").unwrap(), 16).unwrap();
        assert!((before..=after).contains(&stamped), "{token}");
    }
}
