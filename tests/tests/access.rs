//! Identity and access, as API.md states it: logging in and out, what each caller may do on every
//! route (anonymous, another customer, the owner, an admin), revocation, expiry, the login
//! throttle and the bounded hashing queue — on every backend.

use std::time::Duration;

use futures::future::join_all;
use serde_json::Value;
use tests::{
    ADMIN_EMAIL, Backend, Customer, Reply, TestApp, USER_PASSWORD, authorized_client, id_of, json,
    on_backends, on_every_backend, run_with, test_config,
};

async fn as_client(app: &TestApp, client: &reqwest::Client, method: &str, path: &str) -> Reply {
    as_client_with(app, client, method, path, None).await
}

async fn as_client_with(
    app: &TestApp,
    client: &reqwest::Client,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Reply {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
    let mut request = client.request(method, app.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    app.send(request).await
}

#[track_caller]
fn unauthenticated(reply: &Reply) {
    reply.problem(401, "unauthenticated");
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer"),
        "{reply:?}"
    );
}

async fn login(app: &TestApp, email: &str, password: &str) -> Reply {
    app.send(
        app.anonymous
            .post(app.url("/v1/sessions"))
            .json(&json!({"email": email, "password": password})),
    )
    .await
}

/// A customer with a product in stock and one order of theirs.
struct Shop {
    ada: Customer,
    bob: Customer,
    product: String,
    order: String,
}

async fn shop(app: &TestApp) -> Shop {
    let ada = app.sign_up("Ada", "ada@example.com").await;
    let bob = app.sign_up("Bob", "bob@example.com").await;
    let product = id_of(&app.create_product("SKU-1", 250, 10).await);
    let order = as_client_with(
        app,
        &ada.client,
        "POST",
        "/v1/orders",
        Some(json!({"items": [{"product_id": product, "quantity": 1}]})),
    )
    .await
    .expect(201);
    assert_eq!(
        order["user_id"], ada.id,
        "an order without user_id is the caller's"
    );
    Shop {
        ada,
        bob,
        product,
        order: id_of(&order),
    }
}

on_every_backend! {
    async fn logging_in_answers_a_token_shown_once_and_the_user(app) {
        app.sign_up("Ada", "ada@example.com").await;
        let reply = login(&app, "ADA@example.com", USER_PASSWORD).await;
        let session = reply.expect(201);
        assert_eq!(reply.header("location"), Some("/v1/sessions/current"));
        let token = session["token"].as_str().expect("a token");
        assert!(token.len() >= 43, "fewer than 256 bits: {token}");
        assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(session["user"]["email"], "ada@example.com");
        assert_eq!(session["user"]["role"], "customer");
        assert!(session["expires_at"].as_str().is_some_and(|at| at.ends_with('Z')));
        // The database keeps only a hash.
        let hashes = app.db.stored_session_hashes().await;
        assert!(!hashes.is_empty(), "no session is stored");
        assert!(!hashes.iter().any(|hash| hash.contains(token)), "a token is stored as sent");
        let me = as_client(&app, &authorized_client(token), "GET", &format!("/v1/users/{}", id_of(&session["user"]))).await;
        assert_eq!(me.expect(200)["email"], "ada@example.com");
    }

    async fn an_unknown_email_and_a_wrong_password_get_the_same_answer(app) {
        app.sign_up("Ada", "ada@example.com").await;
        let wrong = login(&app, "ada@example.com", "not the password").await;
        let unknown = login(&app, "nobody@example.com", USER_PASSWORD).await;
        let wrong_body = wrong.problem(401, "invalid_credentials");
        let unknown_body = unknown.problem(401, "invalid_credentials");
        assert_eq!(wrong_body, unknown_body);
        assert_eq!(wrong.header("www-authenticate"), Some("Bearer"));
        login(&app, "not an email", USER_PASSWORD).await.problem(401, "invalid_credentials");
    }

    async fn users_who_are_not_active_cannot_log_in(app) {
        for status in ["inactive", "suspended"] {
            let email = format!("{status}@example.com");
            app.post("/v1/users", &json!({"name": status, "email": email, "password": USER_PASSWORD, "status": status}))
                .await
                .expect(201);
            login(&app, &email, USER_PASSWORD).await.problem(403, "forbidden");
            // A wrong password is still only a wrong password.
            login(&app, &email, "not the password").await.problem(401, "invalid_credentials");
        }
    }

    async fn every_protected_route_needs_a_valid_token(app) {
        let shop = shop(&app).await;
        let user = format!("/v1/users/{}", shop.ada.id);
        let order = format!("/v1/orders/{}", shop.order);
        let product = format!("/v1/products/{}", shop.product);
        let routes = [
            ("GET", "/v1/users".to_owned()),
            ("GET", user.clone()),
            ("PATCH", user.clone()),
            ("DELETE", user.clone()),
            ("GET", format!("{user}/orders")),
            ("POST", "/v1/products".to_owned()),
            ("PATCH", product.clone()),
            ("DELETE", product.clone()),
            ("POST", "/v1/orders".to_owned()),
            ("GET", order.clone()),
            ("PATCH", order.clone()),
            ("DELETE", "/v1/sessions/current".to_owned()),
        ];
        let forged = authorized_client(&"A".repeat(43));
        let garbled = authorized_client("not a token");
        for (method, path) in &routes {
            let body = (*method == "POST" || *method == "PATCH").then(|| json!({}));
            for client in [&app.anonymous, &forged, &garbled] {
                let reply = as_client_with(&app, client, method, path, body.clone()).await;
                unauthenticated(&reply);
            }
        }
        // Public routes answer anyone.
        as_client(&app, &app.anonymous, "GET", "/v1/products").await.expect(200);
        as_client(&app, &app.anonymous, "GET", &product).await.expect(200);
    }

    async fn users_see_and_change_only_themselves(app) {
        let shop = shop(&app).await;
        let (ada, bob) = (&shop.ada, &shop.bob);
        let ada_path = format!("/v1/users/{}", ada.id);
        // The owner.
        as_client(&app, &ada.client, "GET", &ada_path).await.expect(200);
        let renamed = as_client_with(&app, &ada.client, "PATCH", &ada_path, Some(json!({"name": "Ada L."}))).await;
        assert_eq!(renamed.expect(200)["name"], "Ada L.");
        as_client(&app, &ada.client, "GET", &format!("{ada_path}/orders")).await.expect(200);
        // Another customer: as if Ada did not exist.
        as_client(&app, &bob.client, "GET", &ada_path).await.problem(404, "not_found");
        as_client_with(&app, &bob.client, "PATCH", &ada_path, Some(json!({"name": "Eve"}))).await.problem(404, "not_found");
        as_client(&app, &bob.client, "DELETE", &ada_path).await.problem(404, "not_found");
        as_client(&app, &bob.client, "GET", &format!("{ada_path}/orders")).await.problem(404, "not_found");
        // Listing is for admins.
        as_client(&app, &ada.client, "GET", "/v1/users").await.problem(403, "forbidden");
        app.get("/v1/users").await.expect(200);
        // Status and role are the admin's to change.
        for change in [json!({"status": "suspended"}), json!({"role": "admin"})] {
            as_client_with(&app, &ada.client, "PATCH", &ada_path, Some(change)).await.problem(403, "forbidden");
        }
        let user = app.get(&ada_path).await.expect(200);
        assert_eq!((user["status"].as_str(), user["role"].as_str()), (Some("active"), Some("customer")));
        // The admin sees and changes anyone.
        app.patch(&ada_path, &json!({"name": "Ada Lovelace"})).await.expect(200);
        app.get(&format!("{ada_path}/orders")).await.expect(200);
    }

    async fn signing_up_cannot_choose_status_or_role_but_an_admin_can(app) {
        for extra in [json!({"status": "active"}), json!({"role": "admin"})] {
            let mut body = json!({"name": "Mallory", "email": "mallory@example.com", "password": USER_PASSWORD});
            body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            let reply = app.send(app.anonymous.post(app.url("/v1/users")).json(&body)).await;
            reply.problem(403, "forbidden");
            let customer = app.sign_up("Carol", &format!("carol{}@example.com", uuid::Uuid::now_v7().simple())).await;
            as_client_with(&app, &customer.client, "POST", "/v1/users", Some(body.clone())).await.problem(403, "forbidden");
        }
        let admin = app
            .post("/v1/users", &json!({"name": "Root", "email": "root@example.com", "password": USER_PASSWORD, "role": "admin"}))
            .await
            .expect(201);
        assert_eq!(admin["role"], "admin");
        let token = app.log_in("root@example.com", USER_PASSWORD).await;
        as_client(&app, &authorized_client(&token), "GET", "/v1/users").await.expect(200);
    }

    async fn only_admins_change_the_catalogue(app) {
        let shop = shop(&app).await;
        let product = format!("/v1/products/{}", shop.product);
        let body = json!({"sku": "SKU-2", "name": "Two", "price_cents": 1, "stock": 1});
        as_client_with(&app, &shop.ada.client, "POST", "/v1/products", Some(body.clone())).await.problem(403, "forbidden");
        as_client_with(&app, &shop.ada.client, "PATCH", &product, Some(json!({"price_cents": 1}))).await.problem(403, "forbidden");
        as_client(&app, &shop.ada.client, "DELETE", &product).await.problem(403, "forbidden");
        assert_eq!(app.get(&product).await.expect(200)["price_cents"], 250);
        app.post("/v1/products", &body).await.expect(201);
        as_client(&app, &shop.ada.client, "GET", &product).await.expect(200);
    }

    async fn customers_order_for_themselves_and_may_only_cancel(app) {
        let shop = shop(&app).await;
        let (ada, bob) = (&shop.ada, &shop.bob);
        let line = json!([{"product_id": shop.product, "quantity": 1}]);
        // For themself, by naming themself too; never for someone else.
        let own = as_client_with(&app, &ada.client, "POST", "/v1/orders", Some(json!({"user_id": ada.id, "items": line}))).await;
        assert_eq!(own.expect(201)["user_id"], ada.id);
        as_client_with(&app, &bob.client, "POST", "/v1/orders", Some(json!({"user_id": ada.id, "items": line})))
            .await
            .problem(403, "forbidden");
        // An admin names the customer.
        let placed = app.post("/v1/orders", &json!({"user_id": bob.id, "items": line})).await.expect(201);
        assert_eq!(placed["user_id"], bob.id);
        let fields = tests::fields_of(&app.post("/v1/orders", &json!({"items": line})).await.problem(422, "validation_failed"));
        assert_eq!(fields, ["user_id"]);
        // Reading: own only.
        let order = format!("/v1/orders/{}", shop.order);
        as_client(&app, &ada.client, "GET", &order).await.expect(200);
        as_client(&app, &bob.client, "GET", &order).await.problem(404, "not_found");
        // Changing: the owner may cancel, nothing else; another customer sees nothing.
        for status in ["paid", "shipped"] {
            as_client_with(&app, &ada.client, "PATCH", &order, Some(json!({"status": status}))).await.problem(403, "forbidden");
        }
        as_client_with(&app, &bob.client, "PATCH", &order, Some(json!({"status": "cancelled"}))).await.problem(404, "not_found");
        assert_eq!(app.get(&order).await.expect(200)["status"], "pending");
        let cancelled = as_client_with(&app, &ada.client, "PATCH", &order, Some(json!({"status": "cancelled"}))).await;
        assert_eq!(cancelled.expect(200)["status"], "cancelled");
        // The admin makes any allowed transition.
        let paid = app.patch(&format!("/v1/orders/{}", id_of(&placed)), &json!({"status": "paid"})).await;
        assert_eq!(paid.expect(200)["status"], "paid");
    }

    async fn logging_out_revokes_the_token_at_once(app) {
        let ada = app.sign_up("Ada", "ada@example.com").await;
        let path = format!("/v1/users/{}", ada.id);
        as_client(&app, &ada.client, "GET", &path).await.expect(200);
        let other = authorized_client(&app.log_in("ada@example.com", USER_PASSWORD).await);
        as_client(&app, &ada.client, "DELETE", "/v1/sessions/current").await.expect_empty(204);
        unauthenticated(&as_client(&app, &ada.client, "GET", &path).await);
        unauthenticated(&as_client(&app, &ada.client, "DELETE", "/v1/sessions/current").await);
        // Only that session ended.
        as_client(&app, &other, "GET", &path).await.expect(200);
    }

    async fn a_password_change_needs_the_current_one_and_ends_the_other_sessions(app) {
        let ada = app.sign_up("Ada", "ada@example.com").await;
        let other = authorized_client(&app.log_in("ada@example.com", USER_PASSWORD).await);
        let path = format!("/v1/users/{}", ada.id);
        let new = "a brand new passphrase";
        let missing = as_client_with(&app, &ada.client, "PATCH", &path, Some(json!({"password": new}))).await;
        assert_eq!(tests::fields_of(&missing.problem(422, "validation_failed")), ["current_password"]);
        let wrong = as_client_with(&app, &ada.client, "PATCH", &path, Some(json!({"password": new, "current_password": "not it at all"}))).await;
        assert_eq!(tests::fields_of(&wrong.problem(422, "validation_failed")), ["current_password"]);
        // Nothing changed: the other session still works and the old password still logs in.
        as_client(&app, &other, "GET", &path).await.expect(200);
        let changed = as_client_with(&app, &ada.client, "PATCH", &path, Some(json!({"password": new, "current_password": USER_PASSWORD}))).await;
        changed.expect(200);
        // The session that made the change lives on; the other is revoked.
        as_client(&app, &ada.client, "GET", &path).await.expect(200);
        unauthenticated(&as_client(&app, &other, "GET", &path).await);
        login(&app, "ada@example.com", USER_PASSWORD).await.problem(401, "invalid_credentials");
        login(&app, "ada@example.com", new).await.expect(201);
        // An admin sets a password without the current one, and every session of the user ends.
        app.patch(&path, &json!({"password": USER_PASSWORD})).await.expect(200);
        unauthenticated(&as_client(&app, &ada.client, "GET", &path).await);
    }

    async fn status_and_role_changes_and_deletion_end_every_session(app) {
        for change in [json!({"status": "suspended"}), json!({"role": "admin"})] {
            let email = format!("u{}@example.com", uuid::Uuid::now_v7().simple());
            let user = app.sign_up("User", &email).await;
            let path = format!("/v1/users/{}", user.id);
            as_client(&app, &user.client, "GET", &path).await.expect(200);
            app.patch(&path, &change).await.expect(200);
            unauthenticated(&as_client(&app, &user.client, "GET", &path).await);
        }
        let gone = app.sign_up("Gone", "gone@example.com").await;
        let path = format!("/v1/users/{}", gone.id);
        as_client(&app, &gone.client, "GET", &path).await.expect(200);
        app.delete(&path).await.expect_empty(204);
        unauthenticated(&as_client(&app, &gone.client, "GET", &path).await);
    }

    async fn an_admin_who_demotes_or_suspends_themself_loses_the_token_that_did_it(app) {
        for change in [json!({"role": "customer"}), json!({"status": "suspended"})] {
            let email = format!("a{}@example.com", uuid::Uuid::now_v7().simple());
            let user = app.sign_up("Second Admin", &email).await;
            let path = format!("/v1/users/{}", user.id);
            app.patch(&path, &json!({"role": "admin"})).await.expect(200);
            let admin = authorized_client(&app.log_in(&email, USER_PASSWORD).await);
            as_client(&app, &admin, "GET", "/v1/users").await.expect(200);
            as_client_with(&app, &admin, "PATCH", &path, Some(change))
                .await
                .expect(200);
            unauthenticated(&as_client(&app, &admin, "GET", "/v1/users").await);
        }
    }

    async fn a_customer_deletes_their_own_account_and_its_sessions_end(app) {
        let ada = app.sign_up("Ada", "ada@example.com").await;
        let other = authorized_client(&app.log_in("ada@example.com", USER_PASSWORD).await);
        let path = format!("/v1/users/{}", ada.id);
        as_client(&app, &ada.client, "DELETE", &path).await.expect_empty(204);
        app.get(&path).await.problem(404, "not_found");
        unauthenticated(&as_client(&app, &ada.client, "GET", &path).await);
        unauthenticated(&as_client(&app, &other, "GET", &path).await);
        login(&app, "ada@example.com", USER_PASSWORD).await.problem(401, "invalid_credentials");
        // The email is free again.
        app.sign_up("Ada", "ada@example.com").await;
    }

    async fn a_customer_with_orders_cannot_delete_their_own_account(app) {
        let shop = shop(&app).await;
        let path = format!("/v1/users/{}", shop.ada.id);
        as_client(&app, &shop.ada.client, "DELETE", &path).await.problem(409, "user_has_orders");
        as_client(&app, &shop.ada.client, "GET", &path).await.expect(200);
    }

    async fn a_customer_signs_up_another_user_as_anyone_would(app) {
        let ada = app.sign_up("Ada", "ada@example.com").await;
        let body = json!({"name": "Bob", "email": "bob@example.com", "password": USER_PASSWORD});
        let created = as_client_with(&app, &ada.client, "POST", "/v1/users", Some(body)).await;
        let bob = created.expect(201);
        assert_eq!((bob["status"].as_str(), bob["role"].as_str()), (Some("active"), Some("customer")));
        assert_eq!(created.header("location"), Some(format!("/v1/users/{}", id_of(&bob)).as_str()));
        // Bob is a user of his own, not Ada's: he logs in, and Ada's session is still hers.
        let session = login(&app, "bob@example.com", USER_PASSWORD).await.expect(201);
        assert_eq!(session["user"]["id"], bob["id"]);
        let ada_path = format!("/v1/users/{}", ada.id);
        assert_eq!(as_client(&app, &ada.client, "GET", &ada_path).await.expect(200)["email"], "ada@example.com");
        as_client(&app, &ada.client, "GET", &format!("/v1/users/{}", id_of(&bob))).await.problem(404, "not_found");
    }

    async fn everyone_reads_the_catalogue(app) {
        let shop = shop(&app).await;
        let product = format!("/v1/products/{}", shop.product);
        for client in [&app.anonymous, &shop.ada.client, &app.client] {
            let page = as_client(&app, client, "GET", "/v1/products").await.expect(200);
            assert_eq!(tests::ids_of(&page), std::slice::from_ref(&shop.product));
            assert_eq!(as_client(&app, client, "GET", &product).await.expect(200)["sku"], "SKU-1");
        }
    }

    async fn a_customer_cancels_their_own_paid_order(app) {
        let shop = shop(&app).await;
        let order = format!("/v1/orders/{}", shop.order);
        app.patch(&order, &json!({"status": "paid"})).await.expect(200);
        let cancelled = as_client_with(&app, &shop.ada.client, "PATCH", &order, Some(json!({"status": "cancelled"}))).await;
        assert_eq!(cancelled.expect(200)["status"], "cancelled");
        let product = app.get(&format!("/v1/products/{}", shop.product)).await.expect(200);
        assert_eq!(product["stock"], 10, "the cancelled order's stock is back");
    }

    async fn an_admin_deletes_any_user(app) {
        let ada = app.sign_up("Ada", "ada@example.com").await;
        let path = format!("/v1/users/{}", ada.id);
        app.delete(&path).await.expect_empty(204);
        app.get(&path).await.problem(404, "not_found");
    }

    async fn the_admin_from_the_environment_exists_and_is_an_admin(app) {
        let admin = app.get(&format!("/v1/users/{}", app.admin_id)).await.expect(200);
        assert_eq!(admin["email"], ADMIN_EMAIL);
        assert_eq!(admin["role"], "admin");
        // Starting again (as a second instance would) changes nothing about it.
        let again = TestApp::start(app.db.clone(), test_config(&app.db)).await;
        assert_eq!(again.admin_id, app.admin_id);
        let _ = again.stop().await;
    }
}

/// `ADMIN_EMAIL` naming an existing customer promotes them, password untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_existing_user_named_admin_is_promoted_with_their_password() {
    run_with(
        Backend::Sqlite,
        |_| {},
        |app: TestApp| async move {
            app.sign_up("Grace", "grace@example.com").await;
            let mut config = test_config(&app.db);
            let promoted: api::config::Config = api::config::Config::from_vars(vec![
                ("ADMIN_EMAIL".to_owned(), "grace@example.com".to_owned()),
                (
                    "ADMIN_PASSWORD".to_owned(),
                    "a different password".to_owned(),
                ),
            ])
            .unwrap();
            config.auth.admin = promoted.auth.admin;
            // The harness logs in as its own admin, who still exists.
            let again = TestApp::start(app.db.clone(), config).await;
            let token = again.log_in("grace@example.com", USER_PASSWORD).await;
            let me = login(&again, "grace@example.com", USER_PASSWORD)
                .await
                .expect(201);
            assert_eq!(me["user"]["role"], "admin");
            as_client(&again, &authorized_client(&token), "GET", "/v1/users")
                .await
                .expect(200);
            login(&again, "grace@example.com", "a different password")
                .await
                .problem(401, "invalid_credentials");
            let _ = again.stop().await;
        },
    )
    .await;
}

