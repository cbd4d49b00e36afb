//! Newest-first listing on MongoDB, with the same contract as `store::sql::listing`: page mode counts (an
//! estimate past `EXACT_TOTAL_LIMIT`, for an unfiltered listing) and reads with `skip`; keyset
//! mode is a range on `(created_at, _id)` read along the collection's index, with no `skip`.

use std::time::Duration;

use bson::{Bson, Document, doc};
use chrono::{DateTime, FixedOffset, TimeZone, Timelike, Utc};
use futures::TryStreamExt;
use mongodb::Collection;

use super::document;
use crate::store::error::StoreError;
use crate::store::page::EXACT_TOTAL_LIMIT;
use crate::store::page::{CursorKey, PageOf, PageRequest, Total};

fn newest_first() -> Document {
    doc! {"created_at": -1, "_id": -1}
}

/// `(created_at, _id) < (after.created_at, after.id)`, its leading `created_at <=` a range on the
/// index. A cursor made elsewhere may carry sub-millisecond digits no stored date has: then every
/// row in its millisecond is older than it.
pub fn older_than(after: CursorKey) -> Document {
    // Dates outside years 1–9999 name no stored row, and not every server compares them: past
    // the last one everything is older, before the first nothing is.
    let (first, last) = dates_stored();
    if after.created_at > last {
        return Document::new();
    }
    if after.created_at < first {
        return doc! {"created_at": {"$lt": document::time(first)}};
    }
    let at = document::time(after.created_at);
    if !after.created_at.nanosecond().is_multiple_of(1_000_000) {
        return doc! {"created_at": {"$lte": at}};
    }
    doc! {
        "created_at": {"$lte": at.clone()},
        "$or": [
            {"created_at": {"$lt": at}},
            {"_id": {"$lt": document::id(after.id)}},
        ],
    }
}

fn dates_stored() -> (DateTime<FixedOffset>, DateTime<FixedOffset>) {
    let utc = |year, month, day, h, m, s, ms| {
        Utc.with_ymd_and_hms(year, month, day, h, m, s)
            .single()
            .map(|at| (at + chrono::Duration::milliseconds(ms)).fixed_offset())
    };
    let first = utc(1, 1, 1, 0, 0, 0, 0).unwrap_or_default();
    let last = utc(9999, 12, 31, 23, 59, 59, 999).unwrap_or_default();
    (first, last)
}

pub fn key_of(doc: &Document) -> Result<CursorKey, StoreError> {
    Ok(CursorKey {
        created_at: document::read_time(doc, "created_at")?,
        id: document::read_id(doc, "_id")?,
    })
}

/// Lists the documents of `collection` matching `filter`, newest first.
pub async fn list(
    collection: &Collection<Document>,
    filter: Document,
    request: PageRequest,
    max_time: Duration,
) -> Result<PageOf<Document>, StoreError> {
    match request {
        PageRequest::Keyset { after, per_page } => {
            let mut ranged = filter;
            if let Some(after) = after {
                ranged.extend(older_than(after));
            }
            // One more than asked for tells whether there is a next page.
            let mut items: Vec<Document> = collection
                .find(ranged)
                .sort(newest_first())
                .limit(i64::try_from(per_page + 1).unwrap_or(i64::MAX))
                .max_time(max_time)
                .await?
                .try_collect()
                .await?;
            let has_more = items.len() as u64 > per_page;
            items.truncate(per_page as usize);
            let next = match items.last() {
                Some(last) if has_more => Some(key_of(last)?),
                _ => None,
            };
            Ok(PageOf {
                items,
                total: None,
                next,
            })
        }
        PageRequest::Offset { page, per_page } => {
            let offset = (page - 1).saturating_mul(per_page);
            let total = count(collection, &filter, max_time).await?;
            if offset >= total.items && !total.is_estimate || offset > i64::MAX as u64 {
                return Ok(PageOf {
                    items: Vec::new(),
                    total: Some(total),
                    next: None,
                });
            }
            let items: Vec<Document> = collection
                .find(filter)
                .sort(newest_first())
                .skip(offset)
                .limit(i64::try_from(per_page).unwrap_or(i64::MAX))
                .max_time(max_time)
                .await?
                .try_collect()
                .await?;
            let has_more = if total.is_estimate {
                items.len() as u64 == per_page
            } else {
                offset + (items.len() as u64) < total.items
            };
            let next = match items.last() {
                Some(last) if has_more => Some(key_of(last)?),
                _ => None,
            };
            Ok(PageOf {
                items,
                total: Some(total),
                next,
            })
        }
    }
}

/// Exact up to `EXACT_TOTAL_LIMIT`, counting at most one document past it; beyond, the
/// collection's size from its metadata for an unfiltered listing, an exact count otherwise.
async fn count(
    collection: &Collection<Document>,
    filter: &Document,
    max_time: Duration,
) -> Result<Total, StoreError> {
    let n = collection
        .count_documents(filter.clone())
        .limit(EXACT_TOTAL_LIMIT + 1)
        .max_time(max_time)
        .await?;
    if n <= EXACT_TOTAL_LIMIT {
        return Ok(Total {
            items: n,
            is_estimate: false,
        });
    }
    if filter.is_empty() {
        let estimate = collection
            .estimated_document_count()
            .max_time(max_time)
            .await?;
        return Ok(Total {
            items: estimate.max(EXACT_TOTAL_LIMIT + 1),
            is_estimate: true,
        });
    }
    let n = collection
        .count_documents(filter.clone())
        .max_time(max_time)
        .await?;
    Ok(Total {
        items: n,
        is_estimate: false,
    })
}

/// `{field: value}` only when there is a value.
pub fn set_if(filter: &mut Document, field: &str, value: Option<impl Into<Bson>>) {
    if let Some(value) = value {
        filter.insert(field, value.into());
    }
}
