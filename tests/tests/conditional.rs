//! Conditional requests (API.md, General): strong ETags on every single resource, 304 for a
//! matching If-None-Match, 412 for a stale If-Match with nothing changed — and the
//! Consistency-Token every answer carries. On every backend.

use futures::future::join_all;
use serde_json::Value;
use tests::{Reply, TestApp, id_of, json, on_every_backend};

#[track_caller]
fn etag(reply: &Reply) -> String {
    let tag = reply
        .header("etag")
        .unwrap_or_else(|| panic!("no ETag: {reply:?}"));
    assert!(
        tag.starts_with('"') && tag.ends_with('"'),
        "not a strong ETag: {tag}"
    );
    tag.to_owned()
}

async fn get_if_none_match(app: &TestApp, path: &str, tags: &str) -> Reply {
    app.send(app.client.get(app.url(path)).header("if-none-match", tags))
        .await
}

async fn patch_if_match(app: &TestApp, path: &str, tag: &str, body: &Value) -> Reply {
    app.send(
        app.client
            .patch(app.url(path))
            .header("if-match", tag)
            .json(body),
    )
    .await
}

async fn delete_if_match(app: &TestApp, path: &str, tag: &str) -> Reply {
    app.send(app.client.delete(app.url(path)).header("if-match", tag))
        .await
}

