use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, FixedOffset};
use entity::users;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, TransactionTrait,
};
use uuid::Uuid;

use super::batch::{self, Batcher};
use super::error::{Conflict, OnViolation, RepoError, Resource};
use super::page::{self, CursorKey, Indexed, ListOrder, PageOf, PageRequest};
use crate::cache::EntityCache;
use crate::cache::peers::{self, Topic};
use crate::domain::{Email, PasswordHash, UserName, UserStatus};

/// A user as the service shows it: the stored row without its password hash, which never leaves
/// the repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: Uuid,
    pub name: String,
    pub email: String,
    pub status: UserStatus,
    pub created_at: DateTime<FixedOffset>,
    pub updated_at: DateTime<FixedOffset>,
}

impl User {
    fn from_row(row: users::Model) -> Result<Self, RepoError> {
        let status = UserStatus::from_db(&row.status).ok_or_else(|| {
            RepoError::Internal(DbErr::Type(format!("unknown user status {:?}", row.status)))
        })?;
        Ok(Self {
            id: row.id,
            name: row.name,
            email: row.email,
            status,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

pub struct NewUser {
    pub name: UserName,
    pub email: Email,
    pub password: PasswordHash,
    pub status: UserStatus,
}

/// A partial update: only the fields that are `Some` change.
#[derive(Default)]
pub struct UserChanges {
    pub name: Option<UserName>,
    pub email: Option<Email>,
    pub password: Option<PasswordHash>,
    pub status: Option<UserStatus>,
}

impl UserChanges {
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.email.is_none()
            && self.password.is_none()
            && self.status.is_none()
    }
}

#[derive(Clone, Debug, Default)]
pub struct UserFilter {
    pub status: Option<UserStatus>,
    /// Exact, case-insensitive (emails are stored lower-cased).
    pub email: Option<String>,
}

async fn load_users(
    db: DatabaseConnection,
    ids: Vec<Uuid>,
) -> Result<HashMap<Uuid, User>, RepoError> {
    let rows = users::Entity::find()
        .filter(users::Column::Id.is_in(batch::padded(ids)))
        .all(&db)
        .await?;
    rows.into_iter()
        .map(|row| User::from_row(row).map(|user| (user.id, user)))
        .collect()
}

#[derive(Clone)]
pub struct UserRepo {
    db: DatabaseConnection,
    cache: Arc<EntityCache<User>>,
    by_id: Batcher<Uuid, User, RepoError>,
}

impl UserRepo {
    pub fn new(db: DatabaseConnection, cache: Arc<EntityCache<User>>) -> Self {
        let by_id = {
            let db = db.clone();
            Batcher::new(batch::MAX_KEYS, batch::MAX_IN_FLIGHT, move |ids| {
                load_users(db.clone(), ids)
            })
        };
        Self { db, cache, by_id }
    }

    /// Read through the cache; misses for different ids at once share one query.
    pub async fn get(&self, id: Uuid) -> Result<User, RepoError> {
        let user = self
            .cache
            .get_or_load(id, || async {
                self.by_id
                    .load(id)
                    .await?
                    .ok_or(RepoError::not_found(Resource::User, id))
            })
            .await?;
        Ok(User::clone(&user))
    }

    pub async fn find_by_email(&self, email: &Email) -> Result<Option<User>, RepoError> {
        users::Entity::find()
            .filter(users::Column::Email.eq(email.as_str()))
            .one(&self.db)
            .await?
            .map(User::from_row)
            .transpose()
    }

    pub async fn list(
        &self,
        filter: UserFilter,
        request: PageRequest,
    ) -> Result<PageOf<User>, RepoError> {
        // Positions are kept per filter: the key names every value that shapes the listing.
        let indexed = self.cache.listing().map(|index| Indexed {
            index,
            filter: format!(
                "status={:?} email={:?}",
                filter.status.map(UserStatus::as_str),
                filter.email
            ),
        });
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
        let order = ListOrder {
            created_at: users::Column::CreatedAt,
            id: users::Column::Id,
        };
        let key = |row: &users::Model| CursorKey {
            created_at: row.created_at,
            id: row.id,
        };
        let page = page::list(&self.db, query, order, key, request, indexed).await?;
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

    pub async fn create(&self, new: NewUser) -> Result<User, RepoError> {
        let now = super::now();
        let txn = self.db.begin().await?;
        let row = users::ActiveModel {
            id: Set(Uuid::now_v7()),
            name: Set(new.name.into_string()),
            email: Set(new.email.into_string()),
            password_hash: Set(new.password.into_string()),
            status: Set(new.status.as_str().to_owned()),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(&txn)
        .await
        // The id is fresh, so the only unique key an insert can collide on is the email.
        .on_unique(Conflict::EmailTaken)?;
        // Other instances' listings change too.
        peers::announce(&txn, Topic::Users, &[row.id]).await?;
        txn.commit().await?;
        self.cache.inserted();
        User::from_row(row)
    }

    /// Changes the fields sent; `updated_at` moves whenever any is. No fields: the user as is.
    pub async fn update(&self, id: Uuid, changes: UserChanges) -> Result<User, RepoError> {
        if changes.is_empty() {
            return self.get(id).await;
        }
        let mut row = users::ActiveModel {
            id: sea_orm::ActiveValue::Unchanged(id),
            updated_at: Set(super::now()),
            ..Default::default()
        };
        if let Some(name) = changes.name {
            row.name = Set(name.into_string());
        }
        if let Some(email) = changes.email {
            row.email = Set(email.into_string());
        }
        if let Some(password) = changes.password {
            row.password_hash = Set(password.into_string());
        }
        if let Some(status) = changes.status {
            row.status = Set(status.as_str().to_owned());
        }
        let txn = self.db.begin().await?;
        let updated = match row.update(&txn).await {
            Err(DbErr::RecordNotUpdated) => Err(RepoError::not_found(Resource::User, id)),
            other => other.on_unique(Conflict::EmailTaken),
        }?;
        peers::announce(&txn, Topic::Users, &[id]).await?;
        txn.commit().await?;
        self.cache.invalidate(id).await;
        User::from_row(updated)
    }

    /// Orders are records: a user who has any, even cancelled ones, stays.
    pub async fn delete(&self, id: Uuid) -> Result<(), RepoError> {
        let txn = self.db.begin().await?;
        let result = users::Entity::delete_by_id(id)
            .exec(&txn)
            .await
            .on_foreign_key(Conflict::UserHasOrders)?;
        peers::announce(&txn, Topic::Users, &[id]).await?;
        txn.commit().await?;
        self.cache.invalidate(id).await;
        if result.rows_affected == 0 {
            return Err(RepoError::not_found(Resource::User, id));
        }
        Ok(())
    }
}
