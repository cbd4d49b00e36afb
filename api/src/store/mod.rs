//! Storage, behind one interface. Each aggregate's repository is an enum over the engines
//! (static dispatch) whose methods every engine implements with the same signatures, taking and
//! returning the read models of `domain::model` and failing with `error::StoreError`, so handlers and the
//! cache never know which engine holds the data. The engines are sibling folders: `sql`
//! (SeaORM: SQLite, PostgreSQL, MariaDB/MySQL) and `mongo` (the official driver). What they
//! share — paging, batching point reads, retrying contended transactions, page positions — sits
//! beside them.

pub mod allocation;
pub mod batch;
pub mod by_id;
pub mod clock;
pub mod coalesce;
pub mod connection;
pub mod consistency;
pub mod error;
pub mod events;
pub mod failure;
pub mod idempotency;
pub mod lifecycle;
pub mod mongo;
pub mod orders;
pub mod page;
pub mod peers;
pub mod positions;
pub mod retry;
pub mod sql;

pub use clock::now;
pub use connection::{ConnectError, PoolStats};
pub use error::{Cause, Conflict, Resource, StoreError};
pub use failure::DbFailure;
pub use lifecycle::ReadReplicas;
pub use orders::Orders;
pub use page::{CursorKey, PageOf, PageRequest, Total};

use std::sync::Arc;

use chrono::{DateTime, FixedOffset};
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use crate::cache::{Cached, Caches};
use crate::config::CacheConfig;
use crate::domain::model::{
    Failures, NewProduct, NewUser, Product, ProductChanges, ProductFilter, SessionOwner, User,
    UserChanges, UserFilter,
};
use crate::domain::{Email, PasswordHash, UserName, UserRole, UserStatus};
use crate::metrics::Metrics;

/// The database the service runs on: a SeaORM pool (SQLite, PostgreSQL, MariaDB/MySQL) or a
/// MongoDB client.
#[derive(Clone)]
pub enum Engine {
    Sql(DatabaseConnection),
    Mongo(mongo::Mongo),
}

impl Engine {
    /// One round trip, for `/ready`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Self::Sql(db) => sql::pool::ping(db)
                .await
                .map_err(|err| sql::pool::refine(db, err.into())),
            Self::Mongo(mongo) => mongo.ping().await,
        }
    }

    /// Connections in use and idle, for `/metrics`.
    pub fn pool_stats(&self) -> PoolStats {
        match self {
            Self::Sql(db) => sql::pool::pool_stats(db),
            Self::Mongo(mongo) => mongo.pool_stats(),
        }
    }

    /// The engine's name, for log lines.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Self::Sql(db) => sql::pool::backend_name(db),
            Self::Mongo(_) => "MongoDB",
        }
    }

    /// Closes the pool; later operations fail.
    pub async fn close_by_ref(&self) -> Result<(), StoreError> {
        match self {
            Self::Sql(db) => db.close_by_ref().await.map_err(StoreError::from),
            Self::Mongo(mongo) => {
                mongo.close().await;
                Ok(())
            }
        }
    }

    /// The SQL connection, for what exists only there (PostgreSQL's LISTEN, SeaORM migrations).
    pub fn sql(&self) -> Option<&DatabaseConnection> {
        match self {
            Self::Sql(db) => Some(db),
            Self::Mongo(_) => None,
        }
    }

    pub fn mongo(&self) -> Option<&mongo::Mongo> {
        match self {
            Self::Sql(_) => None,
            Self::Mongo(mongo) => Some(mongo),
        }
    }
}

/// The repositories of one engine.
pub struct Repositories {
    pub users: Users,
    pub products: Products,
    pub orders: Orders,
    pub sessions: Sessions,
    pub events: events::EventLog,
}

