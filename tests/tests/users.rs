//! The Users resource, as API.md states it: create, read, list (page and keyset mode), change and
//! delete, with every validation and conflict rule, on every backend.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::Value;
use tests::{Reply, TestApp, fields_of, id_of, ids_of, json, on_every_backend, on_postgres};
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery";

/// The fields a 422 names.
#[track_caller]
fn invalid_fields(reply: &Reply) -> Vec<String> {
    fields_of(&reply.problem(422, "validation_failed"))
}

/// `GET /v1/users?…` with the parameters encoded for the query string.
async fn list(app: &TestApp, query: &[(&str, &str)]) -> Reply {
    app.send(app.client.get(app.url("/v1/users")).query(query))
        .await
}

/// How many users the service lists besides the harness's admin.
async fn total_users(app: &TestApp) -> u64 {
    let page = list(app, &[("per_page", "1")]).await.expect(200);
    page["total_items"]
        .as_u64()
        .unwrap_or_else(|| panic!("no total_items in {page}"))
        - 1
}

/// The ids a newest-first listing of `created` shows: the harness's admin, made at start-up, is
/// the oldest user and comes last.
fn listed(app: &TestApp, created: &[String]) -> Vec<String> {
    created
        .iter()
        .cloned()
        .chain([app.admin_id.clone()])
        .collect()
}

async fn create(app: &TestApp, body: Value) -> Reply {
    app.post("/v1/users", &body).await
}

fn user_body(name: &str, email: &str) -> Value {
    json!({"name": name, "email": email, "password": PASSWORD})
}

/// A timestamp as a key that sorts by time:
/// `2026-11-24T10:00:00.12Z` → `2026-11-24T10:00:00.120000`.
fn time_key(timestamp: &str) -> String {
    let text = timestamp
        .strip_suffix('Z')
        .unwrap_or_else(|| panic!("{timestamp} does not end in Z"));
    let (seconds, fraction) = text.split_once('.').unwrap_or((text, ""));
    assert!(
        fraction.len() <= 6 && fraction.bytes().all(|b| b.is_ascii_digit()),
        "{timestamp} carries more than microseconds"
    );
    format!("{seconds}.{fraction:0<6}")
}

/// The position of a listed user in newest-first order.
fn position(user: &Value) -> (String, Uuid) {
    let created_at = user["created_at"].as_str().unwrap_or_default();
    let id = Uuid::parse_str(&id_of(user)).expect("a UUID id");
    (time_key(created_at), id)
}

#[track_caller]
fn assert_no_password(reply: &Reply) {
    let text = reply.text.to_lowercase();
    assert!(
        !text.contains("password"),
        "leaks a password: {}",
        reply.text
    );
    assert!(
        !text.contains("argon2"),
        "leaks a password hash: {}",
        reply.text
    );
    assert!(
        !text.contains(&PASSWORD.to_lowercase()),
        "leaks the password: {}",
        reply.text
    );
}

/// Creates `count` users one after another; returns their ids newest first, as they are listed.
async fn create_users(app: &TestApp, prefix: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        let user = app
            .create_user(
                &format!("User {prefix}{n}"),
                &format!("{prefix}{n}@example.com"),
            )
            .await;
        ids.push(id_of(&user));
    }
    ids.reverse();
    ids
}

/// Places an order for `user_id` of one unit of a new product; returns the order's id.
async fn place_order(app: &TestApp, user_id: &str, sku: &str) -> String {
    let product = app
        .post(
            "/v1/products",
            &json!({"sku": sku, "name": "Widget", "price_cents": 250, "stock": 10}),
        )
        .await
        .expect(201);
    let order = app
        .post(
            "/v1/orders",
            &json!({"user_id": user_id, "items": [{"product_id": id_of(&product), "quantity": 1}]}),
        )
        .await
        .expect(201);
    id_of(&order)
}

