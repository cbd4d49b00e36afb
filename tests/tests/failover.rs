//! Failover of a PostgreSQL high-availability cluster under load (`tests::patroni`: etcd, two
//! Patroni nodes in synchronous mode, HAProxy routing to the node that answers `/primary`): the
//! service reaches the database through HAProxy only, and must come through the loss of its
//! primary, and a planned switchover, without a restart, without losing an acknowledged write,
//! and answering nothing but its contract meanwhile (API.md, Configuration → Failover). The
//! outcome of a transaction, asked of the new primary, is never misread. One test runs the whole
//! production chain: the instances on PgBouncer in transaction mode, PgBouncer on HAProxy.
//!
//! Each test makes a cluster of its own, and they run one at a time: the machine runs both
//! PostgreSQL nodes, and the timing of the failover is part of what is checked.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use api::config::Config;
use api::store::sql::commit_outcome::{CommitOutcome, Pending, outcome};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};
use serde_json::Value;
use tests::patroni::Cluster;
use tests::pgbouncer::PoolMode;
use tests::{TestApp, TestDb, authorized_client, id_of, json, test_config};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// The contract: full service is back within this long after the promotion.
const BACK_WITHIN: Duration = Duration::from_secs(5);
/// Concurrent clients placing orders.
const CLIENTS: usize = 16;
/// Stock enough never to sell out: every order can succeed.
const INITIAL_STOCK: i64 = 1_000_000;
/// How long load runs before the failure, and after the new primary is in place.
const BEFORE: Duration = Duration::from_secs(2);
const AFTER: Duration = Duration::from_secs(4);
/// A client that was answered 503 tries again after this (the service's Retry-After is whole
/// seconds; real clients back off too, and the test wants many attempts in the gap).
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// After the load stops, how long a keyed order that was answered 503 may take to be settled.
const SETTLE_WITHIN: Duration = Duration::from_secs(30);

/// The instances' configuration: on HAProxy's primary port, failing fast while no primary answers.
fn config_for(db: &TestDb) -> Config {
    let mut config = test_config(db);
    config.database.connect_timeout = Duration::from_millis(1_000);
    config.database.acquire_timeout = Duration::from_millis(1_000);
    config
}

/// One answer to one order request.
#[derive(Debug, Clone)]
struct Attempt {
    key: Option<String>,
    /// 0: no answer at all (a transport error, or no answer within the request timeout).
    status: u16,
    code: Option<String>,
    retry_after: bool,
    order_id: Option<String>,
    answered_at: Instant,
    text: String,
}

/// Clients placing one-unit orders of `product` through `apps` (round robin) until stopped.
/// Keyed clients order for `keyed_user` with a fresh `Idempotency-Key` per order and retry a 503
/// with the same key until it is settled; the others order for `unkeyed_user` and give up an
/// order that was answered 503.
struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Vec<Attempt>>>,
}

impl Load {
    fn start(apps: &[&TestApp], product: &Value, keyed_user: &Value, unkeyed_user: &Value) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..CLIENTS)
            .map(|n| {
                let app = apps[n % apps.len()].clone();
                let keyed = n % 2 == 0;
                let user = if keyed { keyed_user } else { unkeyed_user };
                let body = json!({
                    "user_id": user["id"],
                    "items": [{"product_id": product["id"], "quantity": 1}],
                });
                tokio::spawn(place_orders(app, body, keyed, stop.clone()))
            })
            .collect();
        Self { stop, clients }
    }

    async fn stop(self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::SeqCst);
        let mut attempts = Vec::new();
        for client in self.clients {
            attempts.extend(client.await.expect("a client ran to its end"));
        }
        attempts
    }
}

