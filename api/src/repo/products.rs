use std::collections::HashMap;
use std::sync::Arc;

use entity::products;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, TransactionTrait,
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
        }
        .insert(&self.db)
        .await
        .on_unique(Conflict::SkuTaken)
    }

    pub async fn update(&self, id: Uuid, changes: ProductChanges) -> Result<Product, RepoError> {
        if changes.name.is_none() && changes.price.is_none() && changes.stock.is_none() {
            return self.get(id).await;
        }
        let mut row = products::ActiveModel {
            id: sea_orm::ActiveValue::Unchanged(id),
            updated_at: Set(super::now()),
            ..Default::default()
        };
        if let Some(name) = changes.name {
            row.name = Set(name.into_string());
        }
        if let Some(price) = changes.price {
            row.price_cents = Set(price.get());
        }
        if let Some(stock) = changes.stock {
            row.stock = Set(stock.get());
        }
        let txn = self.db.begin().await?;
        let updated = match row.update(&txn).await {
            Err(DbErr::RecordNotUpdated) => Err(RepoError::not_found(Resource::Product, id)),
            other => other.map_err(RepoError::from),
        }?;
        peers::announce(&txn, Topic::Products, &[id]).await?;
        txn.commit().await?;
        self.cache.invalidate(id).await;
        Ok(updated)
    }

    /// A product that was ever ordered stays: its order items refer to it.
    pub async fn delete(&self, id: Uuid) -> Result<(), RepoError> {
        let txn = self.db.begin().await?;
        let result = products::Entity::delete_by_id(id)
            .exec(&txn)
            .await
            .on_foreign_key(Conflict::ProductHasOrders)?;
        peers::announce(&txn, Topic::Products, &[id]).await?;
        txn.commit().await?;
        self.cache.invalidate(id).await;
        if result.rows_affected == 0 {
            return Err(RepoError::not_found(Resource::Product, id));
        }
        Ok(())
    }

    /// Drops cached copies of products whose stock a transaction changed (after it committed).
    pub async fn forget(&self, ids: impl IntoIterator<Item = Uuid>) {
        for id in ids {
            self.cache.invalidate(id).await;
        }
    }
}