impl Repositories {
    /// `replicas`: PostgreSQL's read replicas, when configured. Every write
    /// records its events into `feed`.
    pub fn new(
        engine: &Engine,
        caches: &Caches,
        cache_config: &CacheConfig,
        feed: &events::Feed,
        metrics: Arc<Metrics>,
        replicas: &ReadReplicas,
    ) -> Self {
        match engine {
            Engine::Sql(db) => {
                let reads = sql::replicas::Reads::new(db.clone(), replicas.sql());
                let users = Users::Sql(sql::UserRepo::new(
                    reads.clone(),
                    caches.clone(),
                    feed.clone(),
                    positions::ListingIndex::new("users", cache_config, metrics.clone()),
                ));
                let products = Products::Sql(sql::ProductRepo::new(
                    reads.clone(),
                    caches.clone(),
                    feed.clone(),
                ));
                let sessions = sql::SessionRepo::new(&reads, caches.clone(), feed.clone());
                let orders = orders::Engine::Sql(sql::OrderRepo::new(
                    reads,
                    caches.clone(),
                    feed.clone(),
                    metrics.clone(),
                ));
                Self {
                    orders: Orders::new(orders, users.clone(), products.clone(), caches, metrics),
                    users,
                    products,
                    sessions: Sessions::Sql(sessions),
                    events: events::EventLog::Sql(sql::events::EventLog::new(db.clone())),
                }
            }
            Engine::Mongo(m) => {
                let writer = mongo::write::Writer {
                    mongo: m.clone(),
                    caches: caches.clone(),
                    feed: feed.clone(),
                    metrics: metrics.clone(),
                };
                let users = Users::Mongo(mongo::UserRepo::new(writer.clone()));
                let products = Products::Mongo(mongo::ProductRepo::new(writer.clone()));
                let orders = orders::Engine::Mongo(mongo::OrderRepo::new(writer.clone()));
                Self {
                    orders: Orders::new(orders, users.clone(), products.clone(), caches, metrics),
                    users,
                    products,
                    sessions: Sessions::Mongo(mongo::SessionRepo::new(writer.clone())),
                    events: events::EventLog::Mongo(mongo::events::EventLog::new(m.clone())),
                }
            }
        }
    }
}

/// Calls the same method, with the same arguments, on whichever engine's repository this is.
macro_rules! delegate {
    ($self:ident.$method:ident($($arg:expr),*)) => {
        match $self {
            Self::Sql(repo) => repo
                .$method($($arg),*)
                .await
                .map_err(|err| sql::pool::refine(repo.db(), err)),
            Self::Mongo(repo) => repo.$method($($arg),*).await,
        }
    };
}
pub(crate) use delegate;

#[derive(Clone)]
pub enum Users {
    Sql(sql::UserRepo),
    Mongo(mongo::UserRepo),
}

impl Users {
    #[tracing::instrument(level = "debug", name = "users.get", skip_all, fields(%id))]
    pub async fn get(&self, id: Uuid) -> Result<User, StoreError> {
        delegate!(self.get(id))
    }

    /// As `get`, the cache's entry, for serving its representation.
    #[tracing::instrument(level = "debug", name = "users.get", skip_all, fields(%id))]
    pub async fn get_cached(&self, id: Uuid) -> Result<Arc<Cached<User>>, StoreError> {
        delegate!(self.get_cached(id))
    }

    #[tracing::instrument(level = "debug", name = "users.find_by_email", skip_all)]
    pub async fn find_by_email(&self, email: &Email) -> Result<Option<User>, StoreError> {
        delegate!(self.find_by_email(email))
    }

    #[tracing::instrument(level = "debug", name = "users.credentials", skip_all)]
    pub async fn credentials(
        &self,
        email: &Email,
    ) -> Result<Option<(User, PasswordHash)>, StoreError> {
        delegate!(self.credentials(email))
    }

    /// Makes sure the account `email` exists with role admin: created with `password` when
    /// absent, promoted (password untouched) when present. Several instances starting at once
    /// may race to create it; the loser finds it and promotes it. The same on every engine.
    #[tracing::instrument(level = "debug", name = "users.ensure_admin", skip_all)]
    pub async fn ensure_admin<F, Fut>(&self, email: &Email, password: F) -> Result<User, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<PasswordHash, StoreError>>,
    {
        for _ in 0..3 {
            if let Some(user) = self.find_by_email(email).await? {
                if user.role == UserRole::Admin {
                    return Ok(user);
                }
                let promote = UserChanges {
                    role: Some(UserRole::Admin),
                    ..Default::default()
                };
                return self.update(user.id, promote, None).await;
            }
            let created = self
                .create(NewUser {
                    name: UserName::parse("Administrator").map_err(StoreError::internal)?,
                    email: email.clone(),
                    password: password().await?,
                    status: UserStatus::Active,
                    role: UserRole::Admin,
                })
                .await;
            match created {
                Err(StoreError::Conflict(Conflict::EmailTaken)) => continue,
                other => return other,
            }
        }
        Err(StoreError::internal(
            "the admin account kept changing while it was being made sure of",
        ))
    }

    #[tracing::instrument(level = "debug", name = "users.list", skip_all)]
    pub async fn list(
        &self,
        filter: UserFilter,
        request: PageRequest,
    ) -> Result<PageOf<User>, StoreError> {
        delegate!(self.list(filter, request))
    }

    #[tracing::instrument(level = "debug", name = "users.create", skip_all)]
    pub async fn create(&self, new: NewUser) -> Result<User, StoreError> {
        delegate!(self.create(new))
    }