async fn place_orders(
    app: TestApp,
    body: Value,
    keyed: bool,
    stop: Arc<AtomicBool>,
) -> Vec<Attempt> {
    // No request may hang past the server's own deadline; a little slack for the answer's trip.
    let deadline = app.state.config.request_timeout + Duration::from_secs(2);
    let mut attempts = Vec::new();
    let mut unsettled: Option<String> = None;
    let mut stopped_at: Option<Instant> = None;
    loop {
        if stop.load(Ordering::SeqCst) {
            let since = *stopped_at.get_or_insert_with(Instant::now);
            if unsettled.is_none() || since.elapsed() > SETTLE_WITHIN {
                return attempts;
            }
        }
        let key = if keyed {
            Some(
                unsettled
                    .take()
                    .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            )
        } else {
            None
        };
        let mut request = app
            .client
            .post(app.url("/v1/orders"))
            .json(&body)
            .timeout(deadline);
        if let Some(key) = &key {
            request = request.header("Idempotency-Key", key);
        }
        let attempt = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response.headers().contains_key("retry-after");
                let text = response.text().await.unwrap_or_default();
                let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                Attempt {
                    key: key.clone(),
                    status,
                    code: json["code"].as_str().map(str::to_owned),
                    retry_after,
                    order_id: (status == 201)
                        .then(|| json["id"].as_str().map(str::to_owned))
                        .flatten(),
                    answered_at: Instant::now(),
                    text,
                }
            }
            Err(err) => Attempt {
                key: key.clone(),
                status: 0,
                code: None,
                retry_after: false,
                order_id: None,
                answered_at: Instant::now(),
                text: err.to_string(),
            },
        };
        let retry = attempt.status == 503;
        attempts.push(attempt);
        if retry {
            unsettled = key;
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

/// How the load went, by status and problem code, for failure messages.
fn tally(attempts: &[Attempt]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for attempt in attempts {
        let label = match &attempt.code {
            Some(code) => format!("{} {code}", attempt.status),
            None => attempt.status.to_string(),
        };
        *counts.entry(label).or_default() += 1;
    }
    counts
}

/// Kills the leader's node (`kill -9` of its Patroni and postmaster) and waits until the other
/// node leads: when it was killed, and when the other was promoted.
async fn lose_the_primary(cluster: &Cluster) -> (Instant, Instant) {
    let leader = cluster.leader().await.expect("a leader");
    let survivor = cluster.other(leader);
    let killed = Instant::now();
    cluster.kill(leader);
    let promoted = cluster.wait_for_leader(survivor).await;
    eprintln!(
        "{} promoted {:?} after the kill",
        survivor.name,
        promoted - killed
    );
    (killed, promoted)
}

/// Every answer is one of `allowed`, and every 503 is a retryable database problem.
#[track_caller]
fn assert_only(attempts: &[Attempt], allowed: &[u16]) {
    let counts = tally(attempts);
    for attempt in attempts {
        assert!(
            allowed.contains(&attempt.status),
            "answered {} (allowed: {allowed:?}; all answers: {counts:?}): {}",
            attempt.status,
            attempt.text
        );
        if attempt.status == 503 {
            assert!(
                attempt.retry_after,
                "a 503 without Retry-After: {}",
                attempt.text
            );
            assert!(
                matches!(
                    attempt.code.as_deref(),
                    Some("database_unavailable" | "pool_exhausted")
                ),
                "a 503 that is not a database problem: {}",
                attempt.text
            );
        }
    }
}

/// What the database holds of the product's orders, read around the service.
struct Stored {
    stock: i64,
    /// Order id → user id and quantity, of the orders of the product.
    orders: HashMap<String, (String, i64)>,
}

async fn stored(conn: &DatabaseConnection, product: &Value) -> Stored {
    let id = id_of(product);
    let stock = conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT stock::bigint FROM products WHERE id = $1::uuid",
            [id.clone().into()],
        ))
        .await
        .expect("read the stock")
        .expect("the product")
        .try_get_by_index::<i64>(0)
        .expect("an integer stock");
    let rows = conn
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT o.id::text, o.user_id::text, i.quantity::bigint \
             FROM orders o JOIN order_items i ON i.order_id = o.id \
             WHERE i.product_id = $1::uuid",
            [id.into()],
        ))
        .await
        .expect("read the orders");
    let orders = rows
        .iter()
        .map(|row| {
            let id: String = row.try_get_by_index(0).expect("an id");
            let user: String = row.try_get_by_index(1).expect("a user");
            let quantity: i64 = row.try_get_by_index(2).expect("a quantity");
            (id, (user, quantity))
        })
        .collect();
    Stored { stock, orders }
}

