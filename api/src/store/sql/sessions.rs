//! Sessions (bearer tokens, kept only as hashes) and the failed-login record that throttles
//! guessing. Both live in the database, so every instance sees the same sessions and counts.

use chrono::{DateTime, FixedOffset};
use entity::{login_failures, sessions, users};
use sea_orm::sea_query::IntoCondition;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection,
    EntityTrait, QueryFilter, QuerySelect,
};
use uuid::Uuid;

use super::replicas::Reads;
use super::write::{Write, Writer};
use crate::cache::{Caches, Topic};
use crate::domain::UserRole;
use crate::domain::model::{Failures, Session, SessionOwner, cache_key};
use crate::store::error::{Resource, StoreError};
use crate::store::events::Feed;
use crate::store::retry::{RetryPolicy, with_retry};

/// Deletes the sessions `hashes` as part of `write`, which evicts them everywhere on commit.
pub async fn revoke_in(write: &mut Write<'_>, hashes: Vec<String>) -> Result<(), StoreError> {
    if hashes.is_empty() {
        return Ok(());
    }
    sessions::Entity::delete_many()
        .filter(sessions::Column::TokenHash.is_in(hashes.iter().cloned()))
        .exec(write.txn())
        .await?;
    write.changed(Topic::Sessions, hashes.iter().map(|hash| cache_key(hash)));
    Ok(())
}

/// The hashes of `user_id`'s sessions, except `keep` — read inside the revoking transaction.
pub async fn hashes_of<C: ConnectionTrait>(
    conn: &C,
    user_id: Uuid,
    keep: Option<&str>,
) -> Result<Vec<String>, StoreError> {
    let mut query = sessions::Entity::find()
        .select_only()
        .column(sessions::Column::TokenHash)
        .filter(sessions::Column::UserId.eq(user_id));
    if let Some(keep) = keep {
        query = query.filter(sessions::Column::TokenHash.ne(keep));
    }
    Ok(query.into_tuple::<String>().all(conn).await?)
}

/// Sessions are read from the primary only: a token must work from the moment its login is
/// answered, and a revoked one stop at once, on every instance, whatever the replicas replayed.
#[derive(Clone)]
pub struct SessionRepo {
    db: DatabaseConnection,
    caches: Caches,
    writer: Writer,
}

impl SessionRepo {
    /// The pool, for classifying what its operations fail with (`pool::refine`).
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// `feed` only for `Writer`: sessions record no events.
    pub fn new(reads: &Reads, caches: Caches, feed: Feed) -> Self {
        Self {
            db: reads.primary().clone(),
            writer: Writer::new(reads, caches.clone(), feed),
            caches,
        }
    }

    /// Records a new session. Expired ones are purged on the way (an indexed range delete).
    #[tracing::instrument(level = "debug", skip_all, fields(%user_id))]
    pub async fn create(
        &self,
        token_hash: String,
        user_id: Uuid,
        expires_at: DateTime<FixedOffset>,
    ) -> Result<(), StoreError> {
        let now = crate::store::clock::now();
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
    pub async fn find(&self, token_hash: &str) -> Result<Option<SessionOwner>, StoreError> {
        let loaded = self
            .caches
            .sessions
            .get_or_load(cache_key(token_hash), || self.load(token_hash.to_owned()))
            .await;
        match loaded {
            Ok(session) => Ok(session.owner(token_hash)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn load(&self, token_hash: String) -> Result<Session, StoreError> {
        let found = sessions::Entity::find_by_id(token_hash.clone())
            .find_also_related(users::Entity)
            .one(&self.db)
            .await?;
        let Some((session, Some(user))) = found else {
            return Err(StoreError::not_found(
                Resource::User,
                cache_key(&token_hash),
            ));
        };
        let role = UserRole::from_db(&user.role)
            .ok_or_else(|| StoreError::internal(format!("unknown user role {:?}", user.role)))?;
        Ok(Session {
            token_hash: session.token_hash,
            user_id: session.user_id,
            role,
            expires_at: session.expires_at,
        })
    }

    /// Revokes one session (logout), here at once and on other instances by announcement.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn revoke(&self, token_hash: &str) -> Result<(), StoreError> {
        let mut write = self.writer.begin().await?;
        revoke_in(&mut write, vec![token_hash.to_owned()]).await?;
        write.commit().await
    }

    /// Failed logins per subject since `since` (subjects are hashed: see `auth::throttle`).
    pub async fn failures(
        &self,
        subjects: &[String],
        since: DateTime<FixedOffset>,
    ) -> Result<Vec<Failures>, StoreError> {
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
    /// Returns the rows written, for `forget_failures`.
    pub async fn record_failure(
        &self,
        subjects: &[String],
        forget_before: DateTime<FixedOffset>,
    ) -> Result<Vec<Uuid>, StoreError> {
        let now = crate::store::clock::now();
        let ids: Vec<Uuid> = subjects.iter().map(|_| Uuid::now_v7()).collect();
        // Concurrent attempts' purges and inserts meet in the `failed_at` index, where MariaDB's
        // next-key locks make them deadlock now and then; both statements are safe to repeat.
        with_retry(
            RetryPolicy::default(),
            |_| {},
            || async {
                login_failures::Entity::delete_many()
                    .filter(login_failures::Column::FailedAt.lt(forget_before))
                    .exec(&self.db)
                    .await?;
                let rows =
                    subjects
                        .iter()
                        .zip(&ids)
                        .map(|(subject, id)| login_failures::ActiveModel {
                            id: Set(*id),
                            subject: Set(subject.clone()),
                            failed_at: Set(now),
                        });
                login_failures::Entity::insert_many(rows)
                    .exec(&self.db)
                    .await?;
                Ok::<_, StoreError>(())
            },
        )
        .await?;
        Ok(ids)
    }

    /// Takes back failures `record_failure` wrote.
    pub async fn forget_failures(&self, ids: &[Uuid]) -> Result<(), StoreError> {
        self.delete_failures(login_failures::Column::Id.is_in(ids.iter().copied()))
            .await
    }

    /// A successful login clears its email's count.
    pub async fn clear_failures(&self, subject: &str) -> Result<(), StoreError> {
        self.delete_failures(login_failures::Column::Subject.eq(subject))
            .await
    }

    /// Deletes the failures `condition` names, repeated when it deadlocks with a concurrent
    /// purge (see `record_failure`).
    async fn delete_failures(&self, condition: impl IntoCondition) -> Result<(), StoreError> {
        let condition = condition.into_condition();
        with_retry(
            RetryPolicy::default(),
            |_| {},
            || async {
                login_failures::Entity::delete_many()
                    .filter(condition.clone())
                    .exec(&self.db)
                    .await?;
                Ok(())
            },
        )
        .await
    }
}
