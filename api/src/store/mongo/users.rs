//! Users on MongoDB. The password hash is stored and never read back out of this module.

use std::sync::Arc;

use bson::{Document, doc};
use futures::TryStreamExt;
use uuid::Uuid;

use super::document::{self, read_i64, read_id, read_str, read_time};
use super::error::on_duplicate;
use super::schema::{SESSIONS, USERS};
use super::write::{Versioned, Write, Writer, transaction};
use super::{Mongo, page};
use crate::cache::{Cached, Topic};
use crate::domain::model::cache_key;
use crate::domain::model::{NewUser, User, UserChanges, UserFilter};
use crate::domain::{Email, PasswordHash, UserRole, UserStatus};
use crate::store::by_id::{ById, Current};
use crate::store::error::{Conflict, Resource, StoreError};
use crate::store::events::{Change, Subject};
use crate::store::page::{PageOf, PageRequest};
use crate::store::retry::RetryPolicy;

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

#[derive(Clone)]
pub struct UserRepo {
    writer: Writer,
    by_id: ById<User>,
}

impl UserRepo {
    pub(crate) fn new(writer: Writer) -> Self {
        let by_id = {
            let mongo = writer.mongo.clone();
            ById::current(writer.caches.users.clone(), Resource::User, move |ids| {
                let mongo = mongo.clone();
                async move { document::load_by_ids(&mongo, USERS, ids, user_from, |user| user.id).await }
            })
        };
        Self { writer, by_id }
    }

    fn mongo(&self) -> &Mongo {
        &self.writer.mongo
    }

    /// Read through the cache; misses for different ids at once share one query.
    pub async fn get(&self, id: Uuid) -> Result<User, StoreError> {
        self.by_id.get(id, &Current).await
    }

    pub async fn get_cached(&self, id: Uuid) -> Result<Arc<Cached<User>>, StoreError> {
        self.by_id.get_cached(id, &Current).await
    }

    pub async fn find_by_email(&self, email: &Email) -> Result<Option<User>, StoreError> {
        self.mongo()
            .collection(USERS)
            .find_one(doc! {"email": email.as_str()})
            .max_time(self.mongo().max_time)
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
            .mongo()
            .collection(USERS)
            .find_one(doc! {"email": email.as_str()})
            .max_time(self.mongo().max_time)
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
            &self.mongo().collection(USERS),
            query,
            request,
            self.mongo().max_time,
        )
        .await?;
        page.try_map(user_from)
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
        let password_hash = new.password.into_string();
        transaction!(self.writer, RetryPolicy::default(), |write| {
            self.mongo()
                .collection(USERS)
                .insert_one(doc! {
                    "_id": document::id(user.id),
                    "name": &user.name,
                    "email": &user.email,
                    "password_hash": &password_hash,
                    "status": user.status.as_str(),
                    "role": user.role.as_str(),
                    "version": 1_i64,
                    "created_at": document::time(now),
                    "updated_at": document::time(now),
                })
                .session(write.session())
                .await
                .map_err(|err| on_duplicate(err, "email", Conflict::EmailTaken))?;
            write.record(Change::Created(Subject::User(&user)));
            Ok::<_, StoreError>(())
        })
        .await?;
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
        let revokes = changes.revokes_sessions();
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
        let update = doc! {"$set": set, "$inc": {"version": 1_i64}};
        let target = Versioned {
            collection: USERS,
            resource: Resource::User,
            id,
            expected,
        };
        transaction!(self.writer, RetryPolicy::default(), |write| {
            let updated = write
                .update_versioned(&target, update.clone(), |err| {
                    on_duplicate(err, "email", Conflict::EmailTaken)
                })
                .await?;
            if revokes {
                self.revoke_sessions(&mut write, id, keep.as_deref())
                    .await?;
            }
            let user = user_from(&updated)?;
            write.record(Change::Updated(Subject::User(&user)));
            Ok(user)
        })
        .await
    }

    /// Deletes `user_id`'s sessions but `keep` inside the transaction, to be evicted once it has
    /// committed.
    async fn revoke_sessions(
        &self,
        write: &mut Write<'_>,
        user_id: Uuid,
        keep: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut filter = doc! {"user_id": document::id(user_id)};
        if let Some(keep) = keep {
            filter.insert("_id", doc! {"$ne": keep});
        }
        let sessions = self.mongo().collection(SESSIONS);
        let session = write.session();
        let mut cursor = sessions
            .find(filter.clone())
            .projection(doc! {"_id": 1})
            .session(&mut *session)
            .await?;
        let found: Vec<Document> = cursor.stream(&mut *session).try_collect().await?;
        sessions.delete_many(filter).session(&mut *session).await?;
        let keys: Vec<Uuid> = found
            .iter()
            .filter_map(|doc| doc.get_str("_id").ok().map(cache_key))
            .collect();
        write.changed(Topic::Sessions, keys);
        Ok(())
    }

    /// Orders are records: a user who has any, even cancelled ones, stays; their sessions end
    /// with them. The check and the delete run in one transaction that conflicts with any order
    /// placed for the user meanwhile (placing one writes the user's document), so neither can
    /// miss the other.
    pub async fn delete(&self, id: Uuid, expected: Option<&[i64]>) -> Result<(), StoreError> {
        let target = Versioned {
            collection: USERS,
            resource: Resource::User,
            id,
            expected,
        };
        transaction!(self.writer, RetryPolicy::default(), |write| {
            write
                .delete_versioned(&target, (HAS_ORDERS, Conflict::UserHasOrders))
                .await?;
            self.revoke_sessions(&mut write, id, None).await?;
            Ok::<_, StoreError>(())
        })
        .await
    }
}
