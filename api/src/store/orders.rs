//! Orders, on whichever engine holds them, and the one refusal a cache can answer.
//!
//! In a flash sale most orders arrive after a product sold out. Each of those would start a
//! transaction, claim nothing, read the products and roll back — work the database does only to
//! say again what it said a moment ago. A product's cache entry is current until a write evicts
//! it (`cache::EntityCache`), so an order that a cached product cannot cover is answered 409 from
//! the cache, exactly as the transaction would have answered it.

use std::sync::Arc;

use uuid::Uuid;

use super::consistency::{self, Presented};
use super::error::{Conflict, StoreError};
use super::{Products, Users, delegate, mongo, sql};
use crate::cache::Caches;
use crate::domain::OrderStatus;
use crate::domain::model::{Order, OrderFilter, PlaceOrder, Placed};
use crate::metrics::Metrics;
use crate::store::page::{PageOf, PageRequest};

/// The engine's order repository.
#[derive(Clone)]
pub enum Engine {
    Sql(sql::OrderRepo),
    Mongo(mongo::OrderRepo),
}

impl Engine {
    async fn place(&self, request: PlaceOrder) -> Result<Placed, StoreError> {
        delegate!(self.place(request))
    }

    async fn get(&self, id: Uuid) -> Result<Order, StoreError> {
        delegate!(self.get(id))
    }

    async fn list_for_user(
        &self,
        user_id: Uuid,
        filter: OrderFilter,
        request: PageRequest,
    ) -> Result<PageOf<Order>, StoreError> {
        delegate!(self.list_for_user(user_id, filter, request))
    }

    async fn transition(
        &self,
        id: Uuid,
        to: OrderStatus,
        expected: Option<&[i64]>,
    ) -> Result<Order, StoreError> {
        delegate!(self.transition(id, to, expected))
    }
}

#[derive(Clone)]
pub struct Orders {
    engine: Engine,
    users: Users,
    products: Products,
    caches: Caches,
    metrics: Arc<Metrics>,
}

impl Orders {
    pub fn new(
        engine: Engine,
        users: Users,
        products: Products,
        caches: &Caches,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            engine,
            users,
            products,
            caches: caches.clone(),
            metrics,
        }
    }

    #[tracing::instrument(level = "debug", name = "orders.place", skip_all)]
    pub async fn place(&self, request: PlaceOrder) -> Result<Placed, StoreError> {
        if let Some(refusal) = self.refusal_from_cache(&request).await? {
            return Err(refusal);
        }
        let placed = self.engine.place(request).await;
        if let Err(StoreError::Conflict(Conflict::InsufficientStock { product_id, .. })) = &placed {
            self.remember(*product_id);
        }
        placed
    }

    /// The answer the transaction would give, when the cache already knows it is a 409:
    /// every product of the order is cached (so it exists, at the stock and price it has now)
    /// and one of them cannot cover its line. The user is checked first, as the transaction
    /// does. Everything else takes the transaction: an order with an `Idempotency-Key` (a retry
    /// must replay its first answer, which only the database knows), a request presenting a
    /// `Consistency-Token` (this instance may not have heard of the write it names yet), and
    /// any order whose products are not all cached.
    async fn refusal_from_cache(
        &self,
        request: &PlaceOrder,
    ) -> Result<Option<StoreError>, StoreError> {
        if request.idempotency.is_some() || consistency::presented() != Presented::Nothing {
            return Ok(None);
        }
        let mut short = None;
        for line in request.lines.iter() {
            // Every product must be known to exist before any stock question is asked.
            let Some(product) = self.caches.products.peek(line.product_id).await else {
                return Ok(None);
            };
            if short.is_none() && product.stock < line.quantity {
                short = Some(Conflict::InsufficientStock {
                    product_id: product.id,
                    requested: i64::from(line.quantity),
                    available: i64::from(product.stock),
                });
            }
        }
        let Some(conflict) = short else {
            return Ok(None);
        };
        // An unknown user is 404 whatever the stock.
        self.users.get(request.user_id).await?;
        self.metrics.orders_refused_from_cache.inc();
        Ok(Some(StoreError::Conflict(conflict)))
    }

    /// Caches a product the database just found short, in the background (the 409 is not
    /// delayed for it), so that the orders after this one are refused without a transaction.
    fn remember(&self, product_id: Uuid) {
        if !self.caches.products.is_enabled() {
            return;
        }
        let products = self.products.clone();
        tokio::spawn(async move {
            // A failed read only leaves the next refusal to the database.
            let _ = products.get(product_id).await;
        });
    }

    #[tracing::instrument(level = "debug", name = "orders.get", skip_all, fields(%id))]
    pub async fn get(&self, id: Uuid) -> Result<Order, StoreError> {
        self.engine.get(id).await
    }

    #[tracing::instrument(level = "debug", name = "orders.list_for_user", skip_all, fields(%user_id))]
    pub async fn list_for_user(
        &self,
        user_id: Uuid,
        filter: OrderFilter,
        request: PageRequest,
    ) -> Result<PageOf<Order>, StoreError> {
        self.engine.list_for_user(user_id, filter, request).await
    }

    #[tracing::instrument(level = "debug", name = "orders.transition", skip_all, fields(%id))]
    pub async fn transition(
        &self,
        id: Uuid,
        to: OrderStatus,
        expected: Option<&[i64]>,
    ) -> Result<Order, StoreError> {
        self.engine.transition(id, to, expected).await
    }
}