on_every_backend! {
    async fn creating_a_user_answers_201_with_location_and_normalised_fields(app) {
        let reply = create(
            &app,
            json!({
                "name": "  Ada Lovelace \n",
                "email": " Ada.Lovelace@Example.COM ",
                "password": PASSWORD,
            }),
        )
        .await;
        let user = reply.expect(201);
        let id = id_of(&user);
        assert_eq!(reply.header("location"), Some(format!("/v1/users/{id}").as_str()));
        let uuid = Uuid::parse_str(&id).expect("the id is a UUID");
        assert_eq!(uuid.get_version_num(), 7, "{id} is not a UUID v7");
        assert_eq!(user["name"], "Ada Lovelace");
        assert_eq!(user["email"], "ada.lovelace@example.com");
        assert_eq!(user["status"], "active");
        let created_at = user["created_at"].as_str().expect("created_at is a string");
        assert!(created_at.ends_with('Z'), "{created_at}");
        // `time_key` also asserts at most six fractional digits.
        time_key(created_at);
        assert_eq!(user["created_at"], user["updated_at"]);
        let mut fields: Vec<&str> =
            user.as_object().expect("an object").keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(fields, ["created_at", "email", "id", "name", "role", "status", "updated_at"]);
        assert_eq!(user["role"], "customer");

        let fetched = app.get(&format!("/v1/users/{id}")).await.expect(200);
        assert_eq!(fetched, user, "GET differs from what the create answered");
    }

    async fn creating_a_user_with_a_status_keeps_it(app) {
        let user = create(
            &app,
            json!({
                "name": "Sus",
                "email": "sus@example.com",
                "password": PASSWORD,
                "status": "suspended",
            }),
        )
        .await
        .expect(201);
        assert_eq!(user["status"], "suspended");
        let fetched = app.get(&format!("/v1/users/{}", id_of(&user))).await.expect(200);
        assert_eq!(fetched, user);
    }

    async fn no_response_body_ever_contains_the_password(app) {
        let created = create(&app, user_body("Secretive", "secretive@example.com")).await;
        created.expect(201);
        assert_no_password(&created);
        let id = id_of(&created.json());
        let path = format!("/v1/users/{id}");
        assert_no_password(&app.get(&path).await);
        assert_no_password(&list(&app, &[]).await);
        assert_no_password(&list(&app, &[("email", "secretive@example.com")]).await);
        let renamed = app.patch(&path, &json!({"name": "Still Secretive"})).await;
        renamed.expect(200);
        assert_no_password(&renamed);
        let duplicate = create(&app, user_body("Again", "SECRETIVE@example.com")).await;
        duplicate.problem(409, "email_taken");
        assert_no_password(&duplicate);
    }

    async fn duplicate_email_differing_only_in_case_is_409(app) {
        app.create_user("Ada", "ada@example.com").await;
        let reply = create(&app, user_body("Other Ada", "ADA@Example.com")).await;
        let problem = reply.problem(409, "email_taken");
        assert_eq!(problem["errors"][0]["field"], "email");
        assert_eq!(total_users(&app).await, 1);
    }

    async fn a_deleted_users_email_is_free_again(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        app.delete(&format!("/v1/users/{}", id_of(&user))).await.expect_empty(204);
        let again = create(&app, user_body("New Ada", "Ada@Example.com")).await.expect(201);
        assert_ne!(id_of(&again), id_of(&user));
        assert_eq!(again["email"], "ada@example.com");
    }

    async fn each_validation_failure_names_its_field_and_creates_nothing(app) {
        app.create_user("Existing", "existing@example.com").await;
        // 64 + 1 + 63 + 1 + 63 + 1 + 58 + 4 = 255 characters, otherwise a valid address.
        let long_email = format!(
            "{}@{}.{}.{}.com",
            "a".repeat(64),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(58)
        );
        assert_eq!(long_email.chars().count(), 255);
        let valid = || user_body("Valid Name", "valid@example.com");
        let with = |field: &str, value: Value| {
            let mut body = valid();
            body[field] = value;
            body
        };
        let cases: Vec<(Value, &str)> = vec![
            (with("name", json!("")), "name"),
            (with("name", json!(" \t\n ")), "name"),
            (with("name", json!("n".repeat(201))), "name"),
            (with("email", json!("not-an-email")), "email"),
            (with("email", json!("two@@example.com")), "email"),
            (with("email", json!("")), "email"),
            (with("email", json!(long_email)), "email"),
            (with("password", json!("1234567")), "password"),
            (with("password", json!("p".repeat(129))), "password"),
            (with("status", json!("deleted")), "status"),
            (with("status", json!("Active")), "status"),
            (with("nickname", json!("Ada")), "nickname"),
            (with("name", Value::Null), "name"),
            (with("email", Value::Null), "email"),
            (with("password", Value::Null), "password"),
            (with("status", Value::Null), "status"),
            (with("name", json!(42)), "name"),
        ];
        for (body, field) in cases {
            let reply = create(&app, body.clone()).await;
            let fields = invalid_fields(&reply);
            assert!(fields.iter().any(|f| f == field), "{body} named {fields:?}, not {field}");
        }
        assert_eq!(total_users(&app).await, 1, "a rejected create changed something");
    }

    async fn every_invalid_field_of_one_request_is_named(app) {
        let reply = create(&app, json!({"name": " ", "email": "nope", "password": "short"})).await;
        let mut fields = invalid_fields(&reply);
        fields.sort_unstable();
        assert_eq!(fields, ["email", "name", "password"]);
        assert_eq!(total_users(&app).await, 0);
    }

    async fn a_missing_required_field_is_422_naming_it(app) {
        let reply = create(&app, json!({"name": "Ada", "email": "ada@example.com"})).await;
        let fields = invalid_fields(&reply);
        assert!(fields.iter().any(|f| f == "password"), "named {fields:?}");
        assert_eq!(total_users(&app).await, 0);
    }

    async fn lengths_at_their_limits_are_accepted(app) {
        // 64 + 1 + 63 + 1 + 63 + 1 + 57 + 4 = 254 characters.
        let email = format!(
            "{}@{}.{}.{}.com",
            "a".repeat(64),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(57)
        );
        let name = "n".repeat(200);
        let user = create(
            &app,
            json!({"name": format!("  {name}  "), "email": email, "password": "p".repeat(128)}),
        )
        .await
        .expect(201);
        assert_eq!(user["name"], name.as_str());
        assert_eq!(user["email"], email.as_str());
        create(&app, json!({"name": "N", "email": "n@example.com", "password": "12345678"}))
            .await
            .expect(201);
    }

    async fn malformed_json_is_400(app) {
        for body in [&b"{\"name\": \"Ada\","[..], b"{name: 'Ada'}", b"[1, 2", b"nonsense"] {
            let reply = app.post_raw("/v1/users", "application/json", body.to_vec()).await;
            reply.problem(400, "bad_request");
        }
        assert_eq!(total_users(&app).await, 0);
    }

    async fn an_empty_body_is_400(app) {
        app.post_raw("/v1/users", "application/json", Vec::new()).await.problem(400, "bad_request");
        app.post_raw("/v1/users", "application/json", b"  \n ".to_vec())
            .await
            .problem(400, "bad_request");
    }

    async fn an_invalid_utf8_body_is_400(app) {
        let mut body = b"{\"name\": \"Ad".to_vec();
        body.extend_from_slice(&[0xff, 0xfe, 0xc3]);
        body.extend_from_slice(
            b"\", \"email\": \"ada@example.com\", \"password\": \"correct horse\"}",
        );
        app.post_raw("/v1/users", "application/json", body).await.problem(400, "bad_request");
        assert_eq!(total_users(&app).await, 0);
    }

    async fn a_body_that_is_not_application_json_is_415(app) {
        let body = serde_json::to_vec(&user_body("Ada", "ada@example.com")).expect("JSON");
        app.post_raw("/v1/users", "text/plain", body.clone())
            .await
            .problem(415, "unsupported_media_type");
        app.post_raw("/v1/users", "application/x-www-form-urlencoded", body.clone())
            .await
            .problem(415, "unsupported_media_type");
        assert_eq!(total_users(&app).await, 0);
        // Parameters on the JSON media type are fine.
        app.post_raw("/v1/users", "application/json; charset=utf-8", body).await.expect(201);
    }

    async fn getting_a_non_uuid_id_is_404(app) {
        for id in ["not-a-uuid", "123", "00000000-0000-0000-0000-00000000000g"] {
            app.get(&format!("/v1/users/{id}")).await.problem(404, "not_found");
        }
    }

    async fn getting_an_unknown_user_is_404(app) {
        app.get(&format!("/v1/users/{}", Uuid::now_v7())).await.problem(404, "not_found");
    }

    async fn patching_with_an_empty_object_returns_the_user_unchanged(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let path = format!("/v1/users/{}", id_of(&user));
        tokio::time::sleep(Duration::from_millis(5)).await;
        let patched = app.patch(&path, &json!({})).await.expect(200);
        assert_eq!(patched, user, "{{}} changed the user");
        assert_eq!(app.get(&path).await.expect(200), user);
    }

    async fn patching_the_name_changes_only_the_name_and_moves_updated_at(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let path = format!("/v1/users/{}", id_of(&user));
        tokio::time::sleep(Duration::from_millis(5)).await;
        let patched = app.patch(&path, &json!({"name": "  Countess Lovelace "})).await.expect(200);
        assert_eq!(patched["name"], "Countess Lovelace");
        for field in ["id", "email", "status", "created_at"] {
            assert_eq!(patched[field], user[field], "{field} changed");
        }
        let before = time_key(user["updated_at"].as_str().unwrap_or_default());
        let after = time_key(patched["updated_at"].as_str().unwrap_or_default());
        assert!(after > before, "updated_at did not move: {before} → {after}");
        let fetched = app.get(&path).await.expect(200);
        assert_eq!(fetched, patched, "GET differs from what PATCH answered");
    }

    async fn patching_the_status_changes_it(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let path = format!("/v1/users/{}", id_of(&user));
        let patched = app.patch(&path, &json!({"status": "inactive"})).await.expect(200);
        assert_eq!(patched["status"], "inactive");
        assert_eq!(app.get(&path).await.expect(200), patched);
    }

    async fn patching_the_email_onto_another_users_email_is_409_and_changes_nothing(app) {
        app.create_user("Ada", "ada@example.com").await;
        let grace = app.create_user("Grace", "grace@example.com").await;
        let path = format!("/v1/users/{}", id_of(&grace));
        for taken in ["ada@example.com", "ADA@example.COM", " Ada@Example.com "] {
            let reply = app.patch(&path, &json!({"email": taken, "name": "Renamed"})).await;
            reply.problem(409, "email_taken");
        }
        assert_eq!(app.get(&path).await.expect(200), grace);
        // Its own email in another case is no conflict.
        let same = app.patch(&path, &json!({"email": "GRACE@example.com"})).await.expect(200);
        assert_eq!(same["email"], "grace@example.com");
    }

    async fn patching_an_invalid_field_is_422_and_changes_nothing(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let path = format!("/v1/users/{}", id_of(&user));
        let cases: Vec<(Value, &str)> = vec![
            (json!({"name": "Renamed", "email": "not-an-email"}), "email"),
            (json!({"name": "   "}), "name"),
            (json!({"name": "x".repeat(201)}), "name"),
            (json!({"password": "short"}), "password"),
            (json!({"password": "p".repeat(129)}), "password"),
            (json!({"status": "gone"}), "status"),
            (json!({"name": "Renamed", "status": null}), "status"),
            (json!({"name": null}), "name"),
            (json!({"email": null}), "email"),
            (json!({"password": null}), "password"),
            (json!({"name": "Renamed", "id": Uuid::now_v7()}), "id"),
            (json!({"created_at": "2026-11-24T10:00:00Z"}), "created_at"),
        ];
        for (body, field) in cases {
            let fields = invalid_fields(&app.patch(&path, &body).await);
            assert!(fields.iter().any(|f| f == field), "{body} named {fields:?}, not {field}");
        }
        assert_eq!(app.get(&path).await.expect(200), user, "a rejected PATCH changed the user");
    }

    async fn patching_an_unknown_user_is_404(app) {
        let path = format!("/v1/users/{}", Uuid::now_v7());
        app.patch(&path, &json!({"name": "Nobody"})).await.problem(404, "not_found");
        app.patch(&path, &json!({})).await.problem(404, "not_found");
        app.patch("/v1/users/not-a-uuid", &json!({"name": "Nobody"}))
            .await
            .problem(404, "not_found");
        assert_eq!(total_users(&app).await, 0);
    }

    async fn patching_the_password_stores_a_new_hash_and_never_returns_it(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let path = format!("/v1/users/{}", id_of(&user));
        let hash = || app.db.stored_password_hash("ada@example.com");
        let old = hash().await;
        assert!(old.starts_with("$argon2id$"), "not an Argon2id hash: {old}");
        let reply = app.patch(&path, &json!({"password": "a brand new passphrase"})).await;
        let patched = reply.expect(200);
        assert_no_password(&reply);
        assert!(!reply.text.contains("brand new"));
        let new = hash().await;
        assert!(new.starts_with("$argon2id$") && new != old, "the hash did not change");
        for field in ["name", "email", "status"] {
            assert_eq!(patched[field], user[field]);
        }
    }

    async fn deleting_a_user_answers_204_and_then_404(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let path = format!("/v1/users/{}", id_of(&user));
        app.get(&path).await.expect(200);
        app.delete(&path).await.expect_empty(204);
        app.get(&path).await.problem(404, "not_found");
        app.delete(&path).await.problem(404, "not_found");
        app.delete("/v1/users/not-a-uuid").await.problem(404, "not_found");
        assert_eq!(total_users(&app).await, 0);
    }

    async fn a_user_with_orders_cannot_be_deleted(app) {
        let user = app.create_user("Buyer", "buyer@example.com").await;
        let id = id_of(&user);
        place_order(&app, &id, "SKU-1").await;
        let path = format!("/v1/users/{id}");
        app.delete(&path).await.problem(409, "user_has_orders");
        assert_eq!(app.get(&path).await.expect(200), user);
    }

    async fn a_user_whose_orders_are_all_cancelled_cannot_be_deleted(app) {
        let user = app.create_user("Buyer", "buyer@example.com").await;
        let id = id_of(&user);
        let order = place_order(&app, &id, "SKU-1").await;
        let cancelled = app
            .patch(&format!("/v1/orders/{order}"), &json!({"status": "cancelled"}))
            .await
            .expect(200);
        assert_eq!(cancelled["status"], "cancelled");
        let path = format!("/v1/users/{id}");
        app.delete(&path).await.problem(409, "user_has_orders");
        assert_eq!(app.get(&path).await.expect(200), user);
    }

    async fn users_are_listed_newest_first(app) {
        let created = create_users(&app, "u", 5).await;
        let page = list(&app, &[]).await.expect(200);
        assert_eq!(ids_of(&page), listed(&app, &created));
        let items = page["items"].as_array().expect("items");
        let positions: Vec<_> = items.iter().map(position).collect();
        assert!(positions.windows(2).all(|w| w[0] > w[1]), "not newest first: {positions:?}");
    }

    async fn page_mode_reports_totals_and_a_next_cursor(app) {
        // Five and the admin: three pages of two.
        let created = listed(&app, &create_users(&app, "u", 5).await);

        let first = list(&app, &[("per_page", "2")]).await.expect(200);
        assert_eq!(ids_of(&first), created[0..2]);
        assert_eq!(first["page"], 1);
        assert_eq!(first["per_page"], 2);
        assert_eq!(first["total_items"], 6);
        assert_eq!(first["total_pages"], 3);
        assert_eq!(first["total_is_estimate"], false);
        assert!(first["next_cursor"].is_string(), "{first}");

        let second = list(&app, &[("per_page", "2"), ("page", "2")]).await.expect(200);
        assert_eq!(ids_of(&second), created[2..4]);
        assert_eq!(second["page"], 2);
        assert!(second["next_cursor"].is_string(), "{second}");

        let last = list(&app, &[("per_page", "2"), ("page", "3")]).await.expect(200);
        assert_eq!(ids_of(&last), created[4..6]);
        assert_eq!(last["total_items"], 6);
        assert!(last.get("next_cursor").is_none(), "the last page has a next_cursor: {last}");

        // The default page size is 20.
        let default = list(&app, &[]).await.expect(200);
        assert_eq!(default["per_page"], 20);
        assert_eq!(default["page"], 1);
        assert!(default.get("next_cursor").is_none(), "{default}");
    }

    async fn keyset_mode_follows_next_cursor_without_totals(app) {
        // Four and the admin: the third page of two holds one.
        let created = listed(&app, &create_users(&app, "u", 4).await);
        // Start walking from page 2 of page mode.
        let second = list(&app, &[("per_page", "2"), ("page", "2")]).await.expect(200);
        let cursor = second["next_cursor"].as_str().expect("a next_cursor").to_owned();
        let third = list(&app, &[("per_page", "2"), ("cursor", &cursor)]).await.expect(200);
        assert_eq!(ids_of(&third), created[4..5]);
        for absent in ["page", "total_items", "total_pages", "total_is_estimate", "next_cursor"] {
            assert!(third.get(absent).is_none(), "keyset page carries {absent}: {third}");
        }
        assert_eq!(third["per_page"], 2);

        let first = list(&app, &[("per_page", "2")]).await.expect(200);
        let cursor = first["next_cursor"].as_str().expect("a next_cursor").to_owned();
        let next = list(&app, &[("per_page", "2"), ("cursor", &cursor)]).await.expect(200);
        assert_eq!(ids_of(&next), created[2..4]);
        assert!(next["next_cursor"].is_string(), "{next}");
        assert!(next.get("total_items").is_none(), "{next}");
    }

    async fn a_page_past_the_end_is_empty(app) {
        // Two and the admin.
        for n in 0..2 {
            app.create_user(&format!("User {n}"), &format!("u{n}@example.com")).await;
        }
        let page = list(&app, &[("per_page", "2"), ("page", "3")]).await.expect(200);
        assert_eq!(page["items"], json!([]));
        assert_eq!(page["page"], 3);
        assert_eq!(page["total_items"], 3);
        assert_eq!(page["total_pages"], 2);
        assert!(page.get("next_cursor").is_none(), "{page}");
        let far = list(&app, &[("page", "18446744073709551615")]).await.expect(200);
        assert_eq!(far["items"], json!([]));
    }

    async fn an_empty_result_has_zero_pages(app) {
        let page = list(&app, &[("status", "inactive")]).await.expect(200);
        assert_eq!(page["items"], json!([]));
        assert_eq!(page["total_items"], 0);
        assert_eq!(page["total_pages"], 0);
        assert_eq!(page["total_is_estimate"], false);
        assert!(page.get("next_cursor").is_none(), "{page}");
        app.create_user("Ada", "ada@example.com").await;
        let filtered = list(&app, &[("status", "suspended")]).await.expect(200);
        assert_eq!(filtered["items"], json!([]));
        assert_eq!(filtered["total_pages"], 0);
    }

    async fn the_status_filter_applies_in_both_modes(app) {
        let mut suspended = Vec::new();
        for n in 0..5 {
            let status = if n % 2 == 0 { "suspended" } else { "active" };
            let user = create(
                &app,
                json!({
                    "name": format!("User {n}"),
                    "email": format!("u{n}@example.com"),
                    "password": PASSWORD,
                    "status": status,
                }),
            )
            .await
            .expect(201);
            if status == "suspended" {
                suspended.push(id_of(&user));
            }
        }
        suspended.reverse();
        let page = list(&app, &[("status", "suspended")]).await.expect(200);
        assert_eq!(ids_of(&page), suspended);
        assert_eq!(page["total_items"], 3);
        let first = list(&app, &[("status", "suspended"), ("per_page", "1")]).await.expect(200);
        assert_eq!(first["total_items"], 3);
        assert_eq!(first["total_pages"], 3);
        let mut walked = ids_of(&first);
        let mut cursor = first["next_cursor"].as_str().map(str::to_owned);
        while let Some(next) = cursor {
            let page = list(&app, &[("status", "suspended"), ("per_page", "1"), ("cursor", &next)])
                .await
                .expect(200);
            walked.extend(ids_of(&page));
            cursor = page["next_cursor"].as_str().map(str::to_owned);
        }
        assert_eq!(walked, suspended);
        let active = list(&app, &[("status", "active")]).await.expect(200);
        assert_eq!(active["total_items"], 3, "two and the admin");
        let fields = invalid_fields(&list(&app, &[("status", "deleted")]).await);
        assert_eq!(fields, ["status"]);
    }

    async fn the_email_filter_is_exact_and_case_insensitive(app) {
        let ada = app.create_user("Ada", "ada@example.com").await;
        app.create_user("Bada", "bada@example.com").await;
        app.create_user("Ada Co", "ada@example.co").await;
        for query in ["ada@example.com", "ADA@Example.COM", " ada@example.com "] {
            let page = list(&app, &[("email", query)]).await.expect(200);
            assert_eq!(ids_of(&page), [id_of(&ada)], "email={query:?}");
            assert_eq!(page["total_items"], 1);
        }
        let misses = ["ada@example", "%", "ada@example.%", "_da@example.com", "nobody@example.com"];
        for query in misses {
            let page = list(&app, &[("email", query)]).await.expect(200);
            assert_eq!(page["items"], json!([]), "email={query:?} matched");
            assert_eq!(page["total_items"], 0);
        }
        let both = list(&app, &[("email", "ADA@example.com"), ("status", "active")]).await;
        let both = both.expect(200);
        assert_eq!(ids_of(&both), [id_of(&ada)]);
        let neither = list(&app, &[("email", "ada@example.com"), ("status", "inactive")]).await;
        let neither = neither.expect(200);
        assert_eq!(neither["total_items"], 0);
    }

    async fn invalid_listing_parameters_are_422_naming_them(app) {
        let cases: [(&[(&str, &str)], &str); 8] = [
            (&[("per_page", "0")], "per_page"),
            (&[("per_page", "101")], "per_page"),
            (&[("per_page", "-1")], "per_page"),
            (&[("per_page", "many")], "per_page"),
            (&[("page", "0")], "page"),
            (&[("page", "abc")], "page"),
            (&[("page", "-3")], "page"),
            (&[("page", "1.5")], "page"),
        ];
        for (query, field) in cases {
            let fields = invalid_fields(&list(&app, query).await);
            assert_eq!(fields, [field], "{query:?}");
        }
        // The limits themselves are fine; unknown parameters are ignored.
        list(&app, &[("per_page", "1")]).await.expect(200);
        list(&app, &[("per_page", "100")]).await.expect(200);
        list(&app, &[("sort", "name"), ("page", "1")]).await.expect(200);
    }

    async fn a_cursor_together_with_page_is_422(app) {
        for n in 0..3 {
            app.create_user(&format!("User {n}"), &format!("u{n}@example.com")).await;
        }
        let first = list(&app, &[("per_page", "1")]).await.expect(200);
        let cursor = first["next_cursor"].as_str().expect("a next_cursor").to_owned();
        for page in ["1", "2"] {
            let fields = invalid_fields(&list(&app, &[("cursor", &cursor), ("page", page)]).await);
            assert!(fields.iter().any(|f| f == "cursor" || f == "page"), "{fields:?}");
        }
    }

    async fn a_cursor_that_cannot_be_decoded_is_422(app) {
        app.create_user("Ada", "ada@example.com").await;
        let encode = |text: &str| base64_url(text.as_bytes());
        let nil = Uuid::nil();
        let cursors = vec![
            "garbage".to_owned(),
            String::new(),
            "!!!!".to_owned(),
            "%%%".to_owned(),
            "x".repeat(4096),
            encode("users"),
            encode("users|not-a-date|not-a-uuid"),
            encode(&format!("users|2026-11-24T10:00:00Z|{nil}x")),
            encode(&format!("products|2026-11-24T10:00:00Z|{nil}")),
            encode(&format!("orders|2026-11-24T10:00:00Z|{nil}")),
            base64_url(&[0xff, 0xfe, 0x00, 0x7c]),
        ];
        for cursor in cursors {
            let reply = list(&app, &[("cursor", &cursor)]).await;
            let fields = invalid_fields(&reply);
            assert_eq!(fields, ["cursor"], "cursor {cursor:?}");
        }
        // A product's cursor is no user cursor.
        for n in 0..2 {
            app.create_product(&format!("SKU-{n}"), 100, 1).await;
        }
        let products = app.get("/v1/products?per_page=1").await.expect(200);
        let product_cursor = products["next_cursor"].as_str().expect("a next_cursor").to_owned();
        let fields = invalid_fields(&list(&app, &[("cursor", &product_cursor)]).await);
        assert_eq!(fields, ["cursor"]);
    }

    async fn a_well_formed_cursor_at_any_time_never_answers_500(app) {
        app.create_user("Ada", "ada@example.com").await;
        let max = Uuid::max();
        for created_at in [
            "0001-01-01T00:00:00Z",
            "1000-01-01T00:00:00Z",
            "1970-01-01T00:00:00Z",
            "2000-02-29T12:00:00.5+05:30",
            "9999-12-31T23:59:59.999999Z",
            "9999-12-31T23:59:59-23:59",
        ] {
            let cursor = base64_url(format!("users|{created_at}|{max}").as_bytes());
            let reply = list(&app, &[("cursor", &cursor)]).await;
            assert!(
                reply.status == 200 || reply.status == 422,
                "cursor at {created_at} answered {}: {}",
                reply.status,
                reply.text
            );
        }
    }

    async fn walking_every_cursor_page_sees_each_user_once_under_concurrent_inserts(app) {
        let existing = create_users(&app, "walker", 24).await;

        let stop = Arc::new(AtomicBool::new(false));
        let inserted = Arc::new(AtomicUsize::new(0));
        let inserter = {
            let (app, stop, inserted) = (app.clone(), stop.clone(), inserted.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Acquire) {
                    app.create_user(&format!("Late {n}"), &format!("late{n}@example.com")).await;
                    n += 1;
                    inserted.store(n, Ordering::Release);
                }
            })
        };

        let mut walked: Vec<Value> = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..100 {
            let reply = match &cursor {
                None => list(&app, &[("per_page", "5")]).await,
                Some(cursor) => list(&app, &[("per_page", "5"), ("cursor", cursor)]).await,
            };
            let page = reply.expect(200);
            walked.extend(page["items"].as_array().expect("items").iter().cloned());
            cursor = page["next_cursor"].as_str().map(str::to_owned);
            if cursor.is_none() {
                break;
            }
            // Let at least one more user be inserted before the next page.
            let seen = inserted.load(Ordering::Acquire);
            let waited = tokio::time::timeout(Duration::from_secs(10), async {
                while inserted.load(Ordering::Acquire) == seen {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
            .await;
            assert!(waited.is_ok(), "the inserter stalled");
        }
        assert!(cursor.is_none(), "the walk did not end");
        stop.store(true, Ordering::Release);
        inserter.await.expect("the inserter finishes");

        let ids: Vec<String> = walked.iter().map(id_of).collect();
        let unique: HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "a user was listed twice: {ids:?}");
        let positions: Vec<_> = walked.iter().map(position).collect();
        assert!(positions.windows(2).all(|w| w[0] > w[1]), "the walk went back in time");
        let existing_set: HashSet<&String> = existing.iter().collect();
        let seen_existing: Vec<String> =
            ids.iter().filter(|id| existing_set.contains(id)).cloned().collect();
        assert_eq!(seen_existing, existing, "a user that existed before the walk was skipped");
        assert!(inserted.load(Ordering::Acquire) > 0);
    }

    async fn sql_looking_strings_round_trip_verbatim(app) {
        let names = [
            "Robert'); DROP TABLE users;--",
            "' OR '1'='1",
            "\"; DELETE FROM users WHERE \"\" = \"",
            "100% _wild_ \\ back\\slash \\' \\\"",
            "/* comment */ SELECT * FROM users",
        ];
        let mut ids = Vec::new();
        for (n, name) in names.iter().enumerate() {
            let user = app.create_user(name, &format!("sql{n}@example.com")).await;
            assert_eq!(user["name"], *name);
            let fetched = app.get(&format!("/v1/users/{}", id_of(&user))).await.expect(200);
            assert_eq!(fetched["name"], *name);
            ids.push(id_of(&user));
        }
        let email = "o'brien+drop--table@example.com";
        let user = app.create_user("O'Brien", email).await;
        assert_eq!(user["email"], email);
        let found = list(&app, &[("email", email)]).await.expect(200);
        assert_eq!(ids_of(&found), [id_of(&user)]);
        let none = list(&app, &[("email", "' OR '1'='1")]).await.expect(200);
        assert_eq!(none["items"], json!([]));
        assert_eq!(total_users(&app).await, names.len() as u64 + 1);
    }

    async fn unicode_names_round_trip_verbatim(app) {
        let names = [
            "Zoë 🎉 👩‍👩‍👧‍👦",
            // "e" followed by a combining acute accent: not normalised to "é".
            "Jose\u{301} Noe\u{308}l",
            "שלום עולם \u{200f}(RTL)\u{200f}",
            "مرحبا بالعالم",
            "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 日本語 한국어",
            "zero\u{200b}width\u{200d}joiner",
        ];
        for (n, name) in names.iter().enumerate() {
            let padded = format!(" \t{name}\n ");
            let user = app.create_user(&padded, &format!("uni{n}@example.com")).await;
            assert_eq!(user["name"], *name, "{name:?} was altered");
            let fetched = app.get(&format!("/v1/users/{}", id_of(&user))).await.expect(200);
            assert_eq!(fetched, user);
        }
        // Lengths are counted in scalar values: 200 four-byte emoji fit, 201 do not.
        let emoji = "🎉".repeat(200);
        let user = app.create_user(&emoji, "emoji@example.com").await;
        assert_eq!(user["name"], emoji.as_str());
        let too_long = create(&app, user_body(&"🎉".repeat(201), "emoji2@example.com")).await;
        assert_eq!(invalid_fields(&too_long), ["name"]);
        let combining = "e\u{301}".repeat(100);
        let user = app.create_user(&combining, "combining@example.com").await;
        assert_eq!(user["name"], combining.as_str());
        let listed = list(&app, &[("email", "combining@example.com")]).await.expect(200);
        assert_eq!(listed["items"][0]["name"], combining.as_str());
    }

    async fn an_email_that_lower_casing_lengthens_past_254_characters_is_422(app) {
        // 254 characters as sent; "İ" lower-cases to two characters, so 286 as stored.
        let email = format!(
            "{}@{}.{}.{}.{}.com",
            "İ".repeat(32),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(63),
            "e".repeat(25)
        );
        assert_eq!(email.chars().count(), 254);
        let reply = create(&app, user_body("Dotted", &email)).await;
        assert_eq!(invalid_fields(&reply), ["email"]);
        let user = app.create_user("Ada", "ada@example.com").await;
        let path = format!("/v1/users/{}", id_of(&user));
        assert_eq!(invalid_fields(&app.patch(&path, &json!({"email": email})).await), ["email"]);
        assert_eq!(app.get(&path).await.expect(200), user);
        assert_eq!(total_users(&app).await, 1);
    }

    async fn a_nul_character_is_422_in_a_body_and_matches_nothing_in_a_filter(app) {
        let user = app.create_user("Ada", "ada@example.com").await;
        let reply = create(&app, user_body("Ada\u{0}Lovelace", "nul@example.com")).await;
        assert_eq!(invalid_fields(&reply), ["name"]);
        let reply = create(&app, user_body("Ada", "ada\u{0}@example.com")).await;
        assert_eq!(invalid_fields(&reply), ["email"]);
        let path = format!("/v1/users/{}", id_of(&user));
        assert_eq!(invalid_fields(&app.patch(&path, &json!({"name": "\u{0}"})).await), ["name"]);
        let page = list(&app, &[("email", "ada\u{0}@example.com")]).await.expect(200);
        assert_eq!(page["items"], json!([]));
        assert_eq!(page["total_items"], 0);
        assert_eq!(app.get(&path).await.expect(200), user);
    }
}

