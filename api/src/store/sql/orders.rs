use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, FixedOffset};
use entity::{idempotency_keys, order_items, orders, products, users};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection,
    DatabaseTransaction, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use uuid::Uuid;

use super::error::OnViolation;
use super::failure::classify;
use super::listing;
use super::replicas::Reads;
use super::write::Writer;
use crate::cache::Caches;
use crate::domain::model::{Idempotency, Order, OrderFilter, OrderItem, PlaceOrder, Placed};
use crate::domain::{OrderLines, OrderStatus};
use crate::metrics::Metrics;
use crate::store::allocation;
use crate::store::coalesce::Coalescer;
use crate::store::error::{Conflict, Resource, StoreError};
use crate::store::events::{Change, Feed, Subject};
use crate::store::failure::DbFailure;
use crate::store::idempotency::{self, Claim};
use crate::store::page::{PageOf, PageRequest};
use crate::store::retry::{RetryPolicy, with_retry};

mod batch;

/// Reads an order's row and items into the read model; an unknown status is an internal error.
fn order_from_rows(
    order: orders::Model,
    items: Vec<order_items::Model>,
) -> Result<Order, StoreError> {
    let status = OrderStatus::from_db(&order.status)
        .ok_or_else(|| StoreError::internal(format!("unknown order status {:?}", order.status)))?;
    Ok(Order {
        id: order.id,
        user_id: order.user_id,
        status,
        total_cents: order.total_cents,
        items: items
            .into_iter()
            .map(|item| OrderItem {
                product_id: item.product_id,
                quantity: item.quantity,
                unit_price_cents: item.unit_price_cents,
            })
            .collect(),
        version: order.version,
        created_at: order.created_at,
        updated_at: order.updated_at,
    })
}

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

impl From<sea_orm::DbErr> for Attempt {
    fn from(err: sea_orm::DbErr) -> Self {
        Self::Failed(err.into())
    }
}

/// The writing half of the repository (placing and moving orders); the queue's workers hold a
/// clone of it.
#[derive(Clone)]
struct Placer {
    /// The primary, for writes.
    db: DatabaseConnection,
    writer: Writer,
    metrics: Arc<Metrics>,
    retry: RetryPolicy,
}

/// Orders waiting to be placed together, each answered with its own outcome.
type OrderQueue = Coalescer<PlaceOrder, batch::Answer>;

#[derive(Clone)]
pub struct OrderRepo {
    placer: Placer,
    reads: Reads,
    queue: OrderQueue,
}

impl OrderRepo {
    /// The pool, for classifying what its operations fail with (`pool::refine`).
    pub fn db(&self) -> &DatabaseConnection {
        &self.placer.db
    }

    pub fn new(reads: Reads, caches: Caches, feed: Feed, metrics: Arc<Metrics>) -> Self {
        let placer = Placer {
            db: reads.primary().clone(),
            writer: Writer::new(&reads, caches, feed),
            metrics,
            retry: RetryPolicy::default(),
        };
        let queue = batch::queue(placer.clone());
        Self {
            placer,
            reads,
            queue,
        }
    }

    /// Places an order: all of it commits or none (its key claimed, its user checked, its stock
    /// taken, the order and its items written).
    ///
    /// Orders without an `Idempotency-Key` are coalesced: concurrent ones are placed together,
    /// in arrival order, in one transaction (`batch`), which on hot products is what lets more
    /// than one order commit per lock hand-over. Keyed orders always take the single-order path:
    /// a key claimed by a concurrent duplicate must make its request wait for that duplicate
    /// (and on PostgreSQL a unique violation would abort the whole batch), and a retried
    /// request is rare enough not to need the speed.
    #[tracing::instrument(level = "debug", skip_all, fields(user_id = %request.user_id))]
    pub async fn place(&self, request: PlaceOrder) -> Result<Placed, StoreError> {
        if request.idempotency.is_some() {
            return self.placer.place_alone(Uuid::now_v7(), &request).await;
        }
        let answer = self
            .queue
            .submit(request)
            .await
            .map_err(|abandoned| StoreError::internal(abandoned.to_string()))?;
        if answer.position_unknown {
            crate::store::consistency::position_unknown();
        }
        answer.placed
    }

