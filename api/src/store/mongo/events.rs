//! The change feed on MongoDB (see `store::events`): the outbox collection, its sequencer,
//! retention and the relays' leases.

use bson::{Bson, Document, doc};
use chrono::{DateTime, FixedOffset};
use futures::TryStreamExt;

use super::Mongo;
use super::document::{self, read_i64, read_id, read_str, read_time};
use super::error::is_duplicate_on;
use super::schema::{EVENT_RELAYS, EVENTS};
use crate::store::error::StoreError;
use crate::store::events::{Bounds, Event, EventType, PURGE_BATCH, SEQUENCE_BATCH, Sequenced};

fn event_from(doc: &Document) -> Result<Event, StoreError> {
    let kind = read_str(doc, "type")?;
    Ok(Event {
        id: read_id(doc, "_id")?,
        position: read_i64(doc, "position")?,
        kind: EventType::parse(&kind)
            .ok_or_else(|| StoreError::internal(format!("unknown event type {kind:?}")))?,
        resource_id: read_id(doc, "resource_id")?,
        version: read_i64(doc, "version")?,
        occurred_at: read_time(doc, "occurred_at")?,
        data: read_str(doc, "data")?,
    })
}

/// Sequenced events only.
fn sequenced() -> Document {
    doc! {"position": {"$type": "long"}}
}

/// `pending` in ticket order, except that one resource's events keep the slots they have among
/// the others but take them in version order. Two writes of one document take their tickets
/// before they begin, so the later version can hold the lower ticket; it can only have committed
/// after the earlier one did, so both are in the same round, or the earlier in an earlier one.
fn in_version_order(pending: Vec<Document>) -> Vec<Document> {
    let resource = |doc: &Document| doc.get("resource_id").cloned().unwrap_or(Bson::Null);
    let version = |doc: &Document| doc.get_i64("version").unwrap_or_default();
    let mut by_resource: std::collections::HashMap<String, Vec<usize>> = Default::default();
    for (slot, doc) in pending.iter().enumerate() {
        by_resource
            .entry(resource(doc).to_string())
            .or_default()
            .push(slot);
    }
    let mut ordered: Vec<Option<Document>> = pending.into_iter().map(Some).collect();
    for slots in by_resource.values().filter(|slots| slots.len() > 1) {
        let mut docs: Vec<Document> = slots
            .iter()
            .filter_map(|&slot| ordered[slot].take())
            .collect();
        docs.sort_by_key(version);
        for (&slot, doc) in slots.iter().zip(docs) {
            ordered[slot] = Some(doc);
        }
    }
    ordered.into_iter().flatten().collect()
}

#[derive(Clone)]
pub struct EventLog {
    mongo: Mongo,
}

impl EventLog {
    /// Works through `mongo`'s background client: the feed's own work is not counted as the
    /// service's queries.
    pub fn new(mongo: Mongo) -> Self {
        Self {
            mongo: mongo.background(),
        }
    }

    async fn position(&self, order: i32) -> Result<Option<i64>, StoreError> {
        let found = self
            .mongo
            .collection(EVENTS)
            .find_one(sequenced())
            .sort(doc! {"position": order})
            .projection(doc! {"position": 1})
            .max_time(self.mongo.max_time)
            .await?;
        found.map(|doc| read_i64(&doc, "position")).transpose()
    }

    pub async fn sequence(&self) -> Result<Sequenced, StoreError> {
        let events = self.mongo.collection(EVENTS);
        let pending: Vec<Document> = events
            .find(doc! {"position": Bson::Null})
            .sort(doc! {"seq": 1})
            .limit(SEQUENCE_BATCH as i64)
            .projection(doc! {"_id": 1, "resource_id": 1, "version": 1})
            .max_time(self.mongo.max_time)
            .await?
            .try_collect()
            .await?;
        if pending.is_empty() {
            return Ok(Sequenced::Nothing);
        }
        // One update per event, outside a transaction: an instance killed mid-round leaves a
        // prefix of the round sequenced and nothing held, where an abandoned transaction would
        // hold these events from every other sequencer until the server expired it. The positions
        // stay consecutive: each is the newest plus one, and the unique index on `position` with
        // the `position: null` guard makes a sequencer that raced another stop instead.
        let pending = in_version_order(pending);
        let newest = self.position(-1).await?;
        let mut position = newest.unwrap_or(0);
        let mut given_any = false;
        for event in &pending {
            let id = event.get("_id").cloned().unwrap_or(Bson::Null);
            let given = events
                .update_one(
                    doc! {"_id": id, "position": Bson::Null},
                    doc! {"$set": {"position": position + 1}},
                )
                .await;
            match given {
                Ok(given) if given.matched_count == 1 => {
                    position += 1;
                    given_any = true;
                }
                Ok(_) => break,
                Err(err) if is_duplicate_on(&err, "position") => break,
                Err(err) => {
                    if given_any {
                        break;
                    }
                    return Err(err.into());
                }
            }
        }
        // Where another sequencer took part of the round, what this one gave stands.
        Ok(if given_any {
            Sequenced::UpTo(position)
        } else {
            Sequenced::Lost
        })
    }

