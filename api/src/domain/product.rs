use super::{BoundedInt, Text};

/// 1–64 characters, trimmed; unique and immutable.
pub type Sku = Text<1, 64>;
/// 1–200 characters, trimmed.
pub type ProductName = Text<1, 200>;

/// An amount of money in integer cents.
pub type Cents = BoundedInt<i64, 0, 1_000_000_000>;
/// Units on hand.
pub type Stock = BoundedInt<i32, 0, 1_000_000_000>;
