//! `/v1/orders` and `/v1/users/{id}/orders`: placing orders (prices, merging, stock under
//! concurrency, idempotency), status transitions, and a user's order listing.

use std::collections::{HashMap, HashSet};

use futures::future::join_all;
use serde_json::Value;
use tests::{Reply, TestApp, fields_of, id_of, ids_of, json, on_backends, on_every_backend};

const UNKNOWN_ID: &str = "01890a5d-ac96-774b-bcce-b302099a8057";

fn order_of(user: &Value, lines: &[(&Value, i64)]) -> Value {
    let items: Vec<Value> = lines
        .iter()
        .map(|(product, quantity)| json!({"product_id": product["id"], "quantity": quantity}))
        .collect();
    json!({"user_id": user["id"], "items": items})
}

async fn place(app: &TestApp, body: &Value) -> Reply {
    app.post("/v1/orders", body).await
}

async fn place_with_key(app: &TestApp, key: &str, body: &Value) -> Reply {
    let request = app
        .client
        .post(app.url("/v1/orders"))
        .header("Idempotency-Key", key)
        .json(body);
    app.send(request).await
}

async fn orders_of(app: &TestApp, user: &Value) -> Value {
    app.get(&format!("/v1/users/{}/orders?per_page=100", id_of(user)))
        .await
        .expect(200)
}

async fn set_status(app: &TestApp, order: &Value, status: &str) -> Reply {
    app.patch(
        &format!("/v1/orders/{}", id_of(order)),
        &json!({"status": status}),
    )
    .await
}

/// Counts replies by status, and asserts that every 409 is `insufficient_stock` in full.
fn tally(replies: &[Reply], product: &Value, requested: i64) -> HashMap<u16, usize> {
    let mut counts = HashMap::new();
    for reply in replies {
        *counts.entry(reply.status).or_default() += 1;
        match reply.status {
            201 => {}
            409 => {
                let problem = reply.problem(409, "insufficient_stock");
                assert_eq!(problem["product_id"], product["id"]);
                assert_eq!(problem["requested"], requested);
                let available = problem["available"].as_i64().expect("available is set");
                assert!((0..requested).contains(&available), "{problem}");
            }
            other => panic!(
                "a burst answers 201 or 409 only, got {other}: {}",
                reply.text
            ),
        }
    }
    counts
}

