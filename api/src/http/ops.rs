//! Liveness, readiness and metrics.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::payload::PlainText;
use poem_openapi::{ApiResponse, OpenApi};

use super::Tag;
use crate::state::AppState;

#[derive(ApiResponse)]
pub enum Readiness {
    /// A database round trip succeeded.
    #[oai(status = 200)]
    Ready(PlainText<String>),
    /// The database did not answer.
    #[oai(status = 503)]
    NotReady(PlainText<String>),
}

pub struct OpsApi;

#[OpenApi(tag = "Tag::Operations")]
impl OpsApi {
    /// Liveness
    ///
    /// 200 while the process runs.
    #[oai(path = "/health", method = "get", operation_id = "health")]
    async fn health(&self) -> PlainText<&'static str> {
        PlainText("ok")
    }

    /// Readiness
    ///
    /// 200 when a database round trip succeeds, else 503.
    #[oai(path = "/ready", method = "get", operation_id = "ready")]
    async fn ready(&self, state: Data<&Arc<AppState>>) -> Readiness {
        match state.db.ping().await {
            Ok(()) => Readiness::Ready(PlainText("ready".to_owned())),
            Err(err) => {
                tracing::warn!(
                    error_kind = err.failure().map_or("other", |failure| failure.label()),
                    "readiness check failed"
                );
                Readiness::NotReady(PlainText("database unavailable".to_owned()))
            }
        }
    }

    /// Prometheus metrics
    #[oai(path = "/metrics", method = "get", operation_id = "metrics")]
    async fn metrics(&self, state: Data<&Arc<AppState>>) -> PlainText<String> {
        let pool = state.db.pool_stats();
        let metrics = &state.metrics;
        metrics
            .pool_connections
            .with_label_values(&["in_use"])
            .set(i64::from(pool.in_use));
        metrics
            .pool_connections
            .with_label_values(&["idle"])
            .set(i64::from(pool.idle));
        metrics
            .pool_max_connections
            .set(i64::from(state.config.database.max_connections));
        for (name, entries) in [
            (state.caches.users.name(), state.caches.users.entry_count()),
            (
                state.caches.products.name(),
                state.caches.products.entry_count(),
            ),
            (
                state.caches.sessions.name(),
                state.caches.sessions.entry_count(),
            ),
        ] {
            metrics
                .cache_entries
                .with_label_values(&[name])
                .set(i64::try_from(entries).unwrap_or(i64::MAX));
        }
        PlainText(metrics.render())
    }
}
