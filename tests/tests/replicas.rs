//! Reads from a real streaming replica that applies each commit 300 ms late (`tests::replica`):
//! without a token another instance can read stale data (so the replica really is read), with the
//! token nobody does, the writing instance never does, caches are not refilled from behind, and a
//! replica that goes away is routed around without an error.
//!
//! The tests share one replica and run one at a time: one of them stops it.

use std::time::Duration;

use api::config::Config;
use serde_json::Value;
use tests::replica::{APPLY_DELAY, Replica};
use tests::{TestApp, TestDb, json};
use tokio::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

const HEADER: &str = "consistency-token";

/// The instances of one test, all on one database and its replica.
struct Cluster {
    db: TestDb,
    replica: &'static Replica,
    apps: Vec<TestApp>,
}

impl Cluster {
    async fn new() -> Option<Self> {
        let (db, replica) = TestDb::with_replica().await?;
        Some(Self {
            db,
            replica,
            apps: Vec::new(),
        })
    }

    /// Starts an instance reading from the replica, with its cache on or off.
    async fn instance(&mut self, cache: bool) -> TestApp {
        let replica_url = self.replica.url_for(&self.db.url);
        let configure = |config: &mut Config| {
            config.database.replica_urls = vec![replica_url.parse().expect("a database URL")];
            if !cache {
                config.cache.ttl = Duration::ZERO;
            }
        };
        let app = TestApp::spawn_on(self.db.clone(), configure).await;
        wait_until_replica_in_use(&app).await;
        self.apps.push(app.clone());
        app
    }

    async fn teardown(self) {
        for app in &self.apps {
            let _ = app.stop().await;
        }
        self.db.drop_database().await;
    }
}

/// Runs `body` on a fresh cluster, one test at a time, and tears it down also when it panics.
async fn run<F, Fut>(body: F)
where
    F: FnOnce(Cluster) -> Fut,
    Fut: Future<Output = Cluster> + Send + 'static,
{
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(cluster) = Cluster::new().await else {
        return;
    };
    let db = cluster.db.clone();
    let outcome = tokio::spawn(body(cluster)).await;
    match outcome {
        Ok(cluster) => cluster.teardown().await,
        Err(err) => {
            db.drop_database().await;
            std::panic::resume_unwind(err.into_panic());
        }
    }
}

/// The value of one series in `/metrics` (0 when absent).
async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = app.get("/metrics").await.text;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

const REPLICA_UP: &str = "db_replica_up{replica=\"0\"}";
const BY_REPLICA: &str = "db_reads_total{source=\"replica\"}";
const BY_PRIMARY: &str = "db_reads_total{source=\"primary\"}";

/// The replica has replayed the database's creation and schema, and the instance uses it.
async fn wait_until_replica_in_use(app: &TestApp) {
    for _ in 0..300 {
        if metric(app, REPLICA_UP).await == 1.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the instance never started reading from the replica");
}

async fn set_price(app: &TestApp, id: &str, price: i64) -> String {
    let reply = app
        .patch(
            &format!("/v1/products/{id}"),
            &json!({"price_cents": price}),
        )
        .await;
    assert_eq!(reply.expect(200)["price_cents"], price);
    reply
        .header(HEADER)
        .expect("a write answers a consistency token")
        .to_owned()
}

async fn price(app: &TestApp, id: &str, token: Option<&str>) -> i64 {
    let mut request = app.client.get(app.url(&format!("/v1/products/{id}")));
    if let Some(token) = token {
        request = request.header(HEADER, token);
    }
    let reply = app.send(request).await;
    let body: Value = reply.expect(200);
    assert!(reply.header(HEADER).is_some(), "a read answers a token");
    body["price_cents"].as_i64().expect("a price")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(has_postgres), ignore = "TEST_POSTGRES_URL is not set")]
