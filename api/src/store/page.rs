//! Newest-first listing, in the terms every engine shares: a page request (page number or a
//! keyset cursor), the page it answers and the position the next one starts from.

use chrono::{DateTime, FixedOffset};
use uuid::Uuid;

/// Up to this many matching rows the total is counted exactly; past it PostgreSQL answers the
/// planner's estimate instead of scanning the whole match (`total_is_estimate: true`).
pub const EXACT_TOTAL_LIMIT: u64 = 10_000;

/// A position in newest-first order: everything strictly older than this row comes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CursorKey {
    pub created_at: DateTime<FixedOffset>,
    pub id: Uuid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageRequest {
    /// 1-based page of `per_page` items, with totals.
    Offset { page: u64, per_page: u64 },
    /// The `per_page` items after `after` (from the start when `None`).
    Keyset {
        after: Option<CursorKey>,
        per_page: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Total {
    pub items: u64,
    pub is_estimate: bool,
}

#[derive(Clone, Debug)]
pub struct PageOf<T> {
    pub items: Vec<T>,
    /// Page mode only.
    pub total: Option<Total>,
    /// Where the next page starts, when there are items after the last one.
    pub next: Option<CursorKey>,
}

impl<T> PageOf<T> {
    /// Each item read as `U` by `read`; the first that cannot be fails the page.
    pub fn try_map<U, E>(self, read: impl FnMut(&T) -> Result<U, E>) -> Result<PageOf<U>, E> {
        Ok(PageOf {
            items: self.items.iter().map(read).collect::<Result<_, _>>()?,
            total: self.total,
            next: self.next,
        })
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> PageOf<U> {
        PageOf {
            items: self.items.into_iter().map(f).collect(),
            total: self.total,
            next: self.next,
        }
    }
}
