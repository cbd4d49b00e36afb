use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The tables whose rows are served with an `ETag`: every write to a row increments its version,
/// so two writes within one clock tick still give two different tags (`updated_at` would not).
const VERSIONED: [Versioned; 3] = [Versioned::Users, Versioned::Products, Versioned::Orders];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in VERSIONED {
            manager
                .alter_table(
                    Table::alter()
                        .table(table)
                        .add_column(big_integer(Versioned::Version).default(1))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in VERSIONED {
            manager
                .alter_table(
                    Table::alter()
                        .table(table)
                        .drop_column(Versioned::Version)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, DeriveIden)]
pub enum Versioned {
    Users,
    Products,
    Orders,
    Version,
}
