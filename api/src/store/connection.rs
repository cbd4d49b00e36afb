//! What connecting to a database can fail with, and what a pool reports, whichever engine.

/// Why start-up could not use the database. Rendered as the one line an operator reads.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach the database at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("cannot reach the database at {url}: no answer within {timeout_ms} ms")]
    TimedOut { url: String, timeout_ms: u128 },
}

/// Connections in use and idle, for `/metrics`.
pub struct PoolStats {
    pub in_use: u32,
    pub idle: u32,
}
