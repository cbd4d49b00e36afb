//! Products on MongoDB.

use std::collections::HashMap;
use std::sync::Arc;

use bson::{Document, doc};
use futures::TryStreamExt;
use mongodb::options::ReturnDocument;
use uuid::Uuid;

use super::document::{self, read_flag, read_i32, read_i64, read_id, read_str, read_time};
use super::error::on_duplicate;
use super::schema::PRODUCTS;
use super::{Mongo, page, settle};
use crate::cache::Cached;
use crate::cache::EntityCache;
use crate::domain::model::{NewProduct, Product, ProductChanges, ProductFilter};
use crate::metrics::Metrics;
use crate::store::by_id::{ById, Current};
use crate::store::retry::{RetryPolicy, with_retry};
use crate::store::{Conflict, PageOf, PageRequest, Resource, StoreError};

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

async fn load_products(mongo: Mongo, ids: Vec<Uuid>) -> Result<HashMap<Uuid, Product>, StoreError> {
    let docs: Vec<Document> = mongo
        .collection(PRODUCTS)
        .find(doc! {"_id": {"$in": document::ids(ids)}})
        .max_time(mongo.max_time)
        .await?
        .try_collect()
        .await?;
    docs.iter()
        .map(|doc| product_from(doc).map(|product| (product.id, product)))
        .collect()
}

#[derive(Clone)]
pub struct ProductRepo {
    mongo: Mongo,
    cache: Arc<EntityCache<Product>>,
    by_id: ById<Product>,
    metrics: Arc<Metrics>,
}

impl ProductRepo {
    pub fn new(mongo: Mongo, cache: Arc<EntityCache<Product>>, metrics: Arc<Metrics>) -> Self {
        let by_id = {
            let mongo = mongo.clone();
            ById::current(cache.clone(), Resource::Product, move |ids| {
                load_products(mongo.clone(), ids)
            })
        };
        Self {
            mongo,
            cache,
            by_id,
            metrics,
        }
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
            &self.mongo.collection(PRODUCTS),
            query,
            request,
            self.mongo.max_time,
        )
        .await?;
        Ok(PageOf {
            items: page
                .items
                .iter()
                .map(product_from)
                .collect::<Result<_, _>>()?,
            total: page.total,
            next: page.next,
        })
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
        self.mongo
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
            .await
            .map_err(|err| on_duplicate(err, "sku", Conflict::SkuTaken))?;
        self.cache.evict_listing();
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
        let mut filter = doc! {"_id": document::id(id)};
        if let Some(versions) = expected {
            filter.insert("version", doc! {"$in": versions});
        }
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
        let updated = self
            .mongo
            .collection(PRODUCTS)
            .find_one_and_update(filter, doc! {"$set": set, "$inc": {"version": 1_i64}})
            .return_document(ReturnDocument::After)
            .max_time(self.mongo.max_time)
            .await;
        self.cache.evict(id).await;
        match updated? {
            Some(doc) => product_from(&doc),
            // Either it is gone, or its version is not the one expected.
            None => match self.by_id.load(id).await? {
                Some(_) => Err(StoreError::PreconditionFailed),
                None => Err(StoreError::not_found(Resource::Product, id)),
            },
        }
    }

    /// A product that was ever ordered stays. The check and the delete run in one transaction
    /// that conflicts with any order taking the product's stock meanwhile.
    pub async fn delete(&self, id: Uuid, expected: Option<&[i64]>) -> Result<(), StoreError> {
        let retries = &self.metrics.transaction_retries;
        let outcome = with_retry(
            RetryPolicy::default(),
            |_| retries.inc(),
            || async {
                let mut session = self.mongo.begin().await?;
                let products = self.mongo.collection(PRODUCTS);
                let attempt = async {
                    let product = products
                        .find_one(doc! {"_id": document::id(id)})
                        .max_time(self.mongo.max_time)
                        .session(&mut session)
                        .await?
                        .ok_or(StoreError::not_found(Resource::Product, id))?;
                    let version = read_i64(&product, "version")?;
                    if expected.is_some_and(|versions| !versions.contains(&version)) {
                        return Err(StoreError::PreconditionFailed);
                    }
                    if read_flag(&product, ORDERED) {
                        return Err(StoreError::Conflict(Conflict::ProductHasOrders));
                    }
                    products
                        .delete_one(doc! {"_id": document::id(id)})
                        .session(&mut session)
                        .await?;
                    Ok(())
                }
                .await;
                settle(&mut session, attempt).await
            },
        )
        .await;
        self.cache.evict(id).await;
        outcome
    }

    /// Drops cached copies of products whose stock a transaction changed (after it committed).
    pub async fn evict(&self, ids: impl IntoIterator<Item = Uuid>) {
        for id in ids {
            self.cache.evict(id).await;
        }
    }
}
