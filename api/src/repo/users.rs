use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, FixedOffset};
use entity::users;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, TransactionTrait,
};
use uuid::Uuid;

use super::batch::{self, Batcher};
use super::error::{Conflict, OnViolation, RepoError, Resource};
use super::page::{self, CursorKey, Indexed, ListOrder, PageOf, PageRequest};
use super::sessions::{self, Session};
use crate::cache::EntityCache;
use crate::cache::peers::{self, Topic};
use crate::domain::{Email, PasswordHash, UserName, UserRole, UserStatus};

/// A user as the service shows it: the stored row without its password hash, which never leaves
/// the repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: Uuid,
    pub name: String,
    pub email: String,
    pub status: UserStatus,
    pub role: UserRole,
    /// Incremented by every write: the `ETag`.
    pub version: i64,
    pub created_at: DateTime<FixedOffset>,
    pub updated_at: DateTime<FixedOffset>,
}

impl User {
    fn from_row(row: users::Model) -> Result<Self, RepoError> {
        let status = UserStatus::from_db(&row.status).ok_or_else(|| {
            RepoError::Internal(DbErr::Type(format!("unknown user status {:?}", row.status)))
        })?;
        let role = UserRole::from_db(&row.role).ok_or_else(|| {
            RepoError::Internal(DbErr::Type(format!("unknown user role {:?}", row.role)))
        })?;
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

pub struct NewUser {
    pub name: UserName,
    pub email: Email,
    pub password: PasswordHash,
    pub status: UserStatus,
    pub role: UserRole,
}

/// A partial update: only the fields that are `Some` change.
#[derive(Default)]
pub struct UserChanges {
    pub name: Option<UserName>,
    pub email: Option<Email>,
    pub password: Option<PasswordHash>,
    pub status: Option<UserStatus>,
    pub role: Option<UserRole>,
    /// The session making a password change, which survives it (every other one is revoked).
    pub keep_session: Option<String>,
}

impl UserChanges {
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.email.is_none()
            && self.password.is_none()
            && self.status.is_none()
            && self.role.is_none()
    }

    /// A password, status or role change ends the user's sessions.
    fn revokes_sessions(&self) -> bool {
        self.password.is_some() || self.status.is_some() || self.role.is_some()
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
    sessions: Arc<EntityCache<Session>>,
    by_id: Batcher<Uuid, User, RepoError>,
}

impl UserRepo {
    pub fn new(
        db: DatabaseConnection,
        cache: Arc<EntityCache<User>>,
        sessions: Arc<EntityCache<Session>>,
    ) -> Self {
        let by_id = {
            let db = db.clone();
            Batcher::new(batch::MAX_KEYS, batch::MAX_IN_FLIGHT, move |ids| {
                load_users(db.clone(), ids)
            })
        };
        Self {
            db,
            cache,
            sessions,
            by_id,
        }
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

    /// The user with this email and their stored password hash, for a login.
    pub async fn credentials(
        &self,
        email: &Email,
    ) -> Result<Option<(User, PasswordHash)>, RepoError> {
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
            role: Set(new.role.as_str().to_owned()),
            version: Set(1),
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

    /// Changes the fields sent; `updated_at` moves and `version` goes up whenever any is. No
    /// fields: the user as is. With `expected`, only when the stored version is one of those
    /// (`If-Match`), checked in the same statement as the write.
    #[tracing::instrument(skip_all, fields(%id))]
    pub async fn update(
        &self,
        id: Uuid,
        changes: UserChanges,
        expected: Option<&[i64]>,
    ) -> Result<User, RepoError> {
        if changes.is_empty() {
            let user = self.get(id).await?;
            if expected.is_some_and(|versions| !versions.contains(&user.version)) {
                return Err(RepoError::PreconditionFailed);
            }
            return Ok(user);
        }
        let revokes = changes.revokes_sessions();
        let keep = changes.keep_session.clone();
        let mut update = users::Entity::update_many()
            .col_expr(users::Column::UpdatedAt, Expr::value(super::now()))
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
        let acknowledgements = self.sessions.acknowledgements();
        let txn = self.db.begin().await?;
        let written = update.exec(&txn).await.on_unique(Conflict::EmailTaken)?;
        let Some(row) = users::Entity::find_by_id(id).one(&txn).await? else {
            return Err(RepoError::not_found(Resource::User, id));
        };
        if written.rows_affected == 0 {
            return Err(RepoError::PreconditionFailed);
        }
        let revoked = if revokes {
            sessions::hashes_of(&txn, id, keep.as_deref()).await?
        } else {
            Vec::new()
        };
        let revoked = sessions::delete_in(&txn, revoked).await?;
        peers::announce(&txn, Topic::Users, &[id]).await?;
        txn.commit().await?;
        self.cache.invalidate(id).await;
        sessions::forget(&self.sessions, acknowledgements, &revoked).await;
        User::from_row(row)
    }

    /// Orders are records: a user who has any, even cancelled ones, stays. Their sessions end
    /// with them.
    #[tracing::instrument(skip_all, fields(%id))]
    pub async fn delete(&self, id: Uuid, expected: Option<&[i64]>) -> Result<(), RepoError> {
        let acknowledgements = self.sessions.acknowledgements();
        let txn = self.db.begin().await?;
        let mut delete = users::Entity::delete_many().filter(users::Column::Id.eq(id));
        if let Some(versions) = expected {
            delete = delete.filter(users::Column::Version.is_in(versions.iter().copied()));
        }
        let revoked = sessions::hashes_of(&txn, id, None).await?;
        let result = delete
            .exec(&txn)
            .await
            .on_foreign_key(Conflict::UserHasOrders)?;
        if result.rows_affected == 0 {
            let exists = users::Entity::find_by_id(id).one(&txn).await?.is_some();
            return Err(if exists {
                RepoError::PreconditionFailed
            } else {
                RepoError::not_found(Resource::User, id)
            });
        }
        let revoked = sessions::delete_in(&txn, revoked).await?;
        peers::announce(&txn, Topic::Users, &[id]).await?;
        txn.commit().await?;
        self.cache.invalidate(id).await;
        sessions::forget(&self.sessions, acknowledgements, &revoked).await;
        Ok(())
    }
}
