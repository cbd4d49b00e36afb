//! Deployed as operators deploy: several instances of the real binary started at once against
//! one empty database, migration commands run side by side, and a migration lock someone else
//! holds.

use std::process::Stdio;
use std::time::Duration;

use migration::lock::MigrationLock;
use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use tests::{TestDb, for_backends};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

const TABLES: [&str; 9] = [
    "users",
    "products",
    "orders",
    "order_items",
    "idempotency_keys",
    "sessions",
    "login_failures",
    "events",
    "event_relays",
];

/// Guards against a hung process only; nothing here depends on how fast anything is.
const HANG_GUARD: Duration = Duration::from_secs(120);

/// The real server binary on `db` with its defaults (migrations at start-up included), on a port
/// the OS chooses as it binds (its "listening" line names it): a port picked beforehand could
/// be taken by anything else on the machine before the instance binds it.
fn server(db: &TestDb) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_storefront"));
    command
        .env("DATABASE_URL", &db.url)
        .env("PORT", "0")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("DATABASE_DIRECT_URL")
        .env_remove("AUTO_MIGRATE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(direct) = &db.direct_url {
        command.env("DATABASE_DIRECT_URL", direct);
    }
    command
}

/// What one instance said about migrations before it started listening.
#[derive(Debug, Default)]
struct StartUp {
    applied: bool,
    nothing_to_apply: bool,
    /// The address from the "listening" line.
    addr: Option<String>,
}

/// Reads the instance's log up to its "listening" line. Panics with its stderr if it exits first.
async fn wait_until_listening(child: &mut Child) -> StartUp {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = StartUp::default();
    let read = async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.applied |= line.contains("migrations applied");
            seen.nothing_to_apply |= line.contains("nothing to apply");
            // "listening for cache invalidations" comes first on PostgreSQL; the server's own
            // line names its address.
            let addr = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("addr="));
            if line.contains("listening")
                && let Some(addr) = addr
            {
                seen.addr = Some(addr.to_owned());
                return true;
            }
        }
        false
    };
    let listening = tokio::time::timeout(HANG_GUARD, read)
        .await
        .unwrap_or(false);
    if !listening {
        let _ = child.start_kill();
        let mut stderr = String::new();
        if let Some(mut err) = child.stderr.take() {
            let _ = err.read_to_string(&mut stderr).await;
        }
        panic!("an instance did not start: {stderr}");
    }
    // Keep draining the log so the instance never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    seen
}

/// Every migration recorded exactly once, none pending, every table present.
async fn assert_migrated_once(conn: &DatabaseConnection) {
    let all = Migrator::migrations().len();
    let rows = conn
        .query_all_raw(sea_orm::Statement::from_string(
            conn.get_database_backend(),
            "SELECT version FROM seaql_migrations",
        ))
        .await
        .expect("read seaql_migrations");
    let mut versions: Vec<String> = rows
        .iter()
        .map(|row| row.try_get::<String>("", "version").unwrap())
        .collect();
    assert_eq!(versions.len(), all, "recorded: {versions:?}");
    versions.sort();
    versions.dedup();
    assert_eq!(versions.len(), all, "a migration was recorded twice");
    assert!(
        Migrator::get_pending_migrations(conn)
            .await
            .unwrap()
            .is_empty()
    );
    for table in TABLES {
        conn.execute_unprepared(&format!("SELECT 1 FROM {table}"))
            .await
            .unwrap_or_else(|err| panic!("{table} is missing: {err}"));
    }
}

