use sea_orm_migration::{prelude::*, schema::*};

use crate::columns;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        // One row per failed login and per thing it counts against (the email, the client
        // address), kept in the database so every instance sees the same count.
        manager
            .create_table(
                columns::table(backend, LoginFailures::Table)
                    .col(pk_uuid(LoginFailures::Id))
                    // Hex SHA-256 of `email:<address>` or `address:<ip>`: no address is kept.
                    .col(char_len(LoginFailures::Subject, 64))
                    .col(columns::timestamp(backend, LoginFailures::FailedAt))
                    .to_owned(),
            )
            .await?;
        // Counting a subject's failures within the window, and purging old ones.
        manager
            .create_index(
                Index::create()
                    .name("idx_login_failures_subject_failed_at")
                    .table(LoginFailures::Table)
                    .col(LoginFailures::Subject)
                    .col(LoginFailures::FailedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_login_failures_failed_at")
                    .table(LoginFailures::Table)
                    .col(LoginFailures::FailedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(LoginFailures::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
pub enum LoginFailures {
    Table,
    Id,
    Subject,
    FailedAt,
}
