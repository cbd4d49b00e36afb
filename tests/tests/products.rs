//! `/v1/products`: create, read, change, delete, and the listing in both page modes.

use std::collections::HashSet;

use serde_json::Value;
use tests::{TestApp, fields_of, id_of, ids_of, json, on_every_backend};

/// A timestamp as a string that sorts chronologically: the fraction padded to six digits (the
/// service writes 0, 3 or 6 of them).
fn instant(timestamp: &Value) -> String {
    let text = timestamp.as_str().expect("a timestamp is a string");
    let text = text.strip_suffix('Z').expect("a timestamp ends in Z");
    let (seconds, fraction) = text.split_once('.').unwrap_or((text, ""));
    format!("{seconds}.{fraction:0<6}")
}

fn valid_product(sku: &str) -> Value {
    json!({"sku": sku, "name": "Teapot", "price_cents": 1299, "stock": 7})
}

async fn total_products(app: &TestApp) -> u64 {
    app.get("/v1/products").await.expect(200)["total_items"]
        .as_u64()
        .expect("page mode has totals")
}

/// Walks a listing from its first page by `next_cursor` and returns every id in the order seen.
async fn walk(app: &TestApp, query: &str) -> Vec<String> {
    let separator = if query.is_empty() { "" } else { "&" };
    let mut seen = Vec::new();
    let mut page = app
        .get(&format!("/v1/products?per_page=3{separator}{query}"))
        .await
        .expect(200);
    loop {
        seen.extend(ids_of(&page));
        let Some(cursor) = page["next_cursor"].as_str() else {
            break;
        };
        page = app
            .get(&format!(
                "/v1/products?per_page=3&cursor={cursor}{separator}{query}"
            ))
            .await
            .expect(200);
        assert!(
            page.get("total_items").is_none() && page.get("page").is_none(),
            "keyset mode has no totals: {page}"
        );
    }
    seen
}

