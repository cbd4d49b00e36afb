//! Sessions (bearer tokens, kept only as hashes: the hash is the `_id`) and failed logins on
//! MongoDB. Sessions are read through the shared cache like SQL's; a revocation evicts here at
//! once and on other instances through the change stream (see `watch`). The TTL index removes
//! expired sessions, and a lookup refuses one that has expired but not yet been removed.

use std::sync::Arc;

use bson::{Document, doc};
use chrono::{DateTime, FixedOffset};
use futures::TryStreamExt;
use uuid::Uuid;

use super::Mongo;
use super::document::{self, read_id, read_str, read_time};
use super::schema::{LOGIN_FAILURES, SESSIONS, USERS};
use super::write::{Writer, transaction};
use crate::cache::EntityCache;
use crate::cache::Topic;
use crate::domain::UserRole;
use crate::domain::model::{Failures, Session, SessionOwner, cache_key};
use crate::store::error::StoreError;
use crate::store::error::{Resource, StoreError as Error};
use crate::store::retry::RetryPolicy;

#[derive(Clone)]
pub struct SessionRepo {
    mongo: Mongo,
    cache: Arc<EntityCache<Session>>,
    writer: Writer,
}

impl SessionRepo {
    pub(crate) fn new(writer: Writer) -> Self {
        Self {
            mongo: writer.mongo.clone(),
            cache: writer.caches.sessions.clone(),
            writer,
        }
    }

    pub async fn create(
        &self,
        token_hash: String,
        user_id: Uuid,
        expires_at: DateTime<FixedOffset>,
    ) -> Result<(), StoreError> {
        self.mongo
            .collection(SESSIONS)
            .insert_one(doc! {
                "_id": token_hash,
                "user_id": document::id(user_id),
                "created_at": document::time(document::now()),
                "expires_at": document::time(expires_at),
            })
            .await?;
        Ok(())
    }

    /// The live session with this token hash, read through the cache (concurrent requests with
    /// one token share a single load). Expired and unknown sessions (and those of a deleted
    /// user) are `None`.
    pub async fn find(&self, token_hash: &str) -> Result<Option<SessionOwner>, StoreError> {
        let loaded = self
            .cache
            .get_or_load(cache_key(token_hash), || self.load(token_hash))
            .await;
        match loaded {
            Ok(session) => Ok(session.owner(token_hash)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The session and its user's role in one round trip.
    async fn load(&self, token_hash: &str) -> Result<Session, StoreError> {
        let unknown = || Error::not_found(Resource::User, cache_key(token_hash));
        let pipeline = [
            doc! {"$match": {"_id": token_hash}},
            doc! {"$lookup": {
                "from": USERS,
                "localField": "user_id",
                "foreignField": "_id",
                "as": "user",
            }},
            doc! {"$project": {"user_id": 1, "expires_at": 1, "user.role": 1}},
        ];
        let found: Vec<Document> = self
            .mongo
            .collection(SESSIONS)
            .aggregate(pipeline)
            .max_time(self.mongo.max_time)
            .await?
            .try_collect()
            .await?;
        let Some(session) = found.first() else {
            return Err(unknown());
        };
        let Some(user) = session
            .get_array("user")
            .ok()
            .and_then(|users| users.first())
            .and_then(|user| user.as_document())
        else {
            return Err(unknown());
        };
        let role = read_str(user, "role")?;
        let role = UserRole::from_db(&role)
            .ok_or_else(|| StoreError::internal(format!("unknown user role {role:?}")))?;
        Ok(Session {
            token_hash: token_hash.to_owned(),
            user_id: read_id(session, "user_id")?,
            role,
            expires_at: read_time(session, "expires_at")?,
        })
    }

    /// Revokes one session (logout): evicted here at once, and answered only once every other
    /// instance has evicted it too (see `write`).
    pub async fn revoke(&self, token_hash: &str) -> Result<(), StoreError> {
        transaction!(self.writer, RetryPolicy::default(), |write| {
            self.mongo
                .collection(SESSIONS)
                .delete_one(doc! {"_id": token_hash})
                .session(write.session())
                .await?;
            write.changed(Topic::Sessions, [cache_key(token_hash)]);
            Ok::<_, StoreError>(())
        })
        .await
    }

    /// Failed logins per subject since `since`.
    pub async fn failures(
        &self,
        subjects: &[String],
        since: DateTime<FixedOffset>,
    ) -> Result<Vec<Failures>, StoreError> {
        let rows: Vec<Document> = self
            .mongo
            .collection(LOGIN_FAILURES)
            .find(doc! {
                "subject": {"$in": subjects},
                "failed_at": {"$gt": document::time(since)},
            })
            .max_time(self.mongo.max_time)
            .await?
            .try_collect()
            .await?;
        let mut tallies = vec![Failures::default(); subjects.len()];
        for row in &rows {
            let subject = read_str(row, "subject")?;
            let failed_at = read_time(row, "failed_at")?;
            for (tally, wanted) in tallies.iter_mut().zip(subjects) {
                if *wanted == subject {
                    tally.count += 1;
                    tally.oldest = Some(tally.oldest.map_or(failed_at, |o| o.min(failed_at)));
                }
            }
        }
        Ok(tallies)
    }

    /// Counts one failed login against each subject; failures older than `forget_before` go.
    /// Returns the documents written, for `forget_failures`.
    pub async fn record_failure(
        &self,
        subjects: &[String],
        forget_before: DateTime<FixedOffset>,
    ) -> Result<Vec<Uuid>, StoreError> {
        let failures = self.mongo.collection(LOGIN_FAILURES);
        failures
            .delete_many(doc! {"failed_at": {"$lt": document::time(forget_before)}})
            .await?;
        let now = document::time(document::now());
        let ids: Vec<Uuid> = subjects.iter().map(|_| Uuid::now_v7()).collect();
        let rows = subjects.iter().zip(&ids).map(|(subject, id)| {
            doc! {"_id": document::id(*id), "subject": subject, "failed_at": now.clone()}
        });
        failures.insert_many(rows).await?;
        Ok(ids)
    }

    /// Takes back failures `record_failure` wrote.
    pub async fn forget_failures(&self, ids: &[Uuid]) -> Result<(), StoreError> {
        let ids: Vec<_> = ids.iter().map(|id| document::id(*id)).collect();
        self.mongo
            .collection(LOGIN_FAILURES)
            .delete_many(doc! {"_id": {"$in": ids}})
            .await?;
        Ok(())
    }

    /// A successful login clears its email's count.
    pub async fn clear_failures(&self, subject: &str) -> Result<(), StoreError> {
        self.mongo
            .collection(LOGIN_FAILURES)
            .delete_many(doc! {"subject": subject})
            .await?;
        Ok(())
    }
}