/// Nothing acknowledged was lost, nothing was placed twice, and the stock adds up.
async fn assert_orders_add_up(
    db: &TestDb,
    attempts: &[Attempt],
    product: &Value,
    keyed_user: &Value,
) {
    let conn = db.connect().await;
    let stored = stored(&conn, product).await;
    let _ = conn.close().await;
    let counts = tally(attempts);

    let acknowledged: HashSet<&str> = attempts
        .iter()
        .filter_map(|attempt| attempt.order_id.as_deref())
        .collect();
    for id in &acknowledged {
        assert!(
            stored.orders.contains_key(*id),
            "order {id} was answered 201 but is not in the database ({counts:?})"
        );
    }

    // A key's retries answer the order its first success placed, never another one.
    let mut by_key: HashMap<&str, HashSet<&str>> = HashMap::new();
    for attempt in attempts {
        if let (Some(key), Some(id)) = (&attempt.key, &attempt.order_id) {
            by_key.entry(key).or_default().insert(id);
        }
    }
    for (key, ids) in &by_key {
        assert_eq!(ids.len(), 1, "key {key} answered several orders: {ids:?}");
    }
    let unsettled: Vec<&Attempt> = {
        let mut last: HashMap<&str, &Attempt> = HashMap::new();
        for attempt in attempts {
            if let Some(key) = &attempt.key {
                last.insert(key, attempt);
            }
        }
        last.into_values().filter(|a| a.status == 503).collect()
    };
    assert!(
        unsettled.is_empty(),
        "{} keyed orders were still answered 503 {SETTLE_WITHIN:?} after the load stopped: {}",
        unsettled.len(),
        unsettled[0].text
    );
    // Every keyed order was settled, so the keyed user's orders are exactly those acknowledged.
    let keyed_id = id_of(keyed_user);
    let keyed_stored: HashSet<&str> = stored
        .orders
        .iter()
        .filter(|(_, (user, _))| *user == keyed_id)
        .map(|(id, _)| id.as_str())
        .collect();
    let keyed_acknowledged: HashSet<&str> = by_key.values().flatten().copied().collect();
    assert_eq!(
        keyed_stored, keyed_acknowledged,
        "the keyed orders in the database are not those acknowledged"
    );
    // An order without a key that was answered 503 may or may not have been placed, but no
    // more of them can exist than were answered so.
    let unkeyed_unknown = attempts
        .iter()
        .filter(|a| a.key.is_none() && a.status == 503)
        .count();
    let unkeyed_stored = stored.orders.len() - keyed_stored.len();
    let unkeyed_acknowledged = acknowledged.len() - keyed_acknowledged.len();
    let unkeyed_extra = unkeyed_stored.saturating_sub(unkeyed_acknowledged);
    assert!(
        unkeyed_extra <= unkeyed_unknown,
        "{unkeyed_extra} unacknowledged orders, more than the {unkeyed_unknown} answered 503"
    );

    let sold: i64 = stored.orders.values().map(|(_, quantity)| quantity).sum();
    assert_eq!(
        stored.stock + sold,
        INITIAL_STOCK,
        "stock {} + sold {sold} is not the initial stock",
        stored.stock
    );
    eprintln!(
        "answers: {counts:?}; {} orders acknowledged, {} stored",
        acknowledged.len(),
        stored.orders.len()
    );
}

/// The first order acknowledged after `promoted` came within the contract's limit.
#[track_caller]
fn assert_back_within_limit(attempts: &[Attempt], promoted: Instant) {
    let first = attempts
        .iter()
        .filter(|a| a.status == 201 && a.answered_at >= promoted)
        .map(|a| a.answered_at)
        .min()
        .expect("no order was acknowledged after the promotion");
    let gap = first - promoted;
    eprintln!("first 201 {gap:?} after the promotion was seen");
    assert!(
        gap <= BACK_WITHIN,
        "the first order after the promotion was acknowledged {gap:?} after it"
    );
}

