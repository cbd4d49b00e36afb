//! Keeping several instances' caches coherent on PostgreSQL.
//!
//! Every write that changes a cached row sends `NOTIFY` with the row's key inside its own
//! transaction, so the message goes out only if the write commits. Each instance LISTENs on one
//! channel and evicts what it hears. When its listening connection drops, an instance cannot know
//! what it missed: it stops serving from its cache and empties it until it listens again, then
//! empties it once more (writes may have committed while it was reconnecting).
//!
//! A message names its sender (the `application_name` of the writing instance's pool), and an
//! instance skips its own user and product messages: the writer has already invalidated locally
//! after committing, and a late second eviction would only throw away a value it has since read
//! afresh. Session revocations are heard by every instance, the revoking one included, since each
//! acknowledges them.
//!
//! With read replicas an eviction alone is not enough: a refill could be read from a replica that
//! has not replayed the write yet. So before evicting what it hears, an instance raises its
//! floor (`consistency::Positions`) to the primary's WAL position, read on the listening
//! connection. A notification is delivered only after its transaction committed, so that position
//! is at or past the write; a position written into the message itself would be read inside the
//! transaction, before its commit, and could not be.
//!
//! The same channel carries the change feed's wake-ups: each sequencing round, on whichever
//! instance, sends the position it reached inside its own transaction, and every instance wakes
//! its waiting feed readers when it hears it.
//!
//! On SQLite and MariaDB/MySQL there is no such channel: run a single instance there.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};
use uuid::Uuid;

use super::replicas;
use crate::cache::Topic;
use crate::store::consistency::Positions;
use crate::store::peers::{Backoff, LISTENER_PREFIX, Peers};

pub const CHANNEL: &str = "storefront_cache";

/// Tells the other instances to drop `ids` — call inside the writing transaction. A no-op on
/// backends without NOTIFY.
pub async fn announce<C: ConnectionTrait>(
    conn: &C,
    topic: Topic,
    ids: &[Uuid],
) -> Result<(), DbErr> {
    if conn.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    for id in ids {
        let payload = format!("{}:{id}", topic.as_str());
        let statement = Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_notify($1, $2 || '@' || current_setting('application_name'))",
            [CHANNEL.into(), payload.into()],
        );
        conn.execute_raw(statement).await?;
    }
    Ok(())
}

/// Tells every instance's waiting feed readers that positions up to `position` are given — call
/// inside the sequencing transaction, so it is heard only once they are readable. A no-op on
/// backends without NOTIFY.
pub async fn announce_sequenced<C: ConnectionTrait>(conn: &C, position: i64) -> Result<(), DbErr> {
    if conn.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    let statement = Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_notify($1, $2)",
        [CHANNEL.into(), format!("{SEQUENCED}{position}").into()],
    );
    conn.execute_raw(statement).await.map(drop)
}

/// The prefix of a message that says up to which position the change feed is given.
const SEQUENCED: &str = "events:";

/// What a listener evicts into and wakes (`Peers`), and whose messages it skips.
struct Evictor {
    peers: Peers,
    /// This instance's pool `application_name`: messages it sent itself are skipped.
    sender: String,
}

/// What one message on the channel asks of a listener.
enum Heard {
    /// Nothing this instance must answer.
    Done,
    /// A session was revoked: every instance confirms it has evicted it (see `ack`).
    SessionEvicted(Uuid),
}

impl Evictor {
    async fn evict(&self, payload: &str) -> Heard {
        if let Some(position) = payload.strip_prefix(SEQUENCED) {
            if let Ok(position) = position.parse() {
                self.peers.feed.sequenced(position);
            }
            return Heard::Done;
        }
        if let Some(ack) = payload.strip_prefix("ack:") {
            // `ack:<key>:<listener>`: another instance (or this one) has evicted a session.
            if let Some((id, listener)) = ack.split_once(':')
                && let Ok(id) = Uuid::parse_str(id)
            {
                self.peers
                    .caches
                    .sessions
                    .acknowledge(id, listener.to_owned());
            }
            return Heard::Done;
        }
        let (key, own) = match payload.rsplit_once('@') {
            Some((key, sender)) => (key, sender == self.sender),
            None => (payload, false),
        };
        let Some((topic, id)) = key.split_once(':') else {
            return Heard::Done;
        };
        let Ok(id) = Uuid::parse_str(id) else {
            return Heard::Done;
        };
        match Topic::parse(topic) {
            // The writer evicted these itself once it had committed.
            Some(Topic::Users | Topic::Products) if own => {}
            Some(Topic::Sessions) => {
                self.peers.caches.evict(Topic::Sessions, id).await;
                return Heard::SessionEvicted(id);
            }
            Some(topic) => self.peers.caches.evict(topic, id).await,
            None => {}
        }
        Heard::Done
    }
}

