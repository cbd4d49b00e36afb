//! What only MongoDB needs tested: the invariants SQL gets from foreign keys, kept by
//! transactions (an order and a delete of its user or product, racing both ways), stock under a
//! burst of orders, the query plans of the listings, the schema steps, the cache kept coherent
//! across instances by a change stream, and a graceful shutdown with a request in flight.

use std::time::{Duration, Instant};

use api::store::CursorKey;
use api::store::mongo::page::older_than;
use api::store::mongo::schema;
use bson::{Document, doc};
use futures::future::join_all;
use serde_json::Value;
use tests::{Backend, Reply, TestApp, id_of, json, on_mongo, run_with, test_config};

fn order_of(user: &Value, product: &Value, quantity: i64) -> Value {
    json!({"user_id": user["id"], "items": [{"product_id": product["id"], "quantity": quantity}]})
}

/// Fires the two requests at once.
async fn race(app: &TestApp, order: Value, delete_path: String) -> (Reply, Reply) {
    let placing = {
        let app = app.clone();
        tokio::spawn(async move { app.post("/v1/orders", &order).await })
    };
    let deleting = {
        let app = app.clone();
        tokio::spawn(async move { app.delete(&delete_path).await })
    };
    (placing.await.unwrap(), deleting.await.unwrap())
}

/// The nodes of an `explain` plan, depth first.
fn stages(plan: &Document) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(stage) = plan.get_str("stage") {
        found.push(stage.to_owned());
    }
    for key in ["inputStage", "outerStage", "innerStage"] {
        if let Ok(child) = plan.get_document(key) {
            found.extend(stages(child));
        }
    }
    if let Ok(children) = plan.get_array("inputStages") {
        for child in children.iter().filter_map(|child| child.as_document()) {
            found.extend(stages(child));
        }
    }
    found
}

async fn assert_uses_an_index(db: &mongodb::Database, collection: &str, filter: Document) {
    let explained = db
        .run_command(doc! {
            "explain": {
                "find": collection,
                "filter": filter.clone(),
                "sort": {"created_at": -1, "_id": -1},
                "limit": 21,
            },
            "verbosity": "queryPlanner",
        })
        .await
        .expect("explain");
    let plan = explained
        .get_document("queryPlanner")
        .and_then(|planner| planner.get_document("winningPlan"))
        .expect("a winning plan");
    let stages = stages(plan);
    assert!(
        stages.iter().any(|stage| stage == "IXSCAN"),
        "{collection} {filter}: no index scan in {stages:?}"
    );
    assert!(
        !stages.iter().any(|stage| stage == "COLLSCAN"),
        "{collection} {filter}: a collection scan in {stages:?}"
    );
}

