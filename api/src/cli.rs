//! The command line: `api` (or `api serve`) runs the service; `api openapi` prints its OpenAPI
//! document as YAML.

use std::process::ExitCode;

use crate::config::Config;
use crate::startup::{self, Application};

pub async fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None | Some("serve") => serve().await,
        Some("openapi") => match startup::openapi_yaml().await {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(err) => fail(&err),
        },
        Some(other) => {
            eprintln!("storefront: unknown command {other:?}; usage: api [serve | openapi]");
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

/// The one line an operator reads when the service cannot run.
fn fail(err: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("storefront: {err}");
    ExitCode::FAILURE
}
