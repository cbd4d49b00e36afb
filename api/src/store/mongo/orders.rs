//! Orders on MongoDB: one multi-document transaction per placement or transition, retried as a
//! whole on write conflicts (`TransientTransactionError`) with the shared backoff.
//!
//! There are no foreign keys, so the invariants they give SQL are kept by the transactions
//! themselves: placing an order writes the user's document (the first time, its `has_orders`
//! flag) and every product's (the stock, and its `ordered` flag), while deleting a user or product
//! reads that flag and deletes in a transaction of its own. Whichever commits second has written a
//! document the other changed since its snapshot, so it conflicts, is retried, and then sees the
//! other's outcome: the order finds no user (404), or the delete finds the flag (409).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bson::{Bson, Document, doc};
use futures::TryStreamExt;
use mongodb::ClientSession;
use mongodb::options::ReturnDocument;
use uuid::Uuid;

use super::document::{self, read_flag, read_i32, read_i64, read_id, read_str, read_time};
use super::error::is_duplicate_on;
use super::locks::Stripes;
use super::products::{ORDERED, product_from};
use super::schema::{IDEMPOTENCY_KEYS, ORDERS, PRODUCTS, USERS};
use super::users::HAS_ORDERS;
use super::write::{Writer, transaction};
use super::{Mongo, page};
use crate::domain::OrderStatus;
use crate::domain::model::Product;
use crate::domain::model::{Order, OrderFilter, OrderItem, PlaceOrder, Placed};
use crate::store::allocation::{self, Priced};
use crate::store::error::{Conflict, Resource, StoreError};
use crate::store::events::{Change, Subject};
use crate::store::idempotency::{self, Claim};
use crate::store::page::{PageOf, PageRequest};
use crate::store::retry::{RetryPolicy, Retryable};

/// MongoDB aborts a conflicting transaction at once instead of making it wait, so conflicts
/// between instances take more, shorter tries than SQL's deadlock retries: ten tries with delays
/// of up to 5, 10, 20 … 200 ms, about a second in all.
const RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 10,
    base_delay: Duration::from_millis(5),
    max_delay: Duration::from_millis(200),
};

/// Why one attempt at placing an order stopped short of committing.
enum Attempt {
    Failed(StoreError),
    /// The idempotency key was claimed by a request that has committed since.
    KeyTaken,
}

impl From<StoreError> for Attempt {
    fn from(err: StoreError) -> Self {
        Self::Failed(err)
    }
}

impl From<mongodb::error::Error> for Attempt {
    fn from(err: mongodb::error::Error) -> Self {
        Self::Failed(err.into())
    }
}

impl Retryable for Attempt {
    fn is_contention(&self) -> bool {
        matches!(self, Self::Failed(err) if err.is_contention())
    }

    fn exhausted(self, attempts: u32) -> Self {
        match self {
            Self::Failed(err) => Self::Failed(err.exhausted(attempts)),
            taken => taken,
        }
    }
}

#[derive(Clone)]
pub struct OrderRepo {
    writer: Writer,
    locks: Arc<Stripes>,
}

fn malformed(what: &str) -> StoreError {
    StoreError::internal(format!("stored order has no valid {what}"))
}

fn order_from(doc: &Document) -> Result<Order, StoreError> {
    let id = read_id(doc, "_id")?;
    let status = read_str(doc, "status")?;
    let status = OrderStatus::from_db(&status)
        .ok_or_else(|| StoreError::internal(format!("unknown order status {status:?}")))?;
    let mut items = Vec::new();
    for item in doc.get_array("items").map_err(|_| malformed("items"))? {
        let item = item.as_document().ok_or_else(|| malformed("item"))?;
        items.push(OrderItem {
            product_id: read_id(item, "product_id")?,
            quantity: read_i32(item, "quantity")?,
            unit_price_cents: read_i64(item, "unit_price_cents")?,
        });
    }
    items.sort_by_key(|item| item.product_id);
    Ok(Order {
        id,
        user_id: read_id(doc, "user_id")?,
        status,
        total_cents: read_i64(doc, "total_cents")?,
        items,
        version: read_i64(doc, "version")?,
        created_at: read_time(doc, "created_at")?,
        updated_at: read_time(doc, "updated_at")?,
    })
}