on_backends! {
    [sqlite, postgres, mysql, pgbouncer, pgbouncer_txn, mongo]
    #[configure(|config| {
        config.auth.max_failures_per_email = 3;
        config.auth.max_failures_per_address = 100;
    })]
    /// Each attempt counts before its password is hashed, so a burst of guesses sent at once gets
    /// no more tries than the limit.
    async fn concurrent_wrong_passwords_get_no_more_tries_than_the_limit(app) {
        app.sign_up("Ada", "ada@example.com").await;
        let replies =
            join_all((0..20).map(|_| login(&app, "ada@example.com", "wrong password"))).await;
        let statuses: Vec<u16> = replies.iter().map(|reply| reply.status).collect();
        let tried = statuses.iter().filter(|status| **status == 401).count();
        let refused = statuses.iter().filter(|status| **status == 429).count();
        assert_eq!(tried + refused, 20, "only 401 and 429: {statuses:?}");
        assert!(tried <= 3, "{tried} passwords were tried, over the limit of 3: {statuses:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_session_is_refused() {
    run_with(
        Backend::Sqlite,
        |config| config.auth.session_ttl = Duration::from_secs(1),
        |app: TestApp| async move {
            let ada = app.sign_up("Ada", "ada@example.com").await;
            let path = format!("/v1/users/{}", ada.id);
            as_client(&app, &ada.client, "GET", &path).await.expect(200);
            tokio::time::sleep(Duration::from_millis(1_200)).await;
            unauthenticated(&as_client(&app, &ada.client, "GET", &path).await);
        },
    )
    .await;
}

/// With no room to queue, a burst of sign-ups is answered at once: created, or 503 `busy` with
/// `Retry-After` — never left to time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_hashing_queue_answers_busy_at_once() {
    run_with(
        Backend::Sqlite,
        |config| config.auth.hash_queue_limit = 0,
        |app: TestApp| async move {
            let replies = join_all((0..32).map(|n| {
                app.send(app.anonymous.post(app.url("/v1/users")).json(&json!({
                    "name": "Burst",
                    "email": format!("burst{n}@example.com"),
                    "password": USER_PASSWORD,
                })))
            }))
            .await;
            let mut busy = 0;
            for reply in &replies {
                match reply.status {
                    201 => {}
                    503 => {
                        reply.problem(503, "busy");
                        assert!(reply.header("retry-after").is_some());
                        busy += 1;
                    }
                    other => panic!("unexpected {other}: {}", reply.text),
                }
            }
            assert!(
                busy > 0,
                "32 concurrent sign-ups with no queue were all hashed"
            );
        },
    )
    .await;
}

