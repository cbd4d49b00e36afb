//! Newest-first listing shared by every repository: page mode (SeaORM's `Paginator` plus a cheap
//! total) and keyset mode (a cursor on `(created_at, id)`, no OFFSET).

use chrono::{DateTime, FixedOffset};
use sea_orm::sea_query::{Alias, Expr, Query};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbBackend, DbErr, EntityTrait, FromQueryResult,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait, Select, Statement,
};
use uuid::Uuid;

/// Up to this many matching rows the total is counted exactly; past it PostgreSQL answers the
/// planner's estimate instead of scanning the whole match (`total_is_estimate: true`).
pub const EXACT_TOTAL_LIMIT: u64 = 10_000;

/// A position in newest-first order: everything strictly older than this row comes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CursorKey {
    pub created_at: DateTime<FixedOffset>,
    pub id: Uuid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageRequest {
    /// 1-based page of `per_page` items, with totals.
    Offset { page: u64, per_page: u64 },
    /// The `per_page` items after `after` (from the start when `None`).
    Keyset {
        after: Option<CursorKey>,
        per_page: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Total {
    pub items: u64,
    pub is_estimate: bool,
}

#[derive(Clone, Debug)]
pub struct PageOf<T> {
    pub items: Vec<T>,
    /// Page mode only.
    pub total: Option<Total>,
    /// Where the next page starts, when there are items after the last one.
    pub next: Option<CursorKey>,
}

impl<T> PageOf<T> {
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> PageOf<U> {
        PageOf {
            items: self.items.into_iter().map(f).collect(),
            total: self.total,
            next: self.next,
        }
    }
}

/// The columns a table is listed by.
pub struct ListOrder<C> {
    pub created_at: C,
    pub id: C,
}

/// Lists `query` (already filtered) newest first.
pub async fn list<E, M, C>(
    db: &C,
    query: Select<E>,
    order: ListOrder<E::Column>,
    key: impl Fn(&M) -> CursorKey,
    request: PageRequest,
) -> Result<PageOf<M>, DbErr>
where
    E: EntityTrait<Model = M>,
    M: FromQueryResult + Send + Sync,
    C: ConnectionTrait,
{
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
            let total = count(db, query).await?;
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
async fn count<E, C>(db: &C, query: Select<E>) -> Result<Total, DbErr>
where
    E: EntityTrait,
    E::Model: FromQueryResult + Send + Sync,
    C: ConnectionTrait,
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