/// Reads `path` through `app` until its `name` is `expected`, for at most a second.
async fn shows_within_a_second(app: &TestApp, path: &str, expected: &str) {
    let started = Instant::now();
    loop {
        let body = app.get(path).await.expect(200);
        if body["name"] == expected {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the other instance still shows {} a second after {expected} was acknowledged",
            body["name"]
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What the two instances share when the primary is lost: stock to order, a user who orders with
/// keys and one without, and a product the second instance has cached.
struct Shop {
    product: Value,
    keyed_user: Value,
    unkeyed_user: Value,
    shared_path: String,
}

impl Shop {
    async fn open(app: &TestApp, other: &TestApp, prefix: &str) -> Self {
        let product = app
            .create_product(&format!("{prefix}-ORDERS"), 100, INITIAL_STOCK)
            .await;
        let keyed_user = app.create_user("Keyed", "keyed@example.com").await;
        let unkeyed_user = app.create_user("Unkeyed", "unkeyed@example.com").await;
        let shared = app
            .create_product(&format!("{prefix}-SHARED"), 100, 5)
            .await;
        let shared_path = format!("/v1/products/{}", id_of(&shared));
        other.get(&shared_path).await.expect(200); // cached by the other instance
        Self {
            product,
            keyed_user,
            unkeyed_user,
            shared_path,
        }
    }

    /// The instances' caches stay coherent: a rename on `app` shows on `other`.
    async fn renamed_on_one_shows_on_the_other(&self, app: &TestApp, other: &TestApp) {
        let name = "Renamed after the failover";
        app.patch(&self.shared_path, &json!({ "name": name }))
            .await
            .expect(200);
        shows_within_a_second(other, &self.shared_path, name).await;
    }
}

/// Orders placed through `apps` while the leader's node is killed (`kill -9` of its Patroni and
/// postmaster), checked as the contract demands: nothing but 201, 409 and 503, full service back
/// within `BACK_WITHIN` of the promotion, no acknowledged order lost, none placed twice.
async fn orders_through_losing_the_primary(
    cluster: &Cluster,
    db: &TestDb,
    apps: &[&TestApp],
    shop: &Shop,
) {
    let load = Load::start(apps, &shop.product, &shop.keyed_user, &shop.unkeyed_user);
    tokio::time::sleep(BEFORE).await;
    let (killed, promoted) = lose_the_primary(cluster).await;
    tokio::time::sleep(AFTER).await;
    let attempts = load.stop().await;

    assert_only(&attempts, &[201, 409, 503]);
    assert!(
        attempts
            .iter()
            .any(|a| a.status == 201 && a.answered_at < killed),
        "no order was acknowledged before the failure: the load did not run"
    );
    assert_back_within_limit(&attempts, promoted);
    assert_orders_add_up(db, &attempts, &shop.product, &shop.keyed_user).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(has_postgres), ignore = "TEST_POSTGRES_URL is not set")]
#[cfg_attr(
    all(has_postgres, not(has_patroni)),
    ignore = "Patroni, etcd or HAProxy is not installed"
)]
async fn losing_the_primary_loses_no_acknowledged_order_and_needs_no_restart() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let db = TestDb::create_on(&cluster.primary_url()).await;
    let app = TestApp::start(db.clone(), config_for(&db)).await;
    let other = TestApp::start(db.clone(), config_for(&db)).await;

    let shop = Shop::open(&app, &other, "HA").await;

    // A session revoked before the failover.
    let customer = app.sign_up("Revoked", "revoked@example.com").await;
    let me = format!("/v1/users/{}", customer.id);
    app.send(customer.client.get(app.url(&me)))
        .await
        .expect(200);
    app.send(customer.client.delete(app.url("/v1/sessions/current")))
        .await
        .expect_empty(204);

    orders_through_losing_the_primary(&cluster, &db, &[&app, &other], &shop).await;

    // The instances' caches stay coherent across the failover.
    shop.renamed_on_one_shows_on_the_other(&app, &other).await;

    // The revoked token stays revoked, on both instances.
    let revoked = authorized_client(&customer.token);
    for instance in [&app, &other] {
        let reply = instance.send(revoked.get(instance.url(&me))).await;
        reply.problem(401, "unauthenticated");
    }

    let _ = other.stop().await;
    let _ = app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(has_postgres), ignore = "TEST_POSTGRES_URL is not set")]
