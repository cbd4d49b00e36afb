//! The schema, one migration per table. A migration is never edited after it ships; a change is a
//! new migration. Every `down` undoes its `up` exactly.

pub use sea_orm_migration::prelude::*;

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
        ]
    }
}