async fn four_instances_started_at_once_all_come_up(db: Option<TestDb>) {
    let Some(db) = db else {
        return;
    };
    let mut children: Vec<Child> = (0..4)
        .map(|_| server(&db).spawn().expect("start an instance"))
        .collect();
    let mut start_ups = Vec::new();
    for child in &mut children {
        start_ups.push(wait_until_listening(child).await);
    }
    let client = reqwest::Client::new();
    for start_up in &start_ups {
        let addr = start_up
            .addr
            .as_deref()
            .expect("the listening line names the address");
        let ready = client
            .get(format!("http://{addr}/ready"))
            .send()
            .await
            .expect("an answer");
        assert_eq!(ready.status(), 200, "instance on {addr} is not ready");
    }
    // One instance migrated; the others waited for it, or came after it, and found nothing to do.
    let migrated = start_ups.iter().filter(|s| s.applied).count();
    let skipped = start_ups.iter().filter(|s| s.nothing_to_apply).count();
    assert_eq!((migrated, skipped), (1, 3), "{start_ups:?}");
    let conn = db.connect().await;
    assert_migrated_once(&conn).await;
    let _ = conn.close().await;
    for child in &mut children {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    db.drop_database().await;
}

for_backends!([sqlite, postgres, mysql, pgbouncer, pgbouncer_txn] fn four_instances_started_at_once_all_come_up);

/// The admin every instance is told of (`ADMIN_EMAIL`/`ADMIN_PASSWORD`).
const OWNER_EMAIL: &str = "owner@storefront.test";
const OWNER_PASSWORD: &str = "owner password 1";

/// Instances started at once with the same admin in their environment all come up, and there is
/// one such user, an admin, who logs in with that password on each of them.
async fn four_instances_started_at_once_make_one_admin_from_the_environment(db: Option<TestDb>) {
    let Some(db) = db else {
        return;
    };
    let mut children: Vec<Child> = (0..4)
        .map(|_| {
            server(&db)
                .env("ADMIN_EMAIL", OWNER_EMAIL)
                .env("ADMIN_PASSWORD", OWNER_PASSWORD)
                .spawn()
                .expect("start an instance")
        })
        .collect();
    let mut addrs = Vec::new();
    for child in &mut children {
        let start_up = wait_until_listening(child).await;
        addrs.push(start_up.addr.expect("the listening line names the address"));
    }
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for addr in &addrs {
        let login = client
            .post(format!("http://{addr}/v1/sessions"))
            .json(&serde_json::json!({"email": OWNER_EMAIL, "password": OWNER_PASSWORD}))
            .send()
            .await
            .expect("an answer");
        assert_eq!(login.status(), 201, "the admin cannot log in on {addr}");
        let session: serde_json::Value = login.json().await.expect("a session");
        assert_eq!(session["user"]["role"], "admin", "{session}");
        ids.push(session["user"]["id"].clone());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "the instances name different admins: {ids:?}");
    let conn = db.connect().await;
    let rows = conn
        .query_all_raw(sea_orm::Statement::from_string(
            conn.get_database_backend(),
            format!("SELECT role FROM users WHERE LOWER(email) = '{OWNER_EMAIL}'"),
        ))
        .await
        .expect("read users");
    let roles: Vec<String> = rows
        .iter()
        .map(|row| row.try_get_by_index::<String>(0).expect("a text role"))
        .collect();
    assert_eq!(roles, ["admin"], "one admin user, not {roles:?}");
    let _ = conn.close().await;
    for child in &mut children {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    db.drop_database().await;
}

for_backends!(
    [sqlite, postgres, mysql, pgbouncer, pgbouncer_txn] fn four_instances_started_at_once_make_one_admin_from_the_environment
);

/// The migration command built from the `migration` crate's own entry point.
fn migrate_command(db: &TestDb, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_migrate"));
    command
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env_remove("DATABASE_DIRECT_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

async fn two_migration_commands_at_once_apply_each_migration_once(db: Option<TestDb>) {
    let Some(db) = db else {
        return;
    };
    let first = migrate_command(&db, &["up"]).output();
    let second = migrate_command(&db, &["up"]).output();
    let (first, second) = tokio::time::timeout(HANG_GUARD, async { tokio::join!(first, second) })
        .await
        .expect("the commands finish");
    for output in [first.unwrap(), second.unwrap()] {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let conn = db.connect().await;
    assert_migrated_once(&conn).await;
    let _ = conn.close().await;
    db.drop_database().await;
}

for_backends!([sqlite, postgres, mysql] fn two_migration_commands_at_once_apply_each_migration_once);

/// While someone else holds the lock, an instance says that it waits, then gives up with one line
/// on stderr; the command does the same.
async fn a_held_migration_lock_makes_others_wait_then_give_up(db: Option<TestDb>) {
    let Some(db) = db else {
        return;
    };
    let held = MigrationLock::acquire(&db.url, Duration::from_secs(10), || {})
        .await
        .expect("take the lock");

    let output = server(&db).env("MIGRATION_LOCK_TIMEOUT_SECS", "1").output();
    let output = tokio::time::timeout(HANG_GUARD, output)
        .await
        .expect("the instance gives up")
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let log = String::from_utf8_lossy(&output.stdout);
    assert!(log.contains("waiting for its migration lock"), "{log}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(
        lines[0].contains("migration lock") && lines[0].contains("MIGRATION_LOCK_TIMEOUT_SECS"),
        "{stderr}"
    );
    let password = url::Url::parse(&db.url)
        .ok()
        .and_then(|url| url.password().map(str::to_owned));
    if let Some(password) = password {
        assert!(!stderr.contains(&format!(":{password}@")), "{stderr}");
    }

    let output = migrate_command(&db, &["up"])
        .env("MIGRATION_LOCK_TIMEOUT_SECS", "1")
        .output();
    let output = tokio::time::timeout(HANG_GUARD, output)
        .await
        .expect("the command gives up")
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("waiting"), "{stderr}");
    assert!(stderr.contains("MIGRATION_LOCK_TIMEOUT_SECS"), "{stderr}");

    // Nothing was applied while the lock was held.
    let conn = db.connect().await;
    assert!(
        conn.execute_unprepared("SELECT 1 FROM users")
            .await
            .is_err()
    );
    let _ = conn.close().await;
    held.release().await;
    db.drop_database().await;
}

for_backends!([sqlite, postgres, mysql] fn a_held_migration_lock_makes_others_wait_then_give_up);
