//! A COMMIT whose answer was lost with its connection (a failover, a proxy cutting sessions) may
//! have committed or not. Answering it as failed when it committed would make a client retry a
//! write that is already there, so PostgreSQL is asked afterwards: `txid_status()` of the
//! transaction's id, read inside the transaction just before COMMIT (`Pending::read`), on another
//! connection of the pool (`outcome`).
//!
//! A failover can hand out a transaction id again: ids the lost primary used but never
//! replicated are reused by the new one, so once the timeline has changed "committed" may be
//! another transaction's. The timeline is read with the id; when it changed, only "aborted" (and
//! an id the new primary has never reached) is trusted, and a commit is `Unknown`: the caller
//! confirms it by a row the write made (an order's service-made id).

use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DbBackend, DbErr, RuntimeErr, Statement};

/// While the transaction is still finishing (its backend has not yet seen the connection go),
/// how often it is asked again.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The transaction's id (with its epoch, so it never wraps) and the primary's timeline.
const READ_PENDING: &str = "SELECT txid_current(), \
     ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int::bigint";

/// `txid_status` answers NULL for an id too old to tell; `pg_walfile_name` fails on a standby,
/// which is what HAProxy may still route to for a moment around a promotion.
const READ_STATUS: &str = "SELECT txid_status($1), \
     ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int::bigint";

/// PostgreSQL's `invalid_parameter_value`: what `txid_status` raises for an id the server has
/// not reached yet.
const IN_THE_FUTURE: &str = "22023";

/// What a transaction was, as read inside it just before its COMMIT was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    pub txid: i64,
    pub timeline: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed,
    Aborted,
    /// Still running when the time ran out, too old to tell, or "committed" after a failover.
    Unknown,
}

impl Pending {
    /// Reads the transaction's id, assigning one if it has none yet; PostgreSQL only.
    pub async fn read<C: ConnectionTrait>(txn: &C) -> Result<Self, DbErr> {
        let row = txn
            .query_one_raw(Statement::from_string(DbBackend::Postgres, READ_PENDING))
            .await?
            .ok_or_else(|| DbErr::Custom("no transaction id".to_owned()))?;
        Ok(Self {
            txid: row.try_get_by_index(0)?,
            timeline: row.try_get_by_index(1)?,
        })
    }
}

/// Asks the primary behind `db` (the pool: the connection that was lost is not reused) what
/// became of `pending`, until it is settled or `within` has passed.
pub async fn outcome<C: ConnectionTrait>(
    db: &C,
    pending: Pending,
    within: Duration,
) -> CommitOutcome {
    let deadline = Instant::now() + within;
    loop {
        match status(db, pending.txid).await {
            Ok((Some(status), timeline)) => match status.as_str() {
                "committed" if timeline == pending.timeline => return CommitOutcome::Committed,
                "committed" => return CommitOutcome::Unknown,
                "aborted" => return CommitOutcome::Aborted,
                // "in progress": its backend is still committing or has not noticed the loss.
                _ => {}
            },
            Ok((None, _)) => return CommitOutcome::Unknown,
            // Only a new primary can be behind an id this transaction had: it never got it.
            Err(err) if sqlstate(&err).as_deref() == Some(IN_THE_FUTURE) => {
                return CommitOutcome::Aborted;
            }
            // No primary answers right now; it may within the time left.
            Err(_) => {}
        }
        if Instant::now() + POLL_INTERVAL > deadline {
            return CommitOutcome::Unknown;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn status<C: ConnectionTrait>(db: &C, txid: i64) -> Result<(Option<String>, i64), DbErr> {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            READ_STATUS,
            [txid.into()],
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("no transaction status".to_owned()))?;
    Ok((row.try_get_by_index(0)?, row.try_get_by_index(1)?))
}

fn sqlstate(err: &DbErr) -> Option<String> {
    let (DbErr::Conn(RuntimeErr::SqlxError(e))
    | DbErr::Exec(RuntimeErr::SqlxError(e))
    | DbErr::Query(RuntimeErr::SqlxError(e))) = err
    else {
        return None;
    };
    Some(e.as_database_error()?.code()?.into_owned())
}
