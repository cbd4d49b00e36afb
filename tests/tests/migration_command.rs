//! The migration command (`cargo run -p migration`, which `sea-orm-cli migrate` runs too) fails
//! as the service's start-up does: one line on stderr, any password masked, exit status 1 — no
//! panic, no backtrace.

use std::process::{Command, Output, Stdio};

use tests::{requires, test_db};

/// Runs the command in an empty directory, so that no `.env` file names a database for it.
fn migrate(args: &[&str], database_url: Option<&str>) -> Output {
    let dir = std::env::temp_dir().join(format!("sf-migrate-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_migrate"));
    command
        .args(args)
        .current_dir(&dir)
        .env_remove("DATABASE_URL")
        .env_remove("DATABASE_DIRECT_URL")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null());
    if let Some(url) = database_url {
        command.env("DATABASE_URL", url);
    }
    let output = command.output().expect("run the migration command");
    let _ = std::fs::remove_dir_all(&dir);
    output
}

/// The one line the command printed on stderr, after asserting its exit status.
#[track_caller]
fn one_line_and(output: &Output, status: i32) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert_eq!(output.status.code(), Some(status), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    lines[0].to_owned()
}

#[test]
fn without_database_url_it_says_which_variable_to_set() {
    for command in ["status", "up", "down", "fresh"] {
        let line = one_line_and(&migrate(&[command], None), 1);
        assert!(
            line.starts_with("migration: DATABASE_URL is not set"),
            "{line}"
        );
    }
}

#[test]
fn a_database_of_another_engine_is_refused_with_its_password_masked() {
    let url = "mongodb://app:s3cret@127.0.0.1:1/shop";
    let line = one_line_and(&migrate(&["status"], Some(url)), 1);
    assert!(
        line.contains("mongodb://app:***@127.0.0.1:1/shop"),
        "{line}"
    );
    assert!(!line.contains("s3cret"), "{line}");
}

#[test]
fn a_database_that_cannot_be_opened_is_named_in_one_line() {
    let missing = std::env::temp_dir()
        .join(format!("sf-missing-{}", uuid::Uuid::now_v7().simple()))
        .join("shop.db");
    let url = format!("sqlite://{}", missing.display());
    let line = one_line_and(&migrate(&["status"], Some(&url)), 1);
    assert!(
        line.starts_with(&format!("migration: cannot connect to {url}: ")),
        "{line}"
    );
    assert!(
        !missing.exists(),
        "the command created {}",
        missing.display()
    );
}

#[test]
fn an_unknown_subcommand_is_one_line_of_usage() {
    let line = one_line_and(&migrate(&["sideways"], Some("sqlite::memory:")), 2);
    assert!(
        line.contains("sideways") && line.contains("--help"),
        "{line}"
    );
}

#[test]
fn help_does_not_show_the_password_of_database_url() {
    let output = migrate(&["--help"], Some("postgres://app:s3cret@127.0.0.1:1/shop"));
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("--database-url"), "{help}");
    assert!(!help.contains("s3cret"), "{help}");
}

requires! { postgres
    #[tokio::test]
    async fn a_postgres_database_that_does_not_exist_is_named_with_its_password_masked() {
        let Some(db) = test_db!(postgres) else {
            return;
        };
        let mut url = url::Url::parse(&db.url).unwrap();
        url.set_path(&format!("sf_missing_{}", uuid::Uuid::now_v7().simple()));
        let output = migrate(&["status"], Some(url.as_str()));
        db.drop_database().await;
        let line = one_line_and(&output, 1);
        let mut masked = url.clone();
        if url.password().is_some() {
            masked.set_password(Some("***")).unwrap();
        }
        assert!(line.starts_with(&format!("migration: cannot connect to {masked}: ")), "{line}");
        assert!(line.contains("does not exist"), "{line}");
        if let Some(password) = url.password() {
            assert!(!line.contains(&format!(":{password}@")), "{line}");
        }
    }
}
