//! MongoDB errors, classified once into the service's `StoreError`: by server error code and error
//! label, never by message text. A duplicate key is told apart by the key pattern of the unique
//! index it hit (the server's structured `keyPattern`), as SQL is by constraint name. The driver
//! keeps that reply for commands such as findAndModify but drops it from `insert_one`'s error, so
//! an insert says which unique index it can hit besides its fresh `_id` (`on_duplicate`).

use bson::Document;
use mongodb::error::{Error, ErrorKind, TRANSIENT_TRANSACTION_ERROR, WriteFailure};

use crate::store::error::{Cause, Conflict, StoreError};
use crate::store::failure::DbFailure;

/// Server error codes (`src/mongo/base/error_codes.yml` in the server's source).
mod code {
    pub const MAX_TIME_MS_EXPIRED: i32 = 50;
    pub const WRITE_CONFLICT: i32 = 112;
    pub const DOCUMENT_VALIDATION_FAILURE: i32 = 121;
    pub const DUPLICATE_KEY: i32 = 11000;
    pub const NOT_WRITABLE_PRIMARY: i32 = 10107;
    pub const INTERRUPTED_AT_SHUTDOWN: i32 = 11600;
    pub const SHUTDOWN_IN_PROGRESS: i32 = 91;
    pub const HOST_UNREACHABLE: i32 = 6;
    pub const NETWORK_TIMEOUT: i32 = 89;
}

/// The server's error code, when the server answered with one.
pub fn server_code(err: &Error) -> Option<i32> {
    match err.kind.as_ref() {
        ErrorKind::Command(command) => Some(command.code),
        ErrorKind::Write(WriteFailure::WriteError(write)) => Some(write.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(concern)) => Some(concern.code),
        _ => None,
    }
}

/// The fields of the unique index a duplicate-key error hit, from the server's reply (top level
/// for findAndModify, per write error for updates), when the driver kept the reply.
fn duplicate_key_fields(err: &Error) -> Option<Vec<String>> {
    let reply = err.server_response()?.to_document().ok()?;
    let pattern = reply.get_document("keyPattern").ok().cloned().or_else(|| {
        reply
            .get_array("writeErrors")
            .ok()
            .and_then(|errors| errors.first())
            .and_then(|first| first.as_document())
            .and_then(|first| first.get_document("keyPattern").ok())
            .cloned()
    });
    pattern.map(|pattern: Document| pattern.keys().cloned().collect())
}

/// Whether `err` is a duplicate key on the unique index over exactly `field` — or, when the
/// driver did not keep the server's reply, on the one unique index the caller knows it can hit.
pub fn is_duplicate_on(err: &Error, field: &str) -> bool {
    server_code(err) == Some(code::DUPLICATE_KEY)
        && duplicate_key_fields(err).is_none_or(|fields| fields == [field])
}

/// For an insert whose only possible duplicate (its `_id` being fresh) is on `field`'s unique
/// index: that duplicate is `conflict`; anything else is classified as usual.
pub fn on_duplicate(err: Error, field: &str, conflict: Conflict) -> StoreError {
    if is_duplicate_on(&err, field) {
        return StoreError::Conflict(conflict);
    }
    classify(&err)
}

/// Whether `err` is a write conflict (another transaction wrote the document first).
pub fn is_write_conflict(err: &Error) -> bool {
    server_code(err) == Some(code::WRITE_CONFLICT)
        || err.contains_label(TRANSIENT_TRANSACTION_ERROR)
}

/// A short description for logs: the server's code name, or the driver's error kind — never the
/// whole topology description a server-selection error carries.
pub fn describe(err: &Error) -> String {
    match err.kind.as_ref() {
        ErrorKind::Command(command) => format!("{} ({})", command.code_name, command.code),
        ErrorKind::Write(WriteFailure::WriteError(write)) => format!(
            "{} ({})",
            write.code_name.as_deref().unwrap_or("write error"),
            write.code
        ),
        ErrorKind::Write(WriteFailure::WriteConcernError(concern)) => {
            format!("{} ({})", concern.code_name, concern.code)
        }
        ErrorKind::ServerSelection { .. } => "no server could be selected".to_owned(),
        ErrorKind::Io(io) => format!("I/O error: {io}"),
        ErrorKind::InvalidArgument { message, .. } => format!("invalid argument: {message}"),
        ErrorKind::Authentication { .. } => "authentication failed".to_owned(),
        ErrorKind::DnsResolve { message, .. } => format!("DNS resolution failed: {message}"),
        other => other.to_string(),
    }
}

fn source(err: &Error) -> Cause {
    Cause::message(format!("MongoDB: {}", describe(err)))
}

fn internal(err: &Error) -> StoreError {
    StoreError::Internal {
        failure: DbFailure::Other,
        source: source(err),
    }
}

fn unavailable(err: &Error) -> StoreError {
    StoreError::Unavailable {
        failure: DbFailure::Unavailable,
        source: source(err),
    }
}

impl From<Error> for StoreError {
    fn from(err: Error) -> Self {
        classify(&err)
    }
}

pub fn classify(err: &Error) -> StoreError {
    // Write conflicts inside a transaction carry the label; retrying the whole transaction can
    // succeed.
    if err.contains_label(TRANSIENT_TRANSACTION_ERROR) {
        return StoreError::Contended {
            attempts: 1,
            source: Some(source(err)),
        };
    }
    match server_code(err) {
        Some(code::DUPLICATE_KEY) => {
            let fields = duplicate_key_fields(err).unwrap_or_default();
            match fields.iter().map(String::as_str).collect::<Vec<_>>()[..] {
                ["email"] => StoreError::Conflict(Conflict::EmailTaken),
                ["sku"] => StoreError::Conflict(Conflict::SkuTaken),
                _ => internal(err),
            }
        }
        Some(code::MAX_TIME_MS_EXPIRED) => StoreError::Timeout,
        Some(code::WRITE_CONFLICT) => StoreError::Contended {
            attempts: 1,
            source: Some(source(err)),
        },
        Some(code::DOCUMENT_VALIDATION_FAILURE) => {
            // The service validates before it writes; a rejection by the collection's validator
            // means the two disagree, which is a bug.
            tracing::error!(
                error = %describe(err),
                "a write was rejected by the collection's schema validator"
            );
            internal(err)
        }
        Some(
            code::NOT_WRITABLE_PRIMARY
            | code::INTERRUPTED_AT_SHUTDOWN
            | code::SHUTDOWN_IN_PROGRESS
            | code::HOST_UNREACHABLE
            | code::NETWORK_TIMEOUT,
        ) => unavailable(err),
        Some(_) => internal(err),
        None => match err.kind.as_ref() {
            ErrorKind::ServerSelection { .. }
            | ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::Shutdown
            | ErrorKind::Authentication { .. }
            | ErrorKind::DnsResolve { .. } => unavailable(err),
            _ => internal(err),
        },
    }
}