    pub async fn get(&self, id: Uuid) -> Result<Order, StoreError> {
        self.reads
            .read_current(|db| async move { order_on(&db, id).await })
            .await
    }

    /// A user's orders, newest first, each with its items (loaded in one query for the page).
    pub async fn list_for_user(
        &self,
        user_id: Uuid,
        filter: OrderFilter,
        request: PageRequest,
    ) -> Result<PageOf<Order>, StoreError> {
        self.reads
            .read_current(|db| async move { orders_of_on(&db, user_id, filter, request).await })
            .await
    }

    /// Moves an order along the transition table; cancelling gives the stock back in the same
    /// transaction.
    /// With `expected`, only when the order's version is one of those (`If-Match`), checked
    /// under the row lock the transition holds.
    #[tracing::instrument(level = "debug", skip_all, fields(%id, to = to.as_str()))]
    pub async fn transition(
        &self,
        id: Uuid,
        to: OrderStatus,
        expected: Option<&[i64]>,
    ) -> Result<Order, StoreError> {
        let placer = &self.placer;
        placer
            .retrying(|| async {
                let mut write = placer.writer.begin().await?;
                let outcome = transition_in(write.txn(), id, to, expected).await;
                if let Ok(order) = &outcome {
                    write.record(Change::Updated(Subject::Order(order)));
                }
                write.finish(outcome).await
            })
            .await
    }
}

impl Placer {
    /// Runs `attempt` again after deadlocks and serialization failures, counting each retry.
    async fn retrying<T, F, Fut>(&self, attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let retries = &self.metrics.transaction_retries;
        with_retry(self.retry, |_| retries.inc(), attempt).await
    }

    /// Places one order in a transaction of its own: keyed orders, and the orders of a batch
    /// whose transaction failed.
    async fn place_alone(
        &self,
        order_id: Uuid,
        request: &PlaceOrder,
    ) -> Result<Placed, StoreError> {
        let placed = self
            .retrying(|| async {
                match self.place_once(order_id, request).await {
                    Ok(order) => Ok(Some(order)),
                    Err(Attempt::KeyTaken) => Ok(None),
                    Err(Attempt::Failed(err)) => Err(err),
                }
            })
            .await?;
        match placed {
            Some(order) => Ok(Placed::New(order)),
            None => self.replay(request).await.map(Placed::Replayed),
        }
    }

    async fn place_once(&self, order_id: Uuid, request: &PlaceOrder) -> Result<Order, Attempt> {
        let mut write = self.writer.begin().await?;
        let outcome = place_in(write.txn(), order_id, request).await;
        if let Ok(order) = &outcome {
            write.record(Change::Created(Subject::Order(order)));
        }
        write.finish(outcome).await
    }

    /// The order an earlier request with this key placed, if the request was the same.
    async fn replay(&self, request: &PlaceOrder) -> Result<Order, StoreError> {
        let claim = match &request.idempotency {
            Some(idempotency) => idempotency_keys::Entity::find_by_id(idempotency.key.as_str())
                .one(&self.db)
                .await?
                .map(|claim| Claim {
                    request_hash: claim.request_hash,
                    order_id: claim.order_id,
                }),
            None => None,
        };
        let order_id = idempotency::replayed(request.idempotency.as_ref(), claim)?;
        // The order was committed by another request just now: only the primary surely has it.
        order_on(&self.db, order_id).await
    }
}

async fn order_on(db: &DatabaseConnection, id: Uuid) -> Result<Order, StoreError> {
    let order = orders::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or(StoreError::not_found(Resource::Order, id))?;
    let items = items_of(db, &[id]).await?.remove(&id).unwrap_or_default();
    order_from_rows(order, items)
}

