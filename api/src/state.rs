//! What a request handler may use: the parts `startup` puts together once, shared by every request.

use std::sync::Arc;

use crate::cache::Caches;
use crate::cache::versioned::Versioned;
use crate::config::Config;
use crate::domain::Hasher;
use crate::metrics::Metrics;
use crate::store::consistency::Positions;
use crate::store::events::Events;
use crate::store::{Engine, Orders, Products, ReadReplicas, Sessions, Users};

/// Everything a request handler may use.
pub struct AppState {
    pub config: Config,
    pub db: Engine,
    pub metrics: Arc<Metrics>,
    pub users: Users,
    pub products: Products,
    pub orders: Orders,
    pub sessions: Sessions,
    /// The change feed.
    pub events: Events,
    /// Every password hash and verification, on a bounded queue.
    pub hasher: Hasher,
    pub caches: Caches,
    /// With read replicas: the database positions this instance knows of (its answers' tokens).
    pub positions: Arc<Positions>,
    /// Serialized single-resource representations, by id and version (ids are UUIDv7, unique
    /// across resources).
    pub representations: Versioned,
    /// PostgreSQL's read replicas, when configured.
    pub replicas: ReadReplicas,
    /// The name of this instance's listener for the other instances' changes.
    pub listener_name: String,
}
