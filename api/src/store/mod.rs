//! The storage engines behind one set of repositories. Each aggregate's repository is an enum over
//! the engines (static dispatch) whose methods have exactly the SQL repositories' signatures, so
//! handlers call the same methods whichever engine holds the data.

pub mod mongo;

use std::sync::Arc;

use sea_orm::DatabaseConnection;
use uuid::Uuid;

use crate::cache::EntityCache;
use crate::db::PoolStats;
use chrono::{DateTime, FixedOffset};

use crate::domain::{Email, OrderStatus, PasswordHash, UserName, UserRole, UserStatus};
use crate::metrics::Metrics;
use crate::repo::orders::{Order, OrderFilter, PlaceOrder, Placed};
use crate::repo::products::{NewProduct, Product, ProductChanges, ProductFilter};
use crate::repo::sessions::{Failures, Session};
use crate::repo::users::{NewUser, User, UserChanges, UserFilter};
use crate::repo::{Conflict, PageOf, PageRequest, RepoError};

/// The database the service runs on: a SeaORM pool (SQLite, PostgreSQL, MariaDB/MySQL) or a
/// MongoDB client.
#[derive(Clone)]
pub enum Engine {
    Sql(DatabaseConnection),
    Mongo(mongo::Mongo),
}

impl Engine {
    /// One round trip, for `/ready`.
    pub async fn ping(&self) -> Result<(), RepoError> {
        match self {
            Self::Sql(db) => crate::db::ping(db).await.map_err(RepoError::from),
            Self::Mongo(mongo) => mongo.ping().await,
        }
    }

    /// Connections in use and idle, for `/metrics`.
    pub fn pool_stats(&self) -> PoolStats {
        match self {
            Self::Sql(db) => crate::db::pool_stats(db),
            Self::Mongo(mongo) => mongo.pool_stats(),
        }
    }

    /// The engine's name, for log lines.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Self::Sql(db) => crate::db::backend_name(db),
            Self::Mongo(_) => "MongoDB",
        }
    }

    /// Closes the pool; later operations fail.
    pub async fn close_by_ref(&self) -> Result<(), RepoError> {
        match self {
            Self::Sql(db) => db.close_by_ref().await.map_err(RepoError::from),
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
}

impl Repositories {
    pub fn new(
        engine: &Engine,
        user_cache: Arc<EntityCache<User>>,
        product_cache: Arc<EntityCache<Product>>,
        session_cache: Arc<EntityCache<Session>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        match engine {
            Engine::Sql(db) => {
                let products = crate::repo::ProductRepo::new(db.clone(), product_cache);
                let orders = crate::repo::OrderRepo::new(db.clone(), products.clone(), metrics);
                let users =
                    crate::repo::UserRepo::new(db.clone(), user_cache, session_cache.clone());
                Self {
                    users: Users::Sql(users),
                    products: Products::Sql(products),
                    orders: Orders::Sql(orders),
                    sessions: Sessions::Sql(crate::repo::SessionRepo::new(
                        db.clone(),
                        session_cache,
                    )),
                }
            }
            Engine::Mongo(m) => {
                let products = mongo::ProductRepo::new(m.clone(), product_cache, metrics.clone());
                let orders = mongo::OrderRepo::new(m.clone(), products.clone(), metrics.clone());
                let users =
                    mongo::UserRepo::new(m.clone(), user_cache, session_cache.clone(), metrics);
                Self {
                    users: Users::Mongo(users),
                    products: Products::Mongo(products),
                    orders: Orders::Mongo(orders),
                    sessions: Sessions::Mongo(mongo::SessionRepo::new(m.clone(), session_cache)),
                }
            }
        }
    }
}

/// Calls the same method, with the same arguments, on whichever engine's repository this is.
macro_rules! delegate {
    ($self:ident.$method:ident($($arg:expr),*)) => {
        match $self {
            Self::Sql(repo) => repo.$method($($arg),*).await,
            Self::Mongo(repo) => repo.$method($($arg),*).await,
        }
    };
}

#[derive(Clone)]
pub enum Users {
    Sql(crate::repo::UserRepo),
    Mongo(mongo::UserRepo),
}

impl Users {
    pub async fn get(&self, id: Uuid) -> Result<User, RepoError> {
        delegate!(self.get(id))
    }

    pub async fn find_by_email(&self, email: &Email) -> Result<Option<User>, RepoError> {
        delegate!(self.find_by_email(email))
    }

    pub async fn credentials(
        &self,
        email: &Email,
    ) -> Result<Option<(User, PasswordHash)>, RepoError> {
        delegate!(self.credentials(email))
    }

    /// Makes sure the account `email` exists with role admin: created with `password` when
    /// absent, promoted (password untouched) when present. Several instances starting at once
    /// may race to create it; the loser finds it and promotes it. The same on every engine.
    pub async fn ensure_admin<F, Fut>(&self, email: &Email, password: F) -> Result<User, RepoError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<PasswordHash, RepoError>>,
    {
        let internal = |why: String| RepoError::Internal(sea_orm::DbErr::Custom(why));
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
                    name: UserName::parse("Administrator").map_err(internal)?,
                    email: email.clone(),
                    password: password().await?,
                    status: UserStatus::Active,
                    role: UserRole::Admin,
                })
                .await;
            match created {
                Err(RepoError::Conflict(Conflict::EmailTaken)) => continue,
                other => return other,
            }
        }
        Err(internal(
            "the admin account kept changing while it was being made sure of".to_owned(),
        ))
    }

    pub async fn list(
        &self,
        filter: UserFilter,
        request: PageRequest,
    ) -> Result<PageOf<User>, RepoError> {
        delegate!(self.list(filter, request))
    }

    pub async fn create(&self, new: NewUser) -> Result<User, RepoError> {
        delegate!(self.create(new))
    }

    pub async fn update(
        &self,
        id: Uuid,
        changes: UserChanges,
        expected: Option<&[i64]>,
    ) -> Result<User, RepoError> {
        delegate!(self.update(id, changes, expected))
    }

    pub async fn delete(&self, id: Uuid, expected: Option<&[i64]>) -> Result<(), RepoError> {
        delegate!(self.delete(id, expected))
    }
}