/// Listens for other instances' invalidations and feed sequencing until the task is aborted, as
/// `peers.name`, which becomes the connection's `application_name` so that operators (and
/// tests) can tell it apart; `sender` is this instance's pool's. The first LISTEN is made before
/// this returns, so a new instance caches from its first request.
pub async fn start_listener(
    url: String,
    peers: Peers,
    sender: String,
) -> tokio::task::JoinHandle<()> {
    let name = peers.name.clone();
    // Floors are raised for what this instance's caches refill; with caching off the listener only
    // wakes the feed's readers, and a read without a token may be as stale as its replica.
    let positions = peers
        .caches
        .users
        .is_enabled()
        .then(|| Arc::clone(&peers.positions));
    // Until a LISTEN succeeds this instance hears nobody.
    peers.deaf();
    let mut first = Some(listen(&url, &name).await);
    if let Some(Ok(listener)) = first.as_mut() {
        catch_up(listener, positions.as_deref()).await;
        peers.listening();
    }
    let evictor = Evictor { peers, sender };
    tokio::spawn(async move {
        let mut backoff = Backoff::default();
        loop {
            let attempt = match first.take() {
                Some(attempt) => attempt,
                None => listen(&url, &name).await,
            };
            match attempt {
                Ok(mut listener) => {
                    catch_up(&mut listener, positions.as_deref()).await;
                    evictor.peers.listening();
                    backoff.reset();
                    tracing::info!(channel = CHANNEL, "listening for cache invalidations");
                    while let Ok(Some(notification)) = listener.try_recv().await {
                        let payload = notification.payload();
                        if !payload.starts_with("ack:") && !payload.starts_with(SEQUENCED) {
                            catch_up(&mut listener, positions.as_deref()).await;
                        }
                        if let Heard::SessionEvicted(id) =
                            evictor.evict(notification.payload()).await
                            && let Err(err) = acknowledge(&mut listener, id, &name).await
                        {
                            tracing::warn!(error = %err, "cannot acknowledge a session eviction");
                        }
                    }
                    // The connection dropped: whatever was sent meanwhile is lost.
                    evictor.peers.deaf();
                    tracing::warn!(
                        "lost the cache invalidation channel; cache off until it is back"
                    );
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot listen for cache invalidations; retrying");
                }
            }
            backoff.wait().await;
        }
    })
}

/// With replicas and caching on: what this instance reads from now on must be at or past the primary's position
/// (every write heard so far, or missed while not listening, has committed by then). Call before
/// evicting.
async fn catch_up(listener: &mut PgListener, positions: Option<&Positions>) {
    let Some(positions) = positions.filter(|positions| positions.is_enabled()) else {
        return;
    };
    let position = sea_orm::sqlx::query_scalar::<_, i64>(replicas::PRIMARY_POSITION)
        .fetch_one(&mut *listener)
        .await;
    match position
        .ok()
        .and_then(|position| u64::try_from(position).ok())
    {
        Some(position) => positions.wrote(position),
        None => positions.lose_track(),
    }
}

/// Tells every instance (the revoking one waits for this) that this one has evicted session `id`.
async fn acknowledge(
    listener: &mut PgListener,
    id: Uuid,
    name: &str,
) -> Result<(), sea_orm::sqlx::Error> {
    sea_orm::sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(format!("ack:{id}:{name}"))
        .execute(listener)
        .await?;
    Ok(())
}

/// How many instances listen on the channel of this database (each acknowledges a revocation).
pub async fn listeners<C: ConnectionTrait>(conn: &C) -> Result<usize, DbErr> {
    if conn.get_database_backend() != DbBackend::Postgres {
        return Ok(0);
    }
    let statement = Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name LIKE $1",
        [format!("{LISTENER_PREFIX}%").into()],
    );
    let count = conn
        .query_one_raw(statement)
        .await?
        .map(|row| row.try_get_by_index::<i64>(0))
        .transpose()?
        .unwrap_or(0);
    Ok(usize::try_from(count).unwrap_or(0))
}

async fn listen(url: &str, name: &str) -> Result<PgListener, sea_orm::sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options.application_name(name))
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}
