use std::collections::HashMap;
use std::sync::Arc;

use entity::products;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter,
    TransactionTrait,
};
use uuid::Uuid;

use super::batch::{self, Batcher};
use super::error::{Conflict, OnViolation, RepoError, Resource};
use super::page::{self, CursorKey, ListOrder, PageOf, PageRequest};
use crate::cache::EntityCache;
use crate::cache::peers::{self, Topic};
use crate::domain::{Cents, ProductName, Sku, Stock};

pub type Product = products::Model;

pub struct NewProduct {
    pub sku: Sku,
    pub name: ProductName,
    pub price: Cents,
    pub stock: Stock,
}

/// A partial update; the SKU is immutable and has no place here.
#[derive(Default)]
pub struct ProductChanges {
    pub name: Option<ProductName>,
    pub price: Option<Cents>,
    pub stock: Option<Stock>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ProductFilter {
    /// `true`: stock > 0; `false`: stock = 0.
    pub in_stock: Option<bool>,
}

pub fn cursor_key(product: &Product) -> CursorKey {
    CursorKey {
        created_at: product.created_at,
        id: product.id,
    }
}

async fn load_products(
    db: DatabaseConnection,
    ids: Vec<Uuid>,
) -> Result<HashMap<Uuid, Product>, RepoError> {
    let rows = products::Entity::find()
        .filter(products::Column::Id.is_in(batch::padded(ids)))
        .all(&db)
        .await?;
    Ok(rows.into_iter().map(|row| (row.id, row)).collect())
}

#[derive(Clone)]
pub struct ProductRepo {
    db: DatabaseConnection,
    cache: Arc<EntityCache<Product>>,
    by_id: Batcher<Uuid, Product, RepoError>,
}

impl ProductRepo {
    pub fn new(db: DatabaseConnection, cache: Arc<EntityCache<Product>>) -> Self {
        let by_id = {
            let db = db.clone();
            Batcher::new(batch::MAX_KEYS, batch::MAX_IN_FLIGHT, move |ids| {
                load_products(db.clone(), ids)
            })
        };
        Self { db, cache, by_id }
    }

    /// Read through the cache; misses for different ids at once share one query.
    pub async fn get(&self, id: Uuid) -> Result<Product, RepoError> {
        let product = self
            .cache
            .get_or_load(id, || async {
                self.by_id
                    .load(id)
                    .await?
                    .ok_or(RepoError::not_found(Resource::Product, id))
            })
            .await?;
        Ok(Product::clone(&product))
    }

    pub async fn list(
        &self,
        filter: ProductFilter,
        request: PageRequest,
    ) -> Result<PageOf<Product>, RepoError> {
        let mut query = products::Entity::find();
        match filter.in_stock {
            Some(true) => query = query.filter(products::Column::Stock.gt(0)),
            Some(false) => query = query.filter(products::Column::Stock.eq(0)),
            None => {}
        }
        let order = ListOrder {
            created_at: products::Column::CreatedAt,
            id: products::Column::Id,
        };
        Ok(page::list(&self.db, query, order, cursor_key, request, None).await?)
    }

    pub async fn create(&self, new: NewProduct) -> Result<Product, RepoError> {
        let now = super::now();
        products::ActiveModel {
            id: Set(Uuid::now_v7()),
            sku: Set(new.sku.into_string()),
            name: Set(new.name.into_string()),
            price_cents: Set(new.price.get()),
            stock: Set(new.stock.get()),
            created_at: Set(now),
            updated_at: Set(now),
            version: Set(1),
        }
        .insert(&self.db)
        .await
        .on_unique(Conflict::SkuTaken)
    }

    /// Changes the fields sent; `version` goes up with every write. With `expected`, only when
    /// the stored version is one of those (`If-Match`), checked in the writing statement.
    #[tracing::instrument(skip_all, fields(%id))]
    pub async fn update(
        &self,
        id: Uuid,
        changes: ProductChanges,
        expected: Option<&[i64]>,
    ) -> Result<Product, RepoError> {
        if changes.name.is_none() && changes.price.is_none() && changes.stock.is_none() {
            let product = self.get(id).await?;
            if expected.is_some_and(|versions| !versions.contains(&product.version)) {
                return Err(RepoError::PreconditionFailed);
            }
            return Ok(product);
        }
        let mut update = products::Entity::update_many()
            .col_expr(products::Column::UpdatedAt, Expr::value(super::now()))
            .col_expr(
                products::Column::Version,
                Expr::col(products::Column::Version).add(1),
            )
            .filter(products::Column::Id.eq(id));
        if let Some(name) = changes.name {
            update = update.col_expr(products::Column::Name, Expr::value(name.into_string()));
        }
        if let Some(price) = changes.price {
            update = update.col_expr(products::Column::PriceCents, Expr::value(price.get()));
        }
        if let Some(stock) = changes.stock {
            update = update.col_expr(products::Column::Stock, Expr::value(stock.get()));
        }
        if let Some(versions) = expected {
            update = update.filter(products::Column::Version.is_in(versions.iter().copied()));
        }
        let txn = self.db.begin().await?;
        let written = update.exec(&txn).await?;
        let Some(updated) = products::Entity::find_by_id(id).one(&txn).await? else {
            return Err(RepoError::not_found(Resource::Product, id));
        };
        if written.rows_affected == 0 {
            return Err(RepoError::PreconditionFailed);
        }
        peers::announce(&txn, Topic::Products, &[id]).await?;
        txn.commit().await?;
        self.cache.invalidate(id).await;
        Ok(updated)
    }

    /// A product that was ever ordered stays: its order items refer to it.
    #[tracing::instrument(skip_all, fields(%id))]
    pub async fn delete(&self, id: Uuid, expected: Option<&[i64]>) -> Result<(), RepoError> {
        let mut delete = products::Entity::delete_many().filter(products::Column::Id.eq(id));
        if let Some(versions) = expected {
            delete = delete.filter(products::Column::Version.is_in(versions.iter().copied()));
        }
        let txn = self.db.begin().await?;
        let result = delete
            .exec(&txn)
            .await
            .on_foreign_key(Conflict::ProductHasOrders)?;
        if result.rows_affected == 0 {
            let exists = products::Entity::find_by_id(id).one(&txn).await?.is_some();
            return Err(if exists {
                RepoError::PreconditionFailed
            } else {
                RepoError::not_found(Resource::Product, id)
            });
        }
        peers::announce(&txn, Topic::Products, &[id]).await?;
        txn.commit().await?;
        self.cache.invalidate(id).await;
        Ok(())
    }

    /// Drops cached copies of products whose stock a transaction changed (after it committed).
    pub async fn forget(&self, ids: impl IntoIterator<Item = Uuid>) {
        for id in ids {
            self.cache.invalidate(id).await;
        }
    }
}
