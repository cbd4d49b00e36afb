//! Page-mode totals: exact while counting is cheap, the planner's estimate past 10,000 matching
//! rows on PostgreSQL (and said so).

use sea_orm::ConnectionTrait;
use tests::{TestApp, on_postgres};

async fn seed_users(app: &TestApp, count: u32) {
    let conn = app.db.connect().await;
    conn.execute_unprepared(&format!(
        "INSERT INTO users (id, name, email, password_hash, status, created_at, updated_at)
         SELECT gen_random_uuid(), 'User ' || g, 'user' || g || '@example.com', 'x',
                CASE WHEN g % 10 = 0 THEN 'inactive' ELSE 'active' END,
                now() - make_interval(secs => g), now() - make_interval(secs => g)
         FROM generate_series(1, {count}) AS g"
    ))
    .await
    .unwrap();
    conn.execute_unprepared("ANALYZE users").await.unwrap();
    let _ = conn.close().await;
}

on_postgres! {
    async fn totals_past_ten_thousand_are_estimates_and_say_so(app) {
        seed_users(&app, 12_000).await;
        let page = app.get("/v1/users?per_page=10").await.expect(200);
        assert_eq!(page["total_is_estimate"], true, "{page}");
        let total = page["total_items"].as_u64().unwrap();
        assert!((10_001..=14_000).contains(&total), "estimate {total} is far from 12,000");
        assert_eq!(page["total_pages"].as_u64().unwrap(), total.div_ceil(10));
        assert!(page["next_cursor"].is_string());
        // A filter that matches few rows is counted exactly.
        let inactive = app.get("/v1/users?status=inactive&per_page=10").await.expect(200);
        assert_eq!(inactive["total_is_estimate"], false);
        assert_eq!(inactive["total_items"], 1_200);
        let suspended = app.get("/v1/users?status=suspended").await.expect(200);
        assert_eq!(suspended["total_items"], 0);
        assert_eq!(suspended["total_pages"], 0);
    }

    async fn totals_up_to_ten_thousand_are_exact(app) {
        // With the admin, ten thousand exactly.
        seed_users(&app, 9_999).await;
        let page = app.get("/v1/users?per_page=100&page=100").await.expect(200);
        assert_eq!(page["total_is_estimate"], false);
        assert_eq!(page["total_items"], 10_000);
        assert_eq!(page["items"].as_array().unwrap().len(), 100);
        assert!(page.get("next_cursor").is_none(), "the last page has no next_cursor");
    }
}
