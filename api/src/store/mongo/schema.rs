//! The MongoDB schema — collections with `$jsonSchema` validators mirroring the SQL constraints,
//! and their indexes — as numbered migrations, recorded in a collection of their own.
//!
//! Every step is idempotent (an existing collection gets its validator re-applied with
//! `collMod`; creating an index that exists with the same definition is a no-op), and the steps
//! run under a lock document with an expiry, so that instances starting at once against an empty
//! database apply them once, one after the other, and a crashed holder's lock lapses.

use std::time::Duration;

use bson::{Bson, Document, doc};
use futures::TryStreamExt;
use futures::future::BoxFuture;
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Database, IndexModel};
use uuid::Uuid;

use super::Mongo;
use super::document;
use super::error::{describe, server_code};

pub const USERS: &str = "users";
pub const PRODUCTS: &str = "products";
pub const ORDERS: &str = "orders";
pub const IDEMPOTENCY_KEYS: &str = "idempotency_keys";
pub const SESSIONS: &str = "sessions";
pub const LOGIN_FAILURES: &str = "login_failures";
pub const EVENTS: &str = "events";
/// Counters outside any transaction: `{_id: "events", seq}` orders the feed's writes.
pub const COUNTERS: &str = "counters";
/// The feed's publishers: `{_id: <name>, holder, lease_until, published_position}`.
pub const EVENT_RELAYS: &str = "event_relays";
/// Instances watching the change stream: `{_id: <listener name>, expires_at}`, renewed while
/// they watch, so that a revocation knows how many acknowledgements to wait for.
pub const LISTENERS: &str = "listeners";
/// `{key, listener, at}`: a listener has evicted the session `key` (its cache key).
pub const SESSION_ACKS: &str = "session_acks";
/// One document per applied migration: `{_id: version, name, applied_at}`.
pub const MIGRATIONS: &str = "schema_migrations";
/// At most one document, `{_id: "lock", owner, expires_at}`, while an instance migrates.
const LOCK: &str = "schema_lock";

/// A lock older than this belongs to an instance that died while migrating.
const LOCK_LEASE: Duration = Duration::from_secs(60);
/// How long an instance waits for another's migrations before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(120);

/// Idempotency keys are kept at least 24 hours (API.md); the TTL monitor removes them after.
const IDEMPOTENCY_TTL_SECS: u64 = 24 * 60 * 60;

/// `NamespaceExists`: `create` on a collection that is already there.
const NAMESPACE_EXISTS: i32 = 48;

type Step = for<'a> fn(&'a Database) -> BoxFuture<'a, mongodb::error::Result<()>>;

struct Migration {
    version: i64,
    name: &'static str,
    apply: Step,
}

const MIGRATIONS_LIST: &[Migration] = &[
    Migration {
        version: 1,
        name: "create_users",
        apply: |db| Box::pin(create_users(db)),
    },
    Migration {
        version: 2,
        name: "create_products",
        apply: |db| Box::pin(create_products(db)),
    },
    Migration {
        version: 3,
        name: "create_orders",
        apply: |db| Box::pin(create_orders(db)),
    },
    Migration {
        version: 4,
        name: "create_idempotency_keys",
        apply: |db| Box::pin(create_idempotency_keys(db)),
    },
    Migration {
        version: 5,
        name: "create_sessions",
        apply: |db| Box::pin(create_sessions(db)),
    },
    Migration {
        version: 6,
        name: "create_login_failures",
        apply: |db| Box::pin(create_login_failures(db)),
    },
    Migration {
        version: 7,
        name: "create_events",
        apply: |db| Box::pin(create_events(db)),
    },
    Migration {
        version: 8,
        name: "create_listeners",
        apply: |db| Box::pin(create_listeners(db)),
    },
];

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("migration {name} failed: {reason}")]
    Step { name: &'static str, reason: String },
    #[error("{0}")]
    Database(String),
    #[error("another instance has held the migration lock for over {} s", LOCK_WAIT.as_secs())]
    LockTimeout,
}

impl From<mongodb::error::Error> for SchemaError {
    fn from(err: mongodb::error::Error) -> Self {
        Self::Database(describe(&err))
    }
}

/// One migration and whether it has been applied.
pub struct Status {
    pub version: i64,
    pub name: &'static str,
    pub applied: bool,
}

