//! The command line: `api` (or `api serve`) runs the service; `api openapi` prints its OpenAPI
//! document as YAML; `api migrate up|status` applies or lists the migrations of the database
//! `DATABASE_URL` names, whichever engine it is.

use std::process::ExitCode;

use crate::config::Config;
use crate::startup::{self, Application};
use crate::store::Engine;

const USAGE: &str = "usage: api [serve | openapi | migrate up | migrate status]";

pub async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] | ["serve"] => serve().await,
        ["openapi"] => {
            print!("{}", crate::http::openapi_yaml());
            ExitCode::SUCCESS
        }
        ["migrate", "up"] => migrate(true).await,
        ["migrate", "status"] => migrate(false).await,
        _ => {
            eprintln!("storefront: unknown command {args:?}; {USAGE}");
            ExitCode::from(2)
        }
    }
}

async fn serve() -> ExitCode {
    let _logs = crate::telemetry::init();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => return fail(&err),
    };
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(err) => return fail(&err),
    };
    match app.run_until(startup::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

/// `migrate up` applies what is pending (as start-up does with `AUTO_MIGRATE`); `migrate status`
/// prints each migration with `applied` or `pending`.
async fn migrate(up: bool) -> ExitCode {
    let _logs = crate::telemetry::init();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => return fail(&err),
    };
    let db = match startup::connect_only(&config).await {
        Ok(db) => db,
        Err(err) => return fail(&err),
    };
    let outcome = if up {
        startup::migrate(&db, &config)
            .await
            .map_err(|err| err.to_string())
    } else {
        print_status(&db).await
    };
    let _ = db.close_by_ref().await;
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

async fn print_status(db: &Engine) -> Result<(), String> {
    for migration in db.migration_status().await? {
        let state = if migration.applied {
            "applied"
        } else {
            "pending"
        };
        println!("{state}  {}", migration.name);
    }
    Ok(())
}

/// The one line an operator reads when the service cannot run.
fn fail(err: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("storefront: {err}");
    ExitCode::FAILURE
}
