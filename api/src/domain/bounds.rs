//! What a domain type accepts, stated once: its parser checks it, and the OpenAPI document
//! describes it (`http::spec`), so the two cannot drift.

use super::{Email, Password, Text};

/// The accepted range of a text's length (in characters, after trimming) or of a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Range {
    Length { min: usize, max: usize },
    Value { min: i64, max: i64 },
}

pub trait Bounds {
    const RANGE: Range;
}

/// An integer within `MIN..=MAX`, held as `T` (the width its column has).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BoundedInt<T, const MIN: i64, const MAX: i64>(T);

impl<T, const MIN: i64, const MAX: i64> BoundedInt<T, MIN, MAX>
where
    T: TryFrom<i64> + Copy,
{
    pub const MIN: i64 = MIN;
    pub const MAX: i64 = MAX;

    pub fn parse(value: i64) -> Result<Self, String> {
        match T::try_from(value) {
            Ok(narrow) if (MIN..=MAX).contains(&value) => Ok(Self(narrow)),
            _ => Err(format!("must be between {MIN} and {MAX}")),
        }
    }

    pub fn get(self) -> T {
        self.0
    }
}

impl<T, const MIN: i64, const MAX: i64> Bounds for BoundedInt<T, MIN, MAX> {
    const RANGE: Range = Range::Value { min: MIN, max: MAX };
}

impl<const MIN: usize, const MAX: usize> Bounds for Text<MIN, MAX> {
    const RANGE: Range = Range::Length { min: MIN, max: MAX };
}

impl Bounds for Email {
    /// The shortest valid address is `a@b`.
    const RANGE: Range = Range::Length {
        min: 3,
        max: Email::MAX_LENGTH,
    };
}

impl Bounds for Password {
    const RANGE: Range = Range::Length {
        min: Password::MIN_LENGTH,
        max: Password::MAX_LENGTH,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bounded_integer_accepts_exactly_its_range_and_its_width() {
        type Small = BoundedInt<i32, 1, 10>;
        assert!(Small::parse(0).is_err());
        assert_eq!(Small::parse(1).map(Small::get), Ok(1));
        assert_eq!(Small::parse(10).map(Small::get), Ok(10));
        assert!(Small::parse(11).is_err());
        type Wide = BoundedInt<i8, 0, 1000>;
        assert!(Wide::parse(200).is_err(), "out of the held type's range");
    }
}
