//! Listing the Users resource, as API.md states it: page and keyset mode, filters, cursors, on
//! every backend.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use tests::users::{PASSWORD, create, invalid_fields, list, time_key};
use tests::{TestApp, id_of, ids_of, json, on_every_backend};
use uuid::Uuid;

/// The ids a newest-first listing of `created` shows: the harness's admin, made at start-up, is
/// the oldest user and comes last.
fn listed(app: &TestApp, created: &[String]) -> Vec<String> {
    created
        .iter()
        .cloned()
        .chain([app.admin_id.clone()])
        .collect()
}

/// The position of a listed user in newest-first order.
fn position(user: &Value) -> (String, Uuid) {
    let created_at = user["created_at"].as_str().unwrap_or_default();
    let id = Uuid::parse_str(&id_of(user)).expect("a UUID id");
    (time_key(created_at), id)
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

on_every_backend! {
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
}

/// URL-safe base64 without padding, as the service's cursors are encoded. The cursors here are
/// malformed or unnormalised on purpose, which `api::http::pagination::encode_cursor` cannot make.
fn base64_url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}