on_every_backend! {
    async fn placing_an_order_answers_201_with_prices_from_the_products(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let tea = app.create_product("TEA", 250, 10).await;
        let pot = app.create_product("POT", 1000, 5).await;
        let reply = place(&app, &order_of(&user, &[(&pot, 1), (&tea, 2)])).await;
        let order = reply.expect(201);
        let id = id_of(&order);
        assert_eq!(reply.header("location"), Some(format!("/v1/orders/{id}").as_str()));
        assert_eq!(order["user_id"], user["id"]);
        assert_eq!(order["status"], "pending");
        // One item per product in product-id order; ids are time-ordered, so TEA comes first.
        assert_eq!(
            order["items"],
            json!([
                {"product_id": tea["id"], "quantity": 2, "unit_price_cents": 250, "line_total_cents": 500},
                {"product_id": pot["id"], "quantity": 1, "unit_price_cents": 1000, "line_total_cents": 1000},
            ])
        );
        assert_eq!(order["total_cents"], 1500);
        assert!(order["created_at"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert_eq!(order["created_at"], order["updated_at"]);
        assert_eq!(app.stock_of(&tea).await, 8);
        assert_eq!(app.stock_of(&pot).await, 4);
        assert_eq!(app.get(&format!("/v1/orders/{id}")).await.expect(200), order);

        // A later price change does not touch the order: it keeps the price it was placed at.
        app.patch(&format!("/v1/products/{}", id_of(&tea)), &json!({"price_cents": 999}))
            .await
            .expect(200);
        assert_eq!(app.get(&format!("/v1/orders/{id}")).await.expect(200), order);
    }

    async fn a_client_cannot_send_a_price(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let tea = app.create_product("TEA", 250, 10).await;
        let body = json!({"user_id": user["id"], "items": [
            {"product_id": tea["id"], "quantity": 1, "price_cents": 1}
        ]});
        let problem = place(&app, &body).await.problem(422, "validation_failed");
        assert_eq!(fields_of(&problem), ["items[0].price_cents"]);
        let body = json!({"user_id": user["id"], "total_cents": 1, "items": [
            {"product_id": tea["id"], "quantity": 1}
        ]});
        let problem = place(&app, &body).await.problem(422, "validation_failed");
        assert_eq!(fields_of(&problem), ["total_cents"]);
        assert_eq!(app.stock_of(&tea).await, 10);
        assert_eq!(orders_of(&app, &user).await["total_items"], 0);
    }

    async fn lines_for_one_product_are_merged_and_checked_as_a_whole(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let tea = app.create_product("TEA", 250, 5).await;
        let pot = app.create_product("POT", 1000, 5).await;

        // 3 + 3 exceeds the stock of 5 although each line alone would fit.
        let problem = place(&app, &order_of(&user, &[(&pot, 3), (&pot, 3)]))
            .await
            .problem(409, "insufficient_stock");
        assert_eq!(problem["product_id"], pot["id"]);
        assert_eq!(problem["requested"], 6);
        assert_eq!(problem["available"], 5);
        assert_eq!(app.stock_of(&pot).await, 5);

        let order = place(&app, &order_of(&user, &[(&tea, 2), (&pot, 1), (&tea, 3)]))
            .await
            .expect(201);
        assert_eq!(
            order["items"],
            json!([
                {"product_id": tea["id"], "quantity": 5, "unit_price_cents": 250, "line_total_cents": 1250},
                {"product_id": pot["id"], "quantity": 1, "unit_price_cents": 1000, "line_total_cents": 1000},
            ])
        );
        assert_eq!(order["total_cents"], 2250);
        assert_eq!(app.stock_of(&tea).await, 0);
        assert_eq!(app.stock_of(&pot).await, 4);
        assert_eq!(app.get(&format!("/v1/orders/{}", id_of(&order))).await.expect(200), order);
    }

    async fn an_unknown_user_or_product_is_404_and_changes_nothing(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let tea = app.create_product("TEA", 250, 5).await;

        let ghost_user = json!({"id": UNKNOWN_ID});
        let problem = place(&app, &order_of(&ghost_user, &[(&tea, 1)]))
            .await
            .problem(404, "not_found");
        assert_eq!(problem["resource"], "user");
        assert_eq!(problem["id"], UNKNOWN_ID);

        let ghost_product = json!({"id": UNKNOWN_ID});
        let problem = place(&app, &order_of(&user, &[(&tea, 1), (&ghost_product, 1)]))
            .await
            .problem(404, "not_found");
        assert_eq!(problem["resource"], "product");
        assert_eq!(problem["id"], UNKNOWN_ID);

        assert_eq!(app.stock_of(&tea).await, 5);
        assert_eq!(orders_of(&app, &user).await["total_items"], 0);
    }

    async fn an_invalid_order_is_422_naming_the_field(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let tea = app.create_product("TEA", 250, 5).await;
        let too_many: Vec<(&Value, i64)> = (0..101).map(|_| (&tea, 1)).collect();
        let cases = [
            (json!({"user_id": user["id"], "items": []}), "items"),
            (order_of(&user, &[(&tea, 0)]), "items[0].quantity"),
            (order_of(&user, &[(&tea, 1), (&tea, 10_001)]), "items[1].quantity"),
            (order_of(&user, &[(&tea, -1)]), "items[0].quantity"),
            (order_of(&user, &too_many), "items"),
            (json!({"user_id": "not-a-uuid", "items": [{"product_id": tea["id"], "quantity": 1}]}), "user_id"),
            (json!({"user_id": user["id"], "items": [{"product_id": "tea", "quantity": 1}]}), "items[0].product_id"),
            (json!({"user_id": user["id"], "items": [{"product_id": tea["id"], "quantity": 1.5}]}), "items[0].quantity"),
            (json!({"user_id": user["id"], "items": [{"product_id": tea["id"], "quantity": null}]}), "items[0].quantity"),
            (json!({"user_id": null, "items": [{"product_id": tea["id"], "quantity": 1}]}), "user_id"),
        ];
        for (body, field) in cases {
            let problem = place(&app, &body).await.problem(422, "validation_failed");
            assert_eq!(fields_of(&problem), [field], "body: {body}");
        }
        // The limits themselves are valid: 100 lines, and 10,000 of one product.
        app.patch(&format!("/v1/products/{}", id_of(&tea)), &json!({"stock": 20_000}))
            .await
            .expect(200);
        let hundred: Vec<(&Value, i64)> = (0..100).map(|_| (&tea, 1)).collect();
        let order = place(&app, &order_of(&user, &hundred)).await.expect(201);
        assert_eq!(order["items"][0]["quantity"], 100);
        place(&app, &order_of(&user, &[(&tea, 10_000)])).await.expect(201);
        assert_eq!(app.stock_of(&tea).await, 9_900);
    }

    async fn a_burst_of_orders_never_oversells(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let tea = app.create_product("TEA", 250, 10).await;
        let body = order_of(&user, &[(&tea, 1)]);
        let replies = join_all((0..60).map(|_| {
            let app = app.clone();
            let body = body.clone();
            async move { place(&app, &body).await }
        }))
        .await;
        let counts = tally(&replies, &tea, 1);
        assert_eq!(counts.get(&201), Some(&10), "{counts:?}");
        assert_eq!(counts.get(&409), Some(&50), "{counts:?}");
        assert_eq!(app.stock_of(&tea).await, 0);
        assert_eq!(orders_of(&app, &user).await["total_items"], 10);
    }

    async fn a_burst_of_multi_unit_orders_takes_whole_orders_only(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let tea = app.create_product("TEA", 250, 10).await;
        let body = order_of(&user, &[(&tea, 3)]);
        let replies = join_all((0..20).map(|_| {
            let app = app.clone();
            let body = body.clone();
            async move { place(&app, &body).await }
        }))
        .await;
        let counts = tally(&replies, &tea, 3);
        assert_eq!(counts.get(&201), Some(&3), "{counts:?}");
        assert_eq!(counts.get(&409), Some(&17), "{counts:?}");
        assert_eq!(app.stock_of(&tea).await, 1);
    }

    async fn orders_for_the_same_products_in_opposite_orders_all_succeed(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let tea = app.create_product("TEA", 250, 1000).await;
        let pot = app.create_product("POT", 1000, 1000).await;
        let forward = order_of(&user, &[(&tea, 1), (&pot, 1)]);
        let backward = order_of(&user, &[(&pot, 1), (&tea, 1)]);
        let replies = join_all((0..40).map(|n| {
            let app = app.clone();
            let body = if n % 2 == 0 { forward.clone() } else { backward.clone() };
            async move { place(&app, &body).await }
        }))
        .await;
        for reply in &replies {
            reply.expect(201);
        }
        assert_eq!(app.stock_of(&tea).await, 960);
        assert_eq!(app.stock_of(&pot).await, 960);
    }

    async fn orders_racing_a_price_change_pay_a_price_the_product_had(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let tea = app.create_product("TEA", 100, 1000).await;
        let path = format!("/v1/products/{}", id_of(&tea));
        let body = order_of(&user, &[(&tea, 2)]);
        let orders = join_all((0..30).map(|_| {
            let app = app.clone();
            let body = body.clone();
            async move { place(&app, &body).await }
        }));
        let repricing = async {
            for price in [200, 300, 400] {
                app.patch(&path, &json!({"price_cents": price})).await.expect(200);
            }
        };
        let (replies, ()) = tokio::join!(orders, repricing);
        for reply in &replies {
            let order = reply.expect(201);
            let unit = order["items"][0]["unit_price_cents"].as_i64().expect("a price");
            assert!([100, 200, 300, 400].contains(&unit), "{order}");
            assert_eq!(order["total_cents"], unit * 2, "{order}");
        }
        assert_eq!(app.stock_of(&tea).await, 1000 - 60);
    }

    async fn an_order_short_of_one_product_takes_no_stock_at_all(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let tea = app.create_product("TEA", 250, 10).await;
        let pot = app.create_product("POT", 1000, 2).await;
        let problem = place(&app, &order_of(&user, &[(&tea, 1), (&pot, 5)]))
            .await
            .problem(409, "insufficient_stock");
        assert_eq!(problem["product_id"], pot["id"]);
        assert_eq!(problem["requested"], 5);
        assert_eq!(problem["available"], 2);
        assert_eq!(app.stock_of(&tea).await, 10);
        assert_eq!(app.stock_of(&pot).await, 2);
        assert_eq!(orders_of(&app, &user).await["total_items"], 0);
    }

    async fn a_burst_of_multi_line_orders_takes_whole_orders_and_names_what_was_left(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let mut products = Vec::new();
        for (n, stock) in [(1, 20), (2, 15), (3, 10), (4, 5)] {
            products.push((app.create_product(&format!("HOT-{n}"), 100 * n, stock).await, stock));
        }
        // 201 orders of one to three distinct products, one to three units each, from a fixed
        // pseudo-random sequence: far more than the stock, so most are refused, many of them
        // short of one line while the others would still fit.
        let mut seed: u64 = 0x5eed;
        let mut next = |bound: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % bound
        };
        let bodies: Vec<Vec<(usize, i64)>> = (0..201)
            .map(|_| {
                let mut lines: Vec<(usize, i64)> = Vec::new();
                for _ in 0..=next(3) {
                    let product = next(4) as usize;
                    if lines.iter().all(|(p, _)| *p != product) {
                        lines.push((product, 1 + next(3) as i64));
                    }
                }
                lines
            })
            .collect();
        let replies = join_all(bodies.iter().map(|lines| {
            let app = app.clone();
            let body: Vec<(&Value, i64)> =
                lines.iter().map(|(p, q)| (&products[*p].0, *q)).collect();
            let body = order_of(&user, &body);
            async move { place(&app, &body).await }
        }))
        .await;

        let mut left = Vec::new();
        for (product, _) in &products {
            left.push(app.stock_of(product).await);
        }
        let mut sold = vec![0; products.len()];
        let mut placed = 0;
        for (lines, reply) in bodies.iter().zip(&replies) {
            match reply.status {
                201 => {
                    // All of the order, as asked.
                    let order = reply.expect(201);
                    let items = order["items"].as_array().expect("items");
                    assert_eq!(items.len(), lines.len(), "{order}");
                    for (p, q) in lines {
                        let item = items
                            .iter()
                            .find(|item| item["product_id"] == products[*p].0["id"])
                            .expect("every line is an item");
                        assert_eq!(item["quantity"], *q, "{order}");
                        sold[*p] += q;
                    }
                    placed += 1;
                }
                409 => {
                    let problem = reply.problem(409, "insufficient_stock");
                    let p = products
                        .iter()
                        .position(|(product, _)| product["id"] == problem["product_id"])
                        .expect("the product is one of the order's");
                    let requested = lines
                        .iter()
                        .find(|(line, _)| *line == p)
                        .map(|(_, q)| *q)
                        .expect("the product is one of the order's lines");
                    assert_eq!(problem["requested"], requested, "{problem}");
                    let available = problem["available"].as_i64().expect("available is set");
                    // What was left at the order's turn: short of the line, and no less than
                    // what is left now, since stock only went down.
                    assert!(available < requested, "{problem}");
                    assert!(available >= left[p], "{problem}; {} left now", left[p]);
                }
                other => panic!("a burst answers 201 or 409 only, got {other}: {}", reply.text),
            }
        }
        for (p, (_, stock)) in products.iter().enumerate() {
            assert!(left[p] >= 0);
            assert_eq!(sold[p] + left[p], *stock, "product {p}: sold {} left {}", sold[p], left[p]);
        }
        assert_eq!(orders_of(&app, &user).await["total_items"], placed);
    }

    async fn an_unknown_product_among_concurrent_orders_is_404_for_that_order_alone(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let tea = app.create_product("TEA", 250, 100).await;
        let ghost_product = json!({"id": UNKNOWN_ID});
        let ghost_user = json!({"id": UNKNOWN_ID});
        let good = order_of(&user, &[(&tea, 1)]);
        let bodies: Vec<Value> = (0..40)
            .map(|n| match n {
                13 => order_of(&user, &[(&tea, 1), (&ghost_product, 1)]),
                27 => order_of(&ghost_user, &[(&tea, 1)]),
                _ => good.clone(),
            })
            .collect();
        let replies = join_all(bodies.iter().map(|body| {
            let app = app.clone();
            let body = body.clone();
            async move { place(&app, &body).await }
        }))
        .await;
        for (n, reply) in replies.iter().enumerate() {
            match n {
                13 => {
                    let problem = reply.problem(404, "not_found");
                    assert_eq!(problem["resource"], "product");
                    assert_eq!(problem["id"], UNKNOWN_ID);
                }
                27 => {
                    let problem = reply.problem(404, "not_found");
                    assert_eq!(problem["resource"], "user");
                    assert_eq!(problem["id"], UNKNOWN_ID);
                }
                _ => {
                    reply.expect(201);
                }
            }
        }
        assert_eq!(app.stock_of(&tea).await, 62);
        assert_eq!(orders_of(&app, &user).await["total_items"], 38);
    }

    async fn a_repeated_idempotency_key_answers_the_first_order(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let tea = app.create_product("TEA", 250, 10).await;
        let body = order_of(&user, &[(&tea, 2)]);
        let first = place_with_key(&app, "order-1", &body).await;
        let order = first.expect(201);
        let again = place_with_key(&app, "order-1", &body).await;
        assert_eq!(again.expect(201), order);
        assert_eq!(again.header("location"), first.header("location"));
        assert_eq!(app.stock_of(&tea).await, 8);

        // The same key for another request is refused, and that request is not placed.
        let other = order_of(&user, &[(&tea, 3)]);
        place_with_key(&app, "order-1", &other).await.problem(409, "idempotency_key_reused");
        assert_eq!(app.stock_of(&tea).await, 8);

        // Another key is another order.
        let second = place_with_key(&app, "order-2", &body).await.expect(201);
        assert_ne!(second["id"], order["id"]);
        assert_eq!(app.stock_of(&tea).await, 6);
        assert_eq!(orders_of(&app, &user).await["total_items"], 2);
    }

    async fn concurrent_requests_with_one_key_place_one_order(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let tea = app.create_product("TEA", 250, 100).await;
        let body = order_of(&user, &[(&tea, 1)]);
        let replies = join_all((0..20).map(|_| {
            let app = app.clone();
            let body = body.clone();
            async move { place_with_key(&app, "burst-key", &body).await }
        }))
        .await;
        let ids: HashSet<String> = replies.iter().map(|reply| id_of(&reply.expect(201))).collect();
        assert_eq!(ids.len(), 1, "{ids:?}");
        assert_eq!(app.stock_of(&tea).await, 99);
        assert_eq!(orders_of(&app, &user).await["total_items"], 1);
    }

    async fn a_key_whose_first_attempt_failed_can_be_used_again(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let tea = app.create_product("TEA", 250, 1).await;
        let body = order_of(&user, &[(&tea, 2)]);
        place_with_key(&app, "retry-me", &body).await.problem(409, "insufficient_stock");
        app.patch(&format!("/v1/products/{}", id_of(&tea)), &json!({"stock": 5}))
            .await
            .expect(200);
        let order = place_with_key(&app, "retry-me", &body).await.expect(201);
        assert_eq!(order["items"][0]["quantity"], 2);
        assert_eq!(app.stock_of(&tea).await, 3);
        // From now on the key belongs to that order.
        assert_eq!(place_with_key(&app, "retry-me", &body).await.expect(201), order);
        assert_eq!(app.stock_of(&tea).await, 3);
    }

    async fn an_invalid_idempotency_key_is_422(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let tea = app.create_product("TEA", 250, 10).await;
        let body = order_of(&user, &[(&tea, 1)]);
        let too_long = "k".repeat(256);
        for key in ["", "has space", too_long.as_str()] {
            let problem = place_with_key(&app, key, &body).await.problem(422, "validation_failed");
            assert_eq!(fields_of(&problem), ["Idempotency-Key"], "{key:?}");
        }
        // Bytes outside visible ASCII, as a client may send them raw.
        let non_ascii = reqwest::header::HeaderValue::from_bytes("clé".as_bytes()).unwrap();
        let request = app
            .client
            .post(app.url("/v1/orders"))
            .header("Idempotency-Key", non_ascii)
            .json(&body);
        let problem = app.send(request).await.problem(422, "validation_failed");
        assert_eq!(fields_of(&problem), ["Idempotency-Key"]);
        assert_eq!(app.stock_of(&tea).await, 10);

        // 255 visible characters are a valid key.
        place_with_key(&app, &"k".repeat(255), &body).await.expect(201);
        assert_eq!(app.stock_of(&tea).await, 9);
    }

    async fn every_transition_is_allowed_or_refused_by_the_table(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let tea = app.create_product("TEA", 250, 1000).await;
        // How to reach each state from pending.
        let paths: [(&str, &[&str]); 4] = [
            ("pending", &[]),
            ("paid", &["paid"]),
            ("shipped", &["paid", "shipped"]),
            ("cancelled", &["cancelled"]),
        ];
        let allowed = [
            ("pending", "paid"),
            ("paid", "shipped"),
            ("pending", "cancelled"),
            ("paid", "cancelled"),
        ];
        for (from, path) in paths {
            for to in ["pending", "paid", "shipped", "cancelled"] {
                let order = place(&app, &order_of(&user, &[(&tea, 1)])).await.expect(201);
                let mut current = order.clone();
                for step in path {
                    current = set_status(&app, &order, step).await.expect(200);
                }
                assert_eq!(current["status"], from);
                let reply = set_status(&app, &order, to).await;
                let order_path = format!("/v1/orders/{}", id_of(&order));
                if allowed.contains(&(from, to)) {
                    let moved = reply.expect(200);
                    assert_eq!(moved["status"], to, "{from} -> {to}");
                    assert_eq!(moved["items"], order["items"]);
                    assert_eq!(moved["created_at"], order["created_at"]);
                    assert_eq!(app.get(&order_path).await.expect(200), moved);
                } else {
                    let problem = reply.problem(409, "invalid_transition");
                    assert!(problem["detail"].is_string(), "{from} -> {to}");
                    assert_eq!(app.get(&order_path).await.expect(200), current, "{from} -> {to}");
                }
            }
        }
    }

    async fn cancelling_gives_the_stock_back(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let tea = app.create_product("TEA", 250, 10).await;
        let pot = app.create_product("POT", 1000, 10).await;

        let pending = place(&app, &order_of(&user, &[(&tea, 3), (&pot, 2)])).await.expect(201);
        assert_eq!((app.stock_of(&tea).await, app.stock_of(&pot).await), (7, 8));
        set_status(&app, &pending, "cancelled").await.expect(200);
        assert_eq!((app.stock_of(&tea).await, app.stock_of(&pot).await), (10, 10));

        let paid = place(&app, &order_of(&user, &[(&tea, 4)])).await.expect(201);
        set_status(&app, &paid, "paid").await.expect(200);
        assert_eq!(app.stock_of(&tea).await, 6);
        set_status(&app, &paid, "cancelled").await.expect(200);
        assert_eq!(app.stock_of(&tea).await, 10);

        // A refused cancellation gives nothing back.
        set_status(&app, &paid, "cancelled").await.problem(409, "invalid_transition");
        let shipped = place(&app, &order_of(&user, &[(&tea, 5)])).await.expect(201);
        set_status(&app, &shipped, "paid").await.expect(200);
        set_status(&app, &shipped, "shipped").await.expect(200);
        set_status(&app, &shipped, "cancelled").await.problem(409, "invalid_transition");
        assert_eq!(app.stock_of(&tea).await, 5);
    }

    async fn concurrent_cancellations_give_the_stock_back_once(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let tea = app.create_product("TEA", 250, 10).await;
        let order = place(&app, &order_of(&user, &[(&tea, 4)])).await.expect(201);
        let replies = join_all((0..10).map(|_| {
            let app = app.clone();
            let order = order.clone();
            async move { set_status(&app, &order, "cancelled").await }
        }))
        .await;
        let mut cancelled = 0;
        for reply in &replies {
            match reply.status {
                200 => cancelled += 1,
                _ => {
                    reply.problem(409, "invalid_transition");
                }
            }
        }
        assert_eq!(cancelled, 1);
        assert_eq!(app.stock_of(&tea).await, 10);
    }

    async fn patching_an_unknown_order_or_status_fails(app) {
        app.patch(&format!("/v1/orders/{UNKNOWN_ID}"), &json!({"status": "paid"}))
            .await
            .problem(404, "not_found");
        app.patch("/v1/orders/not-a-uuid", &json!({"status": "paid"}))
            .await
            .problem(404, "not_found");
        app.get(&format!("/v1/orders/{UNKNOWN_ID}")).await.problem(404, "not_found");
        app.get("/v1/orders/not-a-uuid").await.problem(404, "not_found");

        let user = app.create_user("Ada", "ada@example.com").await;
        let tea = app.create_product("TEA", 250, 10).await;
        let order = place(&app, &order_of(&user, &[(&tea, 1)])).await.expect(201);
        let path = format!("/v1/orders/{}", id_of(&order));
        for (body, field) in [
            (json!({"status": "refunded"}), "status"),
            (json!({"status": "PAID"}), "status"),
            (json!({"status": null}), "status"),
            (json!({"status": "paid", "note": "x"}), "note"),
        ] {
            let problem = app.patch(&path, &body).await.problem(422, "validation_failed");
            assert_eq!(fields_of(&problem), [field], "body: {body}");
        }
        app.patch(&path, &json!({})).await.problem(422, "validation_failed");
        assert_eq!(app.get(&path).await.expect(200), order);
    }

    async fn a_users_orders_are_listed_newest_first_with_their_items(app) {
        let ada = app.create_user("Ada", "ada@example.com").await;
        let bob = app.create_user("Bob", "bob@example.com").await;
        let tea = app.create_product("TEA", 250, 1000).await;
        let pot = app.create_product("POT", 1000, 1000).await;
        let mut placed = Vec::new();
        for n in 1..=7 {
            let order = place(&app, &order_of(&ada, &[(&pot, 1), (&tea, n)])).await.expect(201);
            placed.push(order);
        }
        // Someone else's order is not Ada's.
        place(&app, &order_of(&bob, &[(&tea, 1)])).await.expect(201);
        set_status(&app, &placed[1], "paid").await.expect(200);
        set_status(&app, &placed[4], "paid").await.expect(200);
        set_status(&app, &placed[5], "cancelled").await.expect(200);
        let mut newest_first = Vec::new();
        for order in placed.iter().rev() {
            newest_first.push(app.get(&format!("/v1/orders/{}", id_of(order))).await.expect(200));
        }
        let base = format!("/v1/users/{}/orders", id_of(&ada));

        let all = app.get(&base).await.expect(200);
        assert_eq!(all["items"], json!(newest_first));
        assert_eq!(all["total_items"], 7);
        assert_eq!(all["total_pages"], 1);
        assert_eq!(all["page"], 1);
        assert!(all.get("next_cursor").is_none());

        let second = app.get(&format!("{base}?per_page=3&page=2")).await.expect(200);
        assert_eq!(second["items"], json!(newest_first[3..6]));
        assert_eq!(second["total_pages"], 3);
        assert_eq!(second["total_is_estimate"], false);

        // Keyset mode, from the start.
        let mut walked = Vec::new();
        let mut page = app.get(&format!("{base}?per_page=2")).await.expect(200);
        loop {
            walked.extend(page["items"].as_array().unwrap().iter().cloned());
            let Some(cursor) = page["next_cursor"].as_str() else {
                break;
            };
            page = app.get(&format!("{base}?per_page=2&cursor={cursor}")).await.expect(200);
            assert!(page.get("total_items").is_none(), "{page}");
        }
        assert_eq!(walked, newest_first);

        // The status filter, in both modes.
        let paid = app.get(&format!("{base}?status=paid")).await.expect(200);
        assert_eq!(ids_of(&paid), [id_of(&placed[4]), id_of(&placed[1])]);
        assert_eq!(paid["total_items"], 2);
        let first_paid = app.get(&format!("{base}?status=paid&per_page=1")).await.expect(200);
        let cursor = first_paid["next_cursor"].as_str().expect("a second paid order follows");
        let rest = app
            .get(&format!("{base}?status=paid&per_page=1&cursor={cursor}"))
            .await
            .expect(200);
        assert_eq!(ids_of(&rest), [id_of(&placed[1])]);
        assert!(rest.get("next_cursor").is_none());
        let pending = app.get(&format!("{base}?status=pending")).await.expect(200);
        assert_eq!(pending["total_items"], 4);
        let shipped = app.get(&format!("{base}?status=shipped")).await.expect(200);
        assert_eq!(shipped["items"], json!([]));
        assert_eq!(shipped["total_pages"], 0);
        app.get(&format!("{base}?status=lost"))
            .await
            .problem(422, "validation_failed");
    }

    async fn listing_orders_of_an_unknown_user_is_404_and_of_a_new_user_empty(app) {
        let problem = app
            .get(&format!("/v1/users/{UNKNOWN_ID}/orders"))
            .await
            .problem(404, "not_found");
        assert_eq!(problem["resource"], "user");
        app.get("/v1/users/not-a-uuid/orders").await.problem(404, "not_found");

        let user = app.create_user("Ada", "ada@example.com").await;
        let empty = orders_of(&app, &user).await;
        assert_eq!(empty["items"], json!([]));
        assert_eq!(empty["total_items"], 0);
        assert_eq!(empty["total_pages"], 0);
        assert!(empty.get("next_cursor").is_none());
    }
}

on_backends! {
    [sqlite, postgres, mysql, pgbouncer, pgbouncer_txn, mongo]
    #[configure(|config| config.database.max_connections = 1)]
    /// Orders with a key are placed one by one and orders without one together; on one pooled
    /// connection their statements meet in the driver's prepared-statement cache, which must not
    /// mind.
    async fn keyed_and_unkeyed_orders_on_one_connection_both_succeed(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let tea = app.create_product("TEA", 250, 10).await;
        let body = order_of(&user, &[(&tea, 1)]);
        for round in 0..2 {
            place_with_key(&app, &format!("key-{round}"), &body).await.expect(201);
            place(&app, &body).await.expect(201);
        }
        place(&app, &body).await.expect(201);
        place_with_key(&app, "key-last", &body).await.expect(201);
        assert_eq!(app.stock_of(&tea).await, 4);
    }
}
