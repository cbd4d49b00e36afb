use std::collections::HashMap;
use std::sync::Arc;

use entity::products;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter,
};
use uuid::Uuid;

use super::error::OnViolation;
use super::listing::{self, ListOrder};
use super::replicas::Reads;
use super::write::Write;
use crate::cache::Cached;
use crate::cache::{Caches, Topic};
use crate::domain::model::{NewProduct, Product, ProductChanges, ProductFilter};
use crate::store::by_id::{ById, Key};
use crate::store::error::{Conflict, Resource, StoreError};
use crate::store::page::{CursorKey, PageOf, PageRequest};

impl From<products::Model> for Product {
    fn from(row: products::Model) -> Self {
        Self {
            id: row.id,
            sku: row.sku,
            name: row.name,
            price_cents: row.price_cents,
            stock: row.stock,
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

async fn load_products(reads: Reads, keys: Vec<Key>) -> Result<HashMap<Key, Product>, StoreError> {
    let rows = |db: DatabaseConnection, ids: Vec<Uuid>| async move {
        let rows = products::Entity::find()
            .filter(products::Column::Id.is_in(ids))
            .all(&db)
            .await?;
        Ok(rows.into_iter().map(Product::from).collect())
    };
    reads
        .load_batch(keys, |product: &Product| product.id, rows)
        .await
}

#[derive(Clone)]
pub struct ProductRepo {
    /// The primary, for writes.
    db: DatabaseConnection,
    reads: Reads,
    caches: Caches,
    by_id: ById<Product>,
}

impl ProductRepo {
    /// The pool, for classifying what its operations fail with (`pool::refine`).
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    pub fn new(reads: Reads, caches: Caches) -> Self {
        let by_id = {
            let reads = reads.clone();
            ById::new(caches.products.clone(), Resource::Product, move |keys| {
                load_products(reads.clone(), keys)
            })
        };
        Self {
            db: reads.primary().clone(),
            reads,
            caches,
            by_id,
        }
    }

    /// Read through the cache; misses for different ids at once share one query.
    pub async fn get(&self, id: Uuid) -> Result<Product, StoreError> {
        self.by_id.get(id, &self.reads).await
    }

    pub async fn get_cached(&self, id: Uuid) -> Result<Arc<Cached<Product>>, StoreError> {
        self.by_id.get_cached(id, &self.reads).await
    }

    pub async fn list(
        &self,
        filter: ProductFilter,
        request: PageRequest,
    ) -> Result<PageOf<Product>, StoreError> {
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
        let key = |row: &products::Model| CursorKey {
            created_at: row.created_at,
            id: row.id,
        };
        let page = self
            .reads
            .read_current(|db| {
                let query = query.clone();
                async move { Ok(listing::list(&db, query, order, key, request, None).await?) }
            })
            .await?;
        Ok(page.map(Product::from))
    }

    pub async fn create(&self, new: NewProduct) -> Result<Product, StoreError> {
        let now = crate::store::now();
        let mut write = Write::begin(&self.db, &self.caches).await?;
        let row = products::ActiveModel {
            id: Set(Uuid::now_v7()),
            sku: Set(new.sku.into_string()),
            name: Set(new.name.into_string()),
            price_cents: Set(new.price.get()),
            stock: Set(new.stock.get()),
            created_at: Set(now),
            updated_at: Set(now),
            version: Set(1),
        }
        .insert(write.txn())
        .await?;
        write.changed(Topic::Products, [row.id]);
        write.commit().await?;
        Ok(row.into())
    }

    /// Changes the fields sent; `version` goes up with every write. With `expected`, only when
    /// the stored version is one of those (`If-Match`), checked in the writing statement.
    #[tracing::instrument(level = "debug", skip_all, fields(%id))]
    pub async fn update(
        &self,
        id: Uuid,
        changes: ProductChanges,
        expected: Option<&[i64]>,
    ) -> Result<Product, StoreError> {
        let mut update = products::Entity::update_many()
            .col_expr(
                products::Column::UpdatedAt,
                Expr::value(crate::store::now()),
            )
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
        let mut write = Write::begin(&self.db, &self.caches).await?;
        let written = update.exec(write.txn()).await?;
        let Some(updated) = products::Entity::find_by_id(id).one(write.txn()).await? else {
            return Err(StoreError::not_found(Resource::Product, id));
        };
        if written.rows_affected == 0 {
            return Err(StoreError::PreconditionFailed);
        }
        write.changed(Topic::Products, [id]);
        write.commit().await?;
        Ok(updated.into())
    }

    /// A product that was ever ordered stays: its order items refer to it.
    #[tracing::instrument(level = "debug", skip_all, fields(%id))]
    pub async fn delete(&self, id: Uuid, expected: Option<&[i64]>) -> Result<(), StoreError> {
        let mut delete = products::Entity::delete_many().filter(products::Column::Id.eq(id));
        if let Some(versions) = expected {
            delete = delete.filter(products::Column::Version.is_in(versions.iter().copied()));
        }
        let mut write = Write::begin(&self.db, &self.caches).await?;
        let result = delete
            .exec(write.txn())
            .await
            .on_foreign_key(Conflict::ProductHasOrders)?;
        if result.rows_affected == 0 {
            let exists = products::Entity::find_by_id(id)
                .one(write.txn())
                .await?
                .is_some();
            return Err(if exists {
                StoreError::PreconditionFailed
            } else {
                StoreError::not_found(Resource::Product, id)
            });
        }
        write.changed(Topic::Products, [id]);
        write.commit().await
    }
}
