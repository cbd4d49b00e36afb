//! Newest-first listing shared by every SQL repository: page mode (SeaORM's `Paginator` plus a
//! cheap total, or a keyset range from the listing's recorded page positions — see
//! `store::positions`) and keyset mode (a cursor on `(created_at, id)`, no OFFSET).

use sea_orm::sea_query::{Alias, Expr, Order, Query, WindowStatement};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait,
    FromQueryResult, PaginatorTrait, QueryFilter, QueryOrder, QueryResult, QuerySelect, QueryTrait,
    Select, Statement,
};

use crate::store::page::{CursorKey, EXACT_TOTAL_LIMIT, PageOf, PageRequest, Total};
use crate::store::positions::{Anchors, BLOCK, ListingIndex};

/// The columns a table is listed by.
#[derive(Clone, Copy)]
struct ListOrder<C> {
    created_at: C,
    id: C,
}

/// A table listed newest first, by `(created_at, id)`: its two columns, and a row's cursor key.
pub trait NewestFirst: EntityTrait {
    const CREATED_AT: Self::Column;
    const ID: Self::Column;

    fn key(row: &Self::Model) -> CursorKey;
}

macro_rules! newest_first {
    ($($table:ident),+) => {$(
        impl NewestFirst for entity::$table::Entity {
            const CREATED_AT: Self::Column = entity::$table::Column::CreatedAt;
            const ID: Self::Column = entity::$table::Column::Id;

            fn key(row: &entity::$table::Model) -> CursorKey {
                CursorKey {
                    created_at: row.created_at,
                    id: row.id,
                }
            }
        }
    )+};
}

newest_first!(users, products, orders);

/// A listing whose page positions are recorded: page mode then reads a keyset range instead of
/// walking an OFFSET.
pub struct Indexed<'a> {
    pub index: &'a ListingIndex,
    /// The table's generation now (`cache::EntityCache::table_generation`).
    pub generation: u64,
    /// Names the filter applied: each filter has positions of its own.
    pub filter: String,
}

/// Lists `query` (already filtered) newest first.
pub async fn list<E, M>(
    db: &DatabaseConnection,
    query: Select<E>,
    request: PageRequest,
    indexed: Option<Indexed<'_>>,
) -> Result<PageOf<M>, DbErr>
where
    E: NewestFirst<Model = M>,
    M: FromQueryResult + Send + Sync,
{
    let order = ListOrder {
        created_at: E::CREATED_AT,
        id: E::ID,
    };
    let key = E::key;
    let ordered = query
        .clone()
        .order_by_desc(order.created_at)
        .order_by_desc(order.id);
    match request {
        PageRequest::Keyset { after, per_page } => {
            let mut ordered = ordered;
            if let Some(after) = after {
                ordered = ordered.filter(older_than(&order, after));
            }
            // One row more than asked for tells whether there is a next page.
            let mut items = ordered.limit(per_page + 1).all(db).await?;
            let next = trim_to_page(&mut items, per_page).then(|| items.last().map(&key));
            Ok(PageOf {
                items,
                total: None,
                next: next.flatten(),
            })
        }
        PageRequest::Offset { page, per_page } => {
            let offset = (page - 1).saturating_mul(per_page);
            if let Some(indexed) = &indexed
                && let Some(anchors) = indexed
                    .index
                    .current(&indexed.filter, indexed.generation)
                    .await
            {
                return anchored_page(db, ordered, &order, key, &anchors, offset, per_page).await;
            }
            let total = count(db, query.clone()).await?;
            // Only listings someone pages deep into are worth a pass over the whole index.
            if let Some(indexed) = indexed
                && offset >= BLOCK
                && (offset < total.items || total.is_estimate)
            {
                let db = db.clone();
                let build = async move { anchors(&db, query, order).await };
                indexed
                    .index
                    .refresh(indexed.filter, indexed.generation, build);
            }
            // Past the end (including pages whose offset no database could represent).
            if offset >= total.items && !total.is_estimate || offset > i64::MAX as u64 {
                return Ok(PageOf {
                    items: Vec::new(),
                    total: Some(total),
                    next: None,
                });
            }
            let items = ordered.paginate(db, per_page).fetch_page(page - 1).await?;
            let has_more = if total.is_estimate {
                items.len() as u64 == per_page
            } else {
                offset + (items.len() as u64) < total.items
            };
            let next = if has_more {
                items.last().map(&key)
            } else {
                None
            };
            Ok(PageOf {
                items,
                total: Some(total),
                next,
            })
        }
    }
}

/// The page at `offset` read from the recorded positions: a keyset range that skips fewer than
/// `BLOCK` rows, and an exact total with no count.
async fn anchored_page<E, M>(
    db: &DatabaseConnection,
    ordered: Select<E>,
    order: &ListOrder<E::Column>,
    key: impl Fn(&M) -> CursorKey,
    anchors: &Anchors,
    offset: u64,
    per_page: u64,
) -> Result<PageOf<M>, DbErr>
where
    E: EntityTrait<Model = M>,
    M: FromQueryResult + Send + Sync,
{
    let total = Some(Total {
        items: anchors.total,
        is_estimate: false,
    });
    let Some(start) = anchors.start(offset) else {
        return Ok(PageOf {
            items: Vec::new(),
            total,
            next: None,
        });
    };
    let mut query = ordered;
    if let Some(after) = start.after {
        query = query.filter(older_than(order, after));
    }
    if start.skip > 0 {
        query = query.offset(start.skip);
    }
    let items = query.limit(per_page).all(db).await?;
    let next = if offset + (items.len() as u64) < anchors.total {
        items.last().map(&key)
    } else {
        None
    };
    Ok(PageOf { items, total, next })
}

