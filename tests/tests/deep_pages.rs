//! Page mode deep into a long listing: pages read from the recorded page positions must be exactly
//! the pages OFFSET would give, with exact totals, and every write must make the positions stale
//! at once — on every backend.

use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use sea_orm::sea_query::{Alias, Query};
use sea_orm::{ConnectionTrait, Value as DbValue};
use serde_json::Value;
use tests::{Backend, TestApp, id_of, ids_of, json, on_sql_backends, run_with, test_config};
use uuid::Uuid;

/// Rows between two recorded positions (the service's `cache::listing::BLOCK`).
const BLOCK: usize = api::store::positions::BLOCK as usize;

const USERS: usize = 1_000;

/// `USERS` users, stored directly: newest first they are `user0`, `user1`, …; every two share a
/// `created_at`, so ties are broken by id. Every third is inactive.
async fn seed(app: &TestApp) {
    let conn = app.db.connect().await;
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    for chunk in (0..USERS).collect::<Vec<_>>().chunks(250) {
        let mut insert = Query::insert();
        insert.into_table(Alias::new("users")).columns(
            [
                "id",
                "name",
                "email",
                "password_hash",
                "status",
                "created_at",
                "updated_at",
            ]
            .map(Alias::new),
        );
        for &n in chunk {
            let at = (start - chrono::Duration::seconds((n / 2) as i64)).fixed_offset();
            let status = if n % 3 == 0 { "inactive" } else { "active" };
            insert.values_panic([
                DbValue::from(Uuid::new_v4()).into(),
                format!("user{n}").into(),
                format!("user{n}@example.com").into(),
                "not a hash".into(),
                status.into(),
                at.into(),
                at.into(),
            ]);
        }
        conn.execute(&insert).await.expect("insert users");
    }
    let _ = conn.close().await;
}

/// Every id of the listing, newest first, by walking it in keyset mode (no OFFSET involved).
async fn walk(app: &TestApp, filter: &[(&str, &str)]) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = filter.to_vec();
        query.push(("per_page", "100"));
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor));
        }
        let page = app
            .send(app.client.get(app.url("/v1/users")).query(&query))
            .await
            .expect(200);
        ids.extend(ids_of(&page));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return ids,
        }
    }
}

async fn page(app: &TestApp, filter: &[(&str, &str)], page: usize, per_page: usize) -> Value {
    let (page, per_page) = (page.to_string(), per_page.to_string());
    let mut query = filter.to_vec();
    query.extend([("page", page.as_str()), ("per_page", per_page.as_str())]);
    app.send(app.client.get(app.url("/v1/users")).query(&query))
        .await
        .expect(200)
}

fn index_hits(app: &TestApp) -> u64 {
    app.state
        .metrics
        .listing_index_requests
        .with_label_values(&["users", "hit"])
        .get()
}

