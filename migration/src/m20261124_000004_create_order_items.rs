use sea_orm_migration::{prelude::*, schema::*};

use crate::columns;
use crate::m20261124_000002_create_products::Products;
use crate::m20261124_000003_create_orders::Orders;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        manager
            .create_table(
                columns::table(backend, OrderItems::Table)
                    .col(uuid(OrderItems::OrderId))
                    .col(uuid(OrderItems::ProductId))
                    .col(integer(OrderItems::Quantity).check(Expr::col(OrderItems::Quantity).gt(0)))
                    .col(
                        big_integer(OrderItems::UnitPriceCents)
                            .check(Expr::col(OrderItems::UnitPriceCents).gte(0)),
                    )
                    // Lines for one product are merged before they are stored.
                    .primary_key(
                        Index::create()
                            .name("pk_order_items")
                            .col(OrderItems::OrderId)
                            .col(OrderItems::ProductId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_order_items_order_id")
                            .from(OrderItems::Table, OrderItems::OrderId)
                            .to(Orders::Table, Orders::Id)
                            .on_delete(ForeignKeyAction::Cascade)
                            .on_update(ForeignKeyAction::Restrict),
                    )
                    // A product that was ever ordered cannot be deleted.
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_order_items_product_id")
                            .from(OrderItems::Table, OrderItems::ProductId)
                            .to(Products::Table, Products::Id)
                            .on_delete(ForeignKeyAction::Restrict)
                            .on_update(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;
        // Without it every product delete would scan order_items to check the foreign key.
        manager
            .create_index(
                Index::create()
                    .name("idx_order_items_product_id")
                    .table(OrderItems::Table)
                    .col(OrderItems::ProductId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(OrderItems::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
pub enum OrderItems {
    Table,
    OrderId,
    ProductId,
    Quantity,
    UnitPriceCents,
}
