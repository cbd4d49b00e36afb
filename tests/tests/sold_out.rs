//! Orders a sold-out product cannot cover: refused from the cached product, without a
//! transaction, yet with exactly the answer the transaction gives, and never after the stock
//! came back.

use serde_json::Value;
use tests::{Backend, TestApp, id_of, json, on_every_backend};

const UNKNOWN_ID: &str = "01890a5d-ac96-774b-bcce-b302099a8057";

fn one_of(user: &Value, product: &Value, quantity: i64) -> Value {
    json!({"user_id": user["id"], "items": [{"product_id": product["id"], "quantity": quantity}]})
}

fn refused_from_cache(app: &TestApp) -> u64 {
    app.state.metrics.orders_refused_from_cache.get()
}

fn queries(app: &TestApp) -> u64 {
    app.state.metrics.db_queries.get()
}

/// Caches `product` (by reading it) and places `body` until the 409 comes from the cache; returns
/// the problem. On MongoDB an instance also hears its own writes from the change stream, which may
/// evict the product just after the read that cached it, so the first tries may reach the database.
async fn refusal_from_the_cache(app: &TestApp, product: &Value, body: &Value) -> Value {
    for _ in 0..50 {
        app.stock_of(product).await;
        let before = refused_from_cache(app);
        let problem = app
            .post("/v1/orders", body)
            .await
            .problem(409, "insufficient_stock");
        if refused_from_cache(app) == before + 1 {
            return problem;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("an order the cached product cannot cover was never refused from the cache");
}

on_every_backend! {
    async fn an_order_a_cached_sold_out_product_cannot_cover_takes_no_transaction(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let tea = app.create_product("TEA", 250, 1).await;
        app.post("/v1/orders", &one_of(&user, &tea, 1)).await.expect(201);
        let problem = refusal_from_the_cache(&app, &tea, &one_of(&user, &tea, 2)).await;
        assert_eq!(problem["product_id"], tea["id"]);
        assert_eq!(problem["requested"], 2);
        assert_eq!(problem["available"], 0);

        // With the user cached too, a refusal costs the database nothing. (SQL backends count
        // their statements; on MongoDB the change stream may still evict the product here.)
        if app.db.backend != Backend::Mongo {
            let queries_before = queries(&app);
            let before = refused_from_cache(&app);
            app.post("/v1/orders", &one_of(&user, &tea, 1))
                .await
                .problem(409, "insufficient_stock");
            assert_eq!(refused_from_cache(&app), before + 1);
            assert_eq!(queries(&app), queries_before, "a refusal from the cache queried the database");
        }
    }

    async fn stock_given_back_is_sold_again_after_refusals_from_the_cache(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let tea = app.create_product("TEA", 250, 1).await;
        let first = app.post("/v1/orders", &one_of(&user, &tea, 1)).await.expect(201);
        refusal_from_the_cache(&app, &tea, &one_of(&user, &tea, 1)).await;

        app.patch(&format!("/v1/orders/{}", id_of(&first)), &json!({"status": "cancelled"}))
            .await
            .expect(200);
        app.post("/v1/orders", &one_of(&user, &tea, 1)).await.expect(201);
        assert_eq!(app.stock_of(&tea).await, 0);
    }

    async fn a_cached_product_still_answers_the_exact_quantity_left(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let tea = app.create_product("TEA", 250, 3).await;
        let jam = app.create_product("JAM", 400, 5).await;
        let both = json!({"user_id": user["id"], "items": [
            {"product_id": jam["id"], "quantity": 6},
            {"product_id": tea["id"], "quantity": 2},
        ]});
        app.stock_of(&tea).await;
        let problem = refusal_from_the_cache(&app, &jam, &both).await;
        assert_eq!(problem["product_id"], jam["id"]);
        assert_eq!(problem["requested"], 6);
        assert_eq!(problem["available"], 5);
        assert_eq!(app.stock_of(&tea).await, 3);
        assert_eq!(app.stock_of(&jam).await, 5);
    }

    async fn an_unknown_user_is_404_even_for_a_cached_sold_out_product(app) {
        let tea = app.create_product("TEA", 250, 0).await;
        assert_eq!(app.stock_of(&tea).await, 0);
        let body = json!({"user_id": UNKNOWN_ID, "items": [{"product_id": tea["id"], "quantity": 1}]});
        let problem = app.post("/v1/orders", &body).await.problem(404, "not_found");
        assert_eq!(problem["resource"], "user");
    }

    async fn a_retried_key_replays_its_order_after_the_product_sold_out(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let tea = app.create_product("TEA", 250, 1).await;
        let body = one_of(&user, &tea, 1);
        let send = || {
            app.client
                .post(app.url("/v1/orders"))
                .header("Idempotency-Key", "flash-1")
                .json(&body)
        };
        let first = app.send(send()).await.expect(201);
        assert_eq!(app.stock_of(&tea).await, 0);
        let again = app.send(send()).await.expect(201);
        assert_eq!(again, first);
    }
}