#[cfg_attr(
    all(has_postgres, not(has_patroni)),
    ignore = "Patroni, etcd or HAProxy is not installed"
)]
async fn a_planned_switchover_answers_only_201_or_503() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let db = TestDb::create_on(&cluster.primary_url()).await;
    let app = TestApp::start(db.clone(), config_for(&db)).await;
    let product = app.create_product("HA-SWITCH", 100, INITIAL_STOCK).await;
    let keyed_user = app.create_user("Keyed", "keyed@example.com").await;
    let unkeyed_user = app.create_user("Unkeyed", "unkeyed@example.com").await;

    let load = Load::start(&[&app], &product, &keyed_user, &unkeyed_user);
    tokio::time::sleep(BEFORE).await;
    let leader = cluster.leader().await.expect("a leader");
    let candidate = cluster.other(leader);
    let started = Instant::now();
    cluster.switchover(candidate).await;
    let promoted = cluster.wait_for_leader(candidate).await;
    eprintln!(
        "switched over to {} in {:?}",
        candidate.name,
        promoted - started
    );
    tokio::time::sleep(AFTER).await;
    let attempts = load.stop().await;

    assert_only(&attempts, &[201, 503]);
    assert_back_within_limit(&attempts, promoted);
    assert_orders_add_up(&db, &attempts, &product, &keyed_user).await;
    let _ = app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(has_postgres), ignore = "TEST_POSTGRES_URL is not set")]
#[cfg_attr(
    all(has_postgres, not(has_patroni)),
    ignore = "Patroni, etcd or HAProxy is not installed"
)]
#[cfg_attr(
    all(has_postgres, has_patroni, not(has_pgbouncer_txn)),
    ignore = "no PgBouncer 1.21 or later (PGBOUNCER_1_24, or scripts/pgbouncer-1.24.sh)"
)]
async fn the_production_chain_pgbouncer_haproxy_patroni_comes_through_losing_the_primary() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    // Two instances on PgBouncer in transaction mode, PgBouncer on HAProxy's primary port;
    // migrations, the migration lock and LISTEN go to HAProxy directly.
    let db = TestDb::create_on(&cluster.primary_url())
        .await
        .behind(PoolMode::Transaction)
        .await
        .expect("PgBouncer in transaction mode in front of HAProxy");
    assert_ne!(Some(&db.url), db.direct_url.as_ref());
    let app = TestApp::start(db.clone(), config_for(&db)).await;
    let other = TestApp::start(db.clone(), config_for(&db)).await;

    let shop = Shop::open(&app, &other, "CHAIN").await;

    orders_through_losing_the_primary(&cluster, &db, &[&app, &other], &shop).await;

    // The cache listener (on HAProxy, not PgBouncer) found the new primary too.
    shop.renamed_on_one_shows_on_the_other(&app, &other).await;

    let _ = other.stop().await;
    let _ = app.stop().await;
}

const TOKEN: &str = "consistency-token";

/// The value of one series in `/metrics` (0 when absent).
async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = app.get("/metrics").await.text;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Reads the product by id until stopped, with the token or without; returns every answer that
/// was not a 200 with `price`.
async fn read_until_stopped(
    app: TestApp,
    path: String,
    token: Option<String>,
    price: i64,
    stop: Arc<AtomicBool>,
) -> (usize, Vec<String>) {
    let mut reads = 0;
    let mut wrong = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        // Anonymous: what is read here is the product, not the caller's session.
        let mut request = app.anonymous.get(app.url(&path));
        if let Some(token) = &token {
            request = request.header(TOKEN, token);
        }
        let reply = app.send(request).await;
        reads += 1;
        let right = reply.status == 200 && reply.json()["price_cents"] == price;
        if !right {
            let with = if token.is_some() { "with" } else { "without" };
            wrong.push(format!("{} {with} the token: {}", reply.status, reply.text));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (reads, wrong)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(has_postgres), ignore = "TEST_POSTGRES_URL is not set")]
