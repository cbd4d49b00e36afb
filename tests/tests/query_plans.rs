//! The queries behind listing and looking up users read PostgreSQL's indexes, as their plans show.

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::Value;
use tests::on_postgres;
use tests::users::list;

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
