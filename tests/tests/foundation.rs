//! The skeleton: migrations, start-up, readiness, shutdown, and the documents.

use std::process::Stdio;
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, TransactionTrait};
use tests::{
    Backend, TestApp, TestDb, for_backends, json, on_every_backend, on_sql_backends, run,
    stop_while_a_rename_is_in_flight,
};

/// Migrations apply, roll back and apply again.
async fn migrations_round_trip(db: Option<TestDb>) {
    let Some(db) = db else {
        return;
    };
    let conn = db.connect().await;
    let all = Migrator::migrations().len();
    Migrator::up(&conn, None).await.expect("up");
    assert_eq!(
        Migrator::get_pending_migrations(&conn).await.unwrap().len(),
        0
    );
    assert_eq!(
        Migrator::get_applied_migrations(&conn).await.unwrap().len(),
        all
    );
    Migrator::down(&conn, None).await.expect("down");
    assert_eq!(
        Migrator::get_applied_migrations(&conn).await.unwrap().len(),
        0
    );
    // Every table is gone: down undid up exactly.
    for table in [
        "users",
        "products",
        "orders",
        "order_items",
        "idempotency_keys",
    ] {
        assert!(
            conn.execute_unprepared(&format!("SELECT 1 FROM {table}"))
                .await
                .is_err(),
            "{table} survived down"
        );
    }
    Migrator::up(&conn, None).await.expect("up again");
    assert_eq!(
        Migrator::get_applied_migrations(&conn).await.unwrap().len(),
        all
    );
    let _ = conn.close().await;
    db.drop_database().await;
}

for_backends!(#[tokio::test] [sqlite, postgres, mysql] fn migrations_round_trip);

on_every_backend! {
    async fn every_database_error_kind_is_counted_from_start_up(app) {
        let metrics = app.get("/metrics").await.text;
        for kind in [
            "unique_violation",
            "foreign_key_violation",
            "check_violation",
            "contention",
            "statement_timeout",
            "pool_exhausted",
            "unavailable",
            "missing_schema",
            "other",
        ] {
            let series = format!("db_errors_total{{kind=\"{kind}\"}} 0");
            assert!(metrics.contains(&series), "no {series} in {metrics}");
        }
    }

    async fn health_ready_and_documents_are_served(app) {
        assert_eq!(app.get("/health").await.status, 200);
        assert_eq!(app.get("/ready").await.status, 200);
        let docs = app.get("/docs").await;
        assert_eq!(docs.status, 200);
        assert!(docs.text.contains("SwaggerUIBundle"));
        let spec_json = app.get("/openapi.json").await.expect(200);
        assert_eq!(spec_json["info"]["title"], "Storefront");
        let yaml = app.get("/openapi.yaml").await;
        assert_eq!(yaml.status, 200);
        let from_yaml: serde_json::Value = serde_yaml_from(&yaml.text);
        assert_eq!(from_yaml, spec_json, "the JSON and YAML documents differ");
    }

    async fn unknown_routes_and_methods_are_problems(app) {
        app.get("/v1/nothing-here").await.problem(404, "not_found");
        app.send(app.client.put(app.url("/v1/users"))).await.problem(405, "method_not_allowed");
    }
}

// MongoDB's version, holding the document in a transaction: tests/tests/mongo.rs.
on_sql_backends! {
    async fn graceful_shutdown_finishes_an_in_flight_request(app) {
        let product = app.create_product("SHUT-1", 100, 5).await;
        let id = product["id"].as_str().unwrap().to_owned();
        // Hold the product's row (SQLite: the whole database) so the PATCH below stays in flight.
        let holder = app.db.connect().await;
        let txn = holder.begin().await.unwrap();
        let id_literal = match app.db.backend {
            Backend::Postgres => format!("'{id}'"),
            Backend::MySql => format!("UNHEX(REPLACE('{id}', '-', ''))"),
            Backend::Sqlite => format!("X'{}'", id.replace('-', "")),
            Backend::Mongo => unreachable!("a SQL-only test"),
        };
        txn.execute_unprepared(&format!("UPDATE products SET stock = stock WHERE id = {id_literal}"))
            .await
            .unwrap();
        let path = format!("/v1/products/{id}");
        stop_while_a_rename_is_in_flight(&app, path, async { txn.commit().await.unwrap() }).await;
        // The pool was closed on the way down.
        assert!(app.state.db.ping().await.is_err(), "the pool is still open");
    }
}

fn serde_yaml_from(text: &str) -> serde_json::Value {
    serde_yaml::from_str(text).expect("valid YAML")
}

#[tokio::test]
async fn the_checked_in_openapi_yaml_is_what_the_server_generates() {
    // The document needs no database: one that cannot be reached changes nothing.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_storefront"))
        .arg("openapi")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/nowhere")
        .output()
        .expect("run the server binary");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let generated = String::from_utf8(output.stdout).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi.yaml");
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        generated == checked_in,
        "openapi.yaml is stale: regenerate it with `cargo run -q -p api -- openapi > openapi.yaml`"
    );
}

