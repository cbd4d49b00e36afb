//! Prometheus metrics. One registry per running service (not a process global), so two servers in
//! one process — as in the tests — never mix their figures.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub pool_connections: IntGaugeVec,
    pub pool_max_connections: IntGauge,
    pub transaction_retries: IntCounter,
    pub orders_refused_from_cache: IntCounter,
    pub db_queries: IntCounter,
    pub db_errors: IntCounterVec,
    pub cache_requests: IntCounterVec,
    pub cache_entries: IntGaugeVec,
    pub cache_loads: IntCounterVec,
    pub cache_load_failures: IntCounterVec,
    pub cache_invalidations: IntCounterVec,
    pub listing_index_requests: IntCounterVec,
    pub listing_index_builds: IntCounterVec,
    pub replica_lag: IntGaugeVec,
    pub replica_up: IntGaugeVec,
    pub reads: IntCounterVec,
    pub replica_wait: Histogram,
}

/// Registers each metric as it is made: a name appears once, with its help text, here.
struct Builder {
    registry: Registry,
}

impl Builder {
    fn register<M: prometheus::core::Collector + Clone + 'static>(&self, metric: M) -> M {
        self.registry
            .register(Box::new(metric.clone()))
            .expect("metric names are unique");
        metric
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(name, help).expect("valid metric"))
    }

    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help).expect("valid metric"))
    }

    fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }
}

/// Request latency buckets, in seconds: from a cache hit (sub-millisecond) to the request
/// deadline (30 s by default).
const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Replica wait buckets, in seconds: from a replica already there to well past the default
/// DB_REPLICA_WAIT_MS (100 ms).
const REPLICA_WAIT_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

impl Metrics {
    pub fn new() -> Self {
        let b = Builder {
            registry: Registry::new(),
        };
        let http_duration = b.register(
            HistogramVec::new(
                HistogramOpts::new(
                    "http_request_duration_seconds",
                    "Time from request to response",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["method", "route"],
            )
            .expect("valid metric"),
        );
        Self {
            http_requests: b.counters(
                "http_requests_total",
                "HTTP requests answered",
                &["method", "route", "status"],
            ),
            http_duration,
            pool_connections: b.gauges(
                "db_pool_connections",
                "Pooled database connections by state",
                &["state"],
            ),
            pool_max_connections: b.gauge(
                "db_pool_max_connections",
                "Size limit of the connection pool",
            ),
            transaction_retries: b.counter(
                "db_transaction_retries_total",
                "Transactions retried after a deadlock, serialization failure or busy database",
            ),
            orders_refused_from_cache: b.counter(
                "orders_refused_from_cache_total",
                "Orders answered 409 insufficient_stock from cached products, without a transaction",
            ),
            db_queries: b.counter(
                "db_queries_total",
                "Statements sent to the database through the pool",
            ),
            db_errors: b.counters("db_errors_total", "Database errors by kind", &["kind"]),
            cache_requests: b.counters(
                "cache_requests_total",
                "Cache look-ups by result",
                &["cache", "result"],
            ),
            cache_entries: b.gauges("cache_entries", "Entries held by each cache", &["cache"]),
            cache_loads: b.counters(
                "cache_loads_total",
                "Database loads made to fill the cache",
                &["cache"],
            ),
            cache_load_failures: b.counters(
                "cache_load_failures_total",
                "Cache loads that failed (not cached)",
                &["cache"],
            ),
            cache_invalidations: b.counters(
                "cache_evictions_total",
                "Entries dropped because their data was written",
                &["cache"],
            ),
            listing_index_requests: b.counters(
                "listing_index_requests_total",
                "Page-mode requests by whether the listing's page positions were current",
                &["listing", "result"],
            ),
            listing_index_builds: b.counters(
                "listing_index_builds_total",
                "Passes over a listing that recorded its page positions",
                &["listing", "outcome"],
            ),
            replica_lag: b.gauges(
                "db_replica_lag_milliseconds",
                "How far each read replica is behind the primary (-1: it does not answer)",
                &["replica"],
            ),
            replica_up: b.gauges(
                "db_replica_up",
                "Whether each read replica is answering reads (1) or skipped (0)",
                &["replica"],
            ),
            reads: b.counters(
                "db_reads_total",
                "Reads outside write transactions by where they were answered (with replicas)",
                &["source"],
            ),
            replica_wait: b.register(
                Histogram::with_opts(
                    HistogramOpts::new(
                        "db_replica_wait_seconds",
                        "How long reads that must see a write waited for a replica to replay it \
                         (up to DB_REPLICA_WAIT_MS; then the primary answers)",
                    )
                    .buckets(REPLICA_WAIT_BUCKETS.to_vec()),
                )
                .expect("valid metric"),
            ),
            registry: b.registry,
        }
    }

    /// Makes `db_errors_total` exist for each kind of failure, at 0, from start-up: an alert
    /// written as `rate(db_errors_total[5m])` needs the series before the first error.
    pub fn declare_db_failures<'a>(&self, kinds: impl IntoIterator<Item = &'a str>) {
        for kind in kinds {
            self.db_errors.with_label_values(&[kind]);
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
