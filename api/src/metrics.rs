//! Prometheus metrics. One registry per running service (not a process global), so two servers in
//! one process — as in the tests — never mix their figures.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub pool_connections: IntGaugeVec,
    pub pool_max_connections: IntGauge,
    pub transaction_retries: IntCounter,
    pub db_queries: IntCounter,
    pub db_errors: IntCounterVec,
    pub cache_requests: IntCounterVec,
    pub cache_entries: IntGaugeVec,
    pub cache_loads: IntCounterVec,
    pub cache_load_failures: IntCounterVec,
    pub cache_invalidations: IntCounterVec,
    pub listing_index_requests: IntCounterVec,
    pub listing_index_builds: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests answered"),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time from request to response",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["method", "route"],
        )
        .expect("valid metric");
        let pool_connections = IntGaugeVec::new(
            Opts::new(
                "db_pool_connections",
                "Pooled database connections by state",
            ),
            &["state"],
        )
        .expect("valid metric");
        let pool_max_connections = IntGauge::new(
            "db_pool_max_connections",
            "Size limit of the connection pool",
        )
        .expect("valid metric");
        let transaction_retries = IntCounter::new(
            "db_transaction_retries_total",
            "Transactions retried after a deadlock, serialization failure or busy database",
        )
        .expect("valid metric");
        let db_queries = IntCounter::new(
            "db_queries_total",
            "Statements sent to the database through the pool",
        )
        .expect("valid metric");
        let db_errors = IntCounterVec::new(
            Opts::new("db_errors_total", "Database errors by kind"),
            &["kind"],
        )
        .expect("valid metric");
        let cache_requests = IntCounterVec::new(
            Opts::new("cache_requests_total", "Cache look-ups by result"),
            &["cache", "result"],
        )
        .expect("valid metric");
        let cache_entries = IntGaugeVec::new(
            Opts::new("cache_entries", "Entries held by each cache"),
            &["cache"],
        )
        .expect("valid metric");
        let cache_loads = IntCounterVec::new(
            Opts::new("cache_loads_total", "Database loads made to fill the cache"),
            &["cache"],
        )
        .expect("valid metric");
        let cache_load_failures = IntCounterVec::new(
            Opts::new(
                "cache_load_failures_total",
                "Cache loads that failed (not cached)",
            ),
            &["cache"],
        )
        .expect("valid metric");
        let cache_invalidations = IntCounterVec::new(
            Opts::new(
                "cache_evictions_total",
                "Entries dropped because their data was written",
            ),
            &["cache"],
        )
        .expect("valid metric");
        let listing_index_requests = IntCounterVec::new(
            Opts::new(
                "listing_index_requests_total",
                "Page-mode requests by whether the listing's page positions were current",
            ),
            &["listing", "result"],
        )
        .expect("valid metric");
        let listing_index_builds = IntCounterVec::new(
            Opts::new(
                "listing_index_builds_total",
                "Passes over a listing that recorded its page positions",
            ),
            &["listing", "outcome"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_duration.clone()),
            Box::new(pool_connections.clone()),
            Box::new(pool_max_connections.clone()),
            Box::new(transaction_retries.clone()),
            Box::new(db_queries.clone()),
            Box::new(db_errors.clone()),
            Box::new(cache_requests.clone()),
            Box::new(cache_entries.clone()),
            Box::new(cache_loads.clone()),
            Box::new(cache_load_failures.clone()),
            Box::new(cache_invalidations.clone()),
            Box::new(listing_index_requests.clone()),
            Box::new(listing_index_builds.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        for kind in crate::db::DbFailure::ALL {
            db_errors.with_label_values(&[kind.label()]);
        }
        Self {
            registry,
            http_requests,
            http_duration,
            pool_connections,
            pool_max_connections,
            transaction_retries,
            db_queries,
            db_errors,
            cache_requests,
            cache_entries,
            cache_loads,
            cache_load_failures,
            cache_invalidations,
            listing_index_requests,
            listing_index_builds,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(err) = encoder.encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(error = %err, "could not encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
