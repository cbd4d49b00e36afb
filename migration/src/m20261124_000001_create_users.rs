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
                columns::table(backend, Users::Table)
                    .col(pk_uuid(Users::Id))
                    .col(string_len(Users::Name, 200))
                    // 254: the longest address SMTP can carry (RFC 5321 path limit).
                    .col(string_len(Users::Email, 254))
                    .col(text(Users::PasswordHash))
                    .col(string_len(Users::Status, 16).check(columns::one_of(
                        Users::Status,
                        &["active", "inactive", "suspended"],
                    )))
                    .col(columns::timestamp(backend, Users::CreatedAt))
                    .col(columns::timestamp(backend, Users::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        // Emails are stored lower-cased, so a plain unique index is case-insensitive uniqueness.
        manager
            .create_index(
                Index::create()
                    .name("idx_users_email")
                    .table(Users::Table)
                    .col(Users::Email)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_users_status")
                    .table(Users::Table)
                    .col(Users::Status)
                    .to_owned(),
            )
            .await?;
        // Newest-first listing filtered by status, in both page and keyset mode.
        manager
            .create_index(
                Index::create()
                    .name("idx_users_status_created_at")
                    .table(Users::Table)
                    .col(Users::Status)
                    .col((Users::CreatedAt, IndexOrder::Desc))
                    .col((Users::Id, IndexOrder::Desc))
                    .to_owned(),
            )
            .await?;
        // Newest-first listing without a filter.
        manager
            .create_index(
                Index::create()
                    .name("idx_users_created_at")
                    .table(Users::Table)
                    .col((Users::CreatedAt, IndexOrder::Desc))
                    .col((Users::Id, IndexOrder::Desc))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Users::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
pub enum Users {
    Table,
    Id,
    Name,
    Email,
    PasswordHash,
    Status,
    CreatedAt,
    UpdatedAt,
}
