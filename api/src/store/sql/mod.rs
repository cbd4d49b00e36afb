//! The SQL engine: SQLite, PostgreSQL and MariaDB/MySQL through SeaORM. Everything SeaORM-specific
//! lives here — the pool (`pool`), entities and queries (one repository per aggregate), the one
//! write path (`write`), concurrent orders placed in one transaction (`orders::batch`, on the
//! store's `coalesce` queue), listing (`listing`), the classification of database errors
//! (`failure`, `error`) and PostgreSQL's cross-instance cache invalidation (`notify`).

pub mod commit_outcome;
pub mod error;
pub mod events;
pub mod failure;
pub mod listing;
pub mod notify;
pub mod orders;
pub mod pool;
pub mod products;
pub mod replicas;
pub mod sessions;
pub mod users;
pub mod write;

pub use orders::OrderRepo;
pub use products::ProductRepo;
pub use sessions::SessionRepo;
pub use users::UserRepo;