/// What one transaction writes, for the in-process queue (see `locks`).
fn user_key(id: Uuid) -> String {
    format!("user:{id}")
}

fn product_key(id: Uuid) -> String {
    format!("product:{id}")
}

impl OrderRepo {
    pub(crate) fn new(writer: Writer) -> Self {
        Self {
            writer,
            locks: Arc::new(Stripes::default()),
        }
    }

    fn mongo(&self) -> &Mongo {
        &self.writer.mongo
    }

    /// Places an order in one transaction: claims the idempotency key, checks the user, takes
    /// the stock with conditional updates, and inserts the order with its items — all of it
    /// commits or none.
    pub async fn place(&self, request: PlaceOrder) -> Result<Placed, StoreError> {
        let order_id = Uuid::now_v7();
        let mut keys = vec![user_key(request.user_id)];
        keys.extend(request.lines.product_ids().into_iter().map(product_key));
        if let Some(idempotency) = &request.idempotency {
            // A duplicate arriving while the first runs waits here, then finds the key taken.
            keys.push(format!("key:{}", idempotency.key.as_str()));
        }
        let held = self.locks.lock(keys).await;
        let placed = transaction!(self.writer, RETRY, |write| {
            let order = self.place_in(write.session(), order_id, &request).await?;
            write.record(Change::Created(Subject::Order(&order)));
            Ok(order)
        })
        .await;
        drop(held);
        match placed {
            Ok(order) => Ok(Placed::New(order)),
            Err(Attempt::KeyTaken) => self.replay(&request).await.map(Placed::Replayed),
            Err(Attempt::Failed(err)) => Err(err),
        }
    }

    async fn place_in(
        &self,
        session: &mut ClientSession,
        order_id: Uuid,
        request: &PlaceOrder,
    ) -> Result<Order, Attempt> {
        let now = document::now();
        self.claim_key(session, order_id, request).await?;
        self.mark_user(session, request.user_id).await?;
        let products = self.read_products(session, request).await?;

        let stocked = allocation::stocked(
            products
                .values()
                .map(|product| (product.id, product.stock, product.price_cents)),
        );
        let Priced { total, items } = allocation::decide(request, &stocked)?;
        for item in &items {
            self.take_stock(session, item.product_id, item.quantity, now)
                .await?;
        }

        let item_docs: Vec<Bson> = items
            .iter()
            .map(|item| {
                Bson::Document(doc! {
                    "product_id": document::id(item.product_id),
                    "quantity": i64::from(item.quantity),
                    "unit_price_cents": item.unit_price_cents,
                })
            })
            .collect();
        self.mongo()
            .collection(ORDERS)
            .insert_one(doc! {
                "_id": document::id(order_id),
                "user_id": document::id(request.user_id),
                "status": OrderStatus::Pending.as_str(),
                "total_cents": total,
                "items": item_docs,
                "version": 1_i64,
                "created_at": document::time(now),
                "updated_at": document::time(now),
            })
            .session(&mut *session)
            .await?;
        Ok(Order {
            id: order_id,
            user_id: request.user_id,
            status: OrderStatus::Pending,
            total_cents: total,
            items,
            version: 1,
            created_at: now,
            updated_at: now,
        })
    }

    /// Claims the idempotency key first. A key committed by an earlier request is a duplicate
    /// key (answer with its order); one held by a request still running elsewhere is a write
    /// conflict, retried until that request has finished either way.
    async fn claim_key(
        &self,
        session: &mut ClientSession,
        order_id: Uuid,
        request: &PlaceOrder,
    ) -> Result<(), Attempt> {
        let Some(idempotency) = &request.idempotency else {
            return Ok(());
        };
        let claim = self
            .mongo()
            .collection(IDEMPOTENCY_KEYS)
            .insert_one(doc! {
                "_id": idempotency.key.as_str(),
                "request_hash": &idempotency.request_hash,
                "order_id": document::id(order_id),
                "created_at": document::time(document::now()),
            })
            .session(&mut *session)
            .await;
        match claim {
            Ok(_) => Ok(()),
            Err(err) if is_duplicate_on(&err, "_id") => Err(Attempt::KeyTaken),
            Err(err) => Err(err.into()),
        }
    }