#[cfg_attr(
    all(has_postgres, not(has_patroni)),
    ignore = "Patroni, etcd or HAProxy is not installed"
)]
async fn reads_from_the_standby_answer_throughout_the_failover() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let db = TestDb::create_on(&cluster.primary_url()).await;
    // Both instances as deployed, with the standby: the writer then issues position tokens.
    let mut config = config_for(&db);
    config.database.replica_urls = vec![
        cluster
            .standby_url_for(&db.url)
            .parse()
            .expect("a database URL"),
    ];
    let writer = TestApp::start(db.clone(), config.clone()).await;
    // Every read goes to a database: a cached answer would prove nothing.
    config.cache.ttl = Duration::ZERO;
    let reader = TestApp::start(db.clone(), config).await;

    let product = writer.create_product("HA-READ", 100, 5).await;
    let path = format!("/v1/products/{}", id_of(&product));
    let written = writer.patch(&path, &json!({"price_cents": 4_321})).await;
    written.expect(200);
    let token = written
        .header(TOKEN)
        .expect("a write answers a consistency token")
        .to_owned();
    let started = Instant::now();
    while metric(&reader, "db_replica_up{replica=\"0\"}").await != 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the reader never started reading from the standby"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let from_replica = metric(&reader, "db_reads_total{source=\"replica\"}").await;

    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..6)
        .map(|n| {
            let token = (n % 2 == 0).then(|| token.clone());
            let reading =
                read_until_stopped(reader.clone(), path.clone(), token, 4_321, stop.clone());
            tokio::spawn(reading)
        })
        .collect();
    tokio::time::sleep(BEFORE).await;
    lose_the_primary(&cluster).await;
    tokio::time::sleep(AFTER).await;
    stop.store(true, Ordering::SeqCst);
    let mut reads = 0;
    let mut wrong = Vec::new();
    for reading in readers {
        let (n, bad) = reading.await.expect("a reader ran to its end");
        reads += n;
        wrong.extend(bad);
    }
    eprintln!(
        "{reads} reads, {} not answered 200 with the price",
        wrong.len()
    );
    assert!(
        wrong.is_empty(),
        "{} of {reads} reads were not answered 200 with the written price; first: {}",
        wrong.len(),
        wrong[0]
    );
    assert!(
        metric(&reader, "db_reads_total{source=\"replica\"}").await > from_replica,
        "no read went to the standby: the test proved nothing"
    );

    // The token from before the failover is honoured by the new primary.
    let reply = reader
        .send(reader.client.get(reader.url(&path)).header(TOKEN, &token))
        .await;
    assert_eq!(reply.expect(200)["price_cents"], 4_321);

    let _ = reader.stop().await;
    let _ = writer.stop().await;
}

/// A connection through HAProxy, once it routes to the new primary (its checks run every 500 ms).
async fn connect_once_routed(db: &TestDb) -> DatabaseConnection {
    let started = Instant::now();
    loop {
        if let Ok(conn) = sea_orm::Database::connect(db.url.as_str()).await {
            return conn;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "HAProxy did not route to the new primary"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn exec(conn: &impl ConnectionTrait, sql: &str) {
    conn.execute_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .expect("execute");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(has_postgres), ignore = "TEST_POSTGRES_URL is not set")]
#[cfg_attr(
    all(has_postgres, not(has_patroni)),
    ignore = "Patroni, etcd or HAProxy is not installed"
)]
async fn a_commit_outcome_read_after_a_failover_is_never_wrong() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let db = TestDb::create_on(&cluster.primary_url()).await;
    let before = db.connect().await;
    exec(&before, "CREATE TABLE outcomes (n int PRIMARY KEY)").await;
    let txn = before.begin().await.expect("begin");
    exec(&txn, "INSERT INTO outcomes VALUES (1)").await;
    let committed = Pending::read(&txn).await.expect("an id");
    txn.commit().await.expect("commit");
    // Still open when the primary dies: it can never commit.
    let txn = before.begin().await.expect("begin");
    exec(&txn, "INSERT INTO outcomes VALUES (2)").await;
    let lost = Pending::read(&txn).await.expect("an id");

    lose_the_primary(&cluster).await;
    drop(txn);

    let after = connect_once_routed(&db).await;
    let settle = Duration::from_secs(10);
    assert_ne!(
        outcome(&after, committed, settle).await,
        CommitOutcome::Aborted,
        "a transaction that committed before the failover was called aborted"
    );
    assert_eq!(outcome(&after, lost, settle).await, CommitOutcome::Aborted);
    // The new primary hands out ids again, possibly the lost one's, to transactions that commit.
    for n in 10..60 {
        exec(&after, &format!("INSERT INTO outcomes VALUES ({n})")).await;
    }
    assert_ne!(
        outcome(&after, lost, settle).await,
        CommitOutcome::Committed,
        "a transaction lost with the old primary was called committed"
    );
    let stored = after
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*) FILTER (WHERE n = 1), count(*) FILTER (WHERE n = 2) FROM outcomes",
        ))
        .await
        .expect("count")
        .expect("a row");
    let ones: i64 = stored.try_get_by_index(0).expect("a count");
    let twos: i64 = stored.try_get_by_index(1).expect("a count");
    assert_eq!((ones, twos), (1, 0));
    let _ = after.close().await;
    let _ = before.close().await;
}