/// URL-safe base64 without padding, the alphabet the service's cursors use.
fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
        }
    }
    out
}

/// Every node of an `EXPLAIN (FORMAT JSON)` plan.
fn plan_nodes(plan: &Value) -> Vec<&Value> {
    let mut nodes = vec![plan];
    if let Some(children) = plan["Plans"].as_array() {
        for child in children {
            nodes.extend(plan_nodes(child));
        }
    }
    nodes
}

/// PostgreSQL's `EXPLAIN (FORMAT JSON)` of `sql`.
async fn plan_of(conn: &sea_orm::DatabaseConnection, sql: &str) -> Value {
    let explain = format!("EXPLAIN (FORMAT JSON) {sql}");
    let row = conn
        .query_one_raw(Statement::from_string(DbBackend::Postgres, explain))
        .await
        .expect("EXPLAIN runs")
        .expect("EXPLAIN answers a row");
    row.try_get_by_index(0).expect("a JSON plan")
}

/// Runs `EXPLAIN (FORMAT JSON)` on `sql` and asserts that the plan reads `users` through one of
/// `indexes` and never scans the table sequentially.
async fn assert_plan_uses(conn: &sea_orm::DatabaseConnection, sql: &str, indexes: &[&str]) {
    let plan = plan_of(conn, sql).await;
    let nodes = plan_nodes(&plan[0]["Plan"]);
    let seq_scans = nodes
        .iter()
        .filter(|node| node["Node Type"] == "Seq Scan" && node["Relation Name"] == "users")
        .count();
    assert_eq!(seq_scans, 0, "{sql}\nscans users sequentially:\n{plan:#}");
    assert!(
        nodes
            .iter()
            .any(|node| indexes.iter().any(|index| node["Index Name"] == *index)),
        "{sql}\nuses none of {indexes:?}:\n{plan:#}"
    );
}