on_every_backend! {
    async fn every_single_resource_answer_carries_an_etag_that_follows_its_changes(app) {
        let created = app.post("/v1/products", &json!({"sku": "E-1", "name": "Tagged", "price_cents": 100, "stock": 5})).await;
        let product = created.expect(201);
        let path = format!("/v1/products/{}", id_of(&product));
        let first = etag(&created);
        assert_eq!(etag(&app.get(&path).await), first, "GET and create disagree");
        let patched = app.patch(&path, &json!({"price_cents": 120})).await;
        let second = etag(&patched);
        assert_ne!(second, first);
        assert_eq!(etag(&app.get(&path).await), second);
        // `{}` changes nothing, the tag included.
        assert_eq!(etag(&app.patch(&path, &json!({})).await), second);
        // Stock moved by an order is a change of the product.
        let user = app.create_user("Buyer", "buyer@example.com").await;
        let placed = app
            .post("/v1/orders", &json!({"user_id": id_of(&user), "items": [{"product_id": id_of(&product), "quantity": 2}]}))
            .await;
        let order_tag = etag(&placed);
        let order_path = format!("/v1/orders/{}", id_of(&placed.expect(201)));
        let third = etag(&app.get(&path).await);
        assert_ne!(third, second, "the stock moved but the ETag did not");
        assert_eq!(etag(&app.get(&order_path).await), order_tag);
        let paid = app.patch(&order_path, &json!({"status": "paid"})).await;
        assert_ne!(etag(&paid), order_tag);
        // Users too.
        let user_path = format!("/v1/users/{}", id_of(&user));
        let before = etag(&app.get(&user_path).await);
        let renamed = app.patch(&user_path, &json!({"name": "Buyer Two"})).await;
        assert_ne!(etag(&renamed), before);
    }

    async fn a_get_naming_the_current_etag_is_304_without_a_body(app) {
        let product = app.create_product("N-1", 100, 5).await;
        let path = format!("/v1/products/{}", id_of(&product));
        let tag = etag(&app.get(&path).await);
        for header in [tag.clone(), format!("\"0\", {tag}"), "*".to_owned(), format!("W/{tag}")] {
            let reply = get_if_none_match(&app, &path, &header).await;
            reply.expect_empty(304);
            assert_eq!(reply.header("etag"), Some(tag.as_str()), "If-None-Match: {header}");
        }
        let stale = get_if_none_match(&app, &path, "\"0\"").await;
        assert_eq!(stale.expect(200), product);
        // Users and orders alike.
        let user = app.create_user("Ada", "ada@example.com").await;
        let user_path = format!("/v1/users/{}", id_of(&user));
        let user_tag = etag(&app.get(&user_path).await);
        get_if_none_match(&app, &user_path, &user_tag).await.expect_empty(304);
        let order = app
            .post("/v1/orders", &json!({"user_id": id_of(&user), "items": [{"product_id": id_of(&product), "quantity": 1}]}))
            .await;
        let order_path = format!("/v1/orders/{}", id_of(&order.expect(201)));
        let order_tag = etag(&app.get(&order_path).await);
        get_if_none_match(&app, &order_path, &order_tag).await.expect_empty(304);
    }

    async fn a_stale_if_match_is_412_and_changes_nothing(app) {
        let product = app.create_product("M-1", 100, 5).await;
        let path = format!("/v1/products/{}", id_of(&product));
        let original = etag(&app.get(&path).await);
        let changed = patch_if_match(&app, &path, &original, &json!({"name": "First"})).await;
        changed.expect(200);
        let stale = patch_if_match(&app, &path, &original, &json!({"name": "Second"})).await;
        stale.problem(412, "precondition_failed");
        assert_eq!(app.get(&path).await.expect(200)["name"], "First");
        delete_if_match(&app, &path, &original).await.problem(412, "precondition_failed");
        // A weak or foreign tag never matches; `*` matches whatever exists.
        patch_if_match(&app, &path, "W/\"2\"", &json!({"name": "Weak"})).await.problem(412, "precondition_failed");
        patch_if_match(&app, &path, "*", &json!({"name": "Any"})).await.expect(200);
        let current = etag(&app.get(&path).await);
        delete_if_match(&app, &path, &current).await.expect_empty(204);
        // On a deleted resource If-Match is 404, not 412.
        patch_if_match(&app, &path, &current, &json!({"name": "Gone"})).await.problem(404, "not_found");
        delete_if_match(&app, &path, &current).await.problem(404, "not_found");

        let user = app.create_user("Ada", "ada@example.com").await;
        let user_path = format!("/v1/users/{}", id_of(&user));
        let tag = etag(&app.get(&user_path).await);
        app.patch(&user_path, &json!({"name": "Ada L."})).await.expect(200);
        patch_if_match(&app, &user_path, &tag, &json!({"name": "Lost"})).await.problem(412, "precondition_failed");
        patch_if_match(&app, &user_path, &tag, &json!({})).await.problem(412, "precondition_failed");
        delete_if_match(&app, &user_path, &tag).await.problem(412, "precondition_failed");
        assert_eq!(app.get(&user_path).await.expect(200)["name"], "Ada L.");
    }

    async fn creating_a_user_answers_the_etag_a_get_then_shows(app) {
        let created = app.post("/v1/users", &json!({"name": "Ada", "email": "ada@example.com", "password": "correct horse battery"})).await;
        let tag = etag(&created);
        let path = format!("/v1/users/{}", id_of(&created.expect(201)));
        assert_eq!(etag(&app.get(&path).await), tag, "GET and create disagree");
        patch_if_match(&app, &path, &tag, &json!({"name": "Ada L."})).await.expect(200);
    }

    async fn if_match_on_a_deleted_user_is_404(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let path = format!("/v1/users/{}", id_of(&user));
        let tag = etag(&app.get(&path).await);
        delete_if_match(&app, &path, &tag).await.expect_empty(204);
        patch_if_match(&app, &path, &tag, &json!({"name": "Gone"})).await.problem(404, "not_found");
        patch_if_match(&app, &path, "*", &json!({"name": "Gone"})).await.problem(404, "not_found");
        delete_if_match(&app, &path, &tag).await.problem(404, "not_found");
        delete_if_match(&app, &path, "*").await.problem(404, "not_found");
    }

    async fn of_concurrent_patches_presenting_one_etag_exactly_one_wins(app) {
        let product = app.create_product("C-1", 100, 5).await;
        let path = format!("/v1/products/{}", id_of(&product));
        let tag = etag(&app.get(&path).await);
        let replies = join_all((0..20).map(|n| {
            let (app, path, tag) = (&app, &path, &tag);
            async move { patch_if_match(app, path, tag, &json!({"price_cents": 1000 + n})).await }
        }))
        .await;
        let won: Vec<&Reply> = replies.iter().filter(|reply| reply.status == 200).collect();
        assert_eq!(won.len(), 1, "{:?}", replies.iter().map(|r| r.status).collect::<Vec<_>>());
        for reply in replies.iter().filter(|reply| reply.status != 200) {
            reply.problem(412, "precondition_failed");
        }
        assert_eq!(app.get(&path).await.expect(200), won[0].json());
    }

    async fn cancelling_with_a_stale_if_match_is_412_and_leaves_the_stock(app) {
        let product = app.create_product("S-1", 100, 5).await;
        let product_path = format!("/v1/products/{}", id_of(&product));
        let user = app.create_user("Ada", "ada@example.com").await;
        let placed = app
            .post("/v1/orders", &json!({"user_id": id_of(&user), "items": [{"product_id": id_of(&product), "quantity": 2}]}))
            .await;
        let stale = etag(&placed);
        let path = format!("/v1/orders/{}", id_of(&placed.expect(201)));
        app.patch(&path, &json!({"status": "paid"})).await.expect(200);
        patch_if_match(&app, &path, &stale, &json!({"status": "cancelled"})).await.problem(412, "precondition_failed");
        assert_eq!(app.get(&path).await.expect(200)["status"], "paid");
        assert_eq!(app.get(&product_path).await.expect(200)["stock"], 3);
        let current = etag(&app.get(&path).await);
        patch_if_match(&app, &path, &current, &json!({"status": "cancelled"})).await.expect(200);
        assert_eq!(app.get(&product_path).await.expect(200)["stock"], 5);
    }

    async fn every_answer_names_a_consistency_token(app) {
        let created = app.post("/v1/products", &json!({"sku": "T-1", "name": "Token", "price_cents": 1, "stock": 1})).await;
        let token = created.header("consistency-token").expect("a token on a write").to_owned();
        let path = format!("/v1/products/{}", id_of(&created.expect(201)));
        let read = app.send(app.client.get(app.url(&path)).header("consistency-token", &token)).await;
        read.expect(200);
        assert!(read.header("consistency-token").is_some(), "a read answers its token");
        let listed = app.send(app.client.get(app.url("/v1/products")).header("consistency-token", &token)).await;
        listed.expect(200);
        assert!(listed.header("consistency-token").is_some());
        // A token the service never issued is no reason to fail a read.
        app.send(app.client.get(app.url(&path)).header("consistency-token", "garbage")).await.expect(200);
    }
}
