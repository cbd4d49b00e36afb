//! Products on MongoDB.

use std::sync::Arc;

use bson::{Document, doc};
use uuid::Uuid;

use super::document::{self, read_i32, read_i64, read_id, read_str, read_time};
use super::error::on_duplicate;
use super::schema::PRODUCTS;
use super::write::{Versioned, Writer, transaction};
use super::{Mongo, page};
use crate::cache::Cached;
use crate::domain::model::{NewProduct, Product, ProductChanges, ProductFilter};
use crate::store::by_id::{ById, Current};
use crate::store::error::{Conflict, Resource, StoreError};
use crate::store::events::{Change, Subject};
use crate::store::page::{PageOf, PageRequest};
use crate::store::retry::RetryPolicy;

/// Set by the first order that takes the product's stock, inside that order's transaction; never
/// cleared.
pub const ORDERED: &str = "ordered";

pub fn product_from(doc: &Document) -> Result<Product, StoreError> {
    Ok(Product {
        id: read_id(doc, "_id")?,
        sku: read_str(doc, "sku")?,
        name: read_str(doc, "name")?,
        price_cents: read_i64(doc, "price_cents")?,
        stock: read_i32(doc, "stock")?,
        created_at: read_time(doc, "created_at")?,
        updated_at: read_time(doc, "updated_at")?,
        version: read_i64(doc, "version")?,
    })
}

#[derive(Clone)]
pub struct ProductRepo {
    writer: Writer,
    by_id: ById<Product>,
}

impl ProductRepo {
    pub(crate) fn new(writer: Writer) -> Self {
        let by_id = {
            let mongo = writer.mongo.clone();
            ById::current(
                writer.caches.products.clone(),
                Resource::Product,
                move |ids| {
                    let mongo = mongo.clone();
                    async move {
                        document::load_by_ids(&mongo, PRODUCTS, ids, product_from, |product| {
                            product.id
                        })
                        .await
                    }
                },
            )
        };
        Self { writer, by_id }
    }

    fn mongo(&self) -> &Mongo {
        &self.writer.mongo
    }

    /// Read through the cache; misses for different ids at once share one query.
    pub async fn get(&self, id: Uuid) -> Result<Product, StoreError> {
        self.by_id.get(id, &Current).await
    }

    pub async fn get_cached(&self, id: Uuid) -> Result<Arc<Cached<Product>>, StoreError> {
        self.by_id.get_cached(id, &Current).await
    }

    pub async fn list(
        &self,
        filter: ProductFilter,
        request: PageRequest,
    ) -> Result<PageOf<Product>, StoreError> {
        let query = match filter.in_stock {
            Some(true) => doc! {"stock": {"$gt": 0_i64}},
            Some(false) => doc! {"stock": 0_i64},
            None => Document::new(),
        };
        let page = page::list(
            &self.mongo().collection(PRODUCTS),
            query,
            request,
            self.mongo().max_time,
        )
        .await?;
        page.try_map(product_from)
    }

    pub async fn create(&self, new: NewProduct) -> Result<Product, StoreError> {
        let now = document::now();
        let product = Product {
            id: Uuid::now_v7(),
            sku: new.sku.into_string(),
            name: new.name.into_string(),
            price_cents: new.price.get(),
            stock: new.stock.get(),
            created_at: now,
            updated_at: now,
            version: 1,
        };
        transaction!(self.writer, RetryPolicy::default(), |write| {
            self.mongo()
                .collection(PRODUCTS)
                .insert_one(doc! {
                    "_id": document::id(product.id),
                    "sku": &product.sku,
                    "name": &product.name,
                    "price_cents": product.price_cents,
                    "stock": i64::from(product.stock),
                    "version": 1_i64,
                    "created_at": document::time(now),
                    "updated_at": document::time(now),
                })
                .session(write.session())
                .await
                .map_err(|err| on_duplicate(err, "sku", Conflict::SkuTaken))?;
            write.record(Change::Created(Subject::Product(&product)));
            Ok::<_, StoreError>(())
        })
        .await?;
        Ok(product)
    }

    /// Changes the fields sent; `version` goes up with every write. With `expected`, only when
    /// the stored version is one of those (`If-Match`), checked in the writing update.
    pub async fn update(
        &self,
        id: Uuid,
        changes: ProductChanges,
        expected: Option<&[i64]>,
    ) -> Result<Product, StoreError> {
        let mut set = doc! {"updated_at": document::time(document::now())};
        page::set_if(
            &mut set,
            "name",
            changes.name.map(|name| name.into_string()),
        );
        page::set_if(
            &mut set,
            "price_cents",
            changes.price.map(|price| price.get()),
        );
        page::set_if(
            &mut set,
            "stock",
            changes.stock.map(|stock| i64::from(stock.get())),
        );
        let update = doc! {"$set": set, "$inc": {"version": 1_i64}};
        let target = Versioned {
            collection: PRODUCTS,
            resource: Resource::Product,
            id,
            expected,
        };
        transaction!(self.writer, RetryPolicy::default(), |write| {
            let updated = write
                .update_versioned(&target, update.clone(), StoreError::from)
                .await?;
            let product = product_from(&updated)?;
            write.record(Change::Updated(Subject::Product(&product)));
            Ok(product)
        })
        .await
    }

    /// A product that was ever ordered stays. The check and the delete run in one transaction
    /// that conflicts with any order taking the product's stock meanwhile.
    pub async fn delete(&self, id: Uuid, expected: Option<&[i64]>) -> Result<(), StoreError> {
        let target = Versioned {
            collection: PRODUCTS,
            resource: Resource::Product,
            id,
            expected,
        };
        transaction!(self.writer, RetryPolicy::default(), |write| {
            write
                .delete_versioned(&target, (ORDERED, Conflict::ProductHasOrders))
                .await?;
            Ok::<_, StoreError>(())
        })
        .await
    }
}
