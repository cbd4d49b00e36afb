//! Operating under fault: request ids, metrics, limits, and the database error table provoked
//! for real (pool exhaustion, statement timeout, lost connections, missing tables, outages).

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::future::join_all;
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, Statement, TransactionTrait};
use tests::proxy::Proxy;
use tests::{
    Backend, TestApp, TestDb, for_backends, json, on_backends, on_every_backend, run_with,
    test_config,
};
use tokio::io::{AsyncBufReadExt, BufReader};

/// A literal for `id` in this backend's SQL (test-side statements only).
fn id_literal(backend: Backend, id: &str) -> String {
    match backend {
        Backend::Postgres => format!("'{id}'"),
        Backend::MySql => format!("UNHEX(REPLACE('{id}', '-', ''))"),
        Backend::Sqlite => format!("X'{}'", id.replace('-', "")),
        Backend::Mongo => unreachable!("a SQL-only test"),
    }
}

/// Opens a transaction on the test's own connection that holds `product`'s row lock.
async fn hold_product(
    app: &TestApp,
    product: &str,
) -> (sea_orm::DatabaseConnection, DatabaseTransaction) {
    let conn = app.db.connect().await;
    let txn = conn.begin().await.unwrap();
    let id = id_literal(app.db.backend, product);
    txn.execute_unprepared(&format!(
        "UPDATE products SET stock = stock WHERE id = {id}"
    ))
    .await
    .unwrap();
    (conn, txn)
}