/// A flood of sign-ups that the machine cannot hash before their deadline is answered in time:
/// created, or 503 `busy` with `Retry-After` at once — none waits in the queue until its deadline
/// passes (504).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sign_up_flood_is_answered_before_the_deadline() {
    run_with(
        Backend::Sqlite,
        |config| {
            config.request_timeout = Duration::from_secs(1);
            // Room in the queue for the whole flood: the pace of hashing must turn it away.
            config.auth.hash_queue_limit = 256;
        },
        |app: TestApp| async move {
            let replies = join_all((0..256).map(|n| {
                app.send(app.anonymous.post(app.url("/v1/users")).json(&json!({
                    "name": "Flood",
                    "email": format!("flood{n}@example.com"),
                    "password": USER_PASSWORD,
                })))
            }))
            .await;
            let mut busy = 0;
            for reply in &replies {
                match reply.status {
                    201 => {}
                    503 => {
                        reply.problem(503, "busy");
                        assert!(reply.header("retry-after").is_some());
                        busy += 1;
                    }
                    other => panic!("unexpected {other}: {}", reply.text),
                }
            }
            assert!(busy > 0, "256 sign-ups were all hashed within a second");
        },
    )
    .await;
}

/// A token revoked through one instance is refused by another from the moment the revoking
/// request has been answered — logout, password change, role change and deletion alike — and an
/// expired one is refused by both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(has_postgres), ignore = "TEST_POSTGRES_URL is not set")]
async fn revocation_and_expiry_hold_across_instances_on_postgres() {
    revocation_and_expiry_hold_across_instances(Backend::Postgres).await;
}