on_every_backend! {
    async fn creating_a_product_answers_201_with_its_location_and_fields(app) {
        let reply = app.post("/v1/products", &valid_product("TEA-1")).await;
        let product = reply.expect(201);
        let id = id_of(&product);
        assert_eq!(reply.header("location"), Some(format!("/v1/products/{id}").as_str()));
        assert_eq!(product["sku"], "TEA-1");
        assert_eq!(product["name"], "Teapot");
        assert_eq!(product["price_cents"], 1299);
        assert_eq!(product["stock"], 7);
        assert!(product["created_at"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert_eq!(product["created_at"], product["updated_at"]);
    }

    async fn a_product_reads_back_exactly_as_created(app) {
        let created = app.create_product("READ-1", 450, 3).await;
        let read = app.get(&format!("/v1/products/{}", id_of(&created))).await.expect(200);
        assert_eq!(read, created);
    }

    async fn a_taken_sku_is_409(app) {
        app.create_product("DUP-1", 100, 1).await;
        let problem = app.post("/v1/products", &valid_product("DUP-1")).await.problem(409, "sku_taken");
        assert_eq!(fields_of(&problem), ["sku"]);
        assert_eq!(total_products(&app).await, 1);
        // SKUs are compared exactly: another case is another SKU.
        app.create_product("dup-1", 100, 1).await;
    }

    async fn invalid_fields_are_422_naming_the_field(app) {
        let with = |field: &str, value: Value| {
            let mut body = valid_product("VALID-1");
            body[field] = value;
            body
        };
        let cases = [
            (with("sku", json!("")), "sku"),
            (with("sku", json!("   ")), "sku"),
            (with("sku", json!("S".repeat(65))), "sku"),
            (with("name", json!("")), "name"),
            (with("name", json!("n".repeat(201))), "name"),
            (with("price_cents", json!(-1)), "price_cents"),
            (with("price_cents", json!(1_000_000_001_i64)), "price_cents"),
            (with("price_cents", json!(1.5)), "price_cents"),
            (with("price_cents", json!("10")), "price_cents"),
            (with("stock", json!(-1)), "stock"),
            (with("stock", json!(1_000_000_001_i64)), "stock"),
            (with("stock", json!(5_000_000_000_i64)), "stock"),
            (with("colour", json!("red")), "colour"),
            (with("sku", Value::Null), "sku"),
            (with("name", Value::Null), "name"),
            (with("price_cents", Value::Null), "price_cents"),
            (with("stock", Value::Null), "stock"),
        ];
        for (body, field) in cases {
            let problem = app.post("/v1/products", &body).await.problem(422, "validation_failed");
            assert_eq!(fields_of(&problem), [field], "body: {body}");
        }
        assert_eq!(total_products(&app).await, 0);

        // The limits themselves are valid.
        let mut edge = valid_product(&"S".repeat(64));
        edge["name"] = json!("n".repeat(200));
        edge["price_cents"] = json!(1_000_000_000_i64);
        edge["stock"] = json!(1_000_000_000_i64);
        app.post("/v1/products", &edge).await.expect(201);
        // Lengths count characters, not bytes, and the text comes back as sent.
        let mut wide = valid_product(&"é".repeat(64));
        wide["name"] = json!("🫖".repeat(200));
        let product = app.post("/v1/products", &wide).await.expect(201);
        assert_eq!(product["sku"], wide["sku"]);
        assert_eq!(product["name"], wide["name"]);
        let mut free = valid_product("FREE-1");
        free["price_cents"] = json!(0);
        free["stock"] = json!(0);
        app.post("/v1/products", &free).await.expect(201);
    }

    async fn patching_changes_only_the_fields_sent_and_moves_updated_at(app) {
        let created = app.create_product("PATCH-1", 100, 5).await;
        let path = format!("/v1/products/{}", id_of(&created));
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;

        let renamed = app.patch(&path, &json!({"name": "Kettle"})).await.expect(200);
        assert_eq!(renamed["name"], "Kettle");
        assert_eq!(renamed["price_cents"], 100);
        assert_eq!(renamed["stock"], 5);
        assert_eq!(renamed["sku"], "PATCH-1");
        assert_eq!(renamed["created_at"], created["created_at"]);
        assert!(instant(&renamed["updated_at"]) > instant(&created["updated_at"]));
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;

        let repriced = app.patch(&path, &json!({"price_cents": 250, "stock": 0})).await.expect(200);
        assert_eq!(repriced["name"], "Kettle");
        assert_eq!(repriced["price_cents"], 250);
        assert_eq!(repriced["stock"], 0);
        assert!(instant(&repriced["updated_at"]) > instant(&renamed["updated_at"]));

        assert_eq!(app.get(&path).await.expect(200), repriced);
    }

    async fn the_sku_cannot_be_patched_and_nothing_changes(app) {
        let created = app.create_product("FIXED-1", 100, 5).await;
        let path = format!("/v1/products/{}", id_of(&created));
        let problem = app.patch(&path, &json!({"sku": "X"})).await.problem(422, "validation_failed");
        assert_eq!(fields_of(&problem), ["sku"]);
        let problem = app
            .patch(&path, &json!({"sku": "X", "name": "Changed"}))
            .await
            .problem(422, "validation_failed");
        assert_eq!(fields_of(&problem), ["sku"]);
        for (body, field) in [
            (json!({"name": ""}), "name"),
            (json!({"name": null}), "name"),
            (json!({"price_cents": -1}), "price_cents"),
            (json!({"stock": 1_000_000_001_i64}), "stock"),
            (json!({"stock": null}), "stock"),
            (json!({"colour": "red"}), "colour"),
        ] {
            let problem = app.patch(&path, &body).await.problem(422, "validation_failed");
            assert_eq!(fields_of(&problem), [field], "body: {body}");
        }
        assert_eq!(app.get(&path).await.expect(200), created);
    }

    async fn an_empty_patch_returns_the_product_unchanged(app) {
        let created = app.create_product("SAME-1", 100, 5).await;
        let path = format!("/v1/products/{}", id_of(&created));
        assert_eq!(app.patch(&path, &json!({})).await.expect(200), created);
        assert_eq!(app.get(&path).await.expect(200), created);
    }

    async fn an_unknown_product_is_404(app) {
        for path in [
            "/v1/products/01890a5d-ac96-774b-bcce-b302099a8057".to_owned(),
            "/v1/products/not-a-uuid".to_owned(),
        ] {
            app.get(&path).await.problem(404, "not_found");
            app.patch(&path, &json!({"name": "Ghost"})).await.problem(404, "not_found");
            app.delete(&path).await.problem(404, "not_found");
        }
    }

    async fn a_deleted_product_is_gone(app) {
        let created = app.create_product("GONE-1", 100, 5).await;
        let path = format!("/v1/products/{}", id_of(&created));
        app.get(&path).await.expect(200);
        let reply = app.delete(&path).await;
        assert_eq!(reply.status, 204);
        assert!(reply.text.is_empty());
        app.get(&path).await.problem(404, "not_found");
        app.delete(&path).await.problem(404, "not_found");
        // Its SKU is free again.
        app.create_product("GONE-1", 100, 5).await;
    }

    async fn a_product_that_was_ever_ordered_cannot_be_deleted(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let ordered = app.create_product("KEPT-1", 100, 5).await;
        let path = format!("/v1/products/{}", id_of(&ordered));
        let order = app
            .post(
                "/v1/orders",
                &json!({"user_id": user["id"], "items": [{"product_id": ordered["id"], "quantity": 1}]}),
            )
            .await
            .expect(201);
        app.delete(&path).await.problem(409, "product_has_orders");
        // Also when the only order was cancelled: orders are records.
        app.patch(&format!("/v1/orders/{}", id_of(&order)), &json!({"status": "cancelled"}))
            .await
            .expect(200);
        app.delete(&path).await.problem(409, "product_has_orders");
        assert_eq!(app.get(&path).await.expect(200)["stock"], 5);
    }

    async fn the_listing_is_newest_first_with_page_totals(app) {
        let mut created = Vec::new();
        for n in 0..5 {
            created.push(id_of(&app.create_product(&format!("LIST-{n}"), 100, n).await));
        }
        let newest_first: Vec<String> = created.iter().rev().cloned().collect();

        let first = app.get("/v1/products?per_page=2").await.expect(200);
        assert_eq!(ids_of(&first), newest_first[..2]);
        assert_eq!(first["page"], 1);
        assert_eq!(first["per_page"], 2);
        assert_eq!(first["total_items"], 5);
        assert_eq!(first["total_pages"], 3);
        assert_eq!(first["total_is_estimate"], false);
        assert!(first["next_cursor"].is_string());

        let last = app.get("/v1/products?per_page=2&page=3").await.expect(200);
        assert_eq!(ids_of(&last), newest_first[4..]);
        assert!(last.get("next_cursor").is_none(), "{last}");

        let past = app.get("/v1/products?per_page=2&page=4").await.expect(200);
        assert_eq!(ids_of(&past), Vec::<String>::new());
        assert_eq!(past["total_items"], 5);

        let all = app.get("/v1/products").await.expect(200);
        assert_eq!(ids_of(&all), newest_first);
        assert_eq!(all["per_page"], 20);
        assert_eq!(all["total_pages"], 1);
        assert!(all.get("next_cursor").is_none());
    }

    async fn an_empty_listing_has_zero_pages(app) {
        let empty = app.get("/v1/products").await.expect(200);
        assert_eq!(ids_of(&empty), Vec::<String>::new());
        assert_eq!(empty["total_items"], 0);
        assert_eq!(empty["total_pages"], 0);
    }

    async fn the_in_stock_filter_applies_in_both_modes(app) {
        let mut stocked = Vec::new();
        let mut sold_out = Vec::new();
        for n in 0..8 {
            let stock = if n % 2 == 0 { 0 } else { n };
            let id = id_of(&app.create_product(&format!("FILTER-{n}"), 100, stock).await);
            if stock > 0 {
                stocked.push(id);
            } else {
                sold_out.push(id);
            }
        }
        // One more that runs out through an order, and one restocked from zero.
        let user = app.create_user("Bo", "bo@example.com").await;
        let emptied = app.create_product("FILTER-EMPTIED", 100, 2).await;
        app.post(
            "/v1/orders",
            &json!({"user_id": user["id"], "items": [{"product_id": emptied["id"], "quantity": 2}]}),
        )
        .await
        .expect(201);
        sold_out.push(id_of(&emptied));
        let restocked = app.create_product("FILTER-RESTOCKED", 100, 0).await;
        app.patch(&format!("/v1/products/{}", id_of(&restocked)), &json!({"stock": 4}))
            .await
            .expect(200);
        stocked.push(id_of(&restocked));
        stocked.reverse();
        sold_out.reverse();

        for (filter, expected) in [("in_stock=true", &stocked), ("in_stock=false", &sold_out)] {
            let page = app.get(&format!("/v1/products?per_page=100&{filter}")).await.expect(200);
            assert_eq!(&ids_of(&page), expected, "{filter}");
            assert_eq!(page["total_items"], expected.len(), "{filter}");
            for product in page["items"].as_array().unwrap() {
                let stock = product["stock"].as_i64().unwrap();
                assert_eq!(stock > 0, filter == "in_stock=true", "{filter}: {product}");
            }
            let second = app.get(&format!("/v1/products?per_page=3&page=2&{filter}")).await.expect(200);
            assert_eq!(ids_of(&second), expected[3..6.min(expected.len())], "{filter}");
            assert_eq!(second["total_pages"], expected.len().div_ceil(3), "{filter}");
            assert_eq!(&walk(&app, filter).await, expected, "{filter} by cursor");
        }
        assert_eq!(walk(&app, "").await.len(), stocked.len() + sold_out.len());
    }

    async fn a_cursor_walk_visits_every_product_once(app) {
        let mut created = Vec::new();
        for n in 0..10 {
            created.push(id_of(&app.create_product(&format!("WALK-{n}"), 100, 1).await));
        }
        created.reverse();
        let seen = walk(&app, "").await;
        assert_eq!(seen, created);
        assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 10);

        // A walk may also start from any page of page mode.
        let second = app.get("/v1/products?per_page=3&page=2").await.expect(200);
        let cursor = second["next_cursor"].as_str().expect("more follow page 2");
        let rest = app
            .get(&format!("/v1/products?per_page=100&cursor={cursor}"))
            .await
            .expect(200);
        assert_eq!(ids_of(&rest), created[6..]);
        assert!(rest.get("next_cursor").is_none());

        // Products created during the walk do not disturb it.
        let first = app.get("/v1/products?per_page=5").await.expect(200);
        app.create_product("WALK-LATE", 100, 1).await;
        let cursor = first["next_cursor"].as_str().unwrap();
        let rest = app
            .get(&format!("/v1/products?per_page=100&cursor={cursor}"))
            .await
            .expect(200);
        assert_eq!(ids_of(&rest), created[5..]);
    }

    async fn bad_listing_parameters_are_422(app) {
        app.create_product("PARAM-1", 100, 1).await;
        app.create_product("PARAM-2", 100, 1).await;
        let cursor = app.get("/v1/products?per_page=1").await.expect(200)["next_cursor"]
            .as_str()
            .expect("a second product follows")
            .to_owned();
        for (query, field) in [
            ("page=0", "page"),
            ("per_page=0", "per_page"),
            ("per_page=101", "per_page"),
            ("in_stock=maybe", "in_stock"),
            ("cursor=not-a-cursor", "cursor"),
            (&format!("cursor={cursor}&page=1") as &str, "cursor"),
        ] {
            let problem = app.get(&format!("/v1/products?{query}")).await.problem(422, "validation_failed");
            assert_eq!(fields_of(&problem), [field], "{query}");
        }
        // A cursor issued for another resource is not a product cursor.
        app.create_user("Cy", "cy@example.com").await;
        app.create_user("Di", "di@example.com").await;
        let users = app.get("/v1/users?per_page=1").await.expect(200);
        let user_cursor = users["next_cursor"].as_str().unwrap();
        app.get(&format!("/v1/products?cursor={user_cursor}"))
            .await
            .problem(422, "validation_failed");
    }
}
