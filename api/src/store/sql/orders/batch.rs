//! Placing concurrent orders together, in one transaction: the coalesced path of
//! `OrderRepo::place`.
//!
//! On a few hot products (a flash sale) orders serialise on those rows' locks, each waiting for
//! the one before it to commit. A batch pays that wait once, and holds the locks as briefly as it
//! can: it checks its users in one query, reads every product involved once (without locking),
//! and decides each order in Rust, in arrival order, as the single-order path would have decided
//! it at its turn: an unknown user, then an unknown product, then a line the remaining stock
//! cannot cover, lines in order, each refusing that order alone, which takes nothing. It writes
//! the accepted orders and their events, and only then takes the stock: one guarded update per
//! product, in ascending id order (so batches never wait on each other in opposite orders; on
//! SQLite the IMMEDIATE transaction already serialises), each locking its row until COMMIT. The
//! guards (stock still enough, price unchanged) are checked against the row's latest version
//! once its lock is held; when one fails, another write moved the product after it was read,
//! and the batch is rolled back and tried again from the read, as contention is everywhere.
//! The items, which reference the products, are inserted last (on MariaDB the foreign-key check
//! takes a shared lock on the product row, which must not come before the update's own).
//!
//! The batch is only a faster way to the same answers: when its transaction fails for anything
//! but contention (which is retried as everywhere), it is rolled back and each of its orders is
//! placed on its own, by the single-order path.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, FixedOffset};
use entity::{order_items, orders, products, users};
use futures::future::join_all;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, QuerySelect,
};
use uuid::Uuid;

use super::{OrderQueue, Placer, items_of, order_from_rows};
use crate::domain::OrderStatus;
use crate::domain::model::{Order, PlaceOrder, Placed};
use crate::store::allocation::{Priced, Stocked, allocate};
use crate::store::batch::padded;
use crate::store::coalesce::{Coalescer, Waiter};
use crate::store::consistency::{self, Presented, Scope};
use crate::store::error::StoreError;
use crate::store::events::{Change, Subject};
use crate::store::sql::write::Write;

/// Orders in one batch: enough that a flash sale's buyers (tens to hundreds at once) commit in a
/// few transactions, few enough that a batch's statements stay small (64 orders of at most 100
/// lines are 6,400 items, far below every backend's parameter limit once chunked).
const MAX_ORDERS: usize = 64;

/// Batches in flight at once, each on a pooled connection: one commits while the next prepares
/// (begins, checks its users, queues for the product locks), and orders never take more than
/// two connections of the pool.
const MAX_IN_FLIGHT: usize = 2;

/// Item rows per insert: 4 parameters each keeps a statement under SQLite's 32,766.
const ITEMS_PER_INSERT: usize = 1000;

/// One caller's answer from the queue.
pub(super) struct Answer {
    pub placed: Result<Placed, StoreError>,
    /// The order committed but the commit's position could not be read (`replicas`): the
    /// caller's request must say so, which only its own task can (`consistency::position_unknown`).
    pub position_unknown: bool,
}

/// The queue `OrderRepo::place` submits unkeyed orders to, worked by `placer`.
pub(super) fn queue(placer: Placer) -> OrderQueue {
    Coalescer::new(MAX_ORDERS, MAX_IN_FLIGHT, move |batch| {
        place_batch(placer.clone(), batch)
    })
}

/// Places a batch together and answers each caller; when the batch cannot commit, places each
/// of its orders on its own (concurrently, as separate requests would) before the next batch.
async fn place_batch(placer: Placer, batch: Vec<Waiter<PlaceOrder, Answer>>) {
    let (requests, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(Waiter::split).unzip();
    let orders: Vec<(Uuid, PlaceOrder)> = requests
        .into_iter()
        .map(|request| (Uuid::now_v7(), request))
        .collect();
    let (placed, position_unknown) =
        in_own_scope(placer.retrying(|| placer.place_together(&orders))).await;
    match placed {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                reply.answer(Answer {
                    placed: outcome.map(Placed::New),
                    position_unknown,
                });
            }
        }
        Err(err) => {
            tracing::warn!(
                orders = orders.len(),
                error = %err,
                "a batch of orders could not commit; placing each on its own"
            );
            let mut committed = match placer.committed_anyway(&orders, &err).await {
                Ok(committed) => committed,
                Err(unknown) => {
                    for reply in replies {
                        reply.answer(Answer {
                            placed: Err(unknown.clone()),
                            position_unknown: false,
                        });
                    }
                    return;
                }
            };
            let alone = orders
                .iter()
                .zip(replies)
                .map(|((order_id, request), reply)| {
                    let placer = &placer;
                    let found = committed.remove(order_id);
                    async move {
                        // Its commit's position was never read: the answer says so.
                        let (placed, position_unknown) = match found {
                            Some(order) => (Ok(Placed::New(order)), true),
                            None => in_own_scope(placer.place_alone(*order_id, request)).await,
                        };
                        reply.answer(Answer {
                            placed,
                            position_unknown,
                        });
                    }
                });
            join_all(alone).await;
        }
    }
}

