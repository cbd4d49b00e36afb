//! `/v1/events`: the change feed. Every committed change is one event, written in the change's own
//! transaction; refused and rolled-back writes record none; a reader that follows `next_cursor`
//! sees every event exactly once, in commit order, however many writers commit at once.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{
    TestApp, authorized_client, fields_of, id_of, json, on_backends, on_every_backend, test_config,
};

/// The feed's cursor after every change answered so far.
async fn latest(app: &TestApp) -> String {
    let page = app.get("/v1/events?start=latest").await.expect(200);
    assert_eq!(page["items"], json!([]), "start=latest answers no items");
    page["next_cursor"].as_str().expect("a cursor").to_owned()
}

/// Every event after `cursor`, following `next_cursor` until an answer is empty.
async fn drain(app: &TestApp, cursor: &str) -> (Vec<Value>, String) {
    let mut cursor = cursor.to_owned();
    let mut events = Vec::new();
    loop {
        let page = app
            .get(&format!("/v1/events?after={cursor}&limit=50"))
            .await
            .expect(200);
        cursor = page["next_cursor"].as_str().expect("a cursor").to_owned();
        let items = page["items"].as_array().expect("items").clone();
        if items.is_empty() {
            return (events, cursor);
        }
        events.extend(items);
    }
}

/// The version an `ETag` names.
fn version_of(etag: Option<&str>) -> i64 {
    etag.expect("an ETag")
        .trim_matches('"')
        .parse()
        .expect("a numeric ETag")
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|event| event["type"].as_str().expect("a type"))
        .collect()
}

fn positions(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|event| event["position"].as_i64().expect("a position"))
        .collect()
}

/// The resource as `GET` answers it now, and the version its `ETag` names.
async fn read(app: &TestApp, path: &str) -> (Value, i64) {
    let reply = app.get(path).await;
    let version = version_of(reply.header("etag"));
    (reply.expect(200), version)
}

#[track_caller]
fn assert_event(event: &Value, kind: &str, data: &Value, version: i64) {
    assert_eq!(event["type"], kind, "event: {event}");
    assert_eq!(event["resource_id"], data["id"], "event: {event}");
    assert_eq!(
        event["data"], *data,
        "the event carries the resource as GET answered it"
    );
    assert_eq!(
        event["version"], version,
        "the event's version is the ETag's"
    );
    assert!(event["id"].is_string() && event["occurred_at"].is_string());
}