async fn another_instance_without_the_token_reads_the_replica_and_may_be_stale() {
    run(|mut cluster| async move {
        let writer = cluster.instance(false).await;
        let reader = cluster.instance(false).await;
        let product = writer.create_product("STALE-1", 100, 5).await;
        let id = tests::id_of(&product);
        // Until the replica has replayed the product, the reader would not find it at all.
        tokio::time::sleep(APPLY_DELAY * 3).await;
        let mut stale = 0;
        for round in 1..=30 {
            set_price(&writer, &id, 1_000 + round).await;
            if price(&reader, &id, None).await != 1_000 + round {
                stale += 1;
            }
        }
        assert!(
            stale >= 1,
            "no read was stale: the replica is not being read"
        );
        assert!(metric(&reader, BY_REPLICA).await >= 1.0);
        cluster
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(has_postgres), ignore = "TEST_POSTGRES_URL is not set")]
async fn with_the_token_no_instance_reads_stale() {
    run(|mut cluster| async move {
        let writer = cluster.instance(false).await;
        let reader = cluster.instance(false).await;
        let product = writer.create_product("TOKEN-1", 100, 5).await;
        let id = tests::id_of(&product);
        for round in 1..=100 {
            let token = set_price(&writer, &id, 2_000 + round).await;
            assert_eq!(
                price(&reader, &id, Some(&token)).await,
                2_000 + round,
                "a read with the write's token was stale (round {round})"
            );
        }
        // A token the instance cannot read could name any state: the primary answers.
        let by_primary = metric(&reader, BY_PRIMARY).await;
        set_price(&writer, &id, 2_500).await;
        assert_eq!(price(&reader, &id, Some("not-a-token")).await, 2_500);
        assert!(metric(&reader, BY_PRIMARY).await > by_primary);
        cluster
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(has_postgres), ignore = "TEST_POSTGRES_URL is not set")]
async fn the_writing_instance_never_reads_older_than_its_writes() {
    run(|mut cluster| async move {
        let app = cluster.instance(false).await;
        let product = app.create_product("OWN-1", 100, 5).await;
        let id = tests::id_of(&product);
        for round in 1..=100 {
            set_price(&app, &id, 3_000 + round).await;
            assert_eq!(
                price(&app, &id, None).await,
                3_000 + round,
                "the writing instance read older than its own write (round {round})"
            );
        }
        cluster
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(has_postgres), ignore = "TEST_POSTGRES_URL is not set")]
async fn caches_are_never_refilled_from_behind() {
    run(|mut cluster| async move {
        let first = cluster.instance(true).await;
        let second = cluster.instance(true).await;
        let reader = cluster.instance(true).await;
        let product = first.create_product("CACHE-1", 100, 5).await;
        let id = tests::id_of(&product);
        for round in 1..=40 {
            let writer = if round % 2 == 0 { &first } else { &second };
            let token = set_price(writer, &id, 4_000 + round).await;
            assert_eq!(
                price(&reader, &id, Some(&token)).await,
                4_000 + round,
                "a cached or replica read with the token was stale (round {round})"
            );
        }
        // The reader caches the product, a write elsewhere evicts it there by NOTIFY, and the
        // reader keeps reading (refilling its cache) while the replica is still behind.
        price(&reader, &id, None).await;
        let token = set_price(&first, &id, 5_000).await;
        for _ in 0..25 {
            price(&reader, &id, None).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(price(&reader, &id, Some(&token)).await, 5_000);
        // Long after the replica has caught up, and with nothing written since: what the cache
        // holds must be the current value, not a refill from before the write was replayed.
        tokio::time::sleep(APPLY_DELAY * 3).await;
        for _ in 0..5 {
            assert_eq!(
                price(&reader, &id, None).await,
                5_000,
                "a stale value was cached"
            );
        }
        cluster
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(has_postgres), ignore = "TEST_POSTGRES_URL is not set")]
async fn a_replica_that_goes_away_is_routed_around_and_used_again_when_back() {
    run(|mut cluster| async move {
        let app = cluster.instance(false).await;
        let product = app.create_product("DOWN-1", 100, 5).await;
        let id = tests::id_of(&product);
        // Let the replica replay the product, so that reads have a reason to go there.
        tokio::time::sleep(APPLY_DELAY * 3).await;
        let load = {
            let app = app.clone();
            let id = id.clone();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..400 {
                    let reply = app.get(&format!("/v1/products/{id}")).await;
                    statuses.push(reply.status);
                    let listing = app.get("/v1/products?per_page=5").await;
                    statuses.push(listing.status);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                statuses
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let by_primary = metric(&app, BY_PRIMARY).await;
        cluster.replica.stop().await;
        assert_eq!(
            app.get("/ready").await.status,
            200,
            "readiness ignores replicas"
        );
        let statuses = load.await.expect("the load ran");
        assert!(
            statuses.iter().all(|status| *status == 200),
            "some reads failed while the replica went away: {statuses:?}"
        );
        assert!(
            metric(&app, BY_PRIMARY).await > by_primary,
            "the primary answered no reads while the replica was down"
        );
        assert_eq!(metric(&app, REPLICA_UP).await, 0.0);

        cluster
            .replica
            .start()
            .await
            .expect("the replica starts again");
        wait_until_replica_in_use(&app).await;
        let by_replica = metric(&app, BY_REPLICA).await;
        for _ in 0..10 {
            app.get(&format!("/v1/products/{id}")).await.expect(200);
        }
        assert!(
            metric(&app, BY_REPLICA).await > by_replica,
            "reads did not come back to the replica"
        );
        cluster
    })
    .await;
}
