//! Users on MongoDB. The password hash is stored and never read back out of this module.

use std::collections::HashMap;
use std::sync::Arc;

use bson::{Document, doc};
use futures::TryStreamExt;
use mongodb::options::ReturnDocument;
use uuid::Uuid;

use super::document::{self, read_flag, read_i64, read_id, read_str, read_time};
use super::error::on_duplicate;
use super::schema::{SESSIONS, USERS};
use super::{Mongo, page, settle};
use crate::cache::Cached;
use crate::cache::EntityCache;
use crate::domain::model::{NewUser, User, UserChanges, UserFilter};
use crate::domain::model::{Session, cache_key};
use crate::domain::{Email, PasswordHash, UserRole, UserStatus};
use crate::metrics::Metrics;
use crate::store::by_id::{ById, Current};
use crate::store::retry::{RetryPolicy, with_retry};
use crate::store::{Conflict, PageOf, PageRequest, Resource, StoreError};

/// Set by the first order placed for the user, inside that order's transaction; never cleared.
pub const HAS_ORDERS: &str = "has_orders";

fn user_from(doc: &Document) -> Result<User, StoreError> {
    let status = read_str(doc, "status")?;
    let status = UserStatus::from_db(&status)
        .ok_or_else(|| StoreError::internal(format!("unknown user status {status:?}")))?;
    let role = read_str(doc, "role")?;
    let role = UserRole::from_db(&role)
        .ok_or_else(|| StoreError::internal(format!("unknown user role {role:?}")))?;
    Ok(User {
        id: read_id(doc, "_id")?,
        name: read_str(doc, "name")?,
        email: read_str(doc, "email")?,
        status,
        role,
        version: read_i64(doc, "version")?,
        created_at: read_time(doc, "created_at")?,
        updated_at: read_time(doc, "updated_at")?,
    })
}

async fn load_users(mongo: Mongo, ids: Vec<Uuid>) -> Result<HashMap<Uuid, User>, StoreError> {
    let docs: Vec<Document> = mongo
        .collection(USERS)
        .find(doc! {"_id": {"$in": document::ids(ids)}})
        .max_time(mongo.max_time)
        .await?
        .try_collect()
        .await?;
    docs.iter()
        .map(|doc| user_from(doc).map(|user| (user.id, user)))
        .collect()
}

#[derive(Clone)]
pub struct UserRepo {
    mongo: Mongo,
    cache: Arc<EntityCache<User>>,
    sessions: Arc<EntityCache<Session>>,
    by_id: ById<User>,
    metrics: Arc<Metrics>,
}

impl UserRepo {
    pub fn new(
        mongo: Mongo,
        cache: Arc<EntityCache<User>>,
        sessions: Arc<EntityCache<Session>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let by_id = {
            let mongo = mongo.clone();
            ById::current(cache.clone(), Resource::User, move |ids| {
                load_users(mongo.clone(), ids)
            })
        };
        Self {
            mongo,
            cache,
            sessions,
            by_id,
            metrics,
        }
    }

    /// Read through the cache; misses for different ids at once share one query.
    pub async fn get(&self, id: Uuid) -> Result<User, StoreError> {
        self.by_id.get(id, &Current).await
    }

    pub async fn get_cached(&self, id: Uuid) -> Result<Arc<Cached<User>>, StoreError> {
        self.by_id.get_cached(id, &Current).await
    }

    pub async fn find_by_email(&self, email: &Email) -> Result<Option<User>, StoreError> {
        self.mongo
            .collection(USERS)
            .find_one(doc! {"email": email.as_str()})
            .max_time(self.mongo.max_time)
            .await?
            .as_ref()
            .map(user_from)
            .transpose()
    }

    /// The user with this email and their stored password hash, for a login.
    pub async fn credentials(
        &self,
        email: &Email,
    ) -> Result<Option<(User, PasswordHash)>, StoreError> {
        let Some(doc) = self
            .mongo
            .collection(USERS)
            .find_one(doc! {"email": email.as_str()})
            .max_time(self.mongo.max_time)
            .await?
        else {
            return Ok(None);
        };
        let hash = PasswordHash::from_stored(read_str(&doc, "password_hash")?);
        Ok(Some((user_from(&doc)?, hash)))
    }

    pub async fn list(
        &self,
        filter: UserFilter,
        request: PageRequest,
    ) -> Result<PageOf<User>, StoreError> {
        let mut query = Document::new();
        page::set_if(&mut query, "status", filter.status.map(UserStatus::as_str));
        page::set_if(
            &mut query,
            "email",
            filter.email.as_deref().map(Email::normalize_for_lookup),
        );
        let page = page::list(
            &self.mongo.collection(USERS),
            query,
            request,
            self.mongo.max_time,
        )
        .await?;
        Ok(PageOf {
            items: page.items.iter().map(user_from).collect::<Result<_, _>>()?,
            total: page.total,
            next: page.next,
        })
    }

    pub async fn create(&self, new: NewUser) -> Result<User, StoreError> {
        let now = document::now();
        let user = User {
            id: Uuid::now_v7(),
            name: new.name.into_string(),
            email: new.email.into_string(),
            status: new.status,
            role: new.role,
            version: 1,
            created_at: now,
            updated_at: now,
        };
        self.mongo
            .collection(USERS)
            .insert_one(doc! {
                "_id": document::id(user.id),
                "name": &user.name,
                "email": &user.email,
                "password_hash": new.password.into_string(),
                "status": user.status.as_str(),
                "role": user.role.as_str(),
                "version": 1_i64,
                "created_at": document::time(now),
                "updated_at": document::time(now),
            })
            .await
            .map_err(|err| on_duplicate(err, "email", Conflict::EmailTaken))?;
        self.cache.evict_listing();
        Ok(user)
    }