/// Applies every pending migration, under the lock. Returns the names applied.
pub async fn up(mongo: &Mongo) -> Result<Vec<&'static str>, SchemaError> {
    let db = mongo.database();
    let owner = Uuid::now_v7().to_string();
    acquire(db, &owner).await?;
    let outcome = apply_pending(db).await;
    release(db, &owner).await;
    outcome
}

pub async fn status(mongo: &Mongo) -> Result<Vec<Status>, SchemaError> {
    let applied = applied(mongo.database()).await?;
    Ok(MIGRATIONS_LIST
        .iter()
        .map(|migration| Status {
            version: migration.version,
            name: migration.name,
            applied: applied.contains(&migration.version),
        })
        .collect())
}

async fn applied(db: &Database) -> Result<Vec<i64>, SchemaError> {
    let docs: Vec<Document> = db
        .collection::<Document>(MIGRATIONS)
        .find(doc! {})
        .await?
        .try_collect()
        .await?;
    Ok(docs
        .iter()
        .filter_map(|doc| doc.get_i64("_id").ok())
        .collect())
}

async fn apply_pending(db: &Database) -> Result<Vec<&'static str>, SchemaError> {
    let applied = applied(db).await?;
    let mut done = Vec::new();
    for migration in MIGRATIONS_LIST {
        if applied.contains(&migration.version) {
            continue;
        }
        (migration.apply)(db)
            .await
            .map_err(|err| SchemaError::Step {
                name: migration.name,
                reason: describe(&err),
            })?;
        db.collection::<Document>(MIGRATIONS)
            .insert_one(doc! {
                "_id": migration.version,
                "name": migration.name,
                "applied_at": document::time(document::now()),
            })
            .await?;
        tracing::info!(migration = migration.name, "applied a MongoDB migration");
        done.push(migration.name);
    }
    Ok(done)
}