/// Asserts that `sql`'s window functions read `users` in index order: no sort below them (the
/// few rows they leave may be sorted again).
async fn assert_windows_read_in_index_order(conn: &sea_orm::DatabaseConnection, sql: &str) {
    let plan = plan_of(conn, sql).await;
    let windows: Vec<&Value> = plan_nodes(&plan[0]["Plan"])
        .into_iter()
        .filter(|node| node["Node Type"] == "WindowAgg")
        .collect();
    assert!(!windows.is_empty(), "{sql}\nhas no WindowAgg:\n{plan:#}");
    let sorted = windows.iter().any(|window| {
        plan_nodes(window)
            .iter()
            .any(|node| node["Node Type"] == "Sort")
    });
    assert!(!sorted, "{sql}\nsorts users for its window:\n{plan:#}");
}

on_postgres! {
    async fn listing_and_lookup_queries_use_their_indexes(app) {
        let conn = app.db.connect().await;
        // 10,000 users over about a week; 70% active, 20% inactive, 10% suspended.
        conn.execute_unprepared(
            "INSERT INTO users (id, name, email, password_hash, status, created_at, updated_at)
             SELECT gen_random_uuid(), 'User ' || n, 'user' || n || '@example.com', 'not a hash',
                    CASE WHEN n % 10 < 7 THEN 'active' WHEN n % 10 < 9 THEN 'inactive'
                         ELSE 'suspended' END,
                    now() - n * interval '1 minute', now() - n * interval '1 minute'
             FROM generate_series(1, 10000) AS n",
        )
        .await
        .expect("insert the users");
        // As after autovacuum: statistics, and a visibility map for index-only scans.
        conn.execute_unprepared("VACUUM ANALYZE users").await.expect("vacuum");

        // The statements the service builds (SeaORM quotes every identifier; the plans are the
        // same without), with literals where it binds parameters.
        let columns = "id, name, email, password_hash, status, created_at, updated_at";
        let order = "ORDER BY created_at DESC, id DESC";
        // A position in newest-first order, as a cursor carries it.
        let rfc3339 = "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'";
        let position_after = |filter: &str, offset: u32| {
            let sql = format!(
                "SELECT to_char(created_at AT TIME ZONE 'UTC', {rfc3339}) AS at, id::text AS id \
                 FROM users {filter} {order} OFFSET {offset} LIMIT 1"
            );
            let conn = &conn;
            async move {
                let row = conn
                    .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
                    .await
                    .expect("read a position")
                    .expect("a row");
                let at: String = row.try_get("", "at").expect("at");
                let id: String = row.try_get("", "id").expect("id");
                format!("created_at <= '{at}' AND (created_at < '{at}' OR id < '{id}')")
            }
        };

        // A selective status is read through (status, created_at, id). For the status most users
        // have, reading newest first and skipping the others is as cheap, and the planner may.
        let by_status = ["idx_users_status_created_at"];
        let by_status_or_time = ["idx_users_status_created_at", "idx_users_created_at"];
        for (status, indexes) in [
            ("suspended", &by_status[..]),
            ("inactive", &by_status[..]),
            ("active", &by_status_or_time[..]),
        ] {
            let filter = format!("WHERE status = '{status}'");
            // Page mode: pages 1 and 3.
            for offset in [0, 40] {
                let page = format!("LIMIT 20 OFFSET {offset}");
                let sql = format!("SELECT {columns} FROM users {filter} {order} {page}");
                assert_plan_uses(&conn, &sql, indexes).await;
            }
            // Keyset mode: the page after page 1, as its next_cursor asks for it.
            let older = position_after(&filter, 19).await;
            let sql = format!("SELECT {columns} FROM users {filter} AND {older} {order} LIMIT 21");
            assert_plan_uses(&conn, &sql, indexes).await;
        }
        // The page-mode total for a selective status.
        let sql = "SELECT COUNT(*) AS n \
                   FROM (SELECT 1 FROM users WHERE status = 'suspended' LIMIT 10001) AS capped";
        assert_plan_uses(&conn, sql, &["idx_users_status", "idx_users_status_created_at"]).await;
        // Lookup by email: the filtered listing and the single-row lookup.
        let by_email = "WHERE email = 'user4242@example.com'";
        let sql = format!("SELECT {columns} FROM users {by_email} {order} LIMIT 20 OFFSET 0");
        assert_plan_uses(&conn, &sql, &["idx_users_email"]).await;
        let sql = format!("SELECT {columns} FROM users {by_email} LIMIT 1");
        assert_plan_uses(&conn, &sql, &["idx_users_email"]).await;
        // The unfiltered walk: the first page and a page halfway through.
        let sql = format!("SELECT {columns} FROM users {order} LIMIT 21");
        assert_plan_uses(&conn, &sql, &["idx_users_created_at"]).await;
        let older = position_after("", 5000).await;
        let sql = format!("SELECT {columns} FROM users WHERE {older} {order} LIMIT 21");
        assert_plan_uses(&conn, &sql, &["idx_users_created_at"]).await;

        // Recording a deep listing's page positions: one pass in index order, the row numbers
        // counted as the rows come, no sort of the table (the query `repo::page` builds).
        let newest_first = "OVER (ORDER BY created_at DESC, id DESC)";
        for (filter, indexes) in [
            ("", &["idx_users_created_at"][..]),
            ("WHERE status = 'suspended'", &by_status[..]),
        ] {
            let sql = format!(
                "SELECT at, id, n, more FROM (SELECT created_at AS at, id, \
                 ROW_NUMBER() {newest_first} AS n, LEAD(1) {newest_first} AS more \
                 FROM users {filter}) AS numbered WHERE n % 256 = 0 OR more IS NULL ORDER BY n"
            );
            assert_plan_uses(&conn, &sql, indexes).await;
            assert_windows_read_in_index_order(&conn, &sql).await;
        }
        let _ = conn.close().await;

        // And the service answers those requests from that data.
        let found = list(&app, &[("email", "USER4242@example.com")]).await.expect(200);
        assert_eq!(found["total_items"], 1);
        let suspended = list(&app, &[("status", "suspended"), ("per_page", "100")]).await;
        let suspended = suspended.expect(200);
        assert_eq!(suspended["total_items"], 1000);
        let cursor = suspended["next_cursor"].as_str().expect("a next_cursor").to_owned();
        let next = list(&app, &[("status", "suspended"), ("per_page", "100"), ("cursor", &cursor)])
            .await
            .expect(200);
        assert_eq!(next["items"].as_array().map(Vec::len), Some(100));
        let items = next["items"].as_array().expect("items");
        assert!(items.iter().all(|user| user["status"] == "suspended"));
    }
}
