//! Types that can only hold valid values. Requests are parsed into them once, at the edge; past
//! that point nothing re-checks a name's length or an email's shape. Also the read models
//! (`model`): what the store answers and takes, whichever engine holds the data.

mod bounds;
mod email;
pub mod model;
mod order;
mod password;
mod product;
mod text;
mod user;

pub use bounds::{BoundedInt, Bounds, Range};
pub use email::Email;
pub use order::{IdempotencyKey, OrderLine, OrderLines, OrderStatus, Quantity};
pub use password::{HashError, Hasher, Password, PasswordHash};
pub use product::{Cents, ProductName, Sku, Stock};
pub use text::Text;
pub use user::{UserName, UserRole, UserStatus};

/// One field's problem, reported in a 422's `errors`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// A path into the request: `email`, `items[0].quantity`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Collects the problems of several fields, so one response names all of them.
#[derive(Default)]
pub struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    /// Parses `value` with `parse`; a failure is recorded under `field` and yields `None`.
    pub fn check<T, V>(
        &mut self,
        field: &str,
        value: V,
        parse: impl FnOnce(V) -> Result<T, String>,
    ) -> Option<T> {
        match parse(value) {
            Ok(parsed) => Some(parsed),
            Err(message) => {
                self.errors.push(FieldError::new(field, message));
                None
            }
        }
    }

    /// Like `check`, for a field that may be absent.
    pub fn check_opt<T, V>(
        &mut self,
        field: &str,
        value: Option<V>,
        parse: impl FnOnce(V) -> Result<T, String>,
    ) -> Option<Option<T>> {
        match value {
            None => Some(None),
            Some(value) => self.check(field, value, parse).map(Some),
        }
    }

    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(field, message));
    }

    /// `Ok(value)` when nothing was recorded; the value is built only then.
    pub fn finish<T>(self, build: impl FnOnce() -> Option<T>) -> Result<T, Vec<FieldError>> {
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        build().ok_or_else(|| vec![FieldError::new("body", "invalid request")])
    }
}