    /// Changes the fields sent; `updated_at` moves and `version` goes up whenever any is (at
    /// least one is: `store::Users::update` answers an empty change itself). With `expected`, only when the stored version is one of those
    /// (`If-Match`), checked in the writing update. A new password, status or role ends the
    /// user's sessions (but the one changing its own password) in the same transaction.
    pub async fn update(
        &self,
        id: Uuid,
        changes: UserChanges,
        expected: Option<&[i64]>,
    ) -> Result<User, StoreError> {
        let revokes =
            changes.password.is_some() || changes.status.is_some() || changes.role.is_some();
        let keep = changes.keep_session.clone();
        let mut set = doc! {"updated_at": document::time(document::now())};
        page::set_if(
            &mut set,
            "name",
            changes.name.map(|name| name.into_string()),
        );
        page::set_if(&mut set, "email", changes.email.map(Email::into_string));
        page::set_if(
            &mut set,
            "password_hash",
            changes.password.map(|hash| hash.into_string()),
        );
        page::set_if(&mut set, "status", changes.status.map(UserStatus::as_str));
        page::set_if(&mut set, "role", changes.role.map(UserRole::as_str));
        let mut filter = doc! {"_id": document::id(id)};
        if let Some(versions) = expected {
            filter.insert("version", doc! {"$in": versions});
        }
        let update = doc! {"$set": set, "$inc": {"version": 1_i64}};
        let retries = &self.metrics.transaction_retries;
        let outcome = with_retry(
            RetryPolicy::default(),
            |_| retries.inc(),
            || async {
                let mut session = self.mongo.begin().await?;
                let users = self.mongo.collection(USERS);
                let attempt = async {
                    let updated = users
                        .find_one_and_update(filter.clone(), update.clone())
                        .return_document(ReturnDocument::After)
                        .max_time(self.mongo.max_time)
                        .session(&mut session)
                        .await?;
                    let Some(updated) = updated else {
                        let exists = users
                            .find_one(doc! {"_id": document::id(id)})
                            .projection(doc! {"_id": 1})
                            .session(&mut session)
                            .await?
                            .is_some();
                        return Err(if exists {
                            StoreError::PreconditionFailed
                        } else {
                            StoreError::not_found(Resource::User, id)
                        });
                    };
                    let revoked = if revokes {
                        self.revoke_sessions(&mut session, id, keep.as_deref())
                            .await?
                    } else {
                        Vec::new()
                    };
                    Ok((user_from(&updated)?, revoked))
                }
                .await;
                settle(&mut session, attempt).await
            },
        )
        .await;
        // Whatever the outcome, a cached copy may be stale now.
        self.cache.evict(id).await;
        let (user, revoked) = outcome?;
        self.forget_sessions(&revoked).await;
        Ok(user)
    }

    /// Deletes `user_id`'s sessions but `keep` inside the transaction; their hashes, to be
    /// evicted once it has committed.
    async fn revoke_sessions(
        &self,
        session: &mut mongodb::ClientSession,
        user_id: Uuid,
        keep: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        let mut filter = doc! {"user_id": document::id(user_id)};
        if let Some(keep) = keep {
            filter.insert("_id", doc! {"$ne": keep});
        }
        let sessions = self.mongo.collection(SESSIONS);
        let mut cursor = sessions
            .find(filter.clone())
            .projection(doc! {"_id": 1})
            .session(&mut *session)
            .await?;
        let found: Vec<Document> = cursor.stream(&mut *session).try_collect().await?;
        let hashes = found
            .iter()
            .filter_map(|doc| doc.get_str("_id").ok().map(str::to_owned))
            .collect();
        sessions.delete_many(filter).session(&mut *session).await?;
        Ok(hashes)
    }

    async fn forget_sessions(&self, hashes: &[String]) {
        for hash in hashes {
            self.sessions.evict(cache_key(hash)).await;
        }
    }

    /// Orders are records: a user who has any, even cancelled ones, stays; their sessions end
    /// with them. The check and the delete run in one transaction that conflicts with any order
    /// placed for the user meanwhile (placing one writes the user's document), so neither can
    /// miss the other.
    pub async fn delete(&self, id: Uuid, expected: Option<&[i64]>) -> Result<(), StoreError> {
        let retries = &self.metrics.transaction_retries;
        let outcome = with_retry(
            RetryPolicy::default(),
            |_| retries.inc(),
            || async {
                let mut session = self.mongo.begin().await?;
                let users = self.mongo.collection(USERS);
                let attempt = async {
                    let user = users
                        .find_one(doc! {"_id": document::id(id)})
                        .max_time(self.mongo.max_time)
                        .session(&mut session)
                        .await?
                        .ok_or(StoreError::not_found(Resource::User, id))?;
                    let version = read_i64(&user, "version")?;
                    if expected.is_some_and(|versions| !versions.contains(&version)) {
                        return Err(StoreError::PreconditionFailed);
                    }
                    if read_flag(&user, HAS_ORDERS) {
                        return Err(StoreError::Conflict(Conflict::UserHasOrders));
                    }
                    users
                        .delete_one(doc! {"_id": document::id(id)})
                        .session(&mut session)
                        .await?;
                    self.revoke_sessions(&mut session, id, None).await
                }
                .await;
                settle(&mut session, attempt).await
            },
        )
        .await;
        self.cache.evict(id).await;
        self.forget_sessions(&outcome?).await;
        Ok(())
    }
}