impl Placer {
    /// The orders of a batch that committed although its COMMIT failed: when the connection was
    /// lost after COMMIT was sent and the outcome could not be settled (`write::finish`, after a
    /// failover), the orders' own ids, made by the service, tell. Placing such an order again
    /// would fail on its id; answering it failed would make its client place it twice. When the
    /// primary cannot be asked either, the batch's error stands for every order (a 503 to retry).
    async fn committed_anyway(
        &self,
        orders: &[(Uuid, PlaceOrder)],
        err: &StoreError,
    ) -> Result<HashMap<Uuid, Order>, StoreError> {
        if !matches!(err, StoreError::Unavailable { .. }) {
            return Ok(HashMap::new());
        }
        let ids: Vec<Uuid> = orders.iter().map(|(id, _)| *id).collect();
        let found = orders::Entity::find()
            .filter(orders::Column::Id.is_in(padded(ids)))
            .all(&self.db)
            .await
            .map_err(|_| err.clone())?;
        if found.is_empty() {
            return Ok(HashMap::new());
        }
        tracing::warn!(
            orders = found.len(),
            "a batch's COMMIT failed but its orders are there; they are answered as placed"
        );
        let found_ids: Vec<Uuid> = found.iter().map(|order| order.id).collect();
        let mut items = items_of(&self.db, &found_ids)
            .await
            .map_err(|_| err.clone())?;
        found
            .into_iter()
            .map(|order| {
                let id = order.id;
                let items = items.remove(&id).unwrap_or_default();
                order_from_rows(order, items).map(|order| (id, order))
            })
            .collect()
    }
}

/// Runs a write outside any request, in a consistency scope of its own, and says whether a
/// commit of it had a position that could not be read.
async fn in_own_scope<T>(write: impl Future<Output = T>) -> (T, bool) {
    let scope = Scope::new(Presented::Nothing);
    let outcome = consistency::within(scope.clone(), write).await;
    (outcome, scope.is_position_unknown())
}

impl Placer {
    /// One attempt at placing `orders` in one transaction: each order's own outcome, or the
    /// error that rolled the whole batch back.
    #[tracing::instrument(level = "debug", skip_all, fields(orders = orders.len()))]
    async fn place_together(
        &self,
        orders: &[(Uuid, PlaceOrder)],
    ) -> Result<Vec<Result<Order, StoreError>>, StoreError> {
        let mut write = self.writer.begin().await?;
        let outcome = place_in(&mut write, orders).await;
        write.finish(outcome).await
    }
}

async fn place_in(
    write: &mut Write<'_>,
    orders: &[(Uuid, PlaceOrder)],
) -> Result<Vec<Result<Order, StoreError>>, StoreError> {
    let now = crate::store::clock::now();
    let users = existing_users(write.txn(), orders).await?;
    let products = read_products(write.txn(), orders, &users).await?;
    let allocation = allocate(orders.iter().map(|(_, request)| request), &users, &products);

    let decided: Vec<Result<Rows, StoreError>> = orders
        .iter()
        .zip(allocation.decisions)
        .map(|((order_id, request), decision)| {
            decision.map(|priced| rows_of(*order_id, request.user_id, priced, now))
        })
        .collect();
    let outcomes: Vec<Result<Order, StoreError>> = decided
        .iter()
        .map(|rows| {
            let (order, items) = rows.clone()?;
            order_from_rows(order, items)
        })
        .collect();
    let accepted: Vec<&Rows> = decided
        .iter()
        .filter_map(|rows| rows.as_ref().ok())
        .collect();
    if !accepted.is_empty() {
        insert_orders(write.txn(), &accepted).await?;
        for order in outcomes.iter().flatten() {
            write.record(Change::Created(Subject::Order(order)));
        }
        write.insert_events().await?;
        take_stock(write.txn(), &allocation.taken, &products, now).await?;
        insert_items(write.txn(), &accepted).await?;
    }
    Ok(outcomes)
}

/// Which of the batch's users exist, in one query.
#[tracing::instrument(level = "debug", skip_all)]
async fn existing_users(
    txn: &DatabaseTransaction,
    orders: &[(Uuid, PlaceOrder)],
) -> Result<HashSet<Uuid>, StoreError> {
    let ids: BTreeSet<Uuid> = orders.iter().map(|(_, request)| request.user_id).collect();
    let found = users::Entity::find()
        .select_only()
        .column(users::Column::Id)
        .filter(users::Column::Id.is_in(padded(ids.into_iter().collect())))
        .into_tuple::<Uuid>()
        .all(txn)
        .await?;
    Ok(found.into_iter().collect())
}

