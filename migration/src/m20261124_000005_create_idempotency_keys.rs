use sea_orm_migration::{prelude::*, schema::*};

use crate::columns;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        manager
            .create_table(
                columns::table(backend, IdempotencyKeys::Table)
                    // 255 visible ASCII characters at most (API.md).
                    .col(string_len(IdempotencyKeys::Key, 255).primary_key())
                    // Hex SHA-256 of the request, to tell a retry from a different request.
                    .col(char_len(IdempotencyKeys::RequestHash, 64))
                    // No foreign key: the key is claimed first, before its order row exists, so
                    // that a concurrent duplicate waits on the claim (see OrderRepo::place).
                    .col(uuid(IdempotencyKeys::OrderId))
                    .col(columns::timestamp(backend, IdempotencyKeys::CreatedAt))
                    .to_owned(),
            )
            .await?;
        // For purging keys past their retention window.
        manager
            .create_index(
                Index::create()
                    .name("idx_idempotency_keys_created_at")
                    .table(IdempotencyKeys::Table)
                    .col(IdempotencyKeys::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(IdempotencyKeys::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
pub enum IdempotencyKeys {
    Table,
    Key,
    RequestHash,
    OrderId,
    CreatedAt,
}
