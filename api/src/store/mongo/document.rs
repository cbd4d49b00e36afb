//! Reading and writing the fields of stored documents: UUIDs as BSON binary subtype 4, times as
//! BSON dates (milliseconds), integers as 64-bit. A document that does not have the shape the
//! service writes is an internal error naming the field, never a silently replaced value.

use bson::spec::BinarySubtype;
use bson::{Binary, Bson, Document};
use chrono::{DateTime, FixedOffset, SubsecRound, TimeZone, Utc};
use uuid::Uuid;

use crate::store::error::StoreError;

use super::Mongo;

/// The current time as stored: UTC, truncated to the milliseconds a BSON date keeps, so that a
/// GET returns exactly the timestamp the create or PATCH answered.
pub fn now() -> DateTime<FixedOffset> {
    Utc::now().trunc_subsecs(3).fixed_offset()
}

pub fn id(value: Uuid) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Uuid,
        bytes: value.as_bytes().to_vec(),
    })
}

pub fn ids(values: impl IntoIterator<Item = Uuid>) -> Bson {
    Bson::Array(values.into_iter().map(id).collect())
}

pub fn time(value: DateTime<FixedOffset>) -> Bson {
    Bson::DateTime(bson::DateTime::from_millis(value.timestamp_millis()))
}

fn malformed(field: &str, doc: &Document) -> StoreError {
    let id = doc.get("_id").map(ToString::to_string).unwrap_or_default();
    StoreError::internal(format!("stored document {id} has no valid `{field}`"))
}

pub fn read_id(doc: &Document, field: &str) -> Result<Uuid, StoreError> {
    match doc.get(field) {
        Some(Bson::Binary(binary)) if binary.subtype == BinarySubtype::Uuid => {
            Uuid::from_slice(&binary.bytes).map_err(|_| malformed(field, doc))
        }
        _ => Err(malformed(field, doc)),
    }
}

pub fn read_str(doc: &Document, field: &str) -> Result<String, StoreError> {
    doc.get_str(field)
        .map(str::to_owned)
        .map_err(|_| malformed(field, doc))
}

pub fn read_i64(doc: &Document, field: &str) -> Result<i64, StoreError> {
    match doc.get(field) {
        Some(Bson::Int64(n)) => Ok(*n),
        Some(Bson::Int32(n)) => Ok(i64::from(*n)),
        _ => Err(malformed(field, doc)),
    }
}

pub fn read_i32(doc: &Document, field: &str) -> Result<i32, StoreError> {
    i32::try_from(read_i64(doc, field)?).map_err(|_| malformed(field, doc))
}

pub fn read_time(doc: &Document, field: &str) -> Result<DateTime<FixedOffset>, StoreError> {
    let millis = doc
        .get_datetime(field)
        .map_err(|_| malformed(field, doc))?
        .timestamp_millis();
    Utc.timestamp_millis_opt(millis)
        .single()
        .map(|at| at.fixed_offset())
        .ok_or_else(|| malformed(field, doc))
}

/// A flag the service sets once and never clears (absent means false).
pub fn read_flag(doc: &Document, field: &str) -> bool {
    doc.get_bool(field).unwrap_or(false)
}

/// The documents of `collection` among `ids`, each read by `read`, by id: the batched point read
/// of every repository (a missing id is a missing entry).
pub async fn load_by_ids<T>(
    mongo: &Mongo,
    collection: &str,
    ids: Vec<Uuid>,
    read: fn(&Document) -> Result<T, StoreError>,
    id_of: fn(&T) -> Uuid,
) -> Result<std::collections::HashMap<Uuid, T>, StoreError> {
    use futures::TryStreamExt;
    let docs: Vec<Document> = mongo
        .collection(collection)
        .find(bson::doc! {"_id": {"$in": self::ids(ids)}})
        .max_time(mongo.max_time)
        .await?
        .try_collect()
        .await?;
    docs.iter()
        .map(|doc| read(doc).map(|item| (id_of(&item), item)))
        .collect()
}
