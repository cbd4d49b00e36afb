//! The read models and inputs of the storage interface: what every engine returns and takes,
//! parsed once, in the engine, from what it stores. No engine's types and no HTTP here.

use chrono::{DateTime, FixedOffset, Utc};
use uuid::Uuid;

use super::{
    Cents, Email, IdempotencyKey, OrderLines, OrderStatus, PasswordHash, ProductName, Sku, Stock,
    UserName, UserRole, UserStatus,
};

/// A user as the service shows it: the stored row without its password hash, which never leaves
/// the repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: Uuid,
    pub name: String,
    pub email: String,
    pub status: UserStatus,
    pub role: UserRole,
    /// Incremented by every write: the `ETag`.
    pub version: i64,
    pub created_at: DateTime<FixedOffset>,
    pub updated_at: DateTime<FixedOffset>,
}

pub struct NewUser {
    pub name: UserName,
    pub email: Email,
    pub password: PasswordHash,
    pub status: UserStatus,
    pub role: UserRole,
}

/// A partial update: only the fields that are `Some` change.
#[derive(Default)]
pub struct UserChanges {
    pub name: Option<UserName>,
    pub email: Option<Email>,
    pub password: Option<PasswordHash>,
    pub status: Option<UserStatus>,
    pub role: Option<UserRole>,
    /// The session making a password change, which survives it (every other one is revoked).
    pub keep_session: Option<String>,
}

impl UserChanges {
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.email.is_none()
            && self.password.is_none()
            && self.status.is_none()
            && self.role.is_none()
    }

    /// A password, status or role change ends the user's sessions.
    pub fn revokes_sessions(&self) -> bool {
        self.password.is_some() || self.status.is_some() || self.role.is_some()
    }
}

#[derive(Clone, Debug, Default)]
pub struct UserFilter {
    pub status: Option<UserStatus>,
    /// Exact, case-insensitive (emails are stored lower-cased).
    pub email: Option<String>,
}

/// A product as the service shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Product {
    pub id: Uuid,
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub stock: i32,
    /// Incremented by every write: the `ETag`.
    pub version: i64,
    pub created_at: DateTime<FixedOffset>,
    pub updated_at: DateTime<FixedOffset>,
}

pub struct NewProduct {
    pub sku: Sku,
    pub name: ProductName,
    pub price: Cents,
    pub stock: Stock,
}

/// A partial update; the SKU is immutable and has no place here.
#[derive(Default)]
pub struct ProductChanges {
    pub name: Option<ProductName>,
    pub price: Option<Cents>,
    pub stock: Option<Stock>,
}

impl ProductChanges {
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.price.is_none() && self.stock.is_none()
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ProductFilter {
    /// `true`: stock > 0; `false`: stock = 0.
    pub in_stock: Option<bool>,
}

/// An order with its items.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    pub id: Uuid,
    pub user_id: Uuid,
    pub status: OrderStatus,
    pub total_cents: i64,
    /// One per product, in product-id order.
    pub items: Vec<OrderItem>,
    /// Incremented by every write: the `ETag`.
    pub version: i64,
    pub created_at: DateTime<FixedOffset>,
    pub updated_at: DateTime<FixedOffset>,
}

/// One line of an order, priced when it was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderItem {
    pub product_id: Uuid,
    pub quantity: i32,
    pub unit_price_cents: i64,
}

pub struct PlaceOrder {
    pub user_id: Uuid,
    pub lines: OrderLines,
    pub idempotency: Option<Idempotency>,
}

/// The client's key, and a fingerprint of its request to tell a retry from a different request.
pub struct Idempotency {
    pub key: IdempotencyKey,
    pub request_hash: String,
}

/// How a placement ended: a new order, or the order an earlier request with the same key placed.
pub enum Placed {
    New(Order),
    Replayed(Order),
}

#[derive(Clone, Copy, Debug, Default)]
pub struct OrderFilter {
    pub status: Option<OrderStatus>,
}

/// A session as a request sees it: whose it is and what they may do. Every change to the user's
/// role or status revokes their sessions, so the role kept here is never stale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub token_hash: String,
    pub user_id: Uuid,
    pub role: UserRole,
    pub expires_at: DateTime<FixedOffset>,
}

impl Session {
    /// Whose session this is, if it is the session of `token_hash` (a cached one is found by the
    /// first half of the hash, so the whole hash is compared) and it has not expired.
    pub fn owner(&self, token_hash: &str) -> Option<SessionOwner> {
        (self.token_hash == token_hash && self.expires_at > Utc::now()).then_some(SessionOwner {
            user_id: self.user_id,
            role: self.role,
            expires_at: self.expires_at,
        })
    }
}

/// What a request that presents a live session's token acts as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionOwner {
    pub user_id: Uuid,
    pub role: UserRole,
    /// When the session ends: from then on its token is refused.
    pub expires_at: DateTime<FixedOffset>,
}

impl SessionOwner {
    /// Whether the session has not ended yet.
    pub fn is_live(&self) -> bool {
        self.expires_at > Utc::now()
    }
}

/// The cache key of a session: the first 128 bits of its token's hash (as unique as a UUID).
pub fn cache_key(token_hash: &str) -> Uuid {
    token_hash
        .get(..32)
        .and_then(|prefix| Uuid::try_parse(prefix).ok())
        .unwrap_or_default()
}

/// How many failed logins a subject has within the window, and when the oldest of them expires.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Failures {
    pub count: u32,
    pub oldest: Option<DateTime<FixedOffset>>,
}