/// Takes the lock: an upsert that matches only a lapsed lock. While another instance holds a
/// live one, the upsert collides with it on `_id` and this instance waits.
async fn acquire(db: &Database, owner: &str) -> Result<(), SchemaError> {
    let locks = db.collection::<Document>(LOCK);
    let started = std::time::Instant::now();
    loop {
        let now = document::now();
        let lease = chrono::Duration::from_std(LOCK_LEASE).unwrap_or_default();
        let taken = locks
            .find_one_and_update(
                doc! {"_id": "lock", "expires_at": {"$lt": document::time(now)}},
                doc! {"$set": {"owner": owner, "expires_at": document::time(now + lease)}},
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await;
        match taken {
            Ok(_) => return Ok(()),
            Err(err) if server_code(&err) == Some(11000) => {
                if started.elapsed() > LOCK_WAIT {
                    return Err(SchemaError::LockTimeout);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

async fn release(db: &Database, owner: &str) {
    let released = db
        .collection::<Document>(LOCK)
        .delete_one(doc! {"_id": "lock", "owner": owner})
        .await;
    if let Err(err) = released {
        // It lapses by itself after the lease.
        tracing::warn!(error = %describe(&err), "cannot release the migration lock");
    }
}

/// Creates the collection with `validator`, or re-applies the validator to an existing one.
async fn collection(db: &Database, name: &str, schema: Document) -> mongodb::error::Result<()> {
    let validator = doc! {"$jsonSchema": schema};
    match db
        .create_collection(name)
        .validator(validator.clone())
        .await
    {
        Ok(()) => Ok(()),
        Err(err) if server_code(&err) == Some(NAMESPACE_EXISTS) => db
            .run_command(doc! {"collMod": name, "validator": validator})
            .await
            .map(drop),
        Err(err) => Err(err),
    }
}

fn index(keys: Document, name: &str) -> IndexModel {
    IndexModel::builder()
        .keys(keys)
        .options(IndexOptions::builder().name(name.to_owned()).build())
        .build()
}

fn unique(keys: Document, name: &str) -> IndexModel {
    IndexModel::builder()
        .keys(keys)
        .options(
            IndexOptions::builder()
                .name(name.to_owned())
                .unique(true)
                .build(),
        )
        .build()
}

fn expiring(keys: Document, name: &str, after: Duration) -> IndexModel {
    IndexModel::builder()
        .keys(keys)
        .options(
            IndexOptions::builder()
                .name(name.to_owned())
                .expire_after(after)
                .build(),
        )
        .build()
}

fn long(minimum: i64) -> Document {
    doc! {"bsonType": "long", "minimum": minimum}
}

fn required(fields: &[&str], properties: Document) -> Document {
    let required: Vec<Bson> = fields.iter().map(|field| Bson::from(*field)).collect();
    doc! {"bsonType": "object", "required": required, "properties": properties}
}

async fn create_users(db: &Database) -> mongodb::error::Result<()> {
    let schema = required(
        &[
            "_id",
            "name",
            "email",
            "password_hash",
            "status",
            "role",
            "version",
            "created_at",
            "updated_at",
        ],
        doc! {
            "_id": {"bsonType": "binData"},
            "name": {"bsonType": "string", "minLength": 1},
            "email": {"bsonType": "string", "minLength": 1, "maxLength": 254},
            "password_hash": {"bsonType": "string"},
            "status": {"enum": ["active", "inactive", "suspended"]},
            "role": {"enum": ["customer", "admin"]},
            "version": long(1),
            "has_orders": {"bsonType": "bool"},
            "created_at": {"bsonType": "date"},
            "updated_at": {"bsonType": "date"},
        },
    );
    collection(db, USERS, schema).await?;
    db.collection::<Document>(USERS)
        .create_indexes([
            unique(doc! {"email": 1}, "users_email_key"),
            index(
                doc! {"status": 1, "created_at": -1},
                "users_status_created_at",
            ),
            index(doc! {"created_at": -1, "_id": -1}, "users_created_at_id"),
        ])
        .await
        .map(drop)
}

async fn create_products(db: &Database) -> mongodb::error::Result<()> {
    let schema = required(
        &[
            "_id",
            "sku",
            "name",
            "price_cents",
            "stock",
            "version",
            "created_at",
            "updated_at",
        ],
        doc! {
            "_id": {"bsonType": "binData"},
            "sku": {"bsonType": "string", "minLength": 1},
            "name": {"bsonType": "string", "minLength": 1},
            "price_cents": long(0),
            "stock": long(0),
            "version": long(1),
            "ordered": {"bsonType": "bool"},
            "created_at": {"bsonType": "date"},
            "updated_at": {"bsonType": "date"},
        },
    );
    collection(db, PRODUCTS, schema).await?;
    db.collection::<Document>(PRODUCTS)
        .create_indexes([
            unique(doc! {"sku": 1}, "products_sku_key"),
            index(doc! {"created_at": -1, "_id": -1}, "products_created_at_id"),
        ])
        .await
        .map(drop)
}

async fn create_orders(db: &Database) -> mongodb::error::Result<()> {
    let item = required(
        &["product_id", "quantity", "unit_price_cents"],
        doc! {
            "product_id": {"bsonType": "binData"},
            "quantity": long(1),
            "unit_price_cents": long(0),
        },
    );
    let schema = required(
        &[
            "_id",
            "user_id",
            "status",
            "total_cents",
            "items",
            "version",
            "created_at",
            "updated_at",
        ],
        doc! {
            "_id": {"bsonType": "binData"},
            "user_id": {"bsonType": "binData"},
            "status": {"enum": ["pending", "paid", "shipped", "cancelled"]},
            "total_cents": long(0),
            "items": {"bsonType": "array", "minItems": 1, "items": item},
            "version": long(1),
            "created_at": {"bsonType": "date"},
            "updated_at": {"bsonType": "date"},
        },
    );
    collection(db, ORDERS, schema).await?;
    db.collection::<Document>(ORDERS)
        .create_indexes([index(
            doc! {"user_id": 1, "created_at": -1, "_id": -1},
            "orders_user_id_created_at_id",
        )])
        .await
        .map(drop)
}

async fn create_idempotency_keys(db: &Database) -> mongodb::error::Result<()> {
    let schema = required(
        &["_id", "request_hash", "order_id", "created_at"],
        doc! {
            "_id": {"bsonType": "string", "minLength": 1, "maxLength": 255},
            "request_hash": {"bsonType": "string"},
            "order_id": {"bsonType": "binData"},
            "created_at": {"bsonType": "date"},
        },
    );
    collection(db, IDEMPOTENCY_KEYS, schema).await?;
    db.collection::<Document>(IDEMPOTENCY_KEYS)
        .create_indexes([expiring(
            doc! {"created_at": 1},
            "idempotency_keys_expiry",
            Duration::from_secs(IDEMPOTENCY_TTL_SECS),
        )])
        .await
        .map(drop)
}

/// Sessions: the hash of the bearer token is the `_id`; the TTL monitor removes expired ones.
async fn create_sessions(db: &Database) -> mongodb::error::Result<()> {
    let schema = required(
        &["_id", "user_id", "created_at", "expires_at"],
        doc! {
            "_id": {"bsonType": "string", "minLength": 1},
            "user_id": {"bsonType": "binData"},
            "created_at": {"bsonType": "date"},
            "expires_at": {"bsonType": "date"},
        },
    );
    collection(db, SESSIONS, schema).await?;
    db.collection::<Document>(SESSIONS)
        .create_indexes([
            expiring(doc! {"expires_at": 1}, "sessions_expiry", Duration::ZERO),
            index(doc! {"user_id": 1}, "sessions_user_id"),
        ])
        .await
        .map(drop)
}

/// Failed logins, by hashed subject (an email or a client address): counted within a window.
async fn create_login_failures(db: &Database) -> mongodb::error::Result<()> {
    let schema = required(
        &["_id", "subject", "failed_at"],
        doc! {
            "_id": {"bsonType": "binData"},
            "subject": {"bsonType": "string"},
            "failed_at": {"bsonType": "date"},
        },
    );
    collection(db, LOGIN_FAILURES, schema).await?;
    db.collection::<Document>(LOGIN_FAILURES)
        .create_indexes([index(
            doc! {"subject": 1, "failed_at": 1},
            "login_failures_subject_failed_at",
        )])
        .await
        .map(drop)
}

/// The change feed's outbox (see `store::events`): `seq` is taken from `counters` before the
/// event is inserted in its write's transaction; `position` is given later, by the sequencer, to
/// committed events only.
async fn create_events(db: &Database) -> mongodb::error::Result<()> {
    let schema = required(
        &[
            "_id",
            "seq",
            "type",
            "resource_id",
            "version",
            "occurred_at",
            "data",
        ],
        doc! {
            "_id": {"bsonType": "binData"},
            "seq": {"bsonType": "long"},
            "position": {"bsonType": ["long", "null"]},
            "type": {"bsonType": "string"},
            "resource_id": {"bsonType": "binData"},
            "version": {"bsonType": "long"},
            "occurred_at": {"bsonType": "date"},
            "data": {"bsonType": "string"},
        },
    );
    collection(db, EVENTS, schema).await?;
    // Unique among sequenced events only: two sequencers can never hand out one position twice.
    let position = IndexModel::builder()
        .keys(doc! {"position": 1})
        .options(
            IndexOptions::builder()
                .name("events_position".to_owned())
                .unique(true)
                .partial_filter_expression(doc! {"position": {"$type": "long"}})
                .build(),
        )
        .build();
    db.collection::<Document>(EVENTS)
        .create_indexes([
            position,
            index(doc! {"seq": 1}, "events_seq"),
            index(doc! {"occurred_at": 1}, "events_occurred_at"),
        ])
        .await?;
    // The counter exists before any writer needs it: concurrent first upserts could collide.
    db.collection::<Document>(COUNTERS)
        .update_one(doc! {"_id": EVENTS}, doc! {"$setOnInsert": {"seq": 0_i64}})
        .upsert(true)
        .await
        .map(drop)
}

/// Who watches the change stream, and their acknowledgements of evicted sessions; both expire by
/// themselves (a listener that died stops renewing; an acknowledgement is read within seconds).
async fn create_listeners(db: &Database) -> mongodb::error::Result<()> {
    db.collection::<Document>(LISTENERS)
        .create_indexes([expiring(
            doc! {"expires_at": 1},
            "listeners_expires_at",
            Duration::ZERO,
        )])
        .await?;
    db.collection::<Document>(SESSION_ACKS)
        .create_indexes([
            expiring(doc! {"at": 1}, "session_acks_at", Duration::from_secs(300)),
            index(doc! {"key": 1}, "session_acks_key"),
        ])
        .await
        .map(drop)
}