/// The same on MongoDB, where instances hear revocations through their change streams and
/// acknowledge them in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(has_mongo), ignore = "TEST_MONGODB_URL is not set")]
async fn revocation_and_expiry_hold_across_instances_on_mongo() {
    revocation_and_expiry_hold_across_instances(Backend::Mongo).await;
}

async fn revocation_and_expiry_hold_across_instances(backend: Backend) {
    run_with(
        backend,
        |_| {},
        |a: TestApp| async move {
            let b = TestApp::start(a.db.clone(), test_config(&a.db)).await;
            for round in 0..20 {
                let email = format!("r{round}@example.com");
                let user = a.sign_up("Rounds", &email).await;
                let path = format!("/v1/users/{}", user.id);
                // Instance B has the session cached.
                as_client(&b, &user.client, "GET", &path).await.expect(200);
                match round % 4 {
                    0 => {
                        as_client(&a, &user.client, "DELETE", "/v1/sessions/current")
                            .await
                            .expect_empty(204);
                    }
                    1 => {
                        a.patch(&path, &json!({"password": "another passphrase"}))
                            .await
                            .expect(200);
                    }
                    2 => {
                        a.patch(&path, &json!({"role": "admin"})).await.expect(200);
                    }
                    _ => {
                        a.delete(&path).await.expect_empty(204);
                    }
                }
                unauthenticated(&as_client(&b, &user.client, "GET", &path).await);
            }
            let _ = b.stop().await;
            // Expiry: a session two instances have cached is refused by both once it ends.
            let mut short = test_config(&a.db);
            short.auth.session_ttl = Duration::from_secs(2);
            let c = TestApp::start(a.db.clone(), short.clone()).await;
            let d = TestApp::start(a.db.clone(), short).await;
            let user = c.sign_up("Expiring", "expiring@example.com").await;
            let path = format!("/v1/users/{}", user.id);
            as_client(&c, &user.client, "GET", &path).await.expect(200);
            as_client(&d, &user.client, "GET", &path).await.expect(200);
            tokio::time::sleep(Duration::from_millis(2_200)).await;
            unauthenticated(&as_client(&c, &user.client, "GET", &path).await);
            unauthenticated(&as_client(&d, &user.client, "GET", &path).await);
            let _ = c.stop().await;
            let _ = d.stop().await;
        },
    )
    .await;
}

