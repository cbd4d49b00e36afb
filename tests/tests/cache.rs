//! The in-process cache: coalesced loads, coherence with every write, and coherence across
//! instances on PostgreSQL.

use std::time::{Duration, Instant};

use futures::future::join_all;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use tests::{Backend, TestApp, json, on_backends, on_every_backend, run_with, test_config};

fn queries(app: &TestApp) -> u64 {
    app.state.metrics.db_queries.get()
}

on_every_backend! {
    async fn concurrent_misses_for_one_user_make_one_query(app) {
        let user = app.create_user("Grace", "grace@example.com").await;
        let path = format!("/v1/users/{}", user["id"].as_str().unwrap());
        let before = queries(&app);
        let replies = join_all((0..100).map(|_| app.get(&path))).await;
        let after = queries(&app);
        for reply in &replies {
            assert_eq!(reply.expect(200), user);
        }
        assert_eq!(after - before, 1, "100 concurrent misses made {} queries", after - before);
        // And a later read is a hit: no query at all.
        app.get(&path).await.expect(200);
        assert_eq!(queries(&app), after);
    }

    async fn a_read_after_a_write_never_sees_the_old_value(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let path = format!("/v1/users/{}", user["id"].as_str().unwrap());
        for i in 0..200 {
            app.get(&path).await.expect(200);
            let name = format!("Ada {i}");
            app.patch(&path, &json!({"name": name})).await.expect(200);
            assert_eq!(app.get(&path).await.expect(200)["name"], name.as_str(), "iteration {i}");
        }
        app.delete(&path).await;
        app.get(&path).await.problem(404, "not_found");
    }

    async fn product_reads_show_stock_changes_at_once(app) {
        let user = app.create_user("Stock", "stock@example.com").await;
        let product = app.create_product("CACHE-1", 250, 10).await;
        let path = format!("/v1/products/{}", product["id"].as_str().unwrap());
        assert_eq!(app.get(&path).await.expect(200)["stock"], 10);
        let order = app
            .post("/v1/orders", &json!({"user_id": user["id"], "items": [{"product_id": product["id"], "quantity": 4}]}))
            .await
            .expect(201);
        assert_eq!(app.get(&path).await.expect(200)["stock"], 6);
        let order_path = format!("/v1/orders/{}", order["id"].as_str().unwrap());
        app.patch(&order_path, &json!({"status": "cancelled"})).await.expect(200);
        assert_eq!(app.get(&path).await.expect(200)["stock"], 10);
        app.patch(&path, &json!({"price_cents": 300})).await.expect(200);
        assert_eq!(app.get(&path).await.expect(200)["price_cents"], 300);
        app.delete(&path).await;
    }

    async fn hits_and_misses_are_counted(app) {
        let user = app.create_user("Counted", "counted@example.com").await;
        let path = format!("/v1/users/{}", user["id"].as_str().unwrap());
        app.get(&path).await.expect(200);
        app.get(&path).await.expect(200);
        let metrics = app.get("/metrics").await.text;
        assert!(metrics.contains(r#"cache_requests_total{cache="users",result="miss"} 1"#), "{metrics}");
        assert!(metrics.contains(r#"cache_requests_total{cache="users",result="hit"} 1"#), "{metrics}");
        assert!(metrics.contains(r#"cache_entries{cache="users"}"#), "{metrics}");
    }

    async fn a_missing_user_is_not_cached(app) {
        let missing = format!("/v1/users/{}", uuid::Uuid::now_v7());
        // The admin's session is read (and cached) by the first request it makes.
        app.get(&format!("/v1/users/{}", app.admin_id)).await.expect(200);
        let before = queries(&app);
        app.get(&missing).await.problem(404, "not_found");
        app.get(&missing).await.problem(404, "not_found");
        assert_eq!(queries(&app) - before, 2, "a not-found answer was served from the cache");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_ttl_zero_every_read_goes_to_the_database() {
    run_with(
        Backend::Sqlite,
        |config| config.cache.ttl = Duration::ZERO,
        |app: TestApp| async move {
            let user = app.create_user("Nocache", "nocache@example.com").await;
            let path = format!("/v1/users/{}", user["id"].as_str().unwrap());
            let before = queries(&app);
            for _ in 0..5 {
                app.get(&path).await.expect(200);
            }
            // Each read looks up the caller's session and then the user: nothing is cached.
            assert_eq!(queries(&app) - before, 10);
        },
    )
    .await;
}

on_backends! {
    [sqlite, postgres, mongo]
    /// `SESSION_CACHE_TTL_SECS` keeps session look-ups cached while entities are not, and a
    /// signed-out token is still refused at once.
    #[configure(|config| {
        config.cache.ttl = Duration::ZERO;
        config.cache.session_ttl = Some(Duration::from_secs(600));
    })]
    async fn sessions_stay_cached_with_the_entity_cache_off(app) {
        let user = app.create_user("Sessions", "sessions@example.com").await;
        let path = format!("/v1/users/{}", user["id"].as_str().unwrap());
        app.get(&path).await.expect(200);
        let before = queries(&app);
        for _ in 0..5 {
            app.get(&path).await.expect(200);
        }
        // Only the user is read each time: the caller's session comes from the cache.
        assert_eq!(queries(&app) - before, 5);

        let ada = app.sign_up("Ada", "ada.sessions@example.com").await;
        let own = app.url(&format!("/v1/users/{}", ada.id));
        app.send(ada.client.get(&own)).await.expect(200);
        app.send(ada.client.delete(app.url("/v1/sessions/current"))).await.expect_empty(204);
        app.send(ada.client.get(&own)).await.problem(401, "unauthenticated");
    }
}

on_backends! {
    [sqlite, postgres, mysql, mongo]
    /// With the cache off, concurrent reads of different users are batched: each still gets its
    /// own user (or 404), from far fewer queries than requests.
    #[configure(|config| config.cache.ttl = Duration::ZERO)]
    async fn concurrent_reads_of_different_users_share_queries(app) {
        let mut users = Vec::new();
        for i in 0..40 {
            users.push(
                app.create_user("Batch", &format!("batch{i}@example.com"))
                    .await,
            );
        }
        let unknown: Vec<String> = (0..20).map(|_| uuid::Uuid::now_v7().to_string()).collect();
        let paths: Vec<(String, Option<&serde_json::Value>)> = (0..300)
            .map(|i| match i % 4 {
                3 => (format!("/v1/users/{}", unknown[i % 20]), None),
                _ => {
                    let user = &users[i % 40];
                    (
                        format!("/v1/users/{}", user["id"].as_str().unwrap()),
                        Some(user),
                    )
                }
            })
            .collect();
        let before = queries(&app);
        let replies = join_all(paths.iter().map(|(path, _)| app.get(path))).await;
        // With the cache off every request also looks up the caller's session: one query
        // each, which this count of the user reads leaves out.
        let made = queries(&app) - before - paths.len() as u64;
        for ((path, expected), reply) in paths.iter().zip(&replies) {
            match expected {
                Some(user) => assert_eq!(&reply.expect(200), *user, "{path}"),
                None => {
                    reply.problem(404, "not_found");
                }
            }
        }
        assert!(made < 150, "300 concurrent reads made {made} queries");
    }
}

/// Reads `path` through `app` until its `name` is `expected`, for at most a second.
async fn shows_within_a_second(app: &TestApp, path: &str, expected: &str) -> Duration {
    let started = Instant::now();
    loop {
        let body = app.get(path).await.expect(200);
        if body["name"] == expected {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "instance B still shows {} a second after {expected} was acknowledged",
            body["name"]
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn listener_pids(app: &TestApp, name: &str) -> Vec<i32> {
    let conn = app.db.connect().await;
    let rows = conn
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            [name.into()],
        ))
        .await
        .unwrap();
    let _ = conn.close().await;
    rows.iter()
        .map(|row| row.try_get::<i32>("", "pid").unwrap())
        .collect()
}

on_backends! {
    [postgres, pgbouncer, pgbouncer_txn]
    /// Behind PgBouncer each instance LISTENs over its direct URL.
    async fn two_instances_stay_coherent(a) {
        let b = TestApp::start(a.db.clone(), test_config(&a.db)).await;
        let user = a.create_user("Shared", "shared@example.com").await;
        let path = format!("/v1/users/{}", user["id"].as_str().unwrap());
        for i in 0..100 {
            b.get(&path).await.expect(200); // B caches the current value
            let name = format!("Shared {i}");
            a.patch(&path, &json!({"name": name})).await.expect(200);
            shows_within_a_second(&b, &path, &name).await;
        }

        // Cut B's listening connection; B must stop trusting its cache and hear again once
        // it has reconnected.
        let name = b.state.listener_name.clone();
        let pids = listener_pids(&b, &name).await;
        assert_eq!(pids.len(), 1, "B should have one listener connection");
        let conn = a.db.connect().await;
        conn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_terminate_backend($1)",
            [pids[0].into()],
        ))
        .await
        .unwrap();
        let _ = conn.close().await;
        let started = Instant::now();
        loop {
            let now = listener_pids(&b, &name).await;
            if now.len() == 1 && now[0] != pids[0] {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "B's listener did not come back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for i in 0..20 {
            b.get(&path).await.expect(200);
            let name = format!("After {i}");
            a.patch(&path, &json!({"name": name})).await.expect(200);
            shows_within_a_second(&b, &path, &name).await;
        }
        b.stop().await.unwrap();
    }
}
