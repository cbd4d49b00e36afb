//! The change feed on SQL (see `store::events`): the outbox table, its sequencer, retention and
//! the relays' leases.

use chrono::{DateTime, FixedOffset};
use entity::{event_relays, events};
use sea_orm::sea_query::{CaseStatement, Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, SqlErr, SqliteTransactionMode, TransactionOptions,
    TransactionTrait,
};

use super::notify;
use crate::store::error::StoreError;
use crate::store::events::{
    Bounds, Event, EventType, NewEvent, PURGE_BATCH, SEQUENCE_BATCH, Sequenced,
};

/// Inserts `recorded` inside the writing transaction `txn`.
pub async fn insert<C: ConnectionTrait>(txn: &C, recorded: &[NewEvent]) -> Result<(), DbErr> {
    if recorded.is_empty() {
        return Ok(());
    }
    let rows = recorded.iter().map(|event| events::ActiveModel {
        id: Set(event.id),
        event_type: Set(event.kind.as_str().to_owned()),
        resource_id: Set(event.resource_id),
        version: Set(event.version),
        occurred_at: Set(event.occurred_at),
        data: Set(event.data.clone()),
        ..Default::default()
    });
    events::Entity::insert_many(rows)
        .exec_without_returning(txn)
        .await?;
    Ok(())
}

fn event_from(row: events::Model) -> Result<Event, StoreError> {
    let kind = EventType::parse(&row.event_type)
        .ok_or_else(|| StoreError::internal(format!("unknown event type {:?}", row.event_type)))?;
    Ok(Event {
        id: row.id,
        position: row
            .position
            .ok_or_else(|| StoreError::internal("an unsequenced event was read"))?,
        kind,
        resource_id: row.resource_id,
        version: row.version,
        occurred_at: row.occurred_at,
        data: row.data,
    })
}

#[derive(Clone)]
pub struct EventLog {
    db: DatabaseConnection,
}

impl EventLog {
    /// The feed's own work (the sequencer, retention, relay leases) is not counted as the
    /// service's queries: it runs in the background, whatever requests do.
    pub fn new(mut db: DatabaseConnection) -> Self {
        db.set_metric_callback(|_| {});
        Self { db }
    }

    /// The pool, for classifying what its operations fail with (`pool::refine`).
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    pub async fn sequence(&self) -> Result<Sequenced, StoreError> {
        let options = TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        };
        let txn = self.db.begin_with_options(options).await?;
        let pending: Vec<i64> = events::Entity::find()
            .select_only()
            .column(events::Column::Seq)
            .filter(events::Column::Position.is_null())
            .order_by_asc(events::Column::Seq)
            .limit(SEQUENCE_BATCH)
            .into_tuple()
            .all(&txn)
            .await?;
        if pending.is_empty() {
            txn.commit().await?;
            return Ok(Sequenced::Nothing);
        }
        let newest: Option<Option<i64>> = events::Entity::find()
            .select_only()
            .column_as(events::Column::Position.max(), "newest")
            .into_tuple()
            .one(&txn)
            .await?;
        let mut position = newest.flatten().unwrap_or(0);
        let mut positions = CaseStatement::new();
        for seq in &pending {
            position += 1;
            positions = positions.case(events::Column::Seq.eq(*seq), position);
        }
        let written = events::Entity::update_many()
            .col_expr(events::Column::Position, positions.into())
            .filter(events::Column::Seq.is_in(pending.iter().copied()))
            .filter(events::Column::Position.is_null())
            .exec(&txn)
            .await;
        match written {
            Ok(written) if written.rows_affected == pending.len() as u64 => {
                notify::announce_sequenced(&txn, position).await?;
                txn.commit().await?;
                Ok(Sequenced::UpTo(position))
            }
            // Another sequencer gave some of these events positions since they were read.
            Ok(_) => {
                txn.rollback().await?;
                Ok(Sequenced::Lost)
            }
            Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                let _ = txn.rollback().await;
                Ok(Sequenced::Lost)
            }
            Err(err) => Err(err.into()),
        }
    }

    pub async fn after(&self, after: i64, limit: u64) -> Result<Vec<Event>, StoreError> {
        events::Entity::find()
            .filter(events::Column::Position.gt(after))
            .order_by_asc(events::Column::Position)
            .limit(limit)
            .all(&self.db)
            .await?
            .into_iter()
            .map(event_from)
            .collect()
    }

    pub async fn bounds(&self) -> Result<Bounds, StoreError> {
        let bounds: Option<(Option<i64>, Option<i64>)> = events::Entity::find()
            .select_only()
            .column_as(events::Column::Position.min(), "oldest")
            .column_as(events::Column::Position.max(), "newest")
            .into_tuple()
            .one(&self.db)
            .await?;
        let (oldest, newest) = bounds.unwrap_or_default();
        Ok(Bounds { oldest, newest })
    }

    pub async fn purge(&self, before: DateTime<FixedOffset>) -> Result<u64, StoreError> {
        let Some(newest) = self.bounds().await?.newest else {
            return Ok(0);
        };
        let expired: Vec<i64> = events::Entity::find()
            .select_only()
            .column(events::Column::Position)
            .filter(events::Column::Position.lt(newest))
            .filter(events::Column::OccurredAt.lt(before))
            .order_by_asc(events::Column::Position)
            .limit(PURGE_BATCH)
            .into_tuple()
            .all(&self.db)
            .await?;
        if expired.is_empty() {
            return Ok(0);
        }
        let removed = events::Entity::delete_many()
            .filter(events::Column::Position.is_in(expired))
            .exec(&self.db)
            .await?;
        Ok(removed.rows_affected)
    }

    pub async fn lease(
        &self,
        name: &str,
        holder: &str,
        until: DateTime<FixedOffset>,
    ) -> Result<Option<i64>, StoreError> {
        let now = crate::store::clock::now();
        let renewed = event_relays::Entity::update_many()
            .col_expr(event_relays::Column::Holder, Expr::value(holder))
            .col_expr(event_relays::Column::LeaseUntil, Expr::value(until))
            .filter(event_relays::Column::Name.eq(name))
            .filter(
                event_relays::Column::Holder
                    .eq(holder)
                    .or(event_relays::Column::LeaseUntil.lt(now)),
            )
            .exec(&self.db)
            .await?;
        if renewed.rows_affected == 0 {
            let inserted = event_relays::Entity::insert(event_relays::ActiveModel {
                name: Set(name.to_owned()),
                holder: Set(holder.to_owned()),
                lease_until: Set(until),
                published_position: Set(0),
            })
            .exec(&self.db)
            .await;
            match inserted {
                Ok(_) => {}
                // The relay exists and another holder's lease runs.
                Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                    return Ok(None);
                }
                Err(err) => return Err(err.into()),
            }
        }
        let relay = event_relays::Entity::find_by_id(name.to_owned())
            .one(&self.db)
            .await?;
        Ok(relay
            .filter(|relay| relay.holder == holder)
            .map(|relay| relay.published_position))
    }

    pub async fn published(
        &self,
        name: &str,
        holder: &str,
        position: i64,
        until: DateTime<FixedOffset>,
    ) -> Result<bool, StoreError> {
        let written = event_relays::Entity::update_many()
            .col_expr(
                event_relays::Column::PublishedPosition,
                Expr::value(position),
            )
            .col_expr(event_relays::Column::LeaseUntil, Expr::value(until))
            .filter(event_relays::Column::Name.eq(name))
            .filter(event_relays::Column::Holder.eq(holder))
            .exec(&self.db)
            .await?;
        Ok(written.rows_affected == 1)
    }
}
