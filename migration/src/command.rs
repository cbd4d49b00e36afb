//! The migration command (`cargo run -p migration -- up|down|status|fresh|…`, and `sea-orm-cli
//! migrate`, which runs this same binary): SeaORM's own command line, run under the migration lock
//! so that it never races the service's start-up or another migration command.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use sea_orm_migration::sea_orm::{ConnectOptions, Database};

use crate::Migrator;
use crate::lock::{self, MigrationLock};

/// When `DATABASE_URL` names a transaction pooler, this names the database itself; the migration
/// command then connects there (a pooler would lose the lock, see `lock`).
const DIRECT_URL_VARIABLE: &str = "DATABASE_DIRECT_URL";

pub async fn main() -> ExitCode {
    let timeout = match lock::timeout_from_env() {
        Ok(timeout) => timeout,
        Err(err) => return fail(&err),
    };
    let direct_url = std::env::var(DIRECT_URL_VARIABLE)
        .ok()
        .filter(|url| !url.is_empty());
    // Held from connecting until the command has finished; on an early exit the process ends and
    // the database (or the OS, for SQLite) frees it.
    let held: Arc<Mutex<Option<MigrationLock>>> = Arc::default();
    let holder = held.clone();
    sea_orm_migration::cli::run_cli_with_connection(Migrator, async move |options| {
        let options = match direct_url {
            Some(url) => ConnectOptions::new(url)
                .set_schema_search_path(
                    std::env::var("DATABASE_SCHEMA").unwrap_or_else(|_| "public".to_owned()),
                )
                .to_owned(),
            None => options,
        };
        let notice = move || {
            eprintln!(
                "another process holds the migration lock; waiting for it (at most {} s)",
                timeout.as_secs()
            )
        };
        match MigrationLock::acquire(options.get_url(), timeout, notice).await {
            Ok(lock) => {
                if let Ok(mut slot) = holder.lock() {
                    *slot = Some(lock);
                }
            }
            Err(err) => {
                eprintln!("migration: {err}");
                std::process::exit(1);
            }
        }
        Database::connect(options).await
    })
    .await;
    let lock = held.lock().ok().and_then(|mut slot| slot.take());
    if let Some(lock) = lock {
        lock.release().await;
    }
    ExitCode::SUCCESS
}

fn fail(err: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("migration: {err}");
    ExitCode::FAILURE
}