#[derive(Clone)]
pub enum Products {
    Sql(crate::repo::ProductRepo),
    Mongo(mongo::ProductRepo),
}

impl Products {
    pub async fn get(&self, id: Uuid) -> Result<Product, RepoError> {
        delegate!(self.get(id))
    }

    pub async fn list(
        &self,
        filter: ProductFilter,
        request: PageRequest,
    ) -> Result<PageOf<Product>, RepoError> {
        delegate!(self.list(filter, request))
    }

    pub async fn create(&self, new: NewProduct) -> Result<Product, RepoError> {
        delegate!(self.create(new))
    }

    pub async fn update(
        &self,
        id: Uuid,
        changes: ProductChanges,
        expected: Option<&[i64]>,
    ) -> Result<Product, RepoError> {
        delegate!(self.update(id, changes, expected))
    }

    pub async fn delete(&self, id: Uuid, expected: Option<&[i64]>) -> Result<(), RepoError> {
        delegate!(self.delete(id, expected))
    }

    pub async fn forget(&self, ids: impl IntoIterator<Item = Uuid>) {
        delegate!(self.forget(ids))
    }
}

#[derive(Clone)]
pub enum Orders {
    Sql(crate::repo::OrderRepo),
    Mongo(mongo::OrderRepo),
}

impl Orders {
    pub async fn place(&self, request: PlaceOrder) -> Result<Placed, RepoError> {
        delegate!(self.place(request))
    }

    pub async fn get(&self, id: Uuid) -> Result<Order, RepoError> {
        delegate!(self.get(id))
    }

    pub async fn list_for_user(
        &self,
        user_id: Uuid,
        filter: OrderFilter,
        request: PageRequest,
    ) -> Result<PageOf<Order>, RepoError> {
        delegate!(self.list_for_user(user_id, filter, request))
    }

    pub async fn transition(
        &self,
        id: Uuid,
        to: OrderStatus,
        expected: Option<&[i64]>,
    ) -> Result<Order, RepoError> {
        delegate!(self.transition(id, to, expected))
    }
}

#[derive(Clone)]
pub enum Sessions {
    Sql(crate::repo::SessionRepo),
    Mongo(mongo::SessionRepo),
}

impl Sessions {
    pub async fn create(
        &self,
        token_hash: String,
        user_id: Uuid,
        expires_at: DateTime<FixedOffset>,
    ) -> Result<(), RepoError> {
        delegate!(self.create(token_hash, user_id, expires_at))
    }

    pub async fn find(&self, token_hash: &str) -> Result<Option<Session>, RepoError> {
        delegate!(self.find(token_hash))
    }

    pub async fn revoke(&self, token_hash: &str) -> Result<(), RepoError> {
        delegate!(self.revoke(token_hash))
    }

    pub async fn failures(
        &self,
        subjects: &[String],
        since: DateTime<FixedOffset>,
    ) -> Result<Vec<Failures>, RepoError> {
        delegate!(self.failures(subjects, since))
    }

    pub async fn record_failure(
        &self,
        subjects: &[String],
        forget_before: DateTime<FixedOffset>,
    ) -> Result<(), RepoError> {
        delegate!(self.record_failure(subjects, forget_before))
    }

    pub async fn clear_failures(&self, subject: &str) -> Result<(), RepoError> {
        delegate!(self.clear_failures(subject))
    }
}