/// What client generators trip over: an `allOf` branch that only annotates (openapi-python-client
/// then drops the whole model) and `additionalProperties` on a non-object (openapi-typescript then
/// widens an enum to `string`). `scripts/clients.sh` runs the generators themselves.
#[test]
fn the_document_reads_cleanly_in_client_generators() {
    fn faults(value: &serde_json::Value, at: &str, found: &mut Vec<String>) {
        const ANNOTATIONS: [&str; 7] = [
            "description",
            "title",
            "default",
            "example",
            "readOnly",
            "writeOnly",
            "deprecated",
        ];
        match value {
            serde_json::Value::Object(map) => {
                let branches = map.get("allOf").and_then(|all| all.as_array());
                for branch in branches.into_iter().flatten() {
                    let keywords = branch.as_object().into_iter().flat_map(|b| b.keys());
                    if keywords.clone().all(|k| ANNOTATIONS.contains(&k.as_str())) {
                        found.push(format!("{at}: allOf branch {branch}"));
                    }
                }
                let object = map.get("type").and_then(|t| t.as_str()) == Some("object");
                if map.get("additionalProperties") == Some(&json!(false)) && !object {
                    found.push(format!("{at}: additionalProperties on a non-object"));
                }
                for (key, child) in map {
                    faults(child, &format!("{at}/{key}"), found);
                }
            }
            serde_json::Value::Array(items) => {
                for (index, child) in items.iter().enumerate() {
                    faults(child, &format!("{at}/{index}"), found);
                }
            }
            _ => {}
        }
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_storefront"))
        .arg("openapi")
        .output()
        .expect("run the server binary");
    let document = serde_yaml_from(&String::from_utf8_lossy(&output.stdout));
    let mut found = Vec::new();
    faults(&document, "", &mut found);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[tokio::test]
async fn start_up_fails_fast_with_one_line_and_no_password() {
    // Nothing listens on port 1: the connection is refused at once.
    let started = std::time::Instant::now();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_storefront"))
        .env(
            "DATABASE_URL",
            "postgres://shop:hunter2secret@127.0.0.1:1/shop",
        )
        .env("DB_CONNECT_TIMEOUT_MS", "2000")
        .env("PORT", "0")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run the server binary");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(
        lines[0].contains("postgres://shop:***@127.0.0.1:1/shop"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2secret") && !stdout.contains("hunter2secret"));
}

#[tokio::test]
async fn an_invalid_setting_names_its_variable() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_storefront"))
        .env("DB_MAX_CONNECTIONS", "lots")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run the server binary");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("DB_MAX_CONNECTIONS"));
}

#[tokio::test]
async fn ready_is_503_while_the_database_is_gone() {
    run(Backend::Sqlite, |app: TestApp| async move {
        assert_eq!(app.get("/ready").await.status, 200);
        app.state.db.close_by_ref().await.unwrap();
        assert_eq!(app.get("/ready").await.status, 503);
        assert_eq!(app.get("/health").await.status, 200);
    })
    .await;
}

/// Also: the log, written to a pipe here as to a file in production, carries no terminal colour
/// codes.
#[tokio::test]
async fn sigterm_stops_the_server_cleanly() {
    let Some(db) = TestDb::create(Backend::Sqlite).await else {
        return;
    };
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_storefront"))
        .env("DATABASE_URL", &db.url)
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the server");
    let client = reqwest::Client::new();
    let health = format!("http://127.0.0.1:{port}/health");
    let mut up = false;
    for _ in 0..100 {
        if client
            .get(&health)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "the server did not come up");
    let pid = child.id().expect("a pid") as i32;
    // SAFETY-free: kill(1) through the standard tool, to avoid an extra dependency.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("the server exits after SIGTERM")
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let log = String::from_utf8_lossy(&output.stdout);
    assert!(
        log.contains("/health"),
        "no request line in the log:\n{log}"
    );
    assert!(!log.contains('\u{1b}'), "colour codes in the log:\n{log:?}");
    db.drop_database().await;
}