/// Asserts a 429 `too_many_attempts` with a `Retry-After` of at most `window` seconds, and
/// returns it.
#[track_caller]
fn too_many_attempts(reply: &Reply, window: u64) -> u64 {
    reply.problem(429, "too_many_attempts");
    let retry: u64 = reply
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=window).contains(&retry), "Retry-After {retry}");
    retry
}

on_every_backend! {
    /// Failed logins are limited per email and, more loosely, per address; a success clears the
    /// email's count.
    #[configure(|config| {
        config.auth.max_failures_per_email = 3;
        config.auth.max_failures_per_address = 8;
    })]
    async fn failed_logins_are_throttled_per_email_and_per_address(app) {
        app.sign_up("Ada", "ada@example.com").await;
        app.sign_up("Bob", "bob@example.com").await;
        for _ in 0..2 {
            login(&app, "ada@example.com", "wrong password").await.problem(401, "invalid_credentials");
        }
        // A success clears the count.
        login(&app, "ada@example.com", USER_PASSWORD).await.expect(201);
        for _ in 0..3 {
            login(&app, "ada@example.com", "wrong password").await.problem(401, "invalid_credentials");
        }
        // Over the limit: refused even with the right password, with Retry-After.
        too_many_attempts(&login(&app, "ada@example.com", USER_PASSWORD).await, 300);
        // One user's typos do not lock out others behind the same address…
        login(&app, "bob@example.com", USER_PASSWORD).await.expect(201);
        // …until the address's own, looser limit is reached (2 + 3 + 3 failures = 8).
        for n in 0..3 {
            login(&app, &format!("nobody{n}@example.com"), "wrong password")
                .await
                .problem(401, "invalid_credentials");
        }
        too_many_attempts(&login(&app, "bob@example.com", USER_PASSWORD).await, 300);
    }

    /// A client that waits as long as `Retry-After` says is let in again: the failures have left
    /// the window.
    #[configure(|config| {
        config.auth.max_failures_per_email = 2;
        config.auth.login_window = Duration::from_secs(2);
    })]
    async fn a_throttled_email_logs_in_again_once_retry_after_has_passed(app) {
        app.sign_up("Ada", "ada@example.com").await;
        for _ in 0..2 {
            login(&app, "ada@example.com", "wrong password").await.problem(401, "invalid_credentials");
        }
        let retry = too_many_attempts(&login(&app, "ada@example.com", USER_PASSWORD).await, 2);
        tokio::time::sleep(Duration::from_secs(retry) + Duration::from_millis(100)).await;
        login(&app, "ada@example.com", USER_PASSWORD).await.expect(201);
    }
}