on_every_backend! {
    async fn request_ids_are_echoed_or_generated(app) {
        let reply = app.send(app.client.get(app.url("/health")).header("x-request-id", "trace-42")).await;
        assert_eq!(reply.header("x-request-id"), Some("trace-42"));
        let reply = app.get("/health").await;
        let generated = reply.header("x-request-id").expect("a generated request id");
        assert!(uuid::Uuid::parse_str(generated).is_ok());
        // Errors carry it too.
        let reply = app.get("/v1/users/not-a-uuid").await;
        assert!(reply.header("x-request-id").is_some());
    }

    async fn metrics_use_route_templates(app) {
        let user = app.create_user("Metric", "metric@example.com").await;
        let id = user["id"].as_str().unwrap().to_owned();
        app.get(&format!("/v1/users/{id}")).await.expect(200);
        app.get(&format!("/v1/users/{}", uuid::Uuid::now_v7())).await.problem(404, "not_found");
        let metrics = app.get("/metrics").await;
        assert_eq!(metrics.status, 200);
        let text = metrics.text;
        assert!(
            text.contains(r#"http_requests_total{method="GET",route="/v1/users/{id}",status="200"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"http_requests_total{method="GET",route="/v1/users/{id}",status="404"} 1"#));
        assert!(text.contains(r#"http_requests_total{method="POST",route="/v1/users",status="201"} 1"#));
        assert!(!text.contains(&id), "a raw id leaked into a label");
        assert!(text.contains(r#"http_request_duration_seconds_bucket{method="GET",route="/v1/users/{id}""#));
        assert!(text.contains(r#"db_pool_connections{state="in_use"}"#));
        assert!(text.contains(r#"db_pool_connections{state="idle"}"#));
        assert!(text.contains("db_pool_max_connections 20"));
        assert!(text.contains("db_transaction_retries_total"));
        assert!(text.contains(r#"cache_requests_total{cache="users",result="miss"}"#));
    }

    async fn a_request_past_its_deadline_is_504(app) {
        // The deadline is set per test server below; this body only checks the default is long.
        let started = Instant::now();
        assert_eq!(app.get("/health").await.status, 200);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_over_the_limit_is_413_chunked_or_not() {
    run_with(Backend::Sqlite, |config| config.max_body_bytes = 1024, |app: TestApp| async move {
        let big = json!({"name": "x".repeat(4096), "email": "big@example.com", "password": "correct horse"});
        app.post("/v1/users", &big).await.problem(413, "payload_too_large");
        // Without a Content-Length: a chunked body is cut off at the limit just the same.
        let bytes = serde_json::to_vec(&big).unwrap();
        let stream = futures::stream::iter(bytes.chunks(512).map(|c| Ok::<_, std::io::Error>(c.to_vec())).collect::<Vec<_>>());
        let request = app
            .client
            .post(app.url("/v1/users"))
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(stream));
        app.send(request).await.problem(413, "payload_too_large");
        // Nothing was created: the admin is the only user.
        assert_eq!(app.get("/v1/users").await.expect(200)["total_items"], 1);
    })
    .await;
}

on_backends! {
    [sqlite, postgres]
    #[configure(|config| config.request_timeout = Duration::from_millis(300))]
    async fn a_request_past_the_deadline_is_504(app) {
        let product = app.create_product("SLOW-1", 100, 5).await;
        let id = product["id"].as_str().unwrap().to_owned();
        let (_conn, txn) = hold_product(&app, &id).await;
        let started = Instant::now();
        let reply = app
            .patch(&format!("/v1/products/{id}"), &json!({"name": "Late"}))
            .await;
        reply.problem(504, "request_timeout");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
        txn.rollback().await.unwrap();
    }
}

/// Starts the real binary against `db` without migrating, and returns its port and output.
async fn start_binary(db: &TestDb) -> (tokio::process::Child, u16) {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_storefront"))
        .env("DATABASE_URL", &db.url)
        .env("PORT", port.to_string())
        .env("AUTO_MIGRATE", "false")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the server");
    (child, port)
}

async fn missing_tables_are_503_and_the_log_names_the_fix(db: Option<TestDb>) {
    let Some(db) = db else {
        return;
    };
    let (mut child, port) = start_binary(&db).await;
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut answered = None;
    for _ in 0..100 {
        if let Ok(response) = client.get(format!("{base}/v1/products")).send().await {
            answered = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = answered.expect("the server came up");
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "database_unavailable");
    let text = body.to_string().to_lowercase();
    assert!(
        !text.contains("select") && !text.contains("relation"),
        "SQL leaked: {text}"
    );
    // Logs are written by a background thread: wait for the line (bounded), then stop the server.
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let wanted = async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("run migrations: cargo run -p migration -- up")
                && line.contains("products")
            {
                return true;
            }
        }
        false
    };
    let found = tokio::time::timeout(Duration::from_secs(5), wanted)
        .await
        .unwrap_or(false);
    child.start_kill().unwrap();
    let _ = child.wait().await;
    db.drop_database().await;
    assert!(found, "no log line named the missing table and the fix");
}

for_backends!(
    #[tokio::test] [sqlite, postgres, mysql] fn missing_tables_are_503_and_the_log_names_the_fix
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(has_postgres), ignore = "TEST_POSTGRES_URL is not set")]
async fn an_exhausted_pool_answers_503_within_the_acquire_timeout() {
    let configure = |config: &mut api::config::Config| {
        config.database.max_connections = 2;
        config.database.acquire_timeout = Duration::from_millis(500);
        config.cache.ttl = Duration::ZERO;
    };
    run_with(Backend::Postgres, configure, |app: TestApp| async move {
        let user = app.create_user("Pool", "pool@example.com").await;
        let product = app.create_product("POOL-1", 100, 100).await;
        let locker = app.db.connect().await;
        let txn = locker.begin().await.unwrap();
        txn.execute_unprepared("LOCK TABLE products IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        let order =
            json!({"user_id": user["id"], "items": [{"product_id": product["id"], "quantity": 1}]});
        let blocked: Vec<_> = (0..2)
            .map(|_| {
                let app = app.clone();
                let order = order.clone();
                tokio::spawn(async move { app.post("/v1/orders", &order).await })
            })
            .collect();
        // Until both orders hold one of the pool's connections and wait for the lock: a fixed
        // pause can be too short on a busy machine, and the read would then find a free one.
        let pool_name = app.state.config.database.application_name.clone();
        let waiting_for_lock = || async {
            locker
                .query_one_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() \
                     AND application_name = $1 AND wait_event_type = 'Lock'",
                    [pool_name.clone().into()],
                ))
                .await
                .unwrap()
                .and_then(|row| row.try_get::<i64>("", "n").ok())
                .unwrap_or(0)
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while waiting_for_lock().await < 2 {
            assert!(
                Instant::now() < deadline,
                "the orders never waited for the lock"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started = Instant::now();
        let reply = app.get("/v1/users").await;
        let waited = started.elapsed();
        reply.problem(503, "pool_exhausted");
        assert!(reply.header("retry-after").is_some());
        assert!(
            waited < Duration::from_millis(1000),
            "answered after {waited:?}"
        );
        txn.commit().await.unwrap();
        for reply in join_all(blocked).await {
            reply.unwrap().expect(201);
        }
        app.get("/v1/users").await.expect(200);
        let metrics = app.get("/metrics").await.text;
        assert!(
            metrics.contains(r#"db_errors_total{kind="pool_exhausted"} 1"#),
            "{metrics}"
        );
    })
    .await;
}

on_backends! {
    [postgres, pgbouncer, pgbouncer_txn, mysql]
    /// Behind PgBouncer the timeout cannot be a start-up option; it is the role's default instead.
    #[configure(|config| config.database.statement_timeout = Duration::from_millis(300))]
    async fn the_statement_timeout_answers_504_and_writes_nothing(app) {
        let user = app.create_user("Slow", "slow@example.com").await;
        let product = app.create_product("SLOW-2", 100, 10).await;
        let id = product["id"].as_str().unwrap().to_owned();
        let (_conn, txn) = hold_product(&app, &id).await;
        let started = Instant::now();
        let order = json!({"user_id": user["id"], "items": [{"product_id": id, "quantity": 1}]});
        app.post("/v1/orders", &order)
            .await
            .problem(504, "query_timeout");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
        txn.rollback().await.unwrap();
        // Nothing was written.
        assert_eq!(
            app.get(&format!("/v1/products/{id}")).await.expect(200)["stock"],
            10
        );
        let orders = app
            .get(&format!(
                "/v1/users/{}/orders",
                user["id"].as_str().unwrap()
            ))
            .await
            .expect(200);
        assert_eq!(orders["total_items"], 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(has_postgres), ignore = "TEST_POSTGRES_URL is not set")]
async fn lost_connections_are_replaced_without_a_restart() {
    run_with(
        Backend::Postgres,
        |config| config.cache.ttl = Duration::ZERO,
        |app: TestApp| async move {
            let user = app.create_user("Lost", "lost@example.com").await;
            let path = format!("/v1/users/{}", user["id"].as_str().unwrap());
            // Warm the pool with several connections.
            join_all((0..10).map(|_| app.get(&path))).await;
            let flowing = {
                let app = app.clone();
                let path = path.clone();
                tokio::spawn(async move {
                    let mut statuses = Vec::new();
                    for _ in 0..200 {
                        statuses.push(app.get(&path).await.status);
                    }
                    statuses
                })
            };
            tokio::time::sleep(Duration::from_millis(50)).await;
            let killer = app.db.connect().await;
            killer
                .execute_unprepared(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                )
                .await
                .unwrap();
            let statuses = flowing.await.unwrap();
            assert!(
                statuses.iter().all(|s| *s == 200 || *s == 503),
                "{statuses:?}"
            );
            // Afterwards every request succeeds, without restarting anything.
            for _ in 0..20 {
                app.get(&path).await.expect(200);
            }
        },
    )
    .await;
}

/// A pooled connection used moments ago is handed out without a ping; when the server has ended
/// it meanwhile, the batched read that meets it is read again on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(has_postgres), ignore = "TEST_POSTGRES_URL is not set")]
async fn a_read_that_meets_a_freshly_killed_connection_is_answered() {
    run_with(
        Backend::Postgres,
        |config| {
            config.cache.ttl = Duration::ZERO;
            config.cache.session_ttl = Some(Duration::from_secs(600));
            config.database.max_connections = 1;
            config.database.min_connections = 0;
        },
        |app: TestApp| async move {
            let user = app.create_user("Killed", "killed@example.com").await;
            let path = format!("/v1/users/{}", user["id"].as_str().unwrap());
            let killer = app.db.connect().await;
            // The pool's sessions only: the cache listener has a name of its own.
            let pool_name = app.state.config.database.application_name.clone();
            for round in 0..5 {
                // The session is cached now, so the user's read is the only statement.
                app.get(&path).await.expect(200);
                let ended = killer
                    .query_one_raw(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
                         WHERE datname = current_database() AND application_name = $1",
                        [pool_name.clone().into()],
                    ))
                    .await
                    .unwrap()
                    .and_then(|row| row.try_get::<i64>("", "n").ok())
                    .unwrap_or(0);
                assert!(ended >= 1, "round {round}: no connection was ended");
                let reply = app.get(&path).await;
                assert_eq!(reply.status, 200, "round {round}: {}", reply.text);
            }
            killer.close().await.ok();
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(has_postgres), ignore = "TEST_POSTGRES_URL is not set")]
async fn ready_flips_to_503_while_the_database_is_unreachable_and_back() {
    let Some(db) = TestDb::create(Backend::Postgres).await else {
        return;
    };
    let target: url::Url = db.url.parse().unwrap();
    let upstream = format!(
        "{}:{}",
        target.host_str().unwrap(),
        target.port().unwrap_or(5432)
    );
    let proxy = Proxy::start(upstream.parse().unwrap()).await;
    let mut proxied = target.clone();
    proxied.set_port(Some(proxy.addr.port())).unwrap();
    let mut config = test_config(&db);
    config.database.url = proxied.as_str().parse().expect("a database URL");
    config.database.acquire_timeout = Duration::from_millis(500);
    config.cache.ttl = Duration::ZERO;
    let app = TestApp::start(db, config).await;
    assert_eq!(app.get("/ready").await.status, 200);
    proxy.cut();
    assert_eq!(app.get("/ready").await.status, 503);
    app.get("/v1/users")
        .await
        .problem(503, "database_unavailable");
    assert_eq!(app.get("/health").await.status, 200);
    proxy.restore();
    let started = Instant::now();
    while app.get("/ready").await.status != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never ready again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.get("/v1/users").await.expect(200);
    app.teardown().await;
}