    #[tracing::instrument(level = "debug", name = "users.update", skip_all, fields(%id))]
    pub async fn update(
        &self,
        id: Uuid,
        changes: UserChanges,
        expected: Option<&[i64]>,
    ) -> Result<User, StoreError> {
        // Nothing to change: the resource as it is, if `expected` names it (the same on every
        // engine, so written once here).
        if changes.is_empty() {
            let current = self.get(id).await?;
            if expected.is_some_and(|versions| !versions.contains(&current.version)) {
                return Err(StoreError::PreconditionFailed);
            }
            return Ok(current);
        }
        delegate!(self.update(id, changes, expected))
    }

    #[tracing::instrument(level = "debug", name = "users.delete", skip_all, fields(%id))]
    pub async fn delete(&self, id: Uuid, expected: Option<&[i64]>) -> Result<(), StoreError> {
        delegate!(self.delete(id, expected))
    }
}

#[derive(Clone)]
pub enum Products {
    Sql(sql::ProductRepo),
    Mongo(mongo::ProductRepo),
}

impl Products {
    #[tracing::instrument(level = "debug", name = "products.get", skip_all, fields(%id))]
    pub async fn get(&self, id: Uuid) -> Result<Product, StoreError> {
        delegate!(self.get(id))
    }

    /// As `get`, the cache's entry, for serving its representation.
    #[tracing::instrument(level = "debug", name = "products.get", skip_all, fields(%id))]
    pub async fn get_cached(&self, id: Uuid) -> Result<Arc<Cached<Product>>, StoreError> {
        delegate!(self.get_cached(id))
    }

    #[tracing::instrument(level = "debug", name = "products.list", skip_all)]
    pub async fn list(
        &self,
        filter: ProductFilter,
        request: PageRequest,
    ) -> Result<PageOf<Product>, StoreError> {
        delegate!(self.list(filter, request))
    }

    #[tracing::instrument(level = "debug", name = "products.create", skip_all)]
    pub async fn create(&self, new: NewProduct) -> Result<Product, StoreError> {
        delegate!(self.create(new))
    }

    #[tracing::instrument(level = "debug", name = "products.update", skip_all, fields(%id))]
    pub async fn update(
        &self,
        id: Uuid,
        changes: ProductChanges,
        expected: Option<&[i64]>,
    ) -> Result<Product, StoreError> {
        // Nothing to change: the resource as it is, if `expected` names it (the same on every
        // engine, so written once here).
        if changes.is_empty() {
            let current = self.get(id).await?;
            if expected.is_some_and(|versions| !versions.contains(&current.version)) {
                return Err(StoreError::PreconditionFailed);
            }
            return Ok(current);
        }
        delegate!(self.update(id, changes, expected))
    }

    #[tracing::instrument(level = "debug", name = "products.delete", skip_all, fields(%id))]
    pub async fn delete(&self, id: Uuid, expected: Option<&[i64]>) -> Result<(), StoreError> {
        delegate!(self.delete(id, expected))
    }
}

#[derive(Clone)]
pub enum Sessions {
    Sql(sql::SessionRepo),
    Mongo(mongo::SessionRepo),
}

impl Sessions {
    #[tracing::instrument(level = "debug", name = "sessions.create", skip_all, fields(%user_id))]
    pub async fn create(
        &self,
        token_hash: String,
        user_id: Uuid,
        expires_at: DateTime<FixedOffset>,
    ) -> Result<(), StoreError> {
        delegate!(self.create(token_hash, user_id, expires_at))
    }

    #[tracing::instrument(level = "debug", name = "sessions.find", skip_all)]
    pub async fn find(&self, token_hash: &str) -> Result<Option<SessionOwner>, StoreError> {
        delegate!(self.find(token_hash))
    }

    #[tracing::instrument(level = "debug", name = "sessions.revoke", skip_all)]
    pub async fn revoke(&self, token_hash: &str) -> Result<(), StoreError> {
        delegate!(self.revoke(token_hash))
    }

    #[tracing::instrument(level = "debug", name = "sessions.failures", skip_all)]
    pub async fn failures(
        &self,
        subjects: &[String],
        since: DateTime<FixedOffset>,
    ) -> Result<Vec<Failures>, StoreError> {
        delegate!(self.failures(subjects, since))
    }

    #[tracing::instrument(level = "debug", name = "sessions.record_failure", skip_all)]
    pub async fn record_failure(
        &self,
        subjects: &[String],
        forget_before: DateTime<FixedOffset>,
    ) -> Result<Vec<Uuid>, StoreError> {
        delegate!(self.record_failure(subjects, forget_before))
    }

    #[tracing::instrument(level = "debug", name = "sessions.forget_failures", skip_all)]
    pub async fn forget_failures(&self, ids: &[Uuid]) -> Result<(), StoreError> {
        delegate!(self.forget_failures(ids))
    }

    #[tracing::instrument(level = "debug", name = "sessions.clear_failures", skip_all)]
    pub async fn clear_failures(&self, subject: &str) -> Result<(), StoreError> {
        delegate!(self.clear_failures(subject))
    }
}