/// Asks for a deep page until the answer came from the recorded positions.
async fn wait_for_positions(app: &TestApp, filter: &[(&str, &str)]) {
    let started = Instant::now();
    loop {
        let before = index_hits(app);
        page(app, filter, BLOCK / 20 + 2, 20).await;
        if index_hits(app) > before {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the positions of {filter:?} were never recorded: {}",
            app.state.metrics.render()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Page `number` of `per_page` as OFFSET defines it, checked against `all` (the listing in order).
#[track_caller]
fn assert_page(page: &Value, all: &[String], number: usize, per_page: usize) {
    let start = ((number - 1) * per_page).min(all.len());
    let end = (start + per_page).min(all.len());
    assert_eq!(ids_of(page), all[start..end], "page {number} of {per_page}");
    assert_eq!(page["total_items"], all.len());
    assert_eq!(page["total_pages"], all.len().div_ceil(per_page));
    assert_eq!(page["total_is_estimate"], false);
    assert_eq!(
        page["next_cursor"].is_string(),
        end < all.len(),
        "page {number} of {per_page}"
    );
}

/// Pages on both sides of several position boundaries, the last page and one past it.
async fn assert_pages(app: &TestApp, filter: &[(&str, &str)], all: &[String]) {
    for per_page in [1, 7, 20, 100] {
        let offsets = [
            0,
            BLOCK - 1,
            BLOCK,
            BLOCK + 1,
            2 * BLOCK + 3,
            all.len() - 1,
            all.len(),
        ];
        for offset in offsets {
            let number = offset / per_page + 1;
            assert_page(
                &page(app, filter, number, per_page).await,
                all,
                number,
                per_page,
            );
        }
    }
}

on_sql_backends! {
    async fn deep_pages_are_exactly_the_offset_pages(app) {
        seed(&app).await;
        for filter in [&[][..], &[("status", "active")][..], &[("status", "inactive")][..]] {
            let all = walk(&app, filter).await;
            assert!(all.len() > 2 * BLOCK || filter == [("status", "inactive")]);
            // The first deep page is answered the plain way and has the positions recorded.
            assert_page(&page(&app, filter, 40, 7).await, &all, 40, 7);
            wait_for_positions(&app, filter).await;
            let hits = index_hits(&app);
            assert_pages(&app, filter, &all).await;
            assert!(index_hits(&app) > hits, "no page came from the recorded positions");
        }
    }

    async fn every_write_shows_in_deep_pages_at_once(app) {
        seed(&app).await;
        let active = [("status", "active")];
        wait_for_positions(&app, &[]).await;
        wait_for_positions(&app, &active).await;

        // A new user is first: every later page shifts by one.
        let user = app.create_user("Newest", "newest@example.com").await;
        let all = walk(&app, &[]).await;
        assert_eq!(all[0], id_of(&user));
        assert_page(&page(&app, &[], 40, 7).await, &all, 40, 7);
        assert_page(&page(&app, &active, 40, 7).await, &walk(&app, &active).await, 40, 7);

        // A status change moves a user from one filtered listing to another.
        let moved = &all[300];
        let path = format!("/v1/users/{moved}");
        app.patch(&path, &json!({"status": "suspended"})).await.expect(200);
        let active_now = walk(&app, &active).await;
        assert!(!active_now.contains(moved));
        assert_page(&page(&app, &active, 60, 7).await, &active_now, 60, 7);

        // A deleted user leaves every listing.
        let deleted = &all[100];
        app.delete(&format!("/v1/users/{deleted}")).await;
        let all = walk(&app, &[]).await;
        // The seeded users, the new one and the admin, less the deleted one.
        assert_eq!(all.len(), USERS + 1);
        assert!(!all.contains(deleted));
        assert_page(&page(&app, &[], 40, 7).await, &all, 40, 7);

        // Once recorded again, the positions agree with the writes too.
        wait_for_positions(&app, &[]).await;
        assert_pages(&app, &[], &all).await;
        wait_for_positions(&app, &active).await;
        assert_pages(&app, &active, &walk(&app, &active).await).await;
    }
}

/// On PostgreSQL several instances may serve one database: a user created through one must
/// show in the deep pages of another, whose recorded positions it makes stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(has_postgres), ignore = "TEST_POSTGRES_URL is not set")]
async fn another_instances_writes_show_in_deep_pages() {
    run_with(
        Backend::Postgres,
        |_| {},
        |a: TestApp| async move {
            let b = TestApp::start(a.db.clone(), test_config(&a.db)).await;
            seed(&a).await;
            wait_for_positions(&b, &[]).await;
            let user = a.create_user("Newest", "newest@example.com").await;
            let all = walk(&a, &[]).await;
            assert_eq!(all[0], id_of(&user));
            let started = Instant::now();
            loop {
                let deep = page(&b, &[], 40, 7).await;
                if ids_of(&deep) == all[273..280] {
                    assert_page(&deep, &all, 40, 7);
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(1),
                    "B still pages as if the user did not exist: {deep}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            b.stop().await.unwrap();
        },
    )
    .await;
}