on_mongo! {
    async fn an_order_racing_a_delete_of_its_user_never_leaves_an_orphan(app) {
        let tea = app.create_product("TEA", 250, 1_000).await;
        for round in 0..15 {
            let user = app.create_user("Racer", &format!("racer{round}@example.com")).await;
            let path = format!("/v1/users/{}", id_of(&user));
            let (order, delete) = race(&app, order_of(&user, &tea, 1), path.clone()).await;
            match (order.status, delete.status) {
                // The order committed first: the user stays, with its order.
                (201, 409) => {
                    delete.problem(409, "user_has_orders");
                    app.get(&path).await.expect(200);
                    let orders = app.get(&format!("{path}/orders")).await.expect(200);
                    assert_eq!(orders["total_items"], 1);
                }
                // The delete committed first: the order found no user and took no stock.
                (404, 204) => {
                    order.problem(404, "not_found");
                    app.get(&path).await.problem(404, "not_found");
                }
                other => panic!("round {round}: {other:?}: {} / {}", order.text, delete.text),
            }
        }
        let placed = app.get(&format!("/v1/products/{}", id_of(&tea))).await.expect(200);
        let taken = 1_000 - placed["stock"].as_i64().unwrap();
        assert!(taken <= 15, "stock went to orders that do not exist: {taken}");
    }

    async fn an_order_racing_a_delete_of_its_product_never_leaves_an_orphan(app) {
        let user = app.create_user("Racer", "racer@example.com").await;
        for round in 0..15 {
            let tea = app.create_product(&format!("TEA-{round}"), 250, 5).await;
            let path = format!("/v1/products/{}", id_of(&tea));
            let (order, delete) = race(&app, order_of(&user, &tea, 1), path.clone()).await;
            match (order.status, delete.status) {
                (201, 409) => {
                    delete.problem(409, "product_has_orders");
                    let product = app.get(&path).await.expect(200);
                    assert_eq!(product["stock"], 4);
                }
                (404, 204) => {
                    order.problem(404, "not_found");
                    app.get(&path).await.problem(404, "not_found");
                }
                other => panic!("round {round}: {other:?}: {} / {}", order.text, delete.text),
            }
        }
    }

    async fn a_user_or_product_with_orders_is_kept_whichever_request_comes_second(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let tea = app.create_product("TEA", 250, 5).await;
        app.post("/v1/orders", &order_of(&user, &tea, 1)).await.expect(201);
        app.delete(&format!("/v1/users/{}", id_of(&user))).await.problem(409, "user_has_orders");
        app.delete(&format!("/v1/products/{}", id_of(&tea))).await.problem(409, "product_has_orders");

        let gone = app.create_user("Gone", "gone@example.com").await;
        app.delete(&format!("/v1/users/{}", id_of(&gone))).await.expect_empty(204);
        app.post("/v1/orders", &order_of(&gone, &tea, 1)).await.problem(404, "not_found");
        assert_eq!(
            app.get(&format!("/v1/products/{}", id_of(&tea))).await.expect(200)["stock"],
            4
        );
    }

    async fn sixty_orders_against_a_stock_of_ten_place_exactly_ten(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let tea = app.create_product("TEA", 250, 10).await;
        let body = order_of(&user, &tea, 1);
        let replies = join_all((0..60).map(|_| {
            let app = app.clone();
            let body = body.clone();
            async move { app.post("/v1/orders", &body).await }
        }))
        .await;
        let placed = replies.iter().filter(|reply| reply.status == 201).count();
        let refused = replies
            .iter()
            .filter(|reply| reply.status == 409 && reply.json()["code"] == "insufficient_stock")
            .count();
        assert_eq!((placed, refused), (10, 50), "{:?}", replies.iter().map(|r| r.status).collect::<Vec<_>>());
        let product = app.get(&format!("/v1/products/{}", id_of(&tea))).await.expect(200);
        assert_eq!(product["stock"], 0);
    }

    async fn listing_lookup_and_cursor_queries_use_their_indexes(app) {
        let db = app.db.mongo().await;
        // Enough documents that a scan and an index differ, and both listings populated.
        let user = app.create_user("Ada", "ada@example.com").await;
        let tea = app.create_product("TEA", 250, 100).await;
        for i in 0..5 {
            app.create_user("Someone", &format!("someone{i}@example.com")).await;
            app.post("/v1/orders", &order_of(&user, &tea, 1)).await.expect(201);
        }
        let after = CursorKey {
            created_at: chrono::Utc::now().fixed_offset(),
            id: uuid::Uuid::now_v7(),
        };
        let user_id = bson::Binary {
            subtype: bson::spec::BinarySubtype::Uuid,
            bytes: uuid::Uuid::parse_str(&id_of(&user)).unwrap().as_bytes().to_vec(),
        };
        assert_uses_an_index(&db, schema::USERS, doc! {}).await;
        assert_uses_an_index(&db, schema::USERS, doc! {"status": "active"}).await;
        assert_uses_an_index(&db, schema::USERS, doc! {"email": "ada@example.com"}).await;
        assert_uses_an_index(&db, schema::USERS, older_than(after)).await;
        assert_uses_an_index(&db, schema::PRODUCTS, doc! {}).await;
        assert_uses_an_index(&db, schema::PRODUCTS, older_than(after)).await;
        assert_uses_an_index(&db, schema::ORDERS, doc! {"user_id": user_id.clone()}).await;
        let mut ranged = doc! {"user_id": user_id};
        ranged.extend(older_than(after));
        assert_uses_an_index(&db, schema::ORDERS, ranged).await;
    }

    async fn the_validators_refuse_what_the_sql_constraints_refuse(app) {
        let db = app.db.mongo().await;
        let tea = app.create_product("TEA", 250, 1).await;
        let id = bson::Binary {
            subtype: bson::spec::BinarySubtype::Uuid,
            bytes: uuid::Uuid::parse_str(&id_of(&tea)).unwrap().as_bytes().to_vec(),
        };
        let products = db.collection::<Document>(schema::PRODUCTS);
        let negative = products
            .update_one(doc! {"_id": id.clone()}, doc! {"$set": {"stock": -1_i64}})
            .await
            .expect_err("a negative stock is refused");
        assert!(negative.to_string().contains("121"), "{negative}");
        let untyped = products
            .update_one(doc! {"_id": id}, doc! {"$set": {"price_cents": "free"}})
            .await
            .expect_err("a price that is not an integer is refused");
        assert!(untyped.to_string().contains("121"), "{untyped}");
        assert_eq!(
            app.get(&format!("/v1/products/{}", id_of(&tea))).await.expect(200)["stock"],
            1
        );
    }

    async fn migrations_run_once_when_instances_start_together(app) {
        let db = app.db.mongo().await;
        // The server applied them at start; a fresh database gets them from three at once.
        let applied = db
            .collection::<Document>(schema::MIGRATIONS)
            .count_documents(doc! {})
            .await
            .unwrap();
        assert!(applied >= 6, "{applied}");
        let mut url = url::Url::parse(&app.db.url).unwrap();
        let fresh = format!("{}_again", url.path().trim_start_matches('/'));
        url.set_path(&fresh);
        let mut config = test_config(&app.db);
        config.database.url = url.as_str().parse().expect("a database URL");
        let starts = join_all((0..3).map(|_| {
            let config = config.clone();
            async move {
                let db = api::startup::connect_only(&config).await.expect("connect");
                let outcome = api::startup::migrate(&db, &config).await;
                let _ = db.close_by_ref().await;
                outcome
            }
        }))
        .await;
        for outcome in starts {
            outcome.expect("every instance comes up");
        }
        let again = app.db.mongo().await.client().database(&fresh);
        let recorded: Vec<i64> = {
            use futures::TryStreamExt;
            let docs: Vec<Document> = again
                .collection::<Document>(schema::MIGRATIONS)
                .find(doc! {})
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            docs.iter().map(|doc| doc.get_i64("_id").unwrap()).collect()
        };
        let mut sorted = recorded.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(recorded.len(), sorted.len(), "a migration was recorded twice: {recorded:?}");
        assert_eq!(sorted, [1, 2, 3, 4, 5, 6, 7, 8]);
        again.drop().await.unwrap();
    }

    /// A write that meets another transaction's write fails over to a retry at once on
    /// MongoDB (it does not wait as a SQL row lock makes it), so the request held in flight here
    /// is a long poll of the change feed.
    async fn graceful_shutdown_finishes_an_in_flight_request(app) {
        let latest = app.get("/v1/events?start=latest").await.expect(200);
        let cursor = latest["next_cursor"].as_str().unwrap().to_owned();
        let in_flight = {
            let app = app.clone();
            tokio::spawn(async move { app.get(&format!("/v1/events?after={cursor}&wait=2")).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stopping = {
            let app = app.clone();
            tokio::spawn(async move { app.stop().await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !stopping.is_finished(),
            "the server stopped before its in-flight request finished"
        );
        let reply = in_flight.await.unwrap();
        assert_eq!(reply.expect(200)["items"], json!([]));
        stopping.await.unwrap().expect("a clean stop");
        assert!(app.state.db.ping().await.is_err(), "the client is still open");
    }
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
            "instance B still shows {} a second after {expected} was acknowledged",
            body["name"]
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(has_mongo), ignore = "TEST_MONGODB_URL is not set")]
async fn two_instances_on_mongodb_stay_coherent() {
    run_with(
        Backend::Mongo,
        |_| {},
        |a: TestApp| async move {
            let b = TestApp::start(a.db.clone(), test_config(&a.db)).await;
            let user = a.create_user("Shared", "shared@example.com").await;
            let path = format!("/v1/users/{}", id_of(&user));
            let tea = a.create_product("TEA", 250, 5).await;
            let tea_path = format!("/v1/products/{}", id_of(&tea));
            for i in 0..30 {
                b.get(&path).await.expect(200); // B caches the current value
                let name = format!("Shared {i}");
                a.patch(&path, &json!({"name": name})).await.expect(200);
                shows_within_a_second(&b, &path, &name).await;
                b.get(&tea_path).await.expect(200);
                let name = format!("Tea {i}");
                a.patch(&tea_path, &json!({"name": name})).await.expect(200);
                shows_within_a_second(&b, &tea_path, &name).await;
            }
            b.stop().await.unwrap();
        },
    )
    .await;
}
