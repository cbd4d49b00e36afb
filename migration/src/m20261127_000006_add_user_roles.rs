use sea_orm_migration::{prelude::*, schema::*};

use crate::columns;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Everyone who signed up before roles existed is a customer; admins are made explicitly.
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .add_column(
                        string_len(Users::Role, 16)
                            .default("customer")
                            .check(columns::one_of(Users::Role, &["customer", "admin"])),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .drop_column(Users::Role)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
pub enum Users {
    Table,
    Role,
}