    pub async fn after(&self, after: i64, limit: u64) -> Result<Vec<Event>, StoreError> {
        let docs: Vec<Document> = self
            .mongo
            .collection(EVENTS)
            .find(doc! {"position": {"$gt": after}})
            .sort(doc! {"position": 1})
            .limit(limit as i64)
            .max_time(self.mongo.max_time)
            .await?
            .try_collect()
            .await?;
        docs.iter().map(event_from).collect()
    }

    pub async fn bounds(&self) -> Result<Bounds, StoreError> {
        Ok(Bounds {
            oldest: self.position(1).await?,
            newest: self.position(-1).await?,
        })
    }

    pub async fn purge(&self, before: DateTime<FixedOffset>) -> Result<u64, StoreError> {
        let Some(newest) = self.position(-1).await? else {
            return Ok(0);
        };
        let events = self.mongo.collection(EVENTS);
        let expired: Vec<Document> = events
            .find(doc! {
                "position": {"$lt": newest},
                "occurred_at": {"$lt": document::time(before)},
            })
            .sort(doc! {"position": 1})
            .limit(PURGE_BATCH as i64)
            .projection(doc! {"_id": 1})
            .await?
            .try_collect()
            .await?;
        if expired.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Bson> = expired
            .into_iter()
            .filter_map(|doc| doc.get("_id").cloned())
            .collect();
        let removed = events.delete_many(doc! {"_id": {"$in": ids}}).await?;
        Ok(removed.deleted_count)
    }

    pub async fn lease(
        &self,
        name: &str,
        holder: &str,
        until: DateTime<FixedOffset>,
    ) -> Result<Option<i64>, StoreError> {
        let relays = self.mongo.collection(EVENT_RELAYS);
        let now = document::time(document::now());
        let renewed = relays
            .update_one(
                doc! {"_id": name, "$or": [{"holder": holder}, {"lease_until": {"$lt": now}}]},
                doc! {"$set": {"holder": holder, "lease_until": document::time(until)}},
            )
            .await?;
        if renewed.matched_count == 0 {
            let inserted = relays
                .insert_one(doc! {
                    "_id": name,
                    "holder": holder,
                    "lease_until": document::time(until),
                    "published_position": 0_i64,
                })
                .await;
            match inserted {
                Ok(_) => {}
                // The relay exists and another holder's lease runs.
                Err(err) if is_duplicate_on(&err, "_id") => return Ok(None),
                Err(err) => return Err(err.into()),
            }
        }
        let relay = relays.find_one(doc! {"_id": name}).await?;
        match relay {
            Some(relay) if read_str(&relay, "holder")? == holder => {
                Ok(Some(read_i64(&relay, "published_position")?))
            }
            _ => Ok(None),
        }
    }

    pub async fn published(
        &self,
        name: &str,
        holder: &str,
        position: i64,
        until: DateTime<FixedOffset>,
    ) -> Result<bool, StoreError> {
        let written = self
            .mongo
            .collection(EVENT_RELAYS)
            .update_one(
                doc! {"_id": name, "holder": holder},
                doc! {"$set": {"published_position": position, "lease_until": document::time(until)}},
            )
            .await?;
        Ok(written.matched_count == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_resources_events_take_their_slots_in_version_order() {
        let event =
            |resource: &str, version: i64| doc! {"resource_id": resource, "version": version};
        let pending = vec![
            event("a", 3),
            event("b", 1),
            event("a", 2),
            event("c", 7),
            event("a", 4),
        ];
        let ordered: Vec<(String, i64)> = in_version_order(pending)
            .iter()
            .map(|doc| {
                (
                    doc.get_str("resource_id").unwrap().to_owned(),
                    doc.get_i64("version").unwrap(),
                )
            })
            .collect();
        let expected = [("a", 2), ("b", 1), ("a", 3), ("c", 7), ("a", 4)];
        assert_eq!(
            ordered,
            expected.map(|(resource, version)| (resource.to_owned(), version))
        );
    }
}
