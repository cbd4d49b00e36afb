//! Which orders are accepted, and at what price: the business rule every engine's order path
//! decides by, written once. An order is refused for its unknown user, else for its first
//! unknown product, else for its first line short of stock (lines in product-id order, naming
//! what is left at its turn); an accepted order takes all of its lines, at the prices read.

use std::collections::{BTreeMap, HashMap, HashSet};

use uuid::Uuid;

use super::error::{Conflict, Resource, StoreError};
use crate::domain::model::{OrderItem, PlaceOrder};

/// A product as its lock shows it: what an order may take and pay.
#[derive(Clone, Copy, Debug)]
pub struct Stocked {
    pub stock: i32,
    pub price_cents: i64,
}

/// An accepted order's total and items, at the prices under the lock.
#[derive(Debug, PartialEq)]
pub struct Priced {
    pub total: i64,
    pub items: Vec<OrderItem>,
}

/// Each order's fate, in the order given, and the units taken from each product in all.
#[derive(Debug)]
pub struct Allocation {
    pub decisions: Vec<Result<Priced, StoreError>>,
    /// Ascending product id: the order the stock updates run in.
    pub taken: BTreeMap<Uuid, i64>,
}

/// Decides the orders one after another, in arrival order, each against the stock the ones
/// before it left: all of an order's lines or none of them. An order is refused for its unknown
/// user, else for its first unknown product, else for its first line short of stock (naming what
/// is left at its turn) — the single-order path's precedence.
pub fn allocate<'a>(
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

/// The products as the decision needs them, from `(id, stock, price_cents)` as an engine read them.
pub fn stocked(products: impl IntoIterator<Item = (Uuid, i32, i64)>) -> HashMap<Uuid, Stocked> {
    products
        .into_iter()
        .map(|(id, stock, price_cents)| (id, Stocked { stock, price_cents }))
        .collect()
}

/// The decision on one order whose user is known to exist (the single-order paths check the
/// user first, before reading any product).
pub fn decide(order: &PlaceOrder, products: &HashMap<Uuid, Stocked>) -> Result<Priced, StoreError> {
    let users = HashSet::from([order.user_id]);
    allocate([order], &users, products)
        .decisions
        .pop()
        .unwrap_or_else(|| Err(StoreError::internal("an order was not decided")))
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
