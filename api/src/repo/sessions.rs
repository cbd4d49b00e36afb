//! Sessions (bearer tokens, kept only as hashes) and the failed-login record that throttles
//! guessing. Both live in the database, so every instance sees the same sessions and counts.

use std::sync::Arc;

use chrono::{DateTime, FixedOffset};
use entity::{login_failures, sessions, users};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection,
    EntityTrait, QueryFilter, QuerySelect, TransactionTrait,
};
use uuid::Uuid;

use super::error::RepoError;
use crate::cache::EntityCache;
use crate::cache::peers::{self, Topic};
use crate::domain::UserRole;

/// A session as a request sees it: whose it is and what they may do. Every change to the user's
/// role or status revokes their sessions, so the role kept here is never stale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub token_hash: String,
    pub user_id: Uuid,
    pub role: UserRole,
    pub expires_at: DateTime<FixedOffset>,
}

/// The cache key of a session: the first 128 bits of its token's hash (as unique as a UUID).
pub fn cache_key(token_hash: &str) -> Uuid {
    token_hash
        .get(..32)
        .and_then(|prefix| Uuid::try_parse(prefix).ok())
        .unwrap_or_default()
}

/// Sessions deleted by a transaction, to be forgotten once it has committed (see `forget`).
#[derive(Debug, Default)]
pub struct Revoked {
    hashes: Vec<String>,
    /// Instances that will acknowledge the announcement.
    listeners: usize,
}

/// Deletes the sessions `hashes` inside `txn` and announces them; the caller calls `forget`
/// after commit.
pub async fn delete_in<C: ConnectionTrait>(
    conn: &C,
    hashes: Vec<String>,
) -> Result<Revoked, RepoError> {
    if hashes.is_empty() {
        return Ok(Revoked::default());
    }
    sessions::Entity::delete_many()
        .filter(sessions::Column::TokenHash.is_in(hashes.iter().cloned()))
        .exec(conn)
        .await?;
    let keys: Vec<Uuid> = hashes.iter().map(|hash| cache_key(hash)).collect();
    peers::announce(conn, Topic::Sessions, &keys).await?;
    let listeners = peers::listeners(conn).await?;
    Ok(Revoked { hashes, listeners })
}

