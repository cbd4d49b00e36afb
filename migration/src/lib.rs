//! The schema, one migration per table. A migration is never edited after it ships; a change is a
//! new migration. Every `down` undoes its `up` exactly.

pub use sea_orm_migration::prelude::*;

pub mod command;
pub mod lock;

mod columns;
mod m20261124_000001_create_users;
mod m20261124_000002_create_products;
mod m20261124_000003_create_orders;
mod m20261124_000004_create_order_items;
mod m20261124_000005_create_idempotency_keys;
mod m20261127_000006_add_user_roles;
mod m20261127_000007_add_versions;
mod m20261127_000008_create_sessions;
mod m20261127_000009_create_login_failures;
mod m20261207_000010_create_events;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_create_users::Migration),
            Box::new(m20261124_000002_create_products::Migration),
            Box::new(m20261124_000003_create_orders::Migration),
            Box::new(m20261124_000004_create_order_items::Migration),
            Box::new(m20261124_000005_create_idempotency_keys::Migration),
            Box::new(m20261127_000006_add_user_roles::Migration),
            Box::new(m20261127_000007_add_versions::Migration),
            Box::new(m20261127_000008_create_sessions::Migration),
            Box::new(m20261127_000009_create_login_failures::Migration),
            Box::new(m20261207_000010_create_events::Migration),
        ]
    }
}

/// Why a locked migration run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error(transparent)]
    Migration(#[from] DbErr),
}

/// Applies pending migrations to `db` while holding the migration lock of the database at
/// `lock_url` (the same database: `db` may reach it through a pool of its own). Returns how many
/// migrations this run applied: none when another process applied them while this one waited.
pub async fn up_locked(
    db: &sea_orm_migration::sea_orm::DatabaseConnection,
    lock_url: &str,
    timeout: std::time::Duration,
    on_wait: impl FnOnce(),
) -> Result<usize, RunError> {
    let held = lock::MigrationLock::acquire(lock_url, timeout, on_wait).await?;
    let outcome = async {
        Migrator::install(db).await?;
        let pending = Migrator::get_pending_migrations(db).await?.len();
        if pending > 0 {
            Migrator::up(db, None).await?;
        }
        Ok::<_, DbErr>(pending)
    }
    .await;
    held.release().await;
    Ok(outcome?)
}