    /// The user must exist; the first order also flags it, which is the write a concurrent
    /// delete of the user conflicts with.
    async fn mark_user(&self, session: &mut ClientSession, user_id: Uuid) -> Result<(), Attempt> {
        let users = self.mongo().collection(USERS);
        let user = users
            .find_one(doc! {"_id": document::id(user_id)})
            .projection(doc! {HAS_ORDERS: 1})
            .max_time(self.mongo().max_time)
            .session(&mut *session)
            .await?
            .ok_or(StoreError::not_found(Resource::User, user_id))?;
        if !read_flag(&user, HAS_ORDERS) {
            users
                .update_one(
                    doc! {"_id": document::id(user_id)},
                    doc! {"$set": {HAS_ORDERS: true}},
                )
                .session(&mut *session)
                .await?;
        }
        Ok(())
    }

    /// Every product of the order as of the transaction's snapshot; any missing is a 404 before
    /// any stock question is asked.
    async fn read_products(
        &self,
        session: &mut ClientSession,
        request: &PlaceOrder,
    ) -> Result<HashMap<Uuid, Product>, Attempt> {
        let mut cursor = self
            .mongo()
            .collection(PRODUCTS)
            .find(doc! {"_id": {"$in": document::ids(request.lines.product_ids())}})
            .max_time(self.mongo().max_time)
            .session(&mut *session)
            .await?;
        let docs: Vec<Document> = cursor.stream(&mut *session).try_collect().await?;
        let mut products = HashMap::new();
        for doc in &docs {
            let product = product_from(doc)?;
            products.insert(product.id, product);
        }
        Ok(products)
    }

    /// The guard repeats the stock check in the update itself: whatever happened since the
    /// read, this can never take stock below zero.
    async fn take_stock(
        &self,
        session: &mut ClientSession,
        product_id: Uuid,
        quantity: i32,
        now: chrono::DateTime<chrono::FixedOffset>,
    ) -> Result<(), Attempt> {
        let quantity = i64::from(quantity);
        let taken = self
            .mongo()
            .collection(PRODUCTS)
            .update_one(
                doc! {"_id": document::id(product_id), "stock": {"$gte": quantity}},
                doc! {
                    "$inc": {"stock": -quantity, "version": 1_i64},
                    "$set": {"updated_at": document::time(now), ORDERED: true},
                },
            )
            .session(&mut *session)
            .await?;
        if taken.matched_count != 1 {
            return Err(StoreError::Contended {
                attempts: 1,
                source: None,
            }
            .into());
        }
        Ok(())
    }

    /// The order an earlier request with this key placed, if the request was the same.
    async fn replay(&self, request: &PlaceOrder) -> Result<Order, StoreError> {
        let claim = match &request.idempotency {
            Some(idempotency) => {
                let found = self
                    .mongo()
                    .collection(IDEMPOTENCY_KEYS)
                    .find_one(doc! {"_id": idempotency.key.as_str()})
                    .max_time(self.mongo().max_time)
                    .await?;
                match found {
                    Some(claim) => Some(Claim {
                        request_hash: read_str(&claim, "request_hash")?,
                        order_id: read_id(&claim, "order_id")?,
                    }),
                    None => None,
                }
            }
            None => None,
        };
        let order_id = idempotency::replayed(request.idempotency.as_ref(), claim)?;
        self.get(order_id).await
    }

    pub async fn get(&self, id: Uuid) -> Result<Order, StoreError> {
        let doc = self
            .mongo()
            .collection(ORDERS)
            .find_one(doc! {"_id": document::id(id)})
            .max_time(self.mongo().max_time)
            .await?
            .ok_or(StoreError::not_found(Resource::Order, id))?;
        order_from(&doc)
    }

