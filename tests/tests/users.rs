//! The Users resource, as API.md states it: create, read, change and delete, with every
//! validation and conflict rule, on every backend. Listing is in `listing.rs`, query plans in
//! `query_plans.rs`.

use std::time::Duration;

use serde_json::Value;
use tests::users::{PASSWORD, create, invalid_fields, list, time_key};
use tests::{Reply, TestApp, id_of, ids_of, json, on_every_backend};
use uuid::Uuid;

/// How many users the service lists besides the harness's admin.
async fn total_users(app: &TestApp) -> u64 {
    let page = list(app, &[("per_page", "1")]).await.expect(200);
    page["total_items"]
        .as_u64()
        .unwrap_or_else(|| panic!("no total_items in {page}"))
        - 1
}

fn user_body(name: &str, email: &str) -> Value {
    json!({"name": name, "email": email, "password": PASSWORD})
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