/// The count of failed logins is the database's, not an instance's: failures through one
/// instance throttle the email on another, and failures spread over both add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(has_postgres), ignore = "TEST_POSTGRES_URL is not set")]
async fn failed_logins_count_across_instances_on_postgres() {
    let throttled = |config: &mut api::config::Config| config.auth.max_failures_per_email = 3;
    run_with(Backend::Postgres, throttled, move |a: TestApp| async move {
        let mut config = test_config(&a.db);
        throttled(&mut config);
        let b = TestApp::start(a.db.clone(), config).await;
        a.sign_up("Ada", "ada@example.com").await;
        a.sign_up("Bob", "bob@example.com").await;
        // All of Ada's failures through A: B refuses her.
        for _ in 0..3 {
            login(&a, "ada@example.com", "wrong password")
                .await
                .problem(401, "invalid_credentials");
        }
        too_many_attempts(&login(&b, "ada@example.com", USER_PASSWORD).await, 300);
        // Bob's failures spread over both: each instance refuses him.
        for instance in [&a, &b, &a] {
            login(instance, "bob@example.com", "wrong password")
                .await
                .problem(401, "invalid_credentials");
        }
        too_many_attempts(&login(&b, "bob@example.com", USER_PASSWORD).await, 300);
        too_many_attempts(&login(&a, "bob@example.com", USER_PASSWORD).await, 300);
        let _ = b.stop().await;
    })
    .await;
}