    /// A user's orders, newest first, each with its items (embedded: one query for the page).
    pub async fn list_for_user(
        &self,
        user_id: Uuid,
        filter: OrderFilter,
        request: PageRequest,
    ) -> Result<PageOf<Order>, StoreError> {
        let user = self
            .mongo()
            .collection(USERS)
            .find_one(doc! {"_id": document::id(user_id)})
            .projection(doc! {"_id": 1})
            .max_time(self.mongo().max_time)
            .await?;
        if user.is_none() {
            return Err(StoreError::not_found(Resource::User, user_id));
        }
        let mut query = doc! {"user_id": document::id(user_id)};
        page::set_if(&mut query, "status", filter.status.map(OrderStatus::as_str));
        let page = page::list(
            &self.mongo().collection(ORDERS),
            query,
            request,
            self.mongo().max_time,
        )
        .await?;
        page.try_map(order_from)
    }

    /// Moves an order along the transition table; cancelling gives the stock back in the same
    /// transaction.
    /// With `expected`, only when the order's version is one of those (`If-Match`), checked in
    /// the transaction that writes it.
    pub async fn transition(
        &self,
        id: Uuid,
        to: OrderStatus,
        expected: Option<&[i64]>,
    ) -> Result<Order, StoreError> {
        // An order's items never change, so the documents a cancellation writes are known
        // before it starts: it queues with the orders that write them.
        let current = self.get(id).await?;
        let mut keys = vec![format!("order:{id}")];
        if to == OrderStatus::Cancelled {
            keys.extend(
                current
                    .items
                    .iter()
                    .map(|item| product_key(item.product_id)),
            );
        }
        let held = self.locks.lock(keys).await;
        let order = transaction!(self.writer, RETRY, |write| {
            let order = self
                .transition_in(write.session(), id, to, expected)
                .await?;
            write.record(Change::Updated(Subject::Order(&order)));
            Ok(order)
        })
        .await;
        drop(held);
        order
    }

    async fn transition_in(
        &self,
        session: &mut ClientSession,
        id: Uuid,
        to: OrderStatus,
        expected: Option<&[i64]>,
    ) -> Result<Order, StoreError> {
        let orders = self.mongo().collection(ORDERS);
        let current = orders
            .find_one(doc! {"_id": document::id(id)})
            .max_time(self.mongo().max_time)
            .session(&mut *session)
            .await?
            .ok_or(StoreError::not_found(Resource::Order, id))?;
        let current = order_from(&current)?;
        if expected.is_some_and(|versions| !versions.contains(&current.version)) {
            return Err(StoreError::PreconditionFailed);
        }
        let from = current.status;
        if !from.can_move_to(to) {
            return Err(StoreError::Conflict(Conflict::InvalidTransition {
                from: from.as_str(),
                to: to.as_str(),
            }));
        }
        let now = document::now();
        // The version read above is part of the filter, so the `If-Match` check holds in the
        // write itself, not only in the read before it.
        let updated = orders
            .find_one_and_update(
                doc! {"_id": document::id(id), "status": from.as_str(), "version": current.version},
                doc! {
                    "$set": {"status": to.as_str(), "updated_at": document::time(now)},
                    "$inc": {"version": 1_i64},
                },
            )
            .return_document(ReturnDocument::After)
            .max_time(self.mongo().max_time)
            .session(&mut *session)
            .await?
            .ok_or(StoreError::Contended {
                attempts: 1,
                source: None,
            })?;
        if to == OrderStatus::Cancelled {
            let products = self.mongo().collection(PRODUCTS);
            for item in &current.items {
                products
                    .update_one(
                        doc! {"_id": document::id(item.product_id)},
                        doc! {
                            "$inc": {"stock": i64::from(item.quantity), "version": 1_i64},
                            "$set": {"updated_at": document::time(now)},
                        },
                    )
                    .session(&mut *session)
                    .await?;
            }
        }
        order_from(&updated)
    }
}
