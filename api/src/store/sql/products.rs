use std::collections::HashMap;
use std::sync::Arc;

use entity::products;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QuerySelect,
};
use uuid::Uuid;

use super::error::OnViolation;
use super::listing;
use super::replicas::Reads;
use super::write::Writer;
use crate::cache::Cached;
use crate::cache::Caches;
use crate::domain::model::{NewProduct, Product, ProductChanges, ProductFilter};
use crate::store::by_id::{ById, Key};
use crate::store::error::{Conflict, Resource, StoreError};
use crate::store::events::{Change, Feed, Subject};
use crate::store::page::{PageOf, PageRequest};

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
    by_id: ById<Product>,
    writer: Writer,
}

impl ProductRepo {
    /// The pool, for classifying what its operations fail with (`pool::refine`).
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    pub fn new(reads: Reads, caches: Caches, feed: Feed) -> Self {
        let by_products = caches.products.clone();
        let writer = Writer::new(&reads, caches, feed);
        let by_id = {
            let reads = reads.clone();
            ById::new(by_products, Resource::Product, move |keys| {
                load_products(reads.clone(), keys)
            })
        };
        Self {
            db: reads.primary().clone(),
            reads,
            by_id,
            writer,
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
        let page = self
            .reads
            .read_current(|db| {
                let query = query.clone();
                async move { Ok(listing::list(&db, query, request, None).await?) }
            })
            .await?;
        Ok(page.map(Product::from))
    }

    pub async fn create(&self, new: NewProduct) -> Result<Product, StoreError> {
        let now = crate::store::clock::now();
        let mut write = self.writer.begin().await?;
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
        let product = Product::from(row);
        write.record(Change::Created(Subject::Product(&product)));
        write.commit().await?;
        Ok(product)
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
                Expr::value(crate::store::clock::now()),
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
        let mut write = self.writer.begin().await?;
        let written = update.exec(write.txn()).await?;
        let Some(updated) = products::Entity::find_by_id(id).one(write.txn()).await? else {
            return Err(StoreError::not_found(Resource::Product, id));
        };
        if written.rows_affected == 0 {
            return Err(StoreError::PreconditionFailed);
        }
        let product = Product::from(updated);
        write.record(Change::Updated(Subject::Product(&product)));
        write.commit().await?;
        Ok(product)
    }

    /// A product that was ever ordered stays: its order items refer to it.
    #[tracing::instrument(level = "debug", skip_all, fields(%id))]
    pub async fn delete(&self, id: Uuid, expected: Option<&[i64]>) -> Result<(), StoreError> {
        let mut write = self.writer.begin().await?;
        // Locked until the delete commits: the version read is the one deleted.
        let Some(current) = products::Entity::find_by_id(id)
            .lock_exclusive()
            .one(write.txn())
            .await?
        else {
            return Err(StoreError::not_found(Resource::Product, id));
        };
        if expected.is_some_and(|versions| !versions.contains(&current.version)) {
            return Err(StoreError::PreconditionFailed);
        }
        products::Entity::delete_by_id(id)
            .exec(write.txn())
            .await
            .on_foreign_key(Conflict::ProductHasOrders)?;
        write.record(Change::Deleted {
            resource: Resource::Product,
            id,
            version: current.version + 1,
            at: crate::store::clock::now(),
        });
        write.commit().await
    }
}
