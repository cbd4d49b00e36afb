//! A COMMIT whose answer is lost with its connection (`tests::proxy` forwards the COMMIT, then
//! drops the server's answer and closes): `store::sql::commit_outcome` finds out from another
//! connection whether it committed, and an order placed that way is never placed twice by a
//! retry with its `Idempotency-Key`.

use std::time::Duration;

use api::store::sql::commit_outcome::{CommitOutcome, Pending, outcome};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
    TransactionTrait,
};
use tests::proxy::Proxy;
use tests::{TestApp, TestDb, json, test_config, test_db};

/// Long enough for a backend to notice its client is gone and end its transaction.
const SETTLE_WITHIN: Duration = Duration::from_secs(10);

/// A proxy in front of the test database's server, and the database's URL through it, without
/// TLS so that the proxy can see the COMMIT.
async fn proxied(db: &TestDb) -> (Proxy, String) {
    let mut url = url::Url::parse(&db.url).expect("a valid database URL");
    let target = format!(
        "{}:{}",
        url.host_str().expect("a host"),
        url.port().unwrap_or(5432)
    );
    let target = tokio::net::lookup_host(target)
        .await
        .expect("resolve the server")
        .next()
        .expect("an address");
    let proxy = Proxy::start(target).await;
    url.set_host(Some("127.0.0.1")).expect("a host");
    url.set_port(Some(proxy.addr.port())).expect("a port");
    url.query_pairs_mut().append_pair("sslmode", "disable");
    (proxy, url.into())
}

/// One connection through `url`, so that what is cut is the transaction's.
async fn one_connection(url: &str) -> DatabaseConnection {
    let mut options = ConnectOptions::new(url.to_owned());
    options.max_connections(1).min_connections(0);
    Database::connect(options).await.expect("connect")
}

async fn rows(conn: &DatabaseConnection, sql: &str) -> i64 {
    conn.query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .expect("count")
        .expect("a row")
        .try_get_by_index::<i64>(0)
        .expect("a count")
}

async fn exec(conn: &impl ConnectionTrait, sql: &str) {
    conn.execute_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .expect("execute");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(has_postgres), ignore = "TEST_POSTGRES_URL is not set")]
async fn a_commit_whose_answer_was_lost_is_found_committed() {
    let Some(db) = test_db!(postgres) else {
        return;
    };
    let direct = db.connect().await;
    exec(&direct, "CREATE TABLE lost (n int PRIMARY KEY)").await;
    let (proxy, url) = proxied(&db).await;
    let through = one_connection(&url).await;

    let txn = through.begin().await.expect("begin");
    exec(&txn, "INSERT INTO lost VALUES (1)").await;
    let pending = Pending::read(&txn).await.expect("the transaction's id");
    proxy.lose_answer_to(b"COMMIT");
    assert!(
        txn.commit().await.is_err(),
        "the COMMIT's answer was not lost: the test proved nothing"
    );
    assert_eq!(
        outcome(&direct, pending, SETTLE_WITHIN).await,
        CommitOutcome::Committed
    );
    assert_eq!(rows(&direct, "SELECT count(*) FROM lost").await, 1);

    let _ = through.close().await;
    let _ = direct.close().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(has_postgres), ignore = "TEST_POSTGRES_URL is not set")]
async fn a_transaction_cut_before_its_commit_is_found_aborted() {
    let Some(db) = test_db!(postgres) else {
        return;
    };
    let direct = db.connect().await;
    exec(&direct, "CREATE TABLE cut (n int PRIMARY KEY)").await;
    let (proxy, url) = proxied(&db).await;
    let through = one_connection(&url).await;

    let txn = through.begin().await.expect("begin");
    exec(&txn, "INSERT INTO cut VALUES (1)").await;
    let pending = Pending::read(&txn).await.expect("the transaction's id");
    proxy.cut();
    assert!(txn.commit().await.is_err(), "the connection was not cut");
    assert_eq!(
        outcome(&direct, pending, SETTLE_WITHIN).await,
        CommitOutcome::Aborted
    );
    assert_eq!(rows(&direct, "SELECT count(*) FROM cut").await, 0);

    let _ = through.close().await;
    let _ = direct.close().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(has_postgres), ignore = "TEST_POSTGRES_URL is not set")]
