//! Placing concurrent orders together, in one transaction: the coalesced path of
//! `OrderRepo::place`.
//!
//! On a few hot products (a flash sale) orders serialise on those rows' locks, each waiting for
//! the one before it to commit. A batch pays that wait once: it checks its users in one query,
//! locks every product involved once, in ascending id order (so batches never wait on each other
//! in opposite orders; on SQLite the IMMEDIATE transaction already serialises), and then decides
//! each order in Rust, in arrival order, as the single-order path would have decided it at its
//! turn: an unknown user, then an unknown product, then a line the remaining stock cannot cover,
//! lines in order, each refusing that order alone, which takes nothing. One guarded update per
//! product then takes the batch's total, and the accepted orders and their items are written by
//! multi-row inserts.
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
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect,
};
use uuid::Uuid;

use super::{OrderQueue, Placer, order_from_rows};
use crate::cache::Topic;
use crate::domain::OrderStatus;
use crate::domain::model::{Order, OrderItem, PlaceOrder, Placed};
use crate::store::batch::padded;
use crate::store::consistency::{self, Presented, Scope};
use crate::store::error::{Conflict, Resource, StoreError};
use crate::store::sql::coalesce::{Coalescer, Waiter};
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
            let alone = orders
                .iter()
                .zip(replies)
                .map(|((order_id, request), reply)| {
                    let placer = &placer;
                    async move {
                        let (placed, position_unknown) =
                            in_own_scope(placer.place_alone(*order_id, request)).await;
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
        let mut write = Write::begin(&self.db, &self.caches).await?;
        let outcome = place_in(write.txn(), orders).await;
        if let Ok(placed) = &outcome {
            write.changed(Topic::Products, placed.changed.iter().copied());
        }
        write.finish(outcome).await.map(|placed| placed.outcomes)
    }
}

/// What a committed batch answers, and the products whose stock it took.
struct BatchPlaced {
    outcomes: Vec<Result<Order, StoreError>>,
    changed: Vec<Uuid>,
}

async fn place_in(
    txn: &DatabaseTransaction,
    orders: &[(Uuid, PlaceOrder)],
) -> Result<BatchPlaced, StoreError> {
    let now = crate::store::now();
    let users = existing_users(txn, orders).await?;
    let products = lock_products(txn, orders, &users).await?;
    let allocation = allocate(orders.iter().map(|(_, request)| request), &users, &products);

    let decided: Vec<Result<Rows, StoreError>> = orders
        .iter()
        .zip(allocation.decisions)
        .map(|((order_id, request), decision)| {
            decision.map(|priced| rows_of(*order_id, request.user_id, priced, now))
        })
        .collect();
    let accepted: Vec<&Rows> = decided
        .iter()
        .filter_map(|rows| rows.as_ref().ok())
        .collect();
    if !accepted.is_empty() {
        insert_orders(txn, &accepted).await?;
        take_stock(txn, &allocation.taken, &products, now).await?;
        insert_items(txn, &accepted).await?;
    }
    let outcomes = decided
        .into_iter()
        .map(|rows| rows.and_then(|(order, items)| order_from_rows(order, items)))
        .collect();
    Ok(BatchPlaced {
        outcomes,
        changed: allocation.taken.into_keys().collect(),
    })
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

/// A product as its lock shows it: what an order may take and pay.
#[derive(Clone, Copy, Debug)]
struct Stocked {
    stock: i32,
    price_cents: i64,
}

/// Locks the products of every order whose user exists, once, in ascending id order, and reads
/// them as committed now (a locking read sees the latest version on every backend).
#[tracing::instrument(level = "debug", skip_all)]
async fn lock_products(
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
    let mut query = products::Entity::find()
        .select_only()
        .columns([
            products::Column::Id,
            products::Column::Stock,
            products::Column::PriceCents,
        ])
        .filter(products::Column::Id.is_in(padded(ids.into_iter().collect())))
        .order_by_asc(products::Column::Id);
    if txn.get_database_backend() != DbBackend::Sqlite {
        query = query.lock_exclusive();
    }
    let rows = query.into_tuple::<(Uuid, i32, i64)>().all(txn).await?;
    Ok(rows
        .into_iter()
        .map(|(id, stock, price_cents)| (id, Stocked { stock, price_cents }))
        .collect())
}

/// An accepted order's total and items, at the prices under the lock.
#[derive(Debug, PartialEq)]
struct Priced {
    total: i64,
    items: Vec<OrderItem>,
}

/// Each order's fate, in the order given, and the units taken from each product in all.
#[derive(Debug)]
struct Allocation {
    decisions: Vec<Result<Priced, StoreError>>,
    /// Ascending product id: the order the stock updates run in.
    taken: BTreeMap<Uuid, i64>,
}

/// Decides the orders one after another, in arrival order, each against the stock the ones
/// before it left: all of an order's lines or none of them. An order is refused for its unknown
/// user, else for its first unknown product, else for its first line short of stock (naming what
/// is left at its turn) — the single-order path's precedence.
fn allocate<'a>(
    orders: impl IntoIterator<Item = &'a PlaceOrder>,
    users: &HashSet<Uuid>,
    products: &HashMap<Uuid, Stocked>,
) -> Allocation {
    let mut left: HashMap<Uuid, i64> = products
        .iter()
        .map(|(id, product)| (*id, i64::from(product.stock)))
        .collect();
    let mut taken: BTreeMap<Uuid, i64> = BTreeMap::new();
    let decisions = orders
        .into_iter()
        .map(|order| {
            if !users.contains(&order.user_id) {
                return Err(StoreError::not_found(Resource::User, order.user_id));
            }
            let mut lines = Vec::new();
            for line in order.lines.iter() {
                let Some(product) = products.get(&line.product_id) else {
                    return Err(StoreError::not_found(Resource::Product, line.product_id));
                };
                lines.push((line, product));
            }
            for (line, _) in &lines {
                let available = left.get(&line.product_id).copied().unwrap_or(0);
                let requested = i64::from(line.quantity);
                if available < requested {
                    return Err(StoreError::Conflict(Conflict::InsufficientStock {
                        product_id: line.product_id,
                        requested,
                        available,
                    }));
                }
            }
            let mut total: i64 = 0;
            let mut items = Vec::with_capacity(lines.len());
            for (line, product) in lines {
                let requested = i64::from(line.quantity);
                *left.entry(line.product_id).or_default() -= requested;
                *taken.entry(line.product_id).or_default() += requested;
                total = total.saturating_add(product.price_cents.saturating_mul(requested));
                items.push(OrderItem {
                    product_id: line.product_id,
                    quantity: line.quantity,
                    unit_price_cents: product.price_cents,
                });
            }
            Ok(Priced { total, items })
        })
        .collect();
    Allocation { decisions, taken }
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

/// One update per product for the batch's total, in ascending id. The rows are locked and were
/// allocated from, so each update takes exactly what was allocated; the guards (stock, price)
/// only make sure that, whatever happened, stock never goes below zero and nobody pays a price
/// the product no longer has. An update that takes nothing fails the batch.
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
            return Err(StoreError::internal(format!(
                "product {product_id} changed under the batch's lock"
            )));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{OrderLines, Quantity};

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn order(user: u128, lines: &[(u128, i32)]) -> PlaceOrder {
        let q = |n: i32| Quantity::parse(i64::from(n)).expect("a valid quantity");
        PlaceOrder {
            user_id: id(user),
            lines: OrderLines::merge(lines.iter().map(|&(product, n)| (id(product), q(n)))),
            idempotency: None,
        }
    }

    fn stocked(products: &[(u128, i32, i64)]) -> HashMap<Uuid, Stocked> {
        products
            .iter()
            .map(|&(product, stock, price_cents)| (id(product), Stocked { stock, price_cents }))
            .collect()
    }

    fn short(product: u128, requested: i64, available: i64) -> String {
        let conflict = Conflict::InsufficientStock {
            product_id: id(product),
            requested,
            available,
        };
        format!("{:?}", StoreError::Conflict(conflict))
    }

    fn outcome(decision: &Result<Priced, StoreError>) -> Result<i64, String> {
        decision
            .as_ref()
            .map(|priced| priced.total)
            .map_err(|err| format!("{err:?}"))
    }

    #[test]
    fn orders_are_decided_whole_in_arrival_order() {
        let users = HashSet::from([id(1)]);
        let products = stocked(&[(10, 3, 100), (20, 1, 1000)]);
        let orders = [
            order(1, &[(10, 2)]),
            // Short of product 10 at its turn, though 20 would fit: takes nothing.
            order(1, &[(10, 2), (20, 1)]),
            order(1, &[(20, 1), (10, 1)]),
            order(1, &[(10, 1)]),
        ];
        let allocation = allocate(&orders, &users, &products);
        let got: Vec<_> = allocation.decisions.iter().map(outcome).collect();
        assert_eq!(
            got,
            vec![
                Ok(200),
                Err(short(10, 2, 1)),
                Ok(1100),
                Err(short(10, 1, 0))
            ]
        );
        assert_eq!(allocation.taken, BTreeMap::from([(id(10), 3), (id(20), 1)]));
    }

    #[test]
    fn an_unknown_user_comes_before_an_unknown_product_before_stock() {
        let users = HashSet::from([id(1)]);
        let products = stocked(&[(10, 0, 100)]);
        let orders = [
            order(2, &[(99, 1)]),
            order(1, &[(10, 5), (99, 1)]),
            order(1, &[(10, 5)]),
        ];
        let allocation = allocate(&orders, &users, &products);
        let got: Vec<_> = allocation.decisions.iter().map(outcome).collect();
        assert_eq!(
            got,
            vec![
                Err(format!(
                    "{:?}",
                    StoreError::not_found(Resource::User, id(2))
                )),
                Err(format!(
                    "{:?}",
                    StoreError::not_found(Resource::Product, id(99))
                )),
                Err(short(10, 5, 0)),
            ]
        );
        assert!(allocation.taken.is_empty());
    }

    #[test]
    fn the_first_line_short_of_stock_is_named_in_line_order() {
        let users = HashSet::from([id(1)]);
        let products = stocked(&[(10, 1, 100), (20, 1, 100)]);
        let allocation = allocate(&[order(1, &[(20, 2), (10, 2)])], &users, &products);
        let got: Vec<_> = allocation.decisions.iter().map(outcome).collect();
        assert_eq!(got, vec![Err(short(10, 2, 1))]);
    }

    #[test]
    fn items_carry_the_locked_price() {
        let users = HashSet::from([id(1)]);
        let products = stocked(&[(10, 9, 250), (20, 9, 1000)]);
        let allocation = allocate(&[order(1, &[(20, 1), (10, 2)])], &users, &products);
        let priced = allocation.decisions[0].as_ref().expect("accepted");
        assert_eq!(priced.total, 1500);
        assert_eq!(
            priced.items,
            vec![
                OrderItem {
                    product_id: id(10),
                    quantity: 2,
                    unit_price_cents: 250
                },
                OrderItem {
                    product_id: id(20),
                    quantity: 1,
                    unit_price_cents: 1000
                },
            ]
        );
    }
}
