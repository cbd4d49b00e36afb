//! One repository per aggregate. Repositories speak SeaORM and domain types, never HTTP; they
//! decide which database errors mean what (`error`), and keep the cache coherent with every write.

pub mod batch;
pub mod error;
pub mod orders;
pub mod page;
pub mod products;
pub mod sessions;
pub mod users;

use chrono::{DateTime, FixedOffset, SubsecRound, Utc};

pub use error::{Conflict, RepoError, Resource};
pub use orders::OrderRepo;
pub use page::{CursorKey, PageOf, PageRequest, Total};
pub use products::ProductRepo;
pub use sessions::SessionRepo;
pub use users::UserRepo;

/// The current time as stored: UTC, truncated to the microseconds every backend keeps, so that a
/// GET returns exactly the timestamp the create or PATCH answered.
pub fn now() -> DateTime<FixedOffset> {
    Utc::now().trunc_subsecs(6).fixed_offset()
}