async fn a_transaction_still_running_is_unknown_until_it_ends() {
    let Some(db) = test_db!(postgres) else {
        return;
    };
    let direct = db.connect().await;
    exec(&direct, "CREATE TABLE running (n int PRIMARY KEY)").await;
    let other = one_connection(&db.url).await;

    let txn = other.begin().await.expect("begin");
    exec(&txn, "INSERT INTO running VALUES (1)").await;
    let pending = Pending::read(&txn).await.expect("the transaction's id");
    assert_eq!(
        outcome(&direct, pending, Duration::from_millis(300)).await,
        CommitOutcome::Unknown
    );
    txn.commit().await.expect("commit");
    assert_eq!(
        outcome(&direct, pending, SETTLE_WITHIN).await,
        CommitOutcome::Committed
    );

    let _ = other.close().await;
    let _ = direct.close().await;
    db.drop_database().await;
}

/// A server whose database is behind a proxy, a product of 10 and an order for 2 of it.
struct Shop {
    proxy: Proxy,
    app: TestApp,
    tea: serde_json::Value,
    body: serde_json::Value,
}

async fn shop_behind_a_proxy(db: &TestDb) -> Shop {
    let (proxy, url) = proxied(db).await;
    let mut config = test_config(db);
    config.database.url = url.parse().expect("a database URL");
    // No change feed sequencer: its transactions' COMMITs would race the order's to the trap.
    config.events.record = false;
    let app = TestApp::start(db.clone(), config).await;
    let user = app.create_user("Ada", "ada@example.com").await;
    let tea = app.create_product("TEA", 250, 10).await;
    let body = json!({"user_id": user["id"], "items": [{"product_id": tea["id"], "quantity": 2}]});
    Shop {
        proxy,
        app,
        tea,
        body,
    }
}

/// The shop's database holds one order, and the product's stock went down by its 2 once.
async fn assert_placed_once(db: &TestDb, app: &TestApp, tea: &serde_json::Value, twice: &str) {
    let conn = db.connect().await;
    let orders = rows(&conn, "SELECT count(*) FROM orders").await;
    let _ = conn.close().await;
    assert_eq!(orders, 1, "{twice}");
    assert_eq!(app.stock_of(tea).await, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(has_postgres), ignore = "TEST_POSTGRES_URL is not set")]
async fn an_order_whose_commit_answer_was_lost_is_placed_once() {
    let Some(db) = test_db!(postgres) else {
        return;
    };
    let Shop {
        proxy,
        app,
        tea,
        body,
    } = shop_behind_a_proxy(&db).await;
    let place = || {
        app.client
            .post(app.url("/v1/orders"))
            .header("Idempotency-Key", "lost-answer")
            .json(&body)
    };

    proxy.lose_answer_to(b"COMMIT");
    let first = app.send(place()).await;
    assert_eq!(
        proxy.answers_lost(),
        1,
        "no COMMIT answer was lost: the test proved nothing"
    );
    // The order committed, and the service asks what became of its COMMIT before answering.
    let placed = first.expect(201);
    let again = app.send(place()).await.expect(201);
    assert_eq!(
        placed, again,
        "the retry replays the order the lost COMMIT placed"
    );
    assert_placed_once(&db, &app, &tea, "the retry placed a second order").await;

    app.teardown().await;
}

/// An order without a key is placed in a batch (`store::sql::orders::batch`). When its COMMIT's
/// answer is lost and the outcome cannot be read in time either, the order's own id says it
/// committed: it is answered 201, once, and never placed a second time by the batch's fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(has_postgres), ignore = "TEST_POSTGRES_URL is not set")]
async fn a_batch_whose_commit_outcome_is_unknown_is_found_by_its_orders() {
    let Some(db) = test_db!(postgres) else {
        return;
    };
    let Shop {
        proxy,
        app,
        tea,
        body,
    } = shop_behind_a_proxy(&db).await;

    proxy.lose_answer_to(b"COMMIT");
    proxy.lose_every_answer_to(b"txid_status(");
    let placed = app.post("/v1/orders", &body).await;
    proxy.answer_again();
    assert!(
        proxy.answers_lost() >= 2,
        "neither the COMMIT's answer nor its outcome was lost: the test proved nothing"
    );
    let placed = placed.expect(201);
    let id = placed["id"].as_str().expect("an order id");
    let read = app.get(&format!("/v1/orders/{id}")).await.expect(200);
    assert_eq!(
        placed["items"], read["items"],
        "the order answered is the one stored"
    );
    assert_placed_once(&db, &app, &tea, "the order was placed twice").await;

    app.teardown().await;
}