/// Reads the products of every order whose user exists, once. Nothing is locked here: the
/// stock is taken by guarded updates at the end (`take_stock`).
#[tracing::instrument(level = "debug", skip_all)]
async fn read_products(
    txn: &DatabaseTransaction,
    orders: &[(Uuid, PlaceOrder)],
    users: &HashSet<Uuid>,
) -> Result<HashMap<Uuid, Stocked>, StoreError> {
    let ids: BTreeSet<Uuid> = orders
        .iter()
        .filter(|(_, request)| users.contains(&request.user_id))
        .flat_map(|(_, request)| request.lines.iter().map(|line| line.product_id))
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = products::Entity::find()
        .select_only()
        .columns([
            products::Column::Id,
            products::Column::Stock,
            products::Column::PriceCents,
        ])
        .filter(products::Column::Id.is_in(padded(ids.into_iter().collect())))
        .into_tuple::<(Uuid, i32, i64)>()
        .all(txn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, stock, price_cents)| (id, Stocked { stock, price_cents }))
        .collect())
}

/// The rows an accepted order is written as: the order and its items.
type Rows = (orders::Model, Vec<order_items::Model>);

fn rows_of(order_id: Uuid, user_id: Uuid, priced: Priced, now: DateTime<FixedOffset>) -> Rows {
    let order = orders::Model {
        id: order_id,
        user_id,
        status: OrderStatus::Pending.as_str().to_owned(),
        total_cents: priced.total,
        created_at: now,
        updated_at: now,
        version: 1,
    };
    let items = priced
        .items
        .into_iter()
        .map(|item| order_items::Model {
            order_id,
            product_id: item.product_id,
            quantity: item.quantity,
            unit_price_cents: item.unit_price_cents,
        })
        .collect();
    (order, items)
}

#[tracing::instrument(level = "debug", skip_all, fields(orders = accepted.len()))]
async fn insert_orders(txn: &DatabaseTransaction, accepted: &[&Rows]) -> Result<(), StoreError> {
    let rows = accepted.iter().map(|(order, _)| orders::ActiveModel {
        id: Set(order.id),
        user_id: Set(order.user_id),
        status: Set(order.status.clone()),
        total_cents: Set(order.total_cents),
        created_at: Set(order.created_at),
        updated_at: Set(order.updated_at),
        version: Set(order.version),
    });
    orders::Entity::insert_many(rows)
        .exec_without_returning(txn)
        .await?;
    Ok(())
}

/// One update per product for the batch's total, in ascending id, each locking its row until
/// COMMIT. The guards (stock, price) are checked on the row's latest version once the lock is
/// held: a product another write changed since it was read fails the batch as contention, which
/// is tried again from the read.
#[tracing::instrument(level = "debug", skip_all, fields(products = taken.len()))]
async fn take_stock(
    txn: &DatabaseTransaction,
    taken: &BTreeMap<Uuid, i64>,
    products: &HashMap<Uuid, Stocked>,
    now: DateTime<FixedOffset>,
) -> Result<(), StoreError> {
    for (&product_id, &quantity) in taken {
        let priced_at = products
            .get(&product_id)
            .map(|product| product.price_cents)
            .ok_or_else(|| StoreError::internal("stock taken from a product never locked"))?;
        // Bound as the column's type, as the single-order path binds it: the driver caches a
        // prepared statement by its text, and this statement's text is that path's, so an `i64`
        // here would reach a statement prepared for an `i32` on the same connection (and the
        // other way round). The batch took no more than a stock, so it fits.
        let quantity = i32::try_from(quantity)
            .map_err(|_| StoreError::internal("a batch took more than a stock can hold"))?;
        let updated = products::Entity::update_many()
            .col_expr(
                products::Column::Stock,
                Expr::col(products::Column::Stock).sub(quantity),
            )
            .col_expr(products::Column::UpdatedAt, Expr::value(now))
            .col_expr(
                products::Column::Version,
                Expr::col(products::Column::Version).add(1),
            )
            .filter(products::Column::Id.eq(product_id))
            .filter(products::Column::Stock.gte(quantity))
            .filter(products::Column::PriceCents.eq(priced_at))
            .exec(txn)
            .await?;
        if updated.rows_affected != 1 {
            return Err(StoreError::Contended {
                attempts: 1,
                source: None,
            });
        }
    }
    Ok(())
}

#[tracing::instrument(level = "debug", skip_all)]
async fn insert_items(txn: &DatabaseTransaction, accepted: &[&Rows]) -> Result<(), StoreError> {
    let items: Vec<&order_items::Model> = accepted.iter().flat_map(|(_, items)| items).collect();
    for chunk in items.chunks(ITEMS_PER_INSERT) {
        let rows = chunk.iter().map(|item| order_items::ActiveModel {
            order_id: Set(item.order_id),
            product_id: Set(item.product_id),
            quantity: Set(item.quantity),
            unit_price_cents: Set(item.unit_price_cents),
        });
        order_items::Entity::insert_many(rows)
            .exec_without_returning(txn)
            .await?;
    }
    Ok(())
}