on_every_backend! {
    async fn each_write_records_exactly_its_event_with_the_resource_as_get_answers_it(app) {
        let cursor = latest(&app).await;

        let user = app.create_user("Ada", "ada@example.com").await;
        let user_path = format!("/v1/users/{}", id_of(&user));
        let user_created = read(&app, &user_path).await;
        app.patch(&user_path, &json!({"name": "Ada L."})).await.expect(200);
        let user_updated = read(&app, &user_path).await;

        let product = app.create_product("FEED-1", 250, 10).await;
        let product_path = format!("/v1/products/{}", id_of(&product));
        let product_created = read(&app, &product_path).await;
        app.patch(&product_path, &json!({"price_cents": 300})).await.expect(200);
        let product_updated = read(&app, &product_path).await;

        let order = app
            .post(
                "/v1/orders",
                &json!({"user_id": id_of(&user), "items": [{"product_id": id_of(&product), "quantity": 2}]}),
            )
            .await
            .expect(201);
        let order_path = format!("/v1/orders/{}", id_of(&order));
        let order_created = read(&app, &order_path).await;
        app.patch(&order_path, &json!({"status": "cancelled"})).await.expect(200);
        let order_updated = read(&app, &order_path).await;

        let spare = app.create_product("FEED-2", 1, 1).await;
        let spare_path = format!("/v1/products/{}", id_of(&spare));
        let spare_created = read(&app, &spare_path).await;
        app.delete(&spare_path).await.expect_empty(204);
        let leaver = app.create_user("Bo", "bo@example.com").await;
        let leaver_path = format!("/v1/users/{}", id_of(&leaver));
        let leaver_created = read(&app, &leaver_path).await;
        app.delete(&leaver_path).await.expect_empty(204);

        let (events, _) = drain(&app, &cursor).await;
        assert_eq!(
            kinds(&events),
            [
                "user.created", "user.updated", "product.created", "product.updated",
                "order.created", "order.updated", "product.created", "product.deleted",
                "user.created", "user.deleted",
            ],
            "one event per change, in the order the changes were answered (stock moved by the order records none)"
        );
        assert_event(&events[0], "user.created", &user_created.0, user_created.1);
        assert_event(&events[1], "user.updated", &user_updated.0, user_updated.1);
        assert_event(&events[2], "product.created", &product_created.0, product_created.1);
        assert_event(&events[3], "product.updated", &product_updated.0, product_updated.1);
        assert_event(&events[4], "order.created", &order_created.0, order_created.1);
        assert_event(&events[5], "order.updated", &order_updated.0, order_updated.1);
        assert_event(&events[6], "product.created", &spare_created.0, spare_created.1);
        assert_eq!(events[7]["data"], json!({"id": id_of(&spare)}), "a delete carries the id");
        assert_eq!(events[7]["version"], spare_created.1 + 1);
        assert_event(&events[8], "user.created", &leaver_created.0, leaver_created.1);
        assert_eq!(events[9]["data"], json!({"id": id_of(&leaver)}));
        for event in &events {
            assert!(
                !event.to_string().contains("password"),
                "no event carries a password or its hash: {event}"
            );
        }
        let positions = positions(&events);
        assert!(positions.windows(2).all(|pair| pair[1] == pair[0] + 1), "{positions:?}");
    }

    async fn refused_failed_and_replayed_writes_record_no_event(app) {
        let user = app.create_user("Cy", "cy@example.com").await;
        let product = app.create_product("FEED-3", 100, 1).await;
        let cursor = latest(&app).await;

        app.post("/v1/users", &json!({"name": "Cy", "email": "cy@example.com", "password": "long enough"}))
            .await
            .problem(409, "email_taken");
        app.post("/v1/products", &json!({"sku": "", "name": "x", "price_cents": 1, "stock": 1}))
            .await
            .problem(422, "validation_failed");
        let product_path = format!("/v1/products/{}", id_of(&product));
        let stale = app
            .send(app.client.patch(app.url(&product_path)).header("if-match", "\"99\"").json(&json!({"name": "Stale"})))
            .await;
        stale.problem(412, "precondition_failed");
        let lines = json!({"user_id": id_of(&user), "items": [{"product_id": id_of(&product), "quantity": 5}]});
        app.post("/v1/orders", &lines).await.problem(409, "insufficient_stock");
        let one = json!({"user_id": id_of(&user), "items": [{"product_id": id_of(&product), "quantity": 1}]});
        let keyed = || app.client.post(app.url("/v1/orders")).header("idempotency-key", "feed-key-1").json(&one);
        let first = app.send(keyed()).await.expect(201);
        let replay = app.send(keyed()).await.expect(201);
        assert_eq!(first["id"], replay["id"]);
        let order_path = format!("/v1/orders/{}", id_of(&first));
        app.patch(&order_path, &json!({"status": "shipped"})).await.problem(409, "invalid_transition");
        app.delete(&product_path).await.problem(409, "product_has_orders");
        app.patch(&product_path, &json!({})).await.expect(200);

        let (events, _) = drain(&app, &cursor).await;
        assert_eq!(kinds(&events), ["order.created"], "only the one order that committed: {events:?}");
        assert_eq!(events[0]["resource_id"], first["id"]);
    }

    async fn sequential_writes_come_in_the_order_they_were_answered(app) {
        let cursor = latest(&app).await;
        let mut ids = Vec::new();
        for n in 0..15 {
            let product = app.create_product(&format!("SEQ-{n}"), 1, 1).await;
            ids.push(id_of(&product));
            let path = format!("/v1/products/{}", id_of(&product));
            app.patch(&path, &json!({"stock": 2})).await.expect(200);
        }
        let (events, _) = drain(&app, &cursor).await;
        let seen: Vec<(String, String)> = events
            .iter()
            .map(|event| (event["type"].as_str().unwrap().to_owned(), event["resource_id"].as_str().unwrap().to_owned()))
            .collect();
        let expected: Vec<(String, String)> = ids
            .iter()
            .flat_map(|id| [("product.created".to_owned(), id.clone()), ("product.updated".to_owned(), id.clone())])
            .collect();
        assert_eq!(seen, expected);
    }

    async fn a_reader_polling_among_concurrent_writers_sees_every_event_exactly_once(app) {
        let user = app.create_user("Di", "di@example.com").await;
        let product = app.create_product("HOT", 100, 1_000_000).await;
        let cursor = latest(&app).await;

        let reader = {
            let app = app.clone();
            tokio::spawn(async move {
                let mut cursor = cursor;
                let mut seen = Vec::new();
                let mut quiet = 0;
                // Until the writers are done and two long polls in a row come back empty.
                while quiet < 2 {
                    let page = app
                        .get(&format!("/v1/events?after={cursor}&limit=7&wait=1"))
                        .await
                        .expect(200);
                    cursor = page["next_cursor"].as_str().unwrap().to_owned();
                    let items = page["items"].as_array().unwrap().clone();
                    quiet = if items.is_empty() { quiet + 1 } else { 0 };
                    seen.extend(items);
                }
                seen
            })
        };
        let mut writers = Vec::new();
        for writer in 0..8 {
            let app = app.clone();
            let order = json!({"user_id": id_of(&user), "items": [{"product_id": id_of(&product), "quantity": 1}]});
            writers.push(tokio::spawn(async move {
                let mut made = Vec::new();
                for n in 0..12 {
                    let created = if n % 3 == 0 {
                        app.create_product(&format!("W{writer}-{n}"), 1, 1).await
                    } else {
                        app.post("/v1/orders", &order).await.expect(201)
                    };
                    made.push(id_of(&created));
                }
                made
            }));
        }
        let mut made = HashSet::new();
        for writer in writers {
            made.extend(writer.await.unwrap());
        }
        let seen = reader.await.unwrap();
        let positions = positions(&seen);
        assert!(
            positions.windows(2).all(|pair| pair[1] == pair[0] + 1),
            "positions follow one another without a gap or a repeat: {positions:?}"
        );
        let mut per_resource: HashMap<String, usize> = HashMap::new();
        for event in &seen {
            *per_resource.entry(event["resource_id"].as_str().unwrap().to_owned()).or_default() += 1;
        }
        assert_eq!(per_resource.len(), made.len(), "an event for each committed change, and no other");
        for id in &made {
            assert_eq!(per_resource.get(id), Some(&1), "exactly one event for {id}");
        }
    }

    async fn a_long_poll_wakes_when_an_event_arrives_and_times_out_empty(app) {
        let cursor = latest(&app).await;
        let started = Instant::now();
        let empty = app.get(&format!("/v1/events?after={cursor}&wait=1")).await.expect(200);
        assert!(started.elapsed() >= Duration::from_millis(900), "held for the wait");
        assert_eq!(empty["items"], json!([]));
        assert_eq!(empty["next_cursor"], cursor.as_str(), "an empty answer keeps the cursor");

        let waiting = {
            let app = app.clone();
            let cursor = cursor.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let page = app.get(&format!("/v1/events?after={cursor}&wait=20")).await.expect(200);
                (page, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let product = app.create_product("WAKE", 1, 1).await;
        let (page, waited) = waiting.await.unwrap();
        assert_eq!(page["items"][0]["resource_id"], product["id"]);
        assert!(waited < Duration::from_secs(10), "answered when the event came, not at the end of the wait ({waited:?})");
    }

}

on_backends! {
    [postgres, pgbouncer_txn, mongo]
    /// A reader waiting on one instance is woken by a change written through another: that
    /// instance's sequencing is heard (PostgreSQL's `NOTIFY`, MongoDB's change stream), where
    /// without it the reader would only look again after `PEER_WAIT_POLL` (5 s).
    async fn a_long_poll_wakes_for_a_change_made_on_another_instance(app) {
        let other = TestApp::start(app.db.clone(), test_config(&app.db)).await;
        let cursor = latest(&app).await;
        let waiting = {
            let app = app.clone();
            let cursor = cursor.clone();
            tokio::spawn(async move {
                let page = app.get(&format!("/v1/events?after={cursor}&wait=20")).await.expect(200);
                (page, Instant::now())
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let product = other.create_product("AWAY", 1, 1).await;
        let created = Instant::now();
        let (page, answered) = waiting.await.unwrap();
        let _ = other.stop().await;
        assert_eq!(page["items"][0]["resource_id"], product["id"]);
        let waited = answered.saturating_duration_since(created);
        assert!(
            waited < Duration::from_millis(2_500),
            "answered {waited:?} after the other instance's change: by the reader's own poll, not woken"
        );
    }
}

on_every_backend! {
    async fn types_and_limits_filter_the_feed_and_bad_ones_are_422(app) {
        let cursor = latest(&app).await;
        let product = app.create_product("F-1", 1, 1).await;
        app.create_user("Ed", "ed@example.com").await;
        app.patch(&format!("/v1/products/{}", id_of(&product)), &json!({"stock": 3})).await.expect(200);
        let only = app
            .get(&format!("/v1/events?after={cursor}&type=product.updated,user.created"))
            .await
            .expect(200);
        assert_eq!(kinds(only["items"].as_array().unwrap()), ["user.created", "product.updated"]);
        let first = app.get(&format!("/v1/events?after={cursor}&limit=2")).await.expect(200);
        assert_eq!(first["items"].as_array().unwrap().len(), 2);
        let rest = app
            .get(&format!("/v1/events?after={}", first["next_cursor"].as_str().unwrap()))
            .await
            .expect(200);
        assert_eq!(kinds(rest["items"].as_array().unwrap()), ["product.updated"]);

        for (query, field) in [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=many", "limit"),
            ("wait=31", "wait"),
            ("type=order.deleted", "type"),
            ("after=not-a-cursor", "after"),
            ("start=middle", "start"),
        ] {
            let problem = app.get(&format!("/v1/events?{query}")).await.problem(422, "validation_failed");
            assert_eq!(fields_of(&problem), [field], "{query}");
        }
        let both = app.get(&format!("/v1/events?after={cursor}&start=latest")).await;
        both.problem(422, "validation_failed");
    }

    async fn only_admins_read_the_feed(app) {
        app.send(app.anonymous.get(app.url("/v1/events"))).await.problem(401, "unauthenticated");
        let customer = app.sign_up("Fay", "fay@example.com").await;
        app.send(customer.client.get(app.url("/v1/events"))).await.problem(403, "forbidden");
        let stranger = authorized_client("not-a-token");
        app.send(stranger.get(app.url("/v1/events"))).await.problem(401, "unauthenticated");
    }

    async fn start_latest_is_after_every_answered_change(app) {
        for n in 0..5 {
            app.create_product(&format!("L-{n}"), 1, 1).await;
        }
        let cursor = latest(&app).await;
        let (before, _) = drain(&app, &cursor).await;
        assert!(before.is_empty(), "nothing answered before start=latest comes after it: {before:?}");
        let product = app.create_product("L-after", 1, 1).await;
        let (after, _) = drain(&app, &cursor).await;
        assert_eq!(after.len(), 1);
        assert_eq!(after[0]["resource_id"], product["id"]);
        let oldest = app.get("/v1/events?limit=1000").await.expect(200);
        assert_eq!(
            kinds(oldest["items"].as_array().unwrap()).first(),
            Some(&"user.created"),
            "start=oldest (the default) begins with the admin made at start-up"
        );
    }

    #[configure(|config| config.events.retention = Duration::from_secs(1))]
    async fn a_cursor_older_than_the_retention_is_410(app) {
        let first = app.get("/v1/events?limit=1").await.expect(200);
        let early = first["next_cursor"].as_str().unwrap().to_owned();
        for n in 0..3 {
            app.create_product(&format!("R-{n}"), 1, 1).await;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let reply = app.get(&format!("/v1/events?after={early}")).await;
            if reply.status == 410 {
                reply.problem(410, "cursor_expired");
                break;
            }
            assert_eq!(reply.status, 200, "{}", reply.text);
            assert!(Instant::now() < deadline, "expired events were never removed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The newest event stays, so the feed goes on from where it was.
        let latest_cursor = latest(&app).await;
        let product = app.create_product("R-after", 1, 1).await;
        let (after, _) = drain(&app, &latest_cursor).await;
        assert_eq!(after[0]["resource_id"], product["id"]);
    }
}
