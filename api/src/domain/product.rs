use super::Text;

/// 1–64 characters, trimmed; unique and immutable.
pub type Sku = Text<1, 64>;
/// 1–200 characters, trimmed.
pub type ProductName = Text<1, 200>;

/// An amount of money in integer cents, 0–1,000,000,000.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cents(i64);

impl Cents {
    pub const MAX: i64 = 1_000_000_000;

    pub fn parse(value: i64) -> Result<Self, String> {
        if (0..=Self::MAX).contains(&value) {
            Ok(Self(value))
        } else {
            Err(format!("must be between 0 and {}", Self::MAX))
        }
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// Units on hand, 0–1,000,000,000.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stock(i32);

impl Stock {
    pub const MAX: i64 = 1_000_000_000;

    pub fn parse(value: i64) -> Result<Self, String> {
        match i32::try_from(value) {
            Ok(stock) if (0..=Self::MAX).contains(&value) => Ok(Self(stock)),
            _ => Err(format!("must be between 0 and {}", Self::MAX)),
        }
    }

    pub fn get(self) -> i32 {
        self.0
    }
}
