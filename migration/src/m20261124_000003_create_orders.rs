use sea_orm_migration::{prelude::*, schema::*};

use crate::columns;
use crate::m20261124_000001_create_users::Users;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        manager
            .create_table(
                columns::table(backend, Orders::Table)
                    .col(pk_uuid(Orders::Id))
                    .col(uuid(Orders::UserId))
                    .col(string_len(Orders::Status, 16).check(columns::one_of(
                        Orders::Status,
                        &["pending", "paid", "shipped", "cancelled"],
                    )))
                    .col(
                        big_integer(Orders::TotalCents).check(Expr::col(Orders::TotalCents).gte(0)),
                    )
                    .col(columns::timestamp(backend, Orders::CreatedAt))
                    .col(columns::timestamp(backend, Orders::UpdatedAt))
                    // Orders are records: a user who has any cannot be deleted.
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_orders_user_id")
                            .from(Orders::Table, Orders::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Restrict)
                            .on_update(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;
        // A user's orders, newest first (also serves the foreign key's lookups).
        manager
            .create_index(
                Index::create()
                    .name("idx_orders_user_id_created_at")
                    .table(Orders::Table)
                    .col(Orders::UserId)
                    .col((Orders::CreatedAt, IndexOrder::Desc))
                    .col((Orders::Id, IndexOrder::Desc))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_orders_created_at")
                    .table(Orders::Table)
                    .col((Orders::CreatedAt, IndexOrder::Desc))
                    .col((Orders::Id, IndexOrder::Desc))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Orders::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
pub enum Orders {
    Table,
    Id,
    UserId,
    Status,
    TotalCents,
    CreatedAt,
    UpdatedAt,
}