/// One pass over the listing's index: the key of every `BLOCK`-th row, and the number of rows.
async fn anchors<E: EntityTrait>(
    db: &DatabaseConnection,
    query: Select<E>,
    order: ListOrder<E::Column>,
) -> Result<Anchors, DbErr> {
    use sea_orm::sea_query::ExprTrait;
    let newest_first = WindowStatement::new()
        .order_by(order.created_at, Order::Desc)
        .order_by(order.id, Order::Desc)
        .to_owned();
    let mut numbered = query
        .select_only()
        .column(order.created_at)
        .column(order.id)
        .into_query();
    numbered
        .expr_window_as(
            Expr::cust("ROW_NUMBER()"),
            newest_first.clone(),
            Alias::new("n"),
        )
        // NULL on the last row only, which thereby carries the total: no second pass to count.
        .expr_window_as(Expr::cust("LEAD(1)"), newest_first, Alias::new("more"));
    let numbered_alias = Alias::new("numbered");
    let statement = Query::select()
        .expr_as(
            Expr::col((numbered_alias.clone(), order.created_at)),
            Alias::new("at"),
        )
        .expr_as(
            Expr::col((numbered_alias.clone(), order.id)),
            Alias::new("id"),
        )
        .column((numbered_alias.clone(), Alias::new("n")))
        .column((numbered_alias.clone(), Alias::new("more")))
        .from_subquery(numbered, numbered_alias.clone())
        .cond_where(
            Condition::any()
                .add(
                    Expr::col((numbered_alias.clone(), Alias::new("n")))
                        .modulo(BLOCK as i64)
                        .eq(0),
                )
                .add(Expr::col((numbered_alias.clone(), Alias::new("more"))).is_null()),
        )
        .order_by((numbered_alias, Alias::new("n")), Order::Asc)
        .to_owned();
    let mut anchors = Anchors {
        total: 0,
        keys: Vec::new(),
    };
    for row in db.query_all(&statement).await? {
        let n = row_number(&row)?;
        if n % BLOCK == 0 {
            anchors.keys.push(CursorKey {
                created_at: row.try_get("", "at")?,
                id: row.try_get("", "id")?,
            });
        }
        anchors.total = Ord::max(anchors.total, n);
    }
    Ok(anchors)
}

/// `ROW_NUMBER()` is a signed `bigint` on PostgreSQL and SQLite, unsigned on MariaDB/MySQL.
fn row_number(row: &QueryResult) -> Result<u64, DbErr> {
    match row.try_get::<i64>("", "n") {
        Ok(n) => Ok(u64::try_from(n).unwrap_or(0)),
        Err(_) => row.try_get::<u64>("", "n"),
    }
}

/// `(created_at, id) < (after.created_at, after.id)`, written so that every backend turns its
/// leading `created_at <=` into an index range (a plain OR of the two would scan from the top).
fn older_than<Col: ColumnTrait>(order: &ListOrder<Col>, after: CursorKey) -> Condition {
    Condition::all()
        .add(order.created_at.lte(after.created_at))
        .add(
            Condition::any()
                .add(order.created_at.lt(after.created_at))
                .add(order.id.lt(after.id)),
        )
}

fn trim_to_page<T>(items: &mut Vec<T>, per_page: u64) -> bool {
    let has_more = items.len() as u64 > per_page;
    items.truncate(per_page as usize);
    has_more
}

/// Exact up to `EXACT_TOTAL_LIMIT`, counting at most one row past it; beyond, the planner's
/// estimate on PostgreSQL and an exact count elsewhere.
async fn count<E>(db: &DatabaseConnection, query: Select<E>) -> Result<Total, DbErr>
where
    E: EntityTrait,
    E::Model: FromQueryResult + Send + Sync,
{
    let capped = query
        .clone()
        .select_only()
        .expr(Expr::val(1))
        .limit(EXACT_TOTAL_LIMIT + 1)
        .into_query();
    let counted = Query::select()
        .expr_as(Expr::cust("COUNT(*)"), Alias::new("n"))
        .from_subquery(capped, Alias::new("capped"))
        .to_owned();
    let n = single_count(db, &counted).await?;
    if n <= EXACT_TOTAL_LIMIT {
        return Ok(Total {
            items: n,
            is_estimate: false,
        });
    }
    if db.get_database_backend() == DbBackend::Postgres
        && let Some(estimate) = planner_estimate(db, query.clone()).await?
    {
        return Ok(Total {
            items: estimate.max(EXACT_TOTAL_LIMIT + 1),
            is_estimate: true,
        });
    }
    Ok(Total {
        items: query.count(db).await?,
        is_estimate: false,
    })
}

async fn single_count<C: ConnectionTrait>(
    db: &C,
    statement: &sea_orm::sea_query::SelectStatement,
) -> Result<u64, DbErr> {
    let row = db.query_one(statement).await?;
    let n: i64 = match row {
        Some(row) => row.try_get("", "n")?,
        None => 0,
    };
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The row count PostgreSQL's planner expects for `query`: what `EXPLAIN` says, parameters bound
/// as usual.
async fn planner_estimate<E, C>(db: &C, query: Select<E>) -> Result<Option<u64>, DbErr>
where
    E: EntityTrait,
    C: ConnectionTrait,
{
    let statement = query.build(DbBackend::Postgres);
    let explain = Statement {
        sql: format!("EXPLAIN (FORMAT JSON) {}", statement.sql),
        ..statement
    };
    let Some(row) = db.query_one_raw(explain).await? else {
        return Ok(None);
    };
    let plan: serde_json::Value = row.try_get_by_index(0)?;
    let rows = plan
        .pointer("/0/Plan/Plan Rows")
        .and_then(serde_json::Value::as_f64);
    Ok(rows.map(|rows| rows.max(0.0) as u64))
}
