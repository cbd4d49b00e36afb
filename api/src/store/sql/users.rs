use std::collections::HashMap;
use std::sync::Arc;

use entity::users;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QuerySelect,
};
use uuid::Uuid;

use super::error::OnViolation;
use super::listing::{self, Indexed};
use super::replicas::Reads;
use super::sessions;
use super::write::Writer;
use crate::cache::Cached;
use crate::cache::Caches;
use crate::domain::model::{NewUser, User, UserChanges, UserFilter};
use crate::domain::{Email, PasswordHash, UserRole, UserStatus};
use crate::store::by_id::{ById, Key};
use crate::store::error::{Conflict, Resource, StoreError};
use crate::store::events::{Change, Feed, Subject};
use crate::store::page::{PageOf, PageRequest};
use crate::store::positions::ListingIndex;

impl User {
    fn from_row(row: users::Model) -> Result<Self, StoreError> {
        let status = UserStatus::from_db(&row.status)
            .ok_or_else(|| StoreError::internal(format!("unknown user status {:?}", row.status)))?;
        let role = UserRole::from_db(&row.role)
            .ok_or_else(|| StoreError::internal(format!("unknown user role {:?}", row.role)))?;
        Ok(Self {
            id: row.id,
            name: row.name,
            email: row.email,
            status,
            role,
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

async fn load_users(reads: Reads, keys: Vec<Key>) -> Result<HashMap<Key, User>, StoreError> {
    let rows = |db: DatabaseConnection, ids: Vec<Uuid>| async move {
        let rows = users::Entity::find()
            .filter(users::Column::Id.is_in(ids))
            .all(&db)
            .await?;
        rows.into_iter().map(User::from_row).collect()
    };
    reads.load_batch(keys, |user: &User| user.id, rows).await
}

#[derive(Clone)]
pub struct UserRepo {
    /// The primary: writes, and reads that must see the latest state (logins).
    db: DatabaseConnection,
    reads: Reads,
    caches: Caches,
    by_id: ById<User>,
    writer: Writer,
    /// Where the listing's deep pages start.
    listing: Arc<ListingIndex>,
}

impl UserRepo {
    /// The pool, for classifying what its operations fail with (`pool::refine`).
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    pub fn new(reads: Reads, caches: Caches, feed: Feed, listing: ListingIndex) -> Self {
        let writer = Writer::new(&reads, caches.clone(), feed);
        let by_id = {
            let reads = reads.clone();
            ById::new(caches.users.clone(), Resource::User, move |keys| {
                load_users(reads.clone(), keys)
            })
        };
        Self {
            db: reads.primary().clone(),
            reads,
            caches,
            by_id,
            writer,
            listing: Arc::new(listing),
        }
    }

    /// Read through the cache; misses for different ids at once share one query.
    pub async fn get(&self, id: Uuid) -> Result<User, StoreError> {
        self.by_id.get(id, &self.reads).await
    }

    pub async fn get_cached(&self, id: Uuid) -> Result<Arc<Cached<User>>, StoreError> {
        self.by_id.get_cached(id, &self.reads).await
    }

    pub async fn find_by_email(&self, email: &Email) -> Result<Option<User>, StoreError> {
        users::Entity::find()
            .filter(users::Column::Email.eq(email.as_str()))
            .one(&self.db)
            .await?
            .map(User::from_row)
            .transpose()
    }

    /// The user with this email and their stored password hash, for a login.
    pub async fn credentials(
        &self,
        email: &Email,
    ) -> Result<Option<(User, PasswordHash)>, StoreError> {
        let Some(row) = users::Entity::find()
            .filter(users::Column::Email.eq(email.as_str()))
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let hash = PasswordHash::from_stored(row.password_hash.clone());
        Ok(Some((User::from_row(row)?, hash)))
    }

    pub async fn list(
        &self,
        filter: UserFilter,
        request: PageRequest,
    ) -> Result<PageOf<User>, StoreError> {
        // Positions are kept per filter: the key names every value that shapes the listing.
        let filter_key = format!(
            "status={:?} email={:?}",
            filter.status.map(UserStatus::as_str),
            filter.email
        );
        let mut query = users::Entity::find();
        if let Some(status) = filter.status {
            query = query.filter(users::Column::Status.eq(status.as_str()));
        }
        if let Some(email) = filter.email {
            let email = Email::normalize_for_lookup(&email);
            // No stored address contains NUL (PostgreSQL could not even compare with one).
            if email.contains('\0') {
                query = query.filter(sea_orm::sea_query::Expr::val(false));
            } else {
                query = query.filter(users::Column::Email.eq(email));
            }
        }
        let page = self
            .reads
            .read_current(|db| {
                let query = query.clone();
                let indexed = self
                    .caches
                    .users
                    .table_generation()
                    .map(|generation| Indexed {
                        index: &self.listing,
                        generation,
                        filter: filter_key.clone(),
                    });
                async move { Ok(listing::list(&db, query, request, indexed).await?) }
            })
            .await?;
        let items = page
            .items
            .into_iter()
            .map(User::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PageOf {
            items,
            total: page.total,
            next: page.next,
        })
    }

    pub async fn create(&self, new: NewUser) -> Result<User, StoreError> {
        let now = crate::store::clock::now();
        let mut write = self.writer.begin().await?;
        let row = users::ActiveModel {
            id: Set(Uuid::now_v7()),
            name: Set(new.name.into_string()),
            email: Set(new.email.into_string()),
            password_hash: Set(new.password.into_string()),
            status: Set(new.status.as_str().to_owned()),
            role: Set(new.role.as_str().to_owned()),
            version: Set(1),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(write.txn())
        .await?;
        let user = User::from_row(row)?;
        write.record(Change::Created(Subject::User(&user)));
        write.commit().await?;
        Ok(user)
    }

    /// Changes the fields sent; `updated_at` moves and `version` goes up whenever any is (at
    /// least one is: `store::Users::update` answers an empty change itself). With `expected`, only when the stored version is one of those
    /// (`If-Match`), checked in the same statement as the write.
    #[tracing::instrument(level = "debug", skip_all, fields(%id))]
    pub async fn update(
        &self,
        id: Uuid,
        changes: UserChanges,
        expected: Option<&[i64]>,
    ) -> Result<User, StoreError> {
        let revokes = changes.revokes_sessions();
        let keep = changes.keep_session.clone();
        let mut update = users::Entity::update_many()
            .col_expr(
                users::Column::UpdatedAt,
                Expr::value(crate::store::clock::now()),
            )
            .col_expr(
                users::Column::Version,
                Expr::col(users::Column::Version).add(1),
            )
            .filter(users::Column::Id.eq(id));
        if let Some(name) = changes.name {
            update = update.col_expr(users::Column::Name, Expr::value(name.into_string()));
        }
        if let Some(email) = changes.email {
            update = update.col_expr(users::Column::Email, Expr::value(email.into_string()));
        }
        if let Some(password) = changes.password {
            update = update.col_expr(
                users::Column::PasswordHash,
                Expr::value(password.into_string()),
            );
        }
        if let Some(status) = changes.status {
            update = update.col_expr(users::Column::Status, Expr::value(status.as_str()));
        }
        if let Some(role) = changes.role {
            update = update.col_expr(users::Column::Role, Expr::value(role.as_str()));
        }
        if let Some(versions) = expected {
            update = update.filter(users::Column::Version.is_in(versions.iter().copied()));
        }
        let mut write = self.writer.begin().await?;
        let written = update.exec(write.txn()).await?;
        let Some(row) = users::Entity::find_by_id(id).one(write.txn()).await? else {
            return Err(StoreError::not_found(Resource::User, id));
        };
        if written.rows_affected == 0 {
            return Err(StoreError::PreconditionFailed);
        }
        if revokes {
            let revoked = sessions::hashes_of(write.txn(), id, keep.as_deref()).await?;
            sessions::revoke_in(&mut write, revoked).await?;
        }
        let user = User::from_row(row)?;
        write.record(Change::Updated(Subject::User(&user)));
        write.commit().await?;
        Ok(user)
    }

    /// Orders are records: a user who has any, even cancelled ones, stays. Their sessions end
    /// with them.
    #[tracing::instrument(level = "debug", skip_all, fields(%id))]
    pub async fn delete(&self, id: Uuid, expected: Option<&[i64]>) -> Result<(), StoreError> {
        let mut write = self.writer.begin().await?;
        // Locked until the delete commits: the version read is the one deleted.
        let Some(current) = users::Entity::find_by_id(id)
            .lock_exclusive()
            .one(write.txn())
            .await?
        else {
            return Err(StoreError::not_found(Resource::User, id));
        };
        if expected.is_some_and(|versions| !versions.contains(&current.version)) {
            return Err(StoreError::PreconditionFailed);
        }
        let revoked = sessions::hashes_of(write.txn(), id, None).await?;
        users::Entity::delete_by_id(id)
            .exec(write.txn())
            .await
            .on_foreign_key(Conflict::UserHasOrders)?;
        sessions::revoke_in(&mut write, revoked).await?;
        write.record(Change::Deleted {
            resource: Resource::User,
            id,
            version: current.version + 1,
            at: crate::store::clock::now(),
        });
        write.commit().await
    }
}