async fn orders_of_on(
    db: &DatabaseConnection,
    user_id: Uuid,
    filter: OrderFilter,
    request: PageRequest,
) -> Result<PageOf<Order>, StoreError> {
    let user = users::Entity::find_by_id(user_id)
        .select_only()
        .column(users::Column::Id)
        .into_tuple::<Uuid>()
        .one(db)
        .await?;
    if user.is_none() {
        return Err(StoreError::not_found(Resource::User, user_id));
    }
    let mut query = orders::Entity::find().filter(orders::Column::UserId.eq(user_id));
    if let Some(status) = filter.status {
        query = query.filter(orders::Column::Status.eq(status.as_str()));
    }
    let page = listing::list(db, query, request, None).await?;
    let ids: Vec<Uuid> = page.items.iter().map(|order| order.id).collect();
    let mut items = items_of(db, &ids).await?;
    let orders = page
        .items
        .into_iter()
        .map(|order| {
            let items = items.remove(&order.id).unwrap_or_default();
            order_from_rows(order, items)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PageOf {
        items: orders,
        total: page.total,
        next: page.next,
    })
}

/// One attempt at placing an order, in named steps (each traced, so a slow placement's log says
/// which step was slow): claim the key, check the user, read the products, write the order, take
/// the stock, write the items.
///
/// Hot products (a flash sale) serialise on their row locks, so the locks are taken as late as
/// possible: the products are read without locking (a sold-out product is answered 409 from that
/// read, taking no lock at all), and the stock is taken by guarded updates only after the order
/// row is written, so a product's lock is held from its update to COMMIT — the items' insert and
/// the commit — instead of across the whole transaction. The items come after the stock on
/// purpose: on MariaDB/MySQL their foreign-key check share-locks the product rows, which before
/// the update would let two orders deadlock on the same product.
async fn place_in(
    txn: &DatabaseTransaction,
    order_id: Uuid,
    request: &PlaceOrder,
) -> Result<Order, Attempt> {
    let now = crate::store::clock::now();
    if let Some(idempotency) = &request.idempotency {
        claim_key(txn, order_id, idempotency, now).await?;
    }
    check_user(txn, request.user_id).await?;
    let products = read_products(txn, &request.lines).await?;
    let stocked = allocation::stocked(
        products
            .values()
            .map(|product| (product.id, product.stock, product.price_cents)),
    );
    // A line the stock just read cannot cover is refused here, before any lock is taken (that
    // stock was committed during this request, so the answer is one the database really gave).
    let priced = allocation::decide(request, &stocked)?;
    let total = priced.total;
    let items: Vec<order_items::Model> = priced
        .items
        .iter()
        .map(|item| order_items::Model {
            order_id,
            product_id: item.product_id,
            quantity: item.quantity,
            unit_price_cents: item.unit_price_cents,
        })
        .collect();
    let order = insert_order(txn, order_id, request.user_id, total, now).await?;
    take_stock(txn, &request.lines, &products, now).await?;
    insert_items(txn, &items).await?;
    Ok(order_from_rows(order, items)?)
}

/// Claims the key first. A concurrent request holding the same key makes this insert wait until
/// that request commits (then: a unique violation, and we answer with its order) or rolls back
/// (then: the claim is ours and we proceed afresh).
#[tracing::instrument(level = "debug", skip_all)]
async fn claim_key(
    txn: &DatabaseTransaction,
    order_id: Uuid,
    idempotency: &Idempotency,
    now: DateTime<FixedOffset>,
) -> Result<(), Attempt> {
    let claim = idempotency_keys::ActiveModel {
        key: Set(idempotency.key.as_str().to_owned()),
        request_hash: Set(idempotency.request_hash.clone()),
        order_id: Set(order_id),
        created_at: Set(now),
    }
    .insert(txn)
    .await;
    match claim {
        Ok(_) => Ok(()),
        Err(err) => Err(match classify(&err) {
            DbFailure::UniqueViolation => Attempt::KeyTaken,
            _ => Attempt::Failed(err.into()),
        }),
    }
}

#[tracing::instrument(level = "debug", skip_all, fields(%user_id))]
async fn check_user(txn: &DatabaseTransaction, user_id: Uuid) -> Result<(), Attempt> {
    let user = users::Entity::find_by_id(user_id)
        .select_only()
        .column(users::Column::Id)
        .into_tuple::<Uuid>()
        .one(txn)
        .await?;
    match user {
        Some(_) => Ok(()),
        None => Err(StoreError::not_found(Resource::User, user_id).into()),
    }
}

/// The products of the order, as committed now, without locking them (a missing one is refused
/// by `allocation::decide`).
#[tracing::instrument(level = "debug", skip_all, fields(products = lines.iter().count()))]
async fn read_products(
    txn: &DatabaseTransaction,
    lines: &OrderLines,
) -> Result<HashMap<Uuid, products::Model>, Attempt> {
    let found: HashMap<Uuid, products::Model> = products::Entity::find()
        .filter(products::Column::Id.is_in(lines.product_ids()))
        .all(txn)
        .await?
        .into_iter()
        .map(|product| (product.id, product))
        .collect();
    Ok(found)
}

fn insufficient(product_id: Uuid, requested: i32, available: i32) -> StoreError {
    StoreError::Conflict(Conflict::InsufficientStock {
        product_id,
        requested: i64::from(requested),
        available: i64::from(available),
    })
}

#[tracing::instrument(level = "debug", skip_all)]
async fn insert_order(
    txn: &DatabaseTransaction,
    order_id: Uuid,
    user_id: Uuid,
    total: i64,
    now: DateTime<FixedOffset>,
) -> Result<orders::Model, Attempt> {
    let order = orders::ActiveModel {
        id: Set(order_id),
        user_id: Set(user_id),
        status: Set(OrderStatus::Pending.as_str().to_owned()),
        total_cents: Set(total),
        created_at: Set(now),
        updated_at: Set(now),
        version: Set(1),
    }
    .insert(txn)
    .await
    // The user was there a moment ago; if it was deleted since, it is not there now.
    .on_foreign_key(Conflict::UserHasOrders)
    .map_err(|err| match err {
        StoreError::Conflict(_) => StoreError::not_found(Resource::User, user_id),
        other => other,
    })?;
    Ok(order)
}

/// Takes each line's quantity, in ascending product id (so two orders for the same products
/// never wait on each other in opposite orders), each update guarded by the stock and the price
/// the order was priced at: whatever happened since the read, stock never goes below zero and an
/// order never pays a price the product no longer has.
#[tracing::instrument(level = "debug", skip_all)]
async fn take_stock(
    txn: &DatabaseTransaction,
    lines: &OrderLines,
    products: &HashMap<Uuid, products::Model>,
    now: DateTime<FixedOffset>,
) -> Result<(), Attempt> {
    for line in lines.iter() {
        let priced_at = products[&line.product_id].price_cents;
        let updated = products::Entity::update_many()
            .col_expr(
                products::Column::Stock,
                Expr::col(products::Column::Stock).sub(line.quantity),
            )
            .col_expr(products::Column::UpdatedAt, Expr::value(now))
            .col_expr(
                products::Column::Version,
                Expr::col(products::Column::Version).add(1),
            )
            .filter(products::Column::Id.eq(line.product_id))
            .filter(products::Column::Stock.gte(line.quantity))
            .filter(products::Column::PriceCents.eq(priced_at))
            .exec(txn)
            .await?;
        if updated.rows_affected != 1 {
            return Err(why_not_taken(txn, line.product_id, line.quantity, priced_at).await?);
        }
    }
    Ok(())
}

/// Why a guarded update took nothing: the stock ran out (409 with what is left), the product
/// is gone (404), or its price changed since the order was priced (the attempt starts over).
/// The row is read with a lock, which reads the latest committed version on every backend
/// (a plain read on MariaDB/MySQL would see the transaction's older snapshot).
async fn why_not_taken(
    txn: &DatabaseTransaction,
    product_id: Uuid,
    requested: i32,
    priced_at: i64,
) -> Result<Attempt, StoreError> {
    let mut query = products::Entity::find_by_id(product_id);
    if txn.get_database_backend() != DbBackend::Sqlite {
        query = query.lock_shared();
    }
    let Some(product) = query.one(txn).await? else {
        return Ok(StoreError::not_found(Resource::Product, product_id).into());
    };
    if product.price_cents == priced_at && product.stock < requested {
        return Ok(insufficient(product_id, requested, product.stock).into());
    }
    Ok(StoreError::Contended {
        attempts: 1,
        source: None,
    }
    .into())
}

#[tracing::instrument(level = "debug", skip_all)]
async fn insert_items(
    txn: &DatabaseTransaction,
    items: &[order_items::Model],
) -> Result<(), Attempt> {
    let rows = items.iter().map(|item| order_items::ActiveModel {
        order_id: Set(item.order_id),
        product_id: Set(item.product_id),
        quantity: Set(item.quantity),
        unit_price_cents: Set(item.unit_price_cents),
    });
    order_items::Entity::insert_many(rows).exec(txn).await?;
    Ok(())
}

async fn transition_in(
    txn: &DatabaseTransaction,
    id: Uuid,
    to: OrderStatus,
    expected: Option<&[i64]>,
) -> Result<Order, StoreError> {
    let mut query = orders::Entity::find_by_id(id);
    if txn.get_database_backend() != DbBackend::Sqlite {
        query = query.lock_exclusive();
    }
    let order = query
        .one(txn)
        .await?
        .ok_or(StoreError::not_found(Resource::Order, id))?;
    if expected.is_some_and(|versions| !versions.contains(&order.version)) {
        return Err(StoreError::PreconditionFailed);
    }
    let from = OrderStatus::from_db(&order.status)
        .ok_or_else(|| StoreError::internal(format!("unknown order status {:?}", order.status)))?;
    if !from.can_move_to(to) {
        return Err(StoreError::Conflict(Conflict::InvalidTransition {
            from: from.as_str(),
            to: to.as_str(),
        }));
    }
    let now = crate::store::clock::now();
    let order_version = order.version;
    let mut row: orders::ActiveModel = order.into();
    row.status = Set(to.as_str().to_owned());
    row.updated_at = Set(now);
    row.version = Set(order_version + 1);
    let order = row.update(txn).await?;

    let mut items = items_of(txn, &[id]).await?.remove(&id).unwrap_or_default();
    items.sort_by_key(|item| item.product_id);
    if to == OrderStatus::Cancelled {
        // Ascending product id, as placement locks them.
        for item in &items {
            products::Entity::update_many()
                .col_expr(
                    products::Column::Stock,
                    Expr::col(products::Column::Stock).add(item.quantity),
                )
                .col_expr(products::Column::UpdatedAt, Expr::value(now))
                .col_expr(
                    products::Column::Version,
                    Expr::col(products::Column::Version).add(1),
                )
                .filter(products::Column::Id.eq(item.product_id))
                .exec(txn)
                .await?;
        }
    }
    order_from_rows(order, items)
}

/// The items of several orders in one query, grouped by order, each group in product-id order.
async fn items_of<C: ConnectionTrait>(
    db: &C,
    order_ids: &[Uuid],
) -> Result<HashMap<Uuid, Vec<order_items::Model>>, StoreError> {
    let mut grouped: HashMap<Uuid, Vec<order_items::Model>> = HashMap::new();
    if order_ids.is_empty() {
        return Ok(grouped);
    }
    let rows = order_items::Entity::find()
        .filter(order_items::Column::OrderId.is_in(order_ids.iter().copied()))
        .order_by_asc(order_items::Column::OrderId)
        .order_by_asc(order_items::Column::ProductId)
        .all(db)
        .await?;
    for row in rows {
        grouped.entry(row.order_id).or_default().push(row);
    }
    Ok(grouped)
}