/// Drops revoked sessions from this instance's cache — call after the revoking commit, with the
/// acknowledgements subscribed to before it. A revoked token must be refused by every instance
/// from the moment the revoking request is answered, so where other instances hear of it by
/// announcement, this waits until every listening instance has acknowledged evicting each
/// session — bounded, so that an instance that died without closing its connection delays a
/// revocation by at most `ACKNOWLEDGEMENT_WAIT`.
pub async fn forget(
    cache: &EntityCache<Session>,
    acknowledgements: Option<tokio::sync::broadcast::Receiver<(Uuid, String)>>,
    revoked: &Revoked,
) {
    let keys: Vec<Uuid> = revoked.hashes.iter().map(|hash| cache_key(hash)).collect();
    for key in &keys {
        cache.invalidate(*key).await;
    }
    let Some(mut acknowledgements) = acknowledgements.filter(|_| revoked.listeners > 0) else {
        return;
    };
    let mut pending: std::collections::HashMap<Uuid, std::collections::HashSet<String>> =
        keys.iter().map(|key| (*key, Default::default())).collect();
    let waited = tokio::time::timeout(ACKNOWLEDGEMENT_WAIT, async {
        while !pending.is_empty() {
            match acknowledgements.recv().await {
                Ok((key, listener)) => {
                    if let Some(heard_from) = pending.get_mut(&key) {
                        heard_from.insert(listener);
                        if heard_from.len() >= revoked.listeners {
                            pending.remove(&key);
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    })
    .await;
    if waited.is_err() {
        tracing::warn!(
            listeners = revoked.listeners,
            "not every instance acknowledged a session revocation in time"
        );
    }
}

/// How long a revocation waits for every instance's acknowledgement; on a healthy server a
/// NOTIFY round trip takes about a millisecond.
const ACKNOWLEDGEMENT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The hashes of `user_id`'s sessions, except `keep` — read inside the revoking transaction.
pub async fn hashes_of<C: ConnectionTrait>(
    conn: &C,
    user_id: Uuid,
    keep: Option<&str>,
) -> Result<Vec<String>, RepoError> {
    let mut query = sessions::Entity::find()
        .select_only()
        .column(sessions::Column::TokenHash)
        .filter(sessions::Column::UserId.eq(user_id));
    if let Some(keep) = keep {
        query = query.filter(sessions::Column::TokenHash.ne(keep));
    }
    Ok(query.into_tuple::<String>().all(conn).await?)
}

/// How many failed logins a subject has within the window, and when the oldest of them expires.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Failures {
    pub count: u32,
    pub oldest: Option<DateTime<FixedOffset>>,
}

#[derive(Clone)]
pub struct SessionRepo {
    db: DatabaseConnection,
    cache: Arc<EntityCache<Session>>,
}

impl SessionRepo {
    pub fn new(db: DatabaseConnection, cache: Arc<EntityCache<Session>>) -> Self {
        Self { db, cache }
    }

    /// Records a new session. Expired ones are purged on the way (an indexed range delete).
    #[tracing::instrument(skip_all, fields(%user_id))]
    pub async fn create(
        &self,
        token_hash: String,
        user_id: Uuid,
        expires_at: DateTime<FixedOffset>,
    ) -> Result<(), RepoError> {
        let now = super::now();
        sessions::Entity::delete_many()
            .filter(sessions::Column::ExpiresAt.lt(now))
            .exec(&self.db)
            .await?;
        sessions::ActiveModel {
            token_hash: Set(token_hash),
            user_id: Set(user_id),
            created_at: Set(now),
            expires_at: Set(expires_at),
        }
        .insert(&self.db)
        .await?;
        Ok(())
    }

    /// The live session with this token hash, read through the cache (concurrent requests with
    /// one token share a single query). Expired and unknown sessions are `None`.
    pub async fn find(&self, token_hash: &str) -> Result<Option<Session>, RepoError> {
        let loaded = self
            .cache
            .get_or_load(cache_key(token_hash), || self.load(token_hash.to_owned()))
            .await;
        match loaded {
            Ok(session)
                if session.token_hash == token_hash && session.expires_at > super::now() =>
            {
                Ok(Some(Session::clone(&session)))
            }
            Ok(_) | Err(RepoError::NotFound { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn load(&self, token_hash: String) -> Result<Session, RepoError> {
        let found = sessions::Entity::find_by_id(token_hash.clone())
            .find_also_related(users::Entity)
            .one(&self.db)
            .await?;
        let Some((session, Some(user))) = found else {
            return Err(RepoError::not_found(
                super::Resource::User,
                cache_key(&token_hash),
            ));
        };
        let role = UserRole::from_db(&user.role).ok_or_else(|| {
            RepoError::Internal(sea_orm::DbErr::Type(format!(
                "unknown user role {:?}",
                user.role
            )))
        })?;
        Ok(Session {
            token_hash: session.token_hash,
            user_id: session.user_id,
            role,
            expires_at: session.expires_at,
        })
    }

    /// Revokes one session (logout), here at once and on other instances by announcement.
    #[tracing::instrument(skip_all)]
    pub async fn revoke(&self, token_hash: &str) -> Result<(), RepoError> {
        let acknowledgements = self.cache.acknowledgements();
        let txn = self.db.begin().await?;
        let revoked = delete_in(&txn, vec![token_hash.to_owned()]).await?;
        txn.commit().await?;
        forget(&self.cache, acknowledgements, &revoked).await;
        Ok(())
    }

    /// Failed logins per subject since `since` (subjects are hashed: see `auth::throttle`).
    pub async fn failures(
        &self,
        subjects: &[String],
        since: DateTime<FixedOffset>,
    ) -> Result<Vec<Failures>, RepoError> {
        let rows = login_failures::Entity::find()
            .filter(login_failures::Column::Subject.is_in(subjects.iter().cloned()))
            .filter(login_failures::Column::FailedAt.gt(since))
            .all(&self.db)
            .await?;
        Ok(subjects
            .iter()
            .map(|subject| {
                rows.iter().filter(|row| &row.subject == subject).fold(
                    Failures::default(),
                    |acc, row| Failures {
                        count: acc.count + 1,
                        oldest: Some(acc.oldest.map_or(row.failed_at, |o| o.min(row.failed_at))),
                    },
                )
            })
            .collect())
    }

    /// Counts one failed login against each subject; failures older than `forget_before` go.
    pub async fn record_failure(
        &self,
        subjects: &[String],
        forget_before: DateTime<FixedOffset>,
    ) -> Result<(), RepoError> {
        let now = super::now();
        login_failures::Entity::delete_many()
            .filter(login_failures::Column::FailedAt.lt(forget_before))
            .exec(&self.db)
            .await?;
        let rows = subjects.iter().map(|subject| login_failures::ActiveModel {
            id: Set(Uuid::now_v7()),
            subject: Set(subject.clone()),
            failed_at: Set(now),
        });
        login_failures::Entity::insert_many(rows)
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// A successful login clears its email's count.
    pub async fn clear_failures(&self, subject: &str) -> Result<(), RepoError> {
        login_failures::Entity::delete_many()
            .filter(login_failures::Column::Subject.eq(subject))
            .exec(&self.db)
            .await?;
        Ok(())
    }
}
