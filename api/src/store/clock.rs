//! Time, as every engine stores it.

use chrono::{DateTime, FixedOffset, SubsecRound, Utc};

/// The current time as stored: UTC, truncated to the microseconds every SQL backend keeps, so
/// that a GET returns exactly the timestamp the create or PATCH answered. (MongoDB keeps
/// milliseconds and truncates further, in `mongo::document`.)
pub fn now() -> DateTime<FixedOffset> {
    Utc::now().trunc_subsecs(6).fixed_offset()
}
